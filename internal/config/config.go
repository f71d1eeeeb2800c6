// Package config loads and validates sandfleet's YAML configuration (SPEC §3).
//
// Decoding is strict: an unknown key or a value of the wrong type is an error
// naming its line and key path. Every default lives in Default, and Validate
// reports problems by key path (`pools[1].name: "win_10" contains "_"`).
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the whole of sandfleet's configuration.
type Config struct {
	Listen       string       `yaml:"listen"`
	DataDir      string       `yaml:"data_dir"`
	Database     string       `yaml:"database"`
	Auth         Auth         `yaml:"auth"`
	ResultServer ResultServer `yaml:"resultserver"`
	Scheduler    Scheduler    `yaml:"scheduler"`
	Timeouts     Timeouts     `yaml:"timeouts"`
	Fleet        Fleet        `yaml:"fleet"`
	Azure        Azure        `yaml:"azure"`
	Pools        []Pool       `yaml:"pools"`
	Hooks        Hooks        `yaml:"hooks"`
	Guest        Guest        `yaml:"guest"`
	Log          Log          `yaml:"log"`
}

// Hooks hand finished analyses on, e.g. to CAPE's processing.
type Hooks struct {
	// OnComplete is an argv run after each analysis ends, with {task_id},
	// {analysis_dir} and {status} replaced in every argument; empty = none.
	// It runs on the node that ended the analysis, is not run by a shell,
	// and runs again after a crash that interrupted it: make it idempotent.
	OnComplete []string `yaml:"on_complete"`
	// Timeout bounds one run; the hook is killed then.
	Timeout time.Duration `yaml:"timeout"`
}

// HookFields are the placeholders an on_complete argument may hold.
var HookFields = []string{"task_id", "analysis_dir", "status"}

// Log configures the daemon's structured log (log/slog) on stderr.
type Log struct {
	Format string `yaml:"format"` // text | json
	Level  string `yaml:"level"`  // debug | info | warn | error
}

// Auth configures API tokens.
type Auth struct {
	TokensFile string `yaml:"tokens_file"`
}

// ResultServer configures the CAPE result server.
type ResultServer struct {
	Listen      string `yaml:"listen"`
	AdvertiseIP string `yaml:"advertise_ip"`
}

// Scheduler configures task intake and dispatch.
type Scheduler struct {
	// MaxMachines caps the analyses running at once (CAPE
	// max_machines_count); 0 = no cap.
	MaxMachines int `yaml:"max_machines"`
	// FailUnserviceable fails at once a task no configured machine or pool
	// could ever serve, naming the requirement nothing meets.
	FailUnserviceable bool `yaml:"fail_unserviceable"`
	// RescheduleRunningOnRestart puts the analyses a restart interrupted
	// back in the queue (an attempt each); off, they fail.
	RescheduleRunningOnRestart bool `yaml:"reschedule_running_on_restart"`
	// MaxAttempts: a task whose analysis was lost (machine gone, node dead)
	// is tried this many times in all, under the same id.
	MaxAttempts int `yaml:"max_attempts"`
	// PendingTimeout fails a task still pending this long, with the reason
	// it waited (CAPE task_pending_timeout, which deleted it); 0 = never.
	PendingTimeout time.Duration `yaml:"pending_timeout"`
	// MaxSampleSize is the largest file tasks/create/file/ accepts.
	MaxSampleSize Size `yaml:"max_sample_size"`
	// DrainTimeout bounds how long a stopping daemon (SIGTERM) waits for
	// its running analyses; those still running then go back to the queue.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// PackageTags: a package that needs one of these machine tags (CAPE's
	// web.conf [packages], its os_version), e.g. {doc: [office2016]}.
	PackageTags map[string][]string `yaml:"package_tags"`
}

// Timeouts bounds every wait (SPEC §1.6).
type Timeouts struct {
	Default        time.Duration `yaml:"default"`
	Critical       time.Duration `yaml:"critical"`
	VMState        time.Duration `yaml:"vm_state"`
	CloudOperation time.Duration `yaml:"cloud_operation"`
}

