package azemu

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

type nicJSON struct {
	Name       string         `json:"name"`
	ID         string         `json:"id"`
	Etag       string         `json:"etag"`
	Type       string         `json:"type"`
	Location   string         `json:"location,omitempty"`
	Tags       map[string]any `json:"tags,omitempty"`
	Properties nicPropsJSON   `json:"properties"`
}

type nicPropsJSON struct {
	ProvisioningState           string         `json:"provisioningState"`
	ResourceGUID                string         `json:"resourceGuid"`
	IPConfigurations            []ipConfigJSON `json:"ipConfigurations"`
	DNSSettings                 dnsJSON        `json:"dnsSettings"`
	MACAddress                  string         `json:"macAddress"`
	EnableAcceleratedNetworking bool           `json:"enableAcceleratedNetworking"`
	EnableIPForwarding          bool           `json:"enableIPForwarding"`
	Primary                     bool           `json:"primary"`
	VirtualMachine              idRef          `json:"virtualMachine"`
}

type dnsJSON struct {
	DNSServers        []any `json:"dnsServers"`
	AppliedDNSServers []any `json:"appliedDnsServers"`
}

type ipConfigJSON struct {
	Name       string           `json:"name"`
	ID         string           `json:"id"`
	Etag       string           `json:"etag"`
	Properties ipConfigPropJSON `json:"properties"`
}

type ipConfigPropJSON struct {
	ProvisioningState         string `json:"provisioningState"`
	PrivateIPAddress          string `json:"privateIPAddress"`
	PrivateIPAllocationMethod string `json:"privateIPAllocationMethod"`
	Subnet                    *idRef `json:"subnet,omitempty"`
	Primary                   bool   `json:"primary"`
	PrivateIPAddressVersion   string `json:"privateIPAddressVersion"`
}

// renderNIC renders a VM's primary NIC; its private IP is the VM's address.
func renderNIC(s *scaleSet, view *setView, v *vm) nicJSON {
	id := nicID(s, view, v.ID)
	etag := `W/"` + v.VMID + `"`
	dns := view.dnsServers
	if dns == nil {
		dns = []any{}
	}
	n := nicJSON{
		Name:     view.nicName,
		ID:       id,
		Etag:     etag,
		Type:     "Microsoft.Network/networkInterfaces",
		Location: s.Location,
		Tags:     v.Tags,
		Properties: nicPropsJSON{
			ProvisioningState:           stSucceeded,
			ResourceGUID:                v.VMID,
			DNSSettings:                 dnsJSON{DNSServers: dns, AppliedDNSServers: []any{}},
			MACAddress:                  macAddress(v.IP),
			EnableAcceleratedNetworking: view.accelerated,
			Primary:                     true,
			VirtualMachine:              idRef{ID: vmID(s, v.ID)},
		},
	}
	ipc := ipConfigJSON{
		Name: view.ipcfgName,
		ID:   id + "/ipConfigurations/" + view.ipcfgName,
		Etag: etag,
		Properties: ipConfigPropJSON{
			ProvisioningState:         stSucceeded,
			PrivateIPAddress:          v.IP,
			PrivateIPAllocationMethod: "Dynamic",
			Primary:                   true,
			PrivateIPAddressVersion:   "IPv4",
		},
	}
	if view.subnetID != "" {
		ipc.Properties.Subnet = &idRef{ID: view.subnetID}
	}
	n.Properties.IPConfigurations = []ipConfigJSON{ipc}
	return n
}

// macAddress derives a stable Azure-style MAC from the IP.
func macAddress(ip string) string {
	v, _ := ipToU32(ip)
	return fmt.Sprintf("00-0D-3A-%02X-%02X-%02X", byte(v>>16), byte(v>>8), byte(v))
}

// handleListNICs lists the NICs of a scale set, or of one of its VMs.
func (e *Emulator) handleListNICs(w http.ResponseWriter, r *http.Request, sub, rg, name, instance string) {
	e.answer(w, r, func(time.Time) reply {
		if instance == "" {
			s, miss := e.parentLocked(sub, rg, name)
			if s == nil {
				return miss
			}
			return e.nicList(r, s, s.sortedVMs())
		}
		s, v, miss := e.vmLocked(sub, rg, name, instance)
		if v == nil {
			return miss
		}
		return e.nicList(r, s, []*vm{v})
	})
}

