package capeconf

import (
	"fmt"
	"strings"

	"github.com/sandfleet/sandfleet/internal/config"
)

// azUnused are az.conf [az] options with no sandfleet key, and why; the
// README's az.conf table says the same.
var azUnused = map[string]string{
	"interface":                    "not used: sandfleet does not capture traffic; routing is outside it",
	"find_number_of_cores_for_sku": "not used: vCPUs per machine are always read from the resource SKUs",
	"instance_type_cores":          "not used: vCPUs per machine are always read from the resource SKUs",
	"storage_account_type":         "not used: OS disks are ephemeral; there is no managed disk type to choose",
	"init_retries":                 "not used: startup is a reconcile, retried every interval, never fatal",
	"scale_down_polling_period":    "not used: operations are polled by the driver, failed polls retried with backoff",
	"just_start":                   "not used: there is no destructive initialisation to skip",
	// CAPE's Azure packet-capture sniffer (AzSniffer), configured in [az].
	"resource_group":    azSniffer,
	"storage_account":   azSniffer,
	"vmss_name":         azSniffer,
	"location":          azSniffer,
	"tenant_id":         azSniffer,
	"client_secret":     azSniffer + " (a secret: not copied)",
	"connection_string": azSniffer + " (a secret: not copied)",
}

const azSniffer = "not used: an option of CAPE's Azure packet capture (AzSniffer); sandfleet does not capture traffic"

// azure maps az.conf: the azure section and one pool per scale set.
func (m *mapper) azure(f *File) {
	az := f.Section("az")
	if az == nil {
		m.warn("az.conf has no [az] section: no scale sets imported")
		return
	}
	a := &m.cfg.Azure
	m.text(f, az, "subscription_id", "azure.subscription_id", &a.SubscriptionID)
	m.credential(f, az)
	m.text(f, az, "tenant", "azure.tenant_id", &a.TenantID)
	m.text(f, az, "client_id", "azure.client_id", &a.ClientID)
	m.text(f, az, "region_name", "azure.region", &a.Region)
	m.text(f, az, "sandbox_resource_group", "azure.sandbox_resource_group", &a.SandboxResourceGroup)
	m.text(f, az, "vnet_resource_group", "azure.vnet_resource_group", &a.VNetResourceGroup)
	m.text(f, az, "vnet", "azure.vnet", &a.VNet)
	m.text(f, az, "subnet", "azure.subnet", &a.Subnet)
	m.text(f, az, "gallery_name", "azure.gallery", &a.Gallery)
	m.text(f, az, "instance_type", "azure.instance_type", &a.InstanceType)
	m.boolean(f, az, "spot_instances", "azure.spot", &a.Spot)
	m.text(f, az, "ephemeral_os_disk_placement", "azure.ephemeral_os_disk_placement", &a.EphemeralOSDiskPlacement)
	m.integer(f, az, "total_machines_limit", "azure.total_machines_limit", &a.TotalMachinesLimit)
	m.integer(f, az, "scale_set_limit", "azure.scale_set_limit", &a.ScaleSetLimit)
	m.integer(f, az, "overprovision", "azure.overprovision", &a.Overprovision)
	m.seconds(f, az, "wait_time_to_reimage", "azure.reimage_batch_window", &a.ReimageBatchWindow)
	m.seconds(f, az, "monitor_rate", "azure.monitor_interval", &a.MonitorInterval)
	m.text(f, az, "quota_name", "azure.quota_name", &a.QuotaName)
	m.integer(f, az, "quota_machine_exclusion", "azure.quota_machine_exclusion", &a.QuotaMachineExclusion)
	if o := f.lookup(az, "dns_server_ips"); o != nil {
		if v, ok := m.value(f, o); ok && v == "" {
			m.emptyNote(f, o, "Azure's DNS")
		} else if ok {
			a.DNSServers = list(v)
			remark := ""
			for _, s := range a.DNSServers {
				if placeholder(s) {
					remark = placeholderRemark
				}
			}
			m.use(f, o, "azure.dns_servers", remark)
		}
	}
	m.boolean(f, az, "wait_for_agent_before_starting", "azure.wait_for_agent_before_ready", &a.WaitForAgentBeforeReady)
	m.boolean(f, az, "multiple_capes_in_sandbox_rg", "azure.multiple_deployments", &a.MultipleDeployments)
	if o := f.lookup(az, "reset_pool_size"); o != nil {
		m.note(f, o, "not used: sandfleet always brings a scale set to its pool's initial_size, at every reconcile")
	}
	// The address machines are told is weighed with the others'.
	m.rs = append(m.rs, rsClaim{file: f, ip: f.lookup(az, "resultserver_ip"), port: f.lookup(az, "resultserver_port")})
	for key, why := range azUnused {
		if o := az.Option(key); o != nil {
			m.note(f, o, why)
		}
	}
	m.scaleSets(f, az)
}