// Fleet configures the reconcilers.
type Fleet struct {
	ReconcileInterval time.Duration `yaml:"reconcile_interval"`
	// HealthInterval: how often a ready machine's guest agent is probed, so
	// that an agent that died is noticed within this long, not when a task
	// is sent to it.
	HealthInterval time.Duration `yaml:"health_interval"`
	// LeaseTTL: with several nodes on one database, one reconciles each
	// provider under a lease; a dead leader's pools wait this long.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// Azure configures the Azure VMSS provider. An empty SubscriptionID selects the
// in-process emulator.
type Azure struct {
	SubscriptionID           string        `yaml:"subscription_id"`
	Endpoint                 string        `yaml:"endpoint"`
	CAFile                   string        `yaml:"ca_file"`
	Credential               string        `yaml:"credential"`
	TenantID                 string        `yaml:"tenant_id"`
	ClientID                 string        `yaml:"client_id"`
	ClientSecretFile         string        `yaml:"client_secret_file"`
	CertificateFile          string        `yaml:"certificate_file"`
	CertificatePasswordFile  string        `yaml:"certificate_password_file"`
	Region                   string        `yaml:"region"`
	SandboxResourceGroup     string        `yaml:"sandbox_resource_group"`
	VNetResourceGroup        string        `yaml:"vnet_resource_group"`
	VNet                     string        `yaml:"vnet"`
	Subnet                   string        `yaml:"subnet"`
	Gallery                  string        `yaml:"gallery"`
	InstanceType             string        `yaml:"instance_type"`
	Spot                     bool          `yaml:"spot"`
	EphemeralOSDiskPlacement string        `yaml:"ephemeral_os_disk_placement"`
	TotalMachinesLimit       int           `yaml:"total_machines_limit"`
	ScaleSetLimit            int           `yaml:"scale_set_limit"`
	Overprovision            int           `yaml:"overprovision"`
	ReimageBatchWindow       time.Duration `yaml:"reimage_batch_window"`
	MonitorInterval          time.Duration `yaml:"monitor_interval"`
	MaxConcurrentOperations  int           `yaml:"max_concurrent_operations"`
	QuotaName                string        `yaml:"quota_name"`
	QuotaMachineExclusion    int           `yaml:"quota_machine_exclusion"`
	DNSServers               []string      `yaml:"dns_servers"`
	WaitForAgentBeforeReady  bool          `yaml:"wait_for_agent_before_ready"`
	AdoptExisting            bool          `yaml:"adopt_existing"`
	MultipleDeployments      bool          `yaml:"multiple_deployments"`
	// Emulator settings for the in-process emulator (SubscriptionID empty).
	Emulator EmulatorSettings `yaml:"emulator"`
}

// EmulatorSettings shape the in-process Azure emulator of the embedded default.
type EmulatorSettings struct {
	AnalysisDuration string        `yaml:"analysis_duration"`
	LRODelay         time.Duration `yaml:"lro_delay"`
	// GalleryImages are the gallery images the emulator holds; a pool
	// naming another fails as it would on Azure.
	GalleryImages []string `yaml:"gallery_images"`
}

// Emulated reports whether the Azure provider talks to the in-process emulator.
func (a Azure) Emulated() bool { return a.SubscriptionID == "" }

// EmulatorDir is where the in-process emulator keeps its state, its CA
// (ca.pem) and, while serve runs, its URL (endpoint).
func (c *Config) EmulatorDir() string { return filepath.Join(c.DataDir, "emulator") }

// Pool is one pool of interchangeable machines: an Azure scale set, a set of
// libvirt domains, or a list of static machines.
type Pool struct {
	Name        string   `yaml:"name"`
	Provider    string   `yaml:"provider"`
	Platform    string   `yaml:"platform"`
	Arch        string   `yaml:"arch"`
	Tags        []string `yaml:"tags"`
	Image       string   `yaml:"image"`
	InitialSize int      `yaml:"initial_size"`
	MaxSize     int      `yaml:"max_size"`
	Reserved    bool     `yaml:"reserved"`
	// URI is a libvirt pool's connection (default qemu:///system).
	URI string `yaml:"uri"`
	// Snapshot is what a libvirt pool's domains are reverted to after each
	// use, unless a machine names its own; with neither, each domain's
	// current snapshot (as CAPE's kvm.conf without a snapshot).
	Snapshot     string          `yaml:"snapshot"`
	Machines     []StaticMachine `yaml:"machines"`
	ResetCommand string          `yaml:"reset_command"`
}

// StaticMachine is a machine the configuration lists: a static pool's, or a
// libvirt pool's domain (its label is the domain's name).
type StaticMachine struct {
	Label    string   `yaml:"label"`
	IP       string   `yaml:"ip"`
	Arch     string   `yaml:"arch"`
	Platform string   `yaml:"platform"`
	Tags     []string `yaml:"tags"`
	// Snapshot overrides the pool's (libvirt).
	Snapshot string `yaml:"snapshot"`
	// ResultServerPort is the result-server port this machine reports to,
	// its own (libvirt): guests behind one forwarded address are told apart
	// by it, as CAPE's per-machine resultserver_port does. 0: the server's.
	ResultServerPort int `yaml:"resultserver_port"`
}

// DefaultLibvirtURI is a libvirt pool's connection when it names none.
const DefaultLibvirtURI = "qemu:///system"

// SnapshotOf is the snapshot machine m of libvirt pool p is reverted to.
func (p Pool) SnapshotOf(m StaticMachine) string {
	if m.Snapshot != "" {
		return m.Snapshot
	}
	return p.Snapshot
}

// Guest configures the guest-agent protocol.
type Guest struct {
	AgentPort int `yaml:"agent_port"`
	// Analyzer is CAPE's analyzer package (a directory or a .zip holding
	// analyzer.py), sent to every guest. Empty: the built-in stand-in
	// analyzer, which only reports what it was given.
	Analyzer      string `yaml:"analyzer"`
	UploadMaxSize Size   `yaml:"upload_max_size"`
}

// Size is a byte count written as "100MiB", "2GB", "512KiB" or a plain number.
type Size int64

// UnmarshalYAML parses a Size. Its error is the bare complaint: Decode puts
// the line and key path in front.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

var sizeUnits = map[string]int64{
	"": 1, "B": 1,
	"KB": 1000, "MB": 1000 * 1000, "GB": 1000 * 1000 * 1000,
	"KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30,
}

// ParseSize parses "100MiB"-style sizes.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	}
	mult, ok := sizeUnits[unit]
	if !ok || num == "" {
		return 0, fmt.Errorf("%q is not a size (e.g. 100MiB)", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a size (e.g. 100MiB)", s)
	}
	if f*float64(mult) >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return Size(f * float64(mult)), nil
}

// Default returns the built-in configuration: SQLite under ./sandfleet-data, the
// API on 127.0.0.1:8090, and one pool on the in-process Azure emulator.
func Default() *Config {
	return &Config{
		Listen:       "127.0.0.1:8090",
		DataDir:      "./sandfleet-data",
		ResultServer: ResultServer{Listen: "127.0.0.1:2042"},
		Scheduler: Scheduler{
			FailUnserviceable:          true,
			RescheduleRunningOnRestart: true,
			MaxAttempts:                3,
			MaxSampleSize:              256 << 20,
			DrainTimeout:               2 * time.Minute,
		},
		Timeouts: Timeouts{
			Default:        200 * time.Second,
			Critical:       60 * time.Second,
			VMState:        300 * time.Second,
			CloudOperation: 300 * time.Second,
		},
		Fleet: Fleet{
			ReconcileInterval: 30 * time.Second,
			HealthInterval:    30 * time.Second,
			LeaseTTL:          15 * time.Second,
		},
		Azure: Azure{
			Endpoint:                 "https://management.azure.com",
			Credential:               "default",
			Region:                   "westeurope",
			SandboxResourceGroup:     "sandfleet-sandbox",
			VNetResourceGroup:        "sandfleet-network",
			VNet:                     "sandfleet-vnet",
			Subnet:                   "sandbox",
			Gallery:                  "sandfleetgallery",
			InstanceType:             "Standard_D2s_v5",
			EphemeralOSDiskPlacement: "CacheDisk",
			TotalMachinesLimit:       50,
			ScaleSetLimit:            20,
			ReimageBatchWindow:       4 * time.Second,
			MonitorInterval:          300 * time.Second,
			MaxConcurrentOperations:  4,
			QuotaMachineExclusion:    5,
			WaitForAgentBeforeReady:  true,
			AdoptExisting:            true,
			Emulator: EmulatorSettings{AnalysisDuration: "2s",
				GalleryImages: []string{DefaultPools()[0].Image}},
		},
		Hooks: Hooks{Timeout: 300 * time.Second},
		Guest: Guest{AgentPort: 8000, UploadMaxSize: 100 << 20},
		Log:   Log{Format: "text", Level: "info"},
	}
}

// DefaultPools is the pool list used when the configuration names none: one
// scale set of a few emulated Windows VMs.
func DefaultPools() []Pool {
	return []Pool{{
		Name: "win10x64", Provider: "azure", Platform: "windows", Arch: "x64",
		Tags: []string{"win10", "x64"}, Image: "win10-gallery-image",
		InitialSize: 3, MaxSize: 10,
	}}
}

// Load reads the file at path over the defaults. An empty path yields the
// defaults. Relative paths in the file are resolved against the file's directory
// only where noted in the README; the data directory is resolved by the caller.
func Load(path string) (*Config, error) {
	cfg := Default()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		if err := Decode(data, cfg); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	// The demo pool only where it can do no harm: on the in-process emulator.
	// A file that names a subscription and no pools fails validation instead
	// of letting a demo pool loose in a real resource group.
	if len(cfg.Pools) == 0 && cfg.Azure.Emulated() {
		cfg.Pools = DefaultPools()
	}
	cfg.fillPoolDefaults()
	return cfg, nil
}

// fillPoolDefaults gives an Azure pool without max_size the most it may
// have, azure.scale_set_limit (at least initial_size), and a libvirt pool
// its default uri; a libvirt pool's image is its snapshot.
func (c *Config) fillPoolDefaults() {
	for i := range c.Pools {
		p := &c.Pools[i]
		if p.Provider == "libvirt" {
			if p.URI == "" {
				p.URI = DefaultLibvirtURI
			}
			// image is a libvirt pool's snapshot, by either name.
			if p.Snapshot == "" {
				p.Snapshot = p.Image
			}
			if p.Image == "" {
				p.Image = p.Snapshot
			}
			continue
		}
		if p.MaxSize != 0 || p.Provider != "azure" {
			continue
		}
		p.MaxSize = max(p.InitialSize, c.Azure.ScaleSetLimit)
	}
}

// schemeRE is what a URL scheme looks like (RFC 3986), and so can be shown
// where the rest of the URL, which may hold a password, cannot.
var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]{0,31}$`)

var poolNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,63}$`)