// nicList answers with a page of the NICs of vms, VMs of s.
func (e *Emulator) nicList(r *http.Request, s *scaleSet, vms []*vm) reply {
	view := s.view()
	return reply{status: http.StatusOK, body: e.listPage(r, vmKeys(vms), func(i int) any {
		return renderNIC(s, &view, vms[i])
	})}
}

func (e *Emulator) handleGetNIC(w http.ResponseWriter, r *http.Request, sub, rg, name, instance, nic string) {
	e.answer(w, r, func(time.Time) reply {
		s, v, miss := e.vmLocked(sub, rg, name, instance)
		if v == nil {
			return miss
		}
		view := s.view()
		if !strings.EqualFold(nic, view.nicName) {
			return errReply(http.StatusNotFound, "ResourceNotFound", fmt.Sprintf(
				"The Resource 'Microsoft.Compute/virtualMachineScaleSets/%s/virtualMachines/%s/networkInterfaces/%s' under resource group '%s' was not found.",
				name, instance, nic, rg))
		}
		return okReply(renderNIC(s, &view, v))
	})
}

// handleSubnet answers for any subnet of any virtual network: it exists, with
// the configured address prefix.
func (e *Emulator) handleSubnet(w http.ResponseWriter, r *http.Request, sub, rg, vnet, subnet string) {
	id := resourceID(sub, rg, "Microsoft.Network", "virtualNetworks", vnet, "subnets", subnet)
	writeJSON(w, http.StatusOK, map[string]any{
		"name": subnet,
		"id":   id,
		"etag": `W/"00000000-0000-0000-0000-000000000001"`,
		"type": "Microsoft.Network/virtualNetworks/subnets",
		"properties": map[string]any{
			"provisioningState":                 stSucceeded,
			"addressPrefix":                     e.opts.SubnetPrefix,
			"privateEndpointNetworkPolicies":    "Disabled",
			"privateLinkServiceNetworkPolicies": "Enabled",
		},
	})
}

// handleGalleryImage answers for any image of any gallery: it exists.
// Names mentioning linux, ubuntu or debian are Linux images, others Windows.
func (e *Emulator) handleGalleryImage(w http.ResponseWriter, r *http.Request, sub, rg, gallery, image string) {
	osType := "Windows"
	lower := strings.ToLower(image)
	for _, l := range []string{"linux", "ubuntu", "debian"} {
		if strings.Contains(lower, l) {
			osType = "Linux"
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"name":     image,
		"id":       resourceID(sub, rg, "Microsoft.Compute", "galleries", gallery, "images", image),
		"type":     "Microsoft.Compute/galleries/images",
		"location": "local",
		"properties": map[string]any{
			"osType":            osType,
			"osState":           "Generalized",
			"hyperVGeneration":  "V2",
			"identifier":        map[string]any{"publisher": "sandfleet", "offer": gallery, "sku": image},
			"provisioningState": stSucceeded,
		},
	})
}

// skuSpec is one VM size the emulator offers.
type skuSpec struct {
	name, family string
	vcpus, memGB int
}

var skuCatalog = []skuSpec{
	{"Standard_B2s", "standardBSFamily", 2, 4},
	{"Standard_D2as_v5", "standardDASv5Family", 2, 8},
	{"Standard_D2s_v3", "standardDSv3Family", 2, 8},
	{"Standard_D4s_v3", "standardDSv3Family", 4, 16},
	{"Standard_D8s_v3", "standardDSv3Family", 8, 32},
	{"Standard_D2s_v5", "standardDSv5Family", 2, 8},
	{"Standard_D4s_v5", "standardDSv5Family", 4, 16},
	{"Standard_F2s_v2", "standardFSv2Family", 2, 4},
	{"Standard_F4s_v2", "standardFSv2Family", 4, 8},
}

// skuByName finds a size case-insensitively.
func skuByName(name string) (skuSpec, bool) {
	for _, s := range skuCatalog {
		if strings.EqualFold(s.name, name) {
			return s, true
		}
	}
	return skuSpec{}, false
}