// credential chooses how sandfleet signs in as CAPE does: with the client
// secret when one is filled in, else with the certificate. Neither secret
// is copied; the YAML names the file to put it in.
func (m *mapper) credential(f *File, az *Section) {
	a := &m.cfg.Azure
	filled := func(key string) *Option {
		o := f.lookup(az, key)
		if o == nil {
			return nil
		}
		// Only whether it is set matters: a secret is never interpolated,
		// so one CAPE reads from its environment needs nothing here.
		if raw := strings.TrimSpace(o.Raw); raw == "" || placeholder(raw) {
			return nil
		}
		return o
	}
	secret, cert, password := filled("secret"), filled("certificate_path"), filled("certificate_password")
	unfilled := func(key, why string) {
		if o := f.lookup(az, key); o != nil && o != secret && o != cert && o != password {
			m.note(f, o, why)
		}
	}
	switch {
	case secret != nil:
		a.Credential = "secret"
		a.ClientSecretFile = m.secretFile("azure-client-secret")
		m.use(f, secret, "azure.credential", "")
		m.use(f, secret, "azure.client_secret_file", secretRemark(secret, "the client secret (az.secret)"))
		for _, o := range []*Option{cert, password} {
			if o != nil {
				m.note(f, o, "not used: az.secret is filled in, and CAPE signs in with it")
			}
		}
		unfilled("certificate_path", "not used: not filled in, and CAPE signs in with az.secret")
		unfilled("certificate_password", "not used: not filled in, and CAPE signs in with az.secret")
	case cert != nil:
		a.Credential = "certificate"
		m.use(f, cert, "azure.credential", "")
		m.text(f, az, "certificate_path", "azure.certificate_file", &a.CertificateFile)
		if password != nil {
			a.CertificatePasswordFile = m.secretFile("azure-certificate-password")
			m.use(f, password, "azure.certificate_password_file", secretRemark(password, "the certificate's password (az.certificate_password)"))
		}
		unfilled("secret", "not used: not filled in, so CAPE signs in with the certificate")
		unfilled("certificate_password", "not used: not filled in: the certificate has no password")
	default:
		a.Credential = "default"
		m.set("azure.credential", "neither az.secret nor az.certificate_path is filled in: default signs in from the environment, a managed identity or the Azure CLI")
		for _, k := range []string{"secret", "certificate_path", "certificate_password"} {
			unfilled(k, "not carried over: not filled in (CAPE's placeholder or empty)")
		}
	}
}

// scaleSets makes one pool per scale set listed in az.scale_sets.
func (m *mapper) scaleSets(f *File, az *Section) {
	o := az.Option("scale_sets")
	var ids []string
	if o != nil {
		if v, ok := m.value(f, o); ok {
			ids = list(v)
		}
	}
	if o != nil && len(ids) == 0 && !m.done[o] {
		m.note(f, o, "empty in CAPE: no scale sets")
	}
	listed := map[string]bool{"az": true, "DEFAULT": true}
	first := true
	for _, id := range ids {
		listed[id] = true
		sec := f.Section(id)
		if sec == nil {
			m.warn(fmt.Sprintf("az.scale_sets names %s, which has no [%s] section in az.conf: skipped, as CAPE skips it", id, id))
			continue
		}
		if sec.Option("initial_pool_size") == nil {
			m.warn(fmt.Sprintf("az.conf [%s] has no initial_pool_size: skipped, as CAPE skips it", id))
			m.noteSection(f, sec, "not imported: the scale set has no initial_pool_size, and CAPE skips it")
			continue
		}
		i := len(m.cfg.Pools)
		at := func(k string) string { return fmt.Sprintf("pools[%d].%s", i, k) }
		p := config.Pool{Name: id, Provider: "azure"}
		if first {
			m.head(fmt.Sprintf("pools[%d]", i), "az.conf: one pool per scale set in az.scale_sets")
			first = false
		}
		m.use(f, o, at("name"), "")
		m.set(at("provider"), "")
		m.text(f, sec, "platform", at("platform"), &p.Platform)
		p.Platform = strings.ToLower(p.Platform)
		m.text(f, sec, "arch", at("arch"), &p.Arch)
		if t := f.lookup(sec, "pool_tag"); t != nil {
			if v, ok := m.value(f, t); ok && v == "" {
				m.emptyNote(f, t, "")
			} else if ok {
				p.Tags = list(v)
				remark := ""
				if placeholder(v) {
					remark = placeholderRemark
				}
				m.use(f, t, at("tags"), remark)
			}
		}
		m.text(f, sec, "gallery_image_name", at("image"), &p.Image)
		m.integer(f, sec, "initial_pool_size", at("initial_size"), &p.InitialSize)
		if r, ok := m.boolean(f, sec, "reserved", at("reserved"), &p.Reserved); ok {
			m.use(f, r, at("reserved"), "CAPE's az machinery ignores it; sandfleet honours it")
		}
		m.cfg.Pools = append(m.cfg.Pools, p)
	}
	for _, sec := range f.Sections {
		if !listed[sec.Name] {
			m.noteSection(f, sec, fmt.Sprintf("not used: [%s] is not listed in az.scale_sets, and CAPE ignores it too", sec.Name))
		}
	}
}