// galleryImageRE is what Azure allows a gallery image definition's name.
var galleryImageRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,78}[A-Za-z0-9])?$`)

// Validate checks cfg and returns every problem found, each naming its key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	} else if !IsLoopback(c.Listen) && c.Auth.TokensFile == "" {
		bad("auth.tokens_file", "required when listen (%s) is not a loopback address: anyone who reaches the port could submit samples "+
			"and take machines out of service (make one with sandfleet token create NAME --tokens-file FILE)", c.Listen)
	}
	if c.Database != "" && !strings.HasPrefix(c.Database, "sqlite://") &&
		!strings.HasPrefix(c.Database, "postgres://") && !strings.HasPrefix(c.Database, "postgresql://") {
		// Not the URL itself: it may hold a password.
		if scheme, _, ok := strings.Cut(c.Database, "://"); ok && schemeRE.MatchString(scheme) {
			bad("database", "scheme %q is not supported: want sqlite:///path or postgres://…", scheme)
		} else {
			bad("database", "not a URL: want sqlite:///path or postgres://…")
		}
	}
	for key, d := range map[string]time.Duration{
		"timeouts.default": c.Timeouts.Default, "timeouts.critical": c.Timeouts.Critical,
		"timeouts.vm_state": c.Timeouts.VMState, "timeouts.cloud_operation": c.Timeouts.CloudOperation,
		"fleet.reconcile_interval": c.Fleet.ReconcileInterval,
		"fleet.health_interval":    c.Fleet.HealthInterval,
		"azure.monitor_interval":   c.Azure.MonitorInterval,
	} {
		if d <= 0 {
			bad(key, "must be positive (an unbounded wait is not allowed)")
		}
	}
	if c.Fleet.LeaseTTL < time.Second {
		bad("fleet.lease_ttl", "%s: must be at least 1s", c.Fleet.LeaseTTL)
	}
	if c.Scheduler.MaxMachines < 0 {
		bad("scheduler.max_machines", "must be >= 0")
	}
	c.validateHooks(bad)
	if c.Log.Format != "text" && c.Log.Format != "json" {
		bad("log.format", "%q: want text or json", c.Log.Format)
	}
	if _, err := ParseLevel(c.Log.Level); err != nil {
		bad("log.level", "%v", err)
	}
	if c.Scheduler.MaxAttempts < 1 {
		bad("scheduler.max_attempts", "%d: must be at least 1", c.Scheduler.MaxAttempts)
	}
	if c.Scheduler.PendingTimeout < 0 {
		bad("scheduler.pending_timeout", "must be >= 0 (0 = never)")
	}
	if c.Scheduler.DrainTimeout <= 0 {
		bad("scheduler.drain_timeout", "must be positive (an unbounded wait is not allowed)")
	}
	if c.Scheduler.MaxSampleSize < 1 {
		bad("scheduler.max_sample_size", "must be positive")
	}
	switch c.Azure.Credential {
	case "default", "managed-identity", "emulator":
	case "secret":
		if c.Azure.ClientSecretFile == "" {
			bad("azure.client_secret_file", "required with credential: secret")
		}
	case "certificate":
		if c.Azure.CertificateFile == "" {
			bad("azure.certificate_file", "required with credential: certificate")
		}
	default:
		bad("azure.credential", "%q: want default, managed-identity, secret, certificate or emulator", c.Azure.Credential)
	}
	if c.Azure.MaxConcurrentOperations < 1 {
		bad("azure.max_concurrent_operations", "must be >= 1")
	}
	if c.Azure.ReimageBatchWindow < 0 {
		bad("azure.reimage_batch_window", "must be >= 0")
	}
	for key, n := range map[string]int{
		"azure.overprovision": c.Azure.Overprovision, "azure.scale_set_limit": c.Azure.ScaleSetLimit,
		"azure.total_machines_limit": c.Azure.TotalMachinesLimit, "azure.quota_machine_exclusion": c.Azure.QuotaMachineExclusion,
	} {
		if n < 0 {
			bad(key, "must be >= 0")
		}
	}
	c.validateEmulator(bad)
	c.validateResultServer(bad)
	if c.Guest.AgentPort < 1 || c.Guest.AgentPort > 65535 {
		bad("guest.agent_port", "%d is not a port", c.Guest.AgentPort)
	}
	if len(c.Pools) == 0 {
		bad("pools", "at least one pool is required")
	}
	azureTotal := 0
	for _, p := range c.Pools {
		if p.Provider == "azure" {
			azureTotal += p.InitialSize
		}
	}
	if c.Azure.TotalMachinesLimit > 0 && azureTotal > c.Azure.TotalMachinesLimit {
		bad("azure.total_machines_limit", "%d is below the sum of the Azure pools' initial_size (%d)", c.Azure.TotalMachinesLimit, azureTotal)
	}
	names := map[string]int{}
	labels := map[string]string{}
	ports := map[int]string{}
	for i, p := range c.Pools {
		key := fmt.Sprintf("pools[%d]", i)
		switch {
		case p.Name == "":
			bad(key+".name", "required")
		case strings.Contains(p.Name, "_"):
			bad(key+".name", "%q contains \"_\"", p.Name)
		case !poolNameRE.MatchString(p.Name):
			bad(key+".name", "%q: use letters, digits and '-' (at most 64)", p.Name)
		}
		if j, dup := names[p.Name]; dup && p.Name != "" {
			bad(key+".name", "%q already used by pools[%d]", p.Name, j)
		}
		names[p.Name] = i
		switch p.Platform {
		case "windows", "linux", "darwin":
		default:
			bad(key+".platform", "%q: want windows, linux or darwin", p.Platform)
		}
		if p.Arch != "" && p.Arch != "x86" && p.Arch != "x64" {
			bad(key+".arch", "%q: want x86 or x64", p.Arch)
		}
		switch p.Provider {
		case "azure":
			if p.Image == "" {
				bad(key+".image", "required for provider %s", p.Provider)
			}
			if p.InitialSize < 0 {
				bad(key+".initial_size", "must be >= 0")
			}
			limit := c.Azure.ScaleSetLimit > 0
			switch {
			case limit && p.InitialSize > c.Azure.ScaleSetLimit:
				bad(key+".initial_size", "%d exceeds azure.scale_set_limit %d", p.InitialSize, c.Azure.ScaleSetLimit)
			case p.MaxSize < p.InitialSize:
				bad(key+".max_size", "%d is below initial_size %d", p.MaxSize, p.InitialSize)
			case limit && p.MaxSize > c.Azure.ScaleSetLimit:
				bad(key+".max_size", "%d exceeds azure.scale_set_limit %d", p.MaxSize, c.Azure.ScaleSetLimit)
			}
			if len(p.Machines) > 0 {
				bad(key+".machines", "only static and libvirt pools list machines")
			}
			c.validateNotLibvirt(key, p, bad)
		case "libvirt":
			c.validateLibvirt(key, p, labels, ports, bad)
		case "static":
			if len(p.Machines) == 0 {
				bad(key+".machines", "a static pool needs at least one machine")
			}
			for j, m := range p.Machines {
				mk := fmt.Sprintf("%s.machines[%d]", key, j)
				validateMachine(mk, m, labels, bad)
				if m.Snapshot != "" {
					bad(mk+".snapshot", "only libvirt machines are reverted to a snapshot (a static pool resets with reset_command)")
				}
				if m.ResultServerPort != 0 {
					bad(mk+".resultserver_port", "only libvirt machines have a result-server port of their own")
				}
			}
			c.validateNotLibvirt(key, p, bad)
		case "":
			bad(key+".provider", "required (azure, libvirt or static)")
		default:
			bad(key+".provider", "%q: want azure, libvirt or static", p.Provider)
		}
	}
	return errors.Join(errs...)
}

// validateMachine checks what every listed machine needs: a unique label,
// an IP, an arch sandfleet knows.
func validateMachine(mk string, m StaticMachine, labels map[string]string, bad func(key, format string, args ...any)) {
	if m.Label == "" {
		bad(mk+".label", "required")
	} else if other, dup := labels[m.Label]; dup {
		bad(mk+".label", "%q already used in %s", m.Label, other)
	} else {
		labels[m.Label] = mk
	}
	if net.ParseIP(m.IP) == nil {
		bad(mk+".ip", "%q is not an IP address", m.IP)
	}
	if m.Arch != "" && m.Arch != "x86" && m.Arch != "x64" {
		bad(mk+".arch", "%q: want x86 or x64", m.Arch)
	}
}

// validateLibvirt checks a libvirt pool: a connection URI of the qemu
// driver, domains listed as machines and, for a machine that has one, a
// result-server port no other machine has (the server's own listen port is
// no port of its own: the machine is then told apart by its address).
// A machine's snapshot is its own or the pool's; with neither, its domain's
// current snapshot.
func (c *Config) validateLibvirt(key string, p Pool, labels map[string]string, ports map[int]string, bad func(key, format string, args ...any)) {
	if u, err := url.Parse(p.URI); p.URI != "" && (err != nil || !strings.HasPrefix(u.Scheme, "qemu")) {
		bad(key+".uri", "%q: want a libvirt URI of the qemu driver (qemu:///system, qemu+ssh://host/system, …)", p.URI)
	}
	if p.Image != "" && p.Snapshot != "" && p.Image != p.Snapshot {
		bad(key+".image", "%q differs from snapshot %q: a libvirt pool names its snapshot once (snapshot)", p.Image, p.Snapshot)
	}
	if p.InitialSize != 0 || p.MaxSize != 0 {
		bad(key+".initial_size", "a libvirt pool is its machines: it has no initial_size or max_size")
	}
	if p.ResetCommand != "" {
		bad(key+".reset_command", "a libvirt pool reverts its domains to their snapshot; reset_command is static pools'")
	}
	if len(p.Machines) == 0 {
		bad(key+".machines", "a libvirt pool needs at least one machine (a domain: label is its name)")
	}
	_, rsPort, _ := net.SplitHostPort(c.ResultServer.Listen)
	for j, m := range p.Machines {
		mk := fmt.Sprintf("%s.machines[%d]", key, j)
		validateMachine(mk, m, labels, bad)
		switch port := m.ResultServerPort; {
		case port == 0:
		case port < 1 || port > 65535:
			bad(mk+".resultserver_port", "%d is not a port", port)
		case strconv.Itoa(port) == rsPort:
			// The server's own port: the machine has none of its own and
			// is told apart by its address, as with no port named.
		case ports[port] != "":
			bad(mk+".resultserver_port", "%d already used by %s", port, ports[port])
		default:
			ports[port] = mk
		}
	}
}

// validateNotLibvirt refuses libvirt's keys on other pools.
func (c *Config) validateNotLibvirt(key string, p Pool, bad func(key, format string, args ...any)) {
	if p.URI != "" {
		bad(key+".uri", "only libvirt pools have a uri")
	}
	if p.Snapshot != "" {
		bad(key+".snapshot", "only libvirt pools are reverted to a snapshot")
	}
}

// MachinePorts are the result-server ports machines have of their own, in
// configuration order.
func (c *Config) MachinePorts() []int {
	_, rsPort, _ := net.SplitHostPort(c.ResultServer.Listen)
	var out []int
	for _, p := range c.Pools {
		for _, m := range p.Machines {
			if m.ResultServerPort != 0 && strconv.Itoa(m.ResultServerPort) != rsPort {
				out = append(out, m.ResultServerPort)
			}
		}
	}
	return out
}

// validateEmulator checks the in-process emulator's settings, used or not:
// a mistake there should not wait for the day the subscription goes.
func (c *Config) validateEmulator(bad func(key, format string, args ...any)) {
	images := c.Azure.Emulator.GalleryImages
	if len(images) == 0 {
		bad("azure.emulator.gallery_images", "at least one image: a pool can only be made from an image the gallery holds")
	}
	seen := map[string]int{}
	for i, name := range images {
		key := fmt.Sprintf("azure.emulator.gallery_images[%d]", i)
		if !galleryImageRE.MatchString(name) {
			bad(key, "%q: use letters, digits, '.', '_' and '-', starting and ending with a letter or digit (at most 80)", name)
		}
		if j, dup := seen[strings.ToLower(name)]; dup {
			bad(key, "%q already listed at [%d]", name, j)
		}
		seen[strings.ToLower(name)] = i
	}
}

// validateResultServer checks where the result server listens and what
// machines are told to report to.
func (c *Config) validateResultServer(bad func(key, format string, args ...any)) {
	host, port, err := net.SplitHostPort(c.ResultServer.Listen)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
		bad("resultserver.listen", "%q is not host:port", c.ResultServer.Listen)
		return
	}
	if c.ResultServer.AdvertiseIP != "" {
		if net.ParseIP(c.ResultServer.AdvertiseIP) == nil {
			bad("resultserver.advertise_ip", "%q is not an IP address", c.ResultServer.AdvertiseIP)
		}
		return
	}
	if ip := net.ParseIP(host); host == "" || ip == nil || ip.IsUnspecified() {
		bad("resultserver.advertise_ip", "required when resultserver.listen (%s) is not one IP address", c.ResultServer.Listen)
	}
}

// ResultServerAddr is the address machines report to: advertise_ip (or the
// listen IP) and the listen port. Validate first.
func (c *Config) ResultServerAddr() (string, int) {
	host, port, _ := net.SplitHostPort(c.ResultServer.Listen)
	n, _ := strconv.Atoi(port)
	if c.ResultServer.AdvertiseIP != "" {
		host = c.ResultServer.AdvertiseIP
	}
	return host, n
}

// IsLoopback reports whether a host:port listens only on loopback.
func IsLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// DatabaseURL returns the database URL, defaulting to SQLite in the data dir.
func (c *Config) DatabaseURL() string {
	if c.Database != "" {
		return c.Database
	}
	return "sqlite://" + filepath.Join(c.DataDir, "sandfleet.db")
}

// hookField finds {name} placeholders.
var hookField = regexp.MustCompile(`\{([^{}]*)\}`)

func (c *Config) validateHooks(bad func(key, format string, args ...any)) {
	if c.Hooks.Timeout <= 0 {
		bad("hooks.timeout", "must be positive (an unbounded wait is not allowed)")
	}
	argv := c.Hooks.OnComplete
	if len(argv) > 0 && strings.TrimSpace(argv[0]) == "" {
		bad("hooks.on_complete[0]", "the program to run is empty")
	}
	for i, arg := range argv {
		for _, m := range hookField.FindAllStringSubmatch(arg, -1) {
			if !slices.Contains(HookFields, m[1]) {
				bad(fmt.Sprintf("hooks.on_complete[%d]", i), "%q: unknown placeholder {%s}; want one of {%s}",
					arg, m[1], strings.Join(HookFields, "}, {"))
			}
		}
	}
}

// ParseLevel reads a log level: debug, info, warn or error.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
}