// vcpusOf is the vCPU count of a size; unknown sizes count 2.
func vcpusOf(name string) int64 {
	if s, ok := skuByName(name); ok {
		return int64(s.vcpus)
	}
	return 2
}

var defaultLocations = []string{"eastus", "eastus2", "westus2", "northeurope", "westeurope", "uksouth"}

// handleSKUs lists the VM sizes. $filter "location eq 'x'" lists them in x.
func (e *Emulator) handleSKUs(w http.ResponseWriter, r *http.Request) {
	locs := defaultLocations
	if f := r.URL.Query().Get("$filter"); f != "" {
		if _, v, ok := strings.Cut(f, "eq"); ok {
			locs = []string{strings.Trim(strings.TrimSpace(v), "'\"")}
		}
	}
	body := e.listPage(r, indexKeys(len(skuCatalog)), func(i int) any {
		s := skuCatalog[i]
		li := make([]any, len(locs))
		for j, l := range locs {
			li[j] = map[string]any{"location": l, "zones": []string{"1", "2", "3"}}
		}
		return map[string]any{
			"resourceType": "virtualMachines",
			"name":         s.name,
			"tier":         "Standard",
			"size":         strings.TrimPrefix(s.name, "Standard_"),
			"family":       s.family,
			"locations":    locs,
			"locationInfo": li,
			"capabilities": []map[string]string{
				{"name": "vCPUs", "value": strconv.Itoa(s.vcpus)},
				{"name": "vCPUsAvailable", "value": strconv.Itoa(s.vcpus)},
				{"name": "MemoryGB", "value": strconv.Itoa(s.memGB)},
				{"name": "LowPriorityCapable", "value": "True"},
				{"name": "EphemeralOSDiskSupported", "value": "True"},
				{"name": "CachedDiskBytes", "value": strconv.Itoa(s.vcpus * 25 << 30)},
				{"name": "HyperVGenerations", "value": "V1,V2"},
				{"name": "PremiumIO", "value": "True"},
			},
			"restrictions": []any{},
		}
	})
	writeRaw(w, http.StatusOK, body)
}

// handleUsages reports compute quota use in a location, counted from the
// VMs of the subscription's scale sets there.
func (e *Emulator) handleUsages(w http.ResponseWriter, r *http.Request, sub, location string) {
	e.answer(w, r, func(time.Time) reply {
		var cores, spot, vms, sets int64
		family := map[string]int64{}
		for _, s := range e.st.sets {
			if !strings.EqualFold(s.Sub, sub) || !sameLocation(s.Location, location) {
				continue
			}
			sets++
			view := s.view()
			for _, v := range s.VMs {
				n := vcpusOf(v.Size)
				vms++
				if view.spot {
					spot += n
					continue
				}
				cores += n
				if sp, ok := skuByName(v.Size); ok {
					family[sp.family] += n
				}
			}
		}
		quota := e.faults.quota()
		type usage struct {
			name, display string
			cur, limit    int64
		}
		usages := []usage{
			{"cores", "Total Regional vCPUs", cores, quota.Cores},
			{"lowPriorityCores", "Total Regional Low-priority vCPUs", spot, quota.LowPriorityCores},
			{"virtualMachines", "Virtual Machines", vms, 25000},
			{"virtualMachineScaleSets", "Virtual Machine Scale Sets", sets, 2500},
		}
		seen := map[string]bool{}
		for _, s := range skuCatalog {
			if seen[s.family] {
				continue
			}
			seen[s.family] = true
			usages = append(usages, usage{s.family, s.family + " vCPUs", family[s.family], quota.Cores})
		}
		return reply{status: http.StatusOK, body: e.listPage(r, indexKeys(len(usages)), func(i int) any {
			u := usages[i]
			return map[string]any{
				"unit":         "Count",
				"currentValue": u.cur,
				"limit":        u.limit,
				"name":         map[string]string{"value": u.name, "localizedValue": u.display},
			}
		})}
	})
}

func sameLocation(a, b string) bool {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, " ", "")) }
	return norm(a) == norm(b)
}
