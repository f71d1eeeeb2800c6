package capeconf

import (
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
)

var testEnv = map[string]string{"SANDFLEET_TEST_SUBSCRIPTION": "5f0e0000-1111-2222-3333-444444444444"}

func lookupTestEnv(k string) (string, bool) { v, ok := testEnv[k]; return v, ok }

func importDir(t *testing.T, dir string, machinery ...string) (*Result, string) {
	t.Helper()
	r, err := Import(dir, Options{Machinery: machinery, SecretsDir: "/etc/sandfleet", Env: lookupTestEnv})
	if err != nil {
		t.Fatalf("Import(%s, %v): %v", dir, machinery, err)
	}
	out, err := r.YAML()
	if err != nil {
		t.Fatalf("YAML: %v", err)
	}
	return r, string(out)
}

// loadYAML loads the YAML as sandfleet does (a file, over the defaults, pool
// defaults filled) and validates it.
func loadYAML(t *testing.T, yml string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sandfleet.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("config.Load: %v\n%s", err, yml)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v\n%s", err, yml)
	}
	return cfg
}

// checkRoundTrip: the YAML holds exactly what the mapping decided — no key
// lost or added in rendering.
func checkRoundTrip(t *testing.T, r *Result, loaded *config.Config) {
	t.Helper()
	got := *loaded
	got.Pools = slices.Clone(loaded.Pools)
	for i := range got.Pools {
		if i < len(r.Config.Pools) && r.Config.Pools[i].MaxSize == 0 {
			got.Pools[i].MaxSize = 0 // config.Load fills it in
		}
	}
	if !reflect.DeepEqual(&got, r.Config) {
		t.Errorf("the YAML does not load back to the mapped configuration:\nloaded %+v\nmapped %+v", got, *r.Config)
	}
}

// option is one CAPE option, read from the input independently of the
// mapping.
type option struct{ file, section, key, raw, name string }

// inputOptions lists every option of the CAPE files in dir, named as the
// YAML must name them: section.key, or file:section.key when two files have
// a section of that name.
func inputOptions(t *testing.T, dir string) []option {
	t.Helper()
	var files []*File
	for _, stem := range []string{"cuckoo", "az", "kvm", "physical"} {
		f, ok, err := ReadLayers(dir, stem)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			files = append(files, f)
		}
	}
	owner := map[string]map[string]bool{}
	for _, f := range files {
		for _, s := range append(slices.Clone(f.Sections), f.Defaults) {
			if s == nil {
				continue
			}
			if owner[s.Name] == nil {
				owner[s.Name] = map[string]bool{}
			}
			owner[s.Name][f.Name] = true
		}
	}
	var out []option
	for _, f := range files {
		for _, s := range append(slices.Clone(f.Sections), f.Defaults) {
			if s == nil {
				continue
			}
			for _, o := range s.Options {
				name := s.Name + "." + o.Key
				if len(owner[s.Name]) > 1 {
					name = f.Name + ":" + name
				}
				out = append(out, option{f.Name, s.Name, o.Key, o.Raw, name})
			}
		}
	}
	return out
}

// comments returns the comment text of a YAML document, line by line.
func comments(yml string) []string {
	var out []string
	for _, line := range strings.Split(yml, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "#"):
			out = append(out, trimmed)
		case strings.Contains(line, " # "):
			out = append(out, line[strings.Index(line, " # "):])
		}
	}
	return out
}

func named(comments []string, name string) bool {
	re := regexp.MustCompile(`(^|[\s,(])` + regexp.QuoteMeta(name) + `($|[\s,:;)])`)
	for _, c := range comments {
		if re.MatchString(c) {
			return true
		}
	}
	return false
}

// checkEveryOption: every option of the input is carried over or named in
// a comment, and none of them is left to the catch-all but those the test
// knows CAPE does not have. An option a mapping forgets falls to the
// catch-all and turns this red.
func checkEveryOption(t *testing.T, dir string, r *Result, yml string, unknown []string) {
	t.Helper()
	cs := comments(yml)
	disposed := map[string]bool{}
	for o, keys := range r.Mapped {
		if len(keys) > 0 {
			disposed[o.Section+"\x00"+o.Key+"\x00"+o.Source] = true
		}
	}
	var gotUnknown []string
	for _, n := range r.Notes {
		disposed[n.Option.Section+"\x00"+n.Option.Key+"\x00"+n.Option.Source] = true
		if n.Unknown {
			gotUnknown = append(gotUnknown, n.Name)
		}
	}
	for _, o := range inputOptions(t, dir) {
		if !named(cs, o.name) {
			t.Errorf("%s (%s) is named in no comment of the YAML", o.name, o.file)
		}
	}
	for _, f := range r.Files {
		for _, s := range append(slices.Clone(f.Sections), f.Defaults) {
			if s == nil {
				continue
			}
			for _, o := range s.Options {
				if !disposed[o.Section+"\x00"+o.Key+"\x00"+o.Source] {
					t.Errorf("%s.%s (%s) neither mapped nor noted", o.Section, o.Key, f.Name)
				}
			}
		}
	}
	slices.Sort(gotUnknown)
	unknown = slices.Clone(unknown)
	slices.Sort(unknown)
	if !slices.Equal(gotUnknown, unknown) {
		t.Errorf("options left to the unknown catch-all: %v, want %v", gotUnknown, unknown)
	}
}

var secretKey = regexp.MustCompile(`secret|password|apikey|token|connection`)

// checkNoSecret: no value of a secret-looking option of the input, nor the
// password of a database URL, appears anywhere in the YAML.
func checkNoSecret(t *testing.T, dir, yml string, extra ...string) {
	t.Helper()
	values := slices.Clone(extra)
	for _, o := range inputOptions(t, dir) {
		if !secretKey.MatchString(o.key) || strings.TrimSpace(o.raw) == "" || placeholder(o.raw) {
			continue
		}
		values = append(values, o.raw)
		if u, err := url.Parse(o.raw); err == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok {
				values = append(values, pw)
			}
		}
	}
	for _, v := range values {
		if strings.Contains(yml, v) {
			t.Errorf("the YAML holds the secret %q", v)
		}
	}
}

// TestCAPEDefaults imports fixtures modelled on CAPE's default files, as
// cuckoo.conf says (kvm) and for each machinery.
func TestCAPEDefaults(t *testing.T) {
	dir := filepath.Join("testdata", "cape-default")
	for _, machinery := range [][]string{nil, {"az"}, {"kvm"}, {"physical"}, {"az", "kvm", "physical"}} {
		t.Run(strings.Join(append([]string{"machinery"}, machinery...), "-"), func(t *testing.T) {
			r, yml := importDir(t, dir, machinery...)
			cfg := loadYAML(t, yml)
			checkRoundTrip(t, r, cfg)
			checkEveryOption(t, dir, r, yml, nil)
			checkNoSecret(t, dir, yml)
			if err := r.Validate(); err != nil {
				t.Errorf("Result.Validate: %v", err)
			}
			// CAPE binds 192.168.1.1 and tells the machines so (physical.conf's
			// machine is told 192.168.117.136); sandfleet binds every address
			// and tells them the same.
			told := "192.168.1.1"
			if slices.Equal(machinery, []string{"physical"}) {
				told = "192.168.117.136"
			}
			if rs := cfg.ResultServer; rs.Listen != "0.0.0.0:2042" || rs.AdvertiseIP != told {
				t.Errorf("resultserver = %+v", rs)
			}
			if cfg.Timeouts.Default != 200*time.Second || cfg.Timeouts.Critical != 60*time.Second || cfg.Timeouts.VMState != 300*time.Second {
				t.Errorf("timeouts = %+v", cfg.Timeouts)
			}
			if cfg.Scheduler.MaxMachines != 10 || cfg.Scheduler.RescheduleRunningOnRestart || !cfg.Scheduler.FailUnserviceable || cfg.Scheduler.PendingTimeout != 0 {
				t.Errorf("scheduler = %+v", cfg.Scheduler)
			}
		})
	}
}

// TestCAPEDefaultAzure: CAPE's default az.conf has placeholders where an
// installation fills things in; they are carried over flagged, never
// silently replaced by sandfleet's defaults, and no credential is invented.
func TestCAPEDefaultAzure(t *testing.T) {
	r, yml := importDir(t, filepath.Join("testdata", "cape-default"), "az")
	cfg := loadYAML(t, yml)
	a := cfg.Azure
	if a.SubscriptionID != "<subscription_id>" || a.Region != "<region_name>" || a.Credential != "default" || a.ClientSecretFile != "" {
		t.Errorf("azure = %+v", a)
	}
	if a.ScaleSetLimit != 20 || a.TotalMachinesLimit != 50 || a.ReimageBatchWindow != 4*time.Second || a.MonitorInterval != 300*time.Second ||
		!a.WaitForAgentBeforeReady || a.MultipleDeployments || a.Spot || a.QuotaName != "MyQuota" || a.QuotaMachineExclusion != 5 ||
		a.EphemeralOSDiskPlacement != "CacheDisk" {
		t.Errorf("azure = %+v", a)
	}
	want := []config.Pool{{Name: "cuckoo1", Provider: "azure", Platform: "windows", Arch: "x64", Tags: []string{"<tag>"},
		Image: "<gallery_image_name>", InitialSize: 1, MaxSize: 20}}
	if !reflect.DeepEqual(cfg.Pools, want) {
		t.Errorf("pools = %+v, want %+v", cfg.Pools, want)
	}
	for _, s := range []string{
		"region: <region_name> # az.region_name: still CAPE's placeholder: fill it in",
		"az.interface: not used: sandfleet does not capture traffic",
		"WARNING: 13 keys still hold CAPE's <placeholders>",
	} {
		if !strings.Contains(yml, s) {
			t.Errorf("the YAML lacks %q", s)
		}
	}
	if len(r.Machinery) != 1 || r.Machinery[0] != "az" {
		t.Errorf("machinery = %v", r.Machinery)
	}
}

// TestCAPEDefaultKVM: kvm.conf's machine becomes a libvirt pool on CAPE's
// dsn; naming no snapshot, it is reverted to its domain's current one.
func TestCAPEDefaultKVM(t *testing.T) {
	r, yml := importDir(t, filepath.Join("testdata", "cape-default"))
	cfg := loadYAML(t, yml)
	want := []config.Pool{{Name: "kvm", Provider: "libvirt", Platform: "windows", URI: "qemu:///system",
		Machines: []config.StaticMachine{{Label: "cuckoo1", IP: "192.168.122.105", Arch: "x86", Platform: "windows"}}}}
	if !reflect.DeepEqual(cfg.Pools, want) {
		t.Errorf("pools = %+v, want %+v", cfg.Pools, want)
	}
	for _, s := range []string{"uri: qemu:///system # kvm.dsn", "reverted to its domain's current one", "sandfleet libvirt", "cape1.label, cape1.platform"} {
		if !strings.Contains(yml, s) {
			t.Errorf("the YAML lacks %q:\n%s", s, yml)
		}
	}
	if len(r.Machinery) != 1 || r.Machinery[0] != "kvm" {
		t.Errorf("machinery = %v (cuckoo.machinery is kvm)", r.Machinery)
	}
}

// TestEditedInstallation: an installation's files — two scale sets, a
// reserved machine, tags, a result server on every address with machines
// told another, secrets, interpolation, options CAPE does not have.
func TestEditedInstallation(t *testing.T) {
	dir := filepath.Join("testdata", "cape-edited")
	r, yml := importDir(t, dir)
	cfg := loadYAML(t, yml)
	checkRoundTrip(t, r, cfg)
	checkEveryOption(t, dir, r, yml, []string{"cuckoo.frobnicate", "mystery.answer", "az.foo", "win10x64.unknown_opt"})
	checkNoSecret(t, dir, yml, "Az-S3cret-Value-1", "Cert-Passw0rd-6", "Sniff-S3cret-2", "ConnStr-S3cret-3",
		"DbPassw0rd-9", "Fog-Api-S3cret-4", "Fog-User-S3cret-5")

	if got := strings.Join(r.Machinery, ","); got != "az,kvm,physical" {
		t.Errorf("machinery = %s, want all three (cuckoo.machinery = multi)", got)
	}
	if rs := cfg.ResultServer; rs.Listen != "0.0.0.0:2043" || rs.AdvertiseIP != "10.1.0.4" {
		t.Errorf("resultserver = %+v", rs)
	}
	s := cfg.Scheduler
	if s.MaxMachines != 0 || s.FailUnserviceable || !s.RescheduleRunningOnRestart || s.PendingTimeout != time.Hour {
		t.Errorf("scheduler = %+v", s)
	}
	if tm := cfg.Timeouts; tm.Default != 120*time.Second || tm.Critical != 30*time.Second || tm.VMState != 600*time.Second {
		t.Errorf("timeouts = %+v", tm)
	}
	if cfg.Guest.UploadMaxSize != 50<<20 {
		t.Errorf("guest.upload_max_size = %d", cfg.Guest.UploadMaxSize)
	}
	a := cfg.Azure
	wantAz := config.Default().Azure
	wantAz.SubscriptionID = testEnv["SANDFLEET_TEST_SUBSCRIPTION"]
	wantAz.Credential = "secret"
	wantAz.TenantID = "33333333-dddd-eeee-ffff-444444444444"
	wantAz.ClientID = "11111111-aaaa-bbbb-cccc-222222222222"
	wantAz.ClientSecretFile = "/etc/sandfleet/azure-client-secret"
	wantAz.Region, wantAz.SandboxResourceGroup, wantAz.VNetResourceGroup = "eastus", "cape-sandbox", "cape-network"
	wantAz.VNet, wantAz.Subnet, wantAz.Gallery = "cape-sandbox-vnet", "sandbox", "capegallery"
	wantAz.InstanceType, wantAz.Spot, wantAz.EphemeralOSDiskPlacement = "Standard_D4s_v5", true, "ResourceDisk"
	wantAz.TotalMachinesLimit, wantAz.ScaleSetLimit, wantAz.Overprovision = 12, 10, 20
	wantAz.ReimageBatchWindow, wantAz.MonitorInterval = 8*time.Second, 120*time.Second
	wantAz.QuotaName, wantAz.QuotaMachineExclusion = "MyQuota", 3
	wantAz.DNSServers = []string{"1.1.1.1", "8.8.8.8"}
	wantAz.WaitForAgentBeforeReady, wantAz.MultipleDeployments = false, true
	if !reflect.DeepEqual(a, wantAz) {
		t.Errorf("azure =\n%+v\nwant\n%+v", a, wantAz)
	}
	const kvmhost = "qemu+ssh://root@kvmhost/system"
	want := []config.Pool{
		{Name: "win10x64", Provider: "azure", Platform: "windows", Arch: "x64", Tags: []string{"win10"}, Image: "win10-22h2", InitialSize: 2, MaxSize: 10},
		{Name: "ubuntu22", Provider: "azure", Platform: "linux", Arch: "x64", Tags: []string{"ubuntu22", "linux"}, Image: "ubuntu-22.04", MaxSize: 10, Reserved: true},
		{Name: "kvm", Provider: "libvirt", Platform: "windows", URI: kvmhost,
			Machines: []config.StaticMachine{
				{Label: "win10-1", IP: "192.168.122.101", Arch: "x64", Platform: "windows", Tags: []string{"win10", "office2016"}, Snapshot: "clean"},
				{Label: "ubuntu-1", IP: "192.168.122.103", Arch: "x64", Platform: "linux"}}},
		{Name: "kvm-reserved", Provider: "libvirt", Platform: "windows", Reserved: true, URI: kvmhost, Snapshot: "clean", Image: "clean",
			Machines: []config.StaticMachine{{Label: "win10-2", IP: "192.168.122.102", Arch: "x64", Platform: "windows", Tags: []string{"win10"}}}},
		{Name: "physical", Provider: "static", Platform: "windows",
			Machines: []config.StaticMachine{{Label: "physical01", IP: "192.168.117.164", Arch: "x64", Platform: "windows", Tags: []string{"bare-metal"}}}},
	}
	if !reflect.DeepEqual(cfg.Pools, want) {
		t.Errorf("pools =\n%+v\nwant\n%+v", cfg.Pools, want)
	}
	for _, s := range []string{
		"client_secret_file: /etc/sandfleet/azure-client-secret az.secret: put the client secret (az.secret) in this file",
		"physical01.resultserver_ip: not carried over: sandfleet tells every machine one result-server address",
		"physical01.resultserver_port: not carried over",
		"database: postgres://cape@db.internal:5432/sandfleet?sslmode=require (the password is not copied",
		"az.certificate_path, az.certificate_password: not used: az.secret is filled in",
	} {
		if !strings.Contains(flatten(yml), s) {
			t.Errorf("the YAML lacks %q", s)
		}
	}
}

// TestCertificateCredential: without a client secret CAPE signs in with its
// certificate; the password is not copied, even when it comes from the
// environment, and the YAML says which variable CAPE read it from.
func TestCertificateCredential(t *testing.T) {
	dir := t.TempDir()
	writeConf(t, dir, "az.conf", "[az]\nsubscription_id = sub\nsecret = <secret>\ncertificate_path = /etc/cape/az.pem\n"+
		"certificate_password = %(ENV:CAPE_CERT_PASSWORD)s\nscale_sets = win10\n"+
		"[win10]\ngallery_image_name = win10\nplatform = windows\narch = x64\npool_tag = win10\ninitial_pool_size = 1\n")
	testEnv["CAPE_CERT_PASSWORD"] = "Env-Cert-S3cret-7"
	t.Cleanup(func() { delete(testEnv, "CAPE_CERT_PASSWORD") })
	r, yml := importDir(t, dir)
	cfg := loadYAML(t, yml)
	checkRoundTrip(t, r, cfg)
	checkEveryOption(t, dir, r, yml, nil)
	checkNoSecret(t, dir, yml, "Env-Cert-S3cret-7")
	a := cfg.Azure
	if a.Credential != "certificate" || a.CertificateFile != "/etc/cape/az.pem" ||
		a.CertificatePasswordFile != "/etc/sandfleet/azure-certificate-password" || a.ClientSecretFile != "" {
		t.Errorf("azure = %+v", a)
	}
	if !strings.Contains(yml, "CAPE reads it from the environment variable CAPE_CERT_PASSWORD") {
		t.Errorf("the YAML does not say where CAPE read the password from:\n%s", yml)
	}
	// No cuckoo.conf: the result server's address is unknown, and the
	// YAML says so.
	if !strings.Contains(yml, "WARNING: the CAPE configuration names no result-server address") {
		t.Errorf("no warning about the result server:\n%s", yml)
	}
}

// TestUnsupportedMachinery: a machinery sandfleet has no provider for
// imports no machines, says so, and sandfleet would not accept the result.
func TestUnsupportedMachinery(t *testing.T) {
	dir := t.TempDir()
	writeConf(t, dir, "cuckoo.conf", "[cuckoo]\nmachinery = vmware\n[resultserver]\nip = 10.0.0.1\nport = 2042\n")
	writeConf(t, dir, "kvm.conf", "[kvm]\nmachines = a\ndsn = qemu:///system\n[a]\nlabel = a\nplatform = windows\nip = 10.0.0.2\narch = x64\n")
	r, yml := importDir(t, dir)
	if len(r.Config.Pools) != 0 || !strings.Contains(yml, "cuckoo.machinery: not carried over: sandfleet has no vmware provider") {
		t.Errorf("pools %v\n%s", r.Config.Pools, yml)
	}
	checkEveryOption(t, dir, r, yml, nil)
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "no machines imported") {
		t.Errorf("Validate = %v, want the missing pools", err)
	}
	if _, err := Import(dir, Options{Machinery: []string{"az"}}); err == nil {
		t.Error("--machinery az without an az.conf: no error")
	}
	if _, err := Import(t.TempDir(), Options{}); err == nil {
		t.Error("an empty directory: no error")
	}
}

// flatten joins the YAML's words, comment markers left out, so that a
// sentence wrapped over comment lines reads as one.
func flatten(yml string) string {
	var words []string
	for _, w := range strings.Fields(yml) {
		if w != "#" {
			words = append(words, w)
		}
	}
	return strings.Join(words, " ")
}

func writeConf(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRealCAPEConfiguration runs on CAPE's own files when
// SANDFLEET_CAPE_CONF names a directory holding them (cuckoo.conf, az.conf,
// kvm.conf, physical.conf — e.g. CAPE's conf/default/*.conf.default renamed,
// or an installation's conf directory).
func TestRealCAPEConfiguration(t *testing.T) {
	dir := os.Getenv("SANDFLEET_CAPE_CONF")
	if dir == "" {
		t.Skip("SANDFLEET_CAPE_CONF is not set: no CAPE configuration to import")
	}
	runs := [][]string{nil}
	for _, m := range Machineries {
		if _, ok, _ := ReadLayers(dir, m); ok {
			runs = append(runs, []string{m})
		}
	}
	for _, machinery := range runs {
		t.Run(strings.Join(append([]string{"machinery"}, machinery...), "-"), func(t *testing.T) {
			r, yml := importDir(t, dir, machinery...)
			t.Logf("import-cape --conf %s --machinery %s:\n%s", dir, strings.Join(r.Machinery, ","), yml)
			checkEveryOption(t, dir, r, yml, nil)
			checkNoSecret(t, dir, yml)
			// What the installation runs must be accepted; another
			// machinery forced on it may lack what only its own needs
			// (say, a result-server address for its machines).
			if machinery != nil {
				if err := r.Validate(); err != nil {
					t.Logf("not accepted as it is: %v", err)
					return
				}
			}
			checkRoundTrip(t, r, loadYAML(t, yml))
		})
	}
}

// TestREADMEAzTable keeps the README's az.conf table and the mapping in
// step: every [az] and scale-set option of CAPE's default az.conf has a row;
// an option carried over names its sandfleet key there, and one never
// carried over has none ("—").
func TestREADMEAzTable(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(readme), "| CAPE `[az]` option |")
	if !ok {
		t.Fatal("README: no az.conf table")
	}
	table, _, _ = strings.Cut(table, "\n\n")
	var rows [][]string
	for _, line := range strings.Split(table, "\n")[2:] {
		rows = append(rows, strings.Split(line, "|"))
	}
	// Where each option went, over imports that between them fill in
	// every credential path.
	keys := map[string][]string{}
	for _, dir := range []string{filepath.Join("testdata", "cape-default"), filepath.Join("testdata", "cape-edited")} {
		r, _ := importDir(t, dir, "az")
		for o, ks := range r.Mapped {
			keys[o.Key] = append(keys[o.Key], ks...)
		}
	}
	certDir := t.TempDir()
	writeConf(t, certDir, "az.conf", "[az]\ncertificate_path = /x.pem\ncertificate_password = pw\nscale_sets =\n")
	r, _ := importDir(t, certDir)
	for o, ks := range r.Mapped {
		keys[o.Key] = append(keys[o.Key], ks...)
	}

	f, _, err := ReadLayers(filepath.Join("testdata", "cape-default"), "az")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range f.Sections {
		for _, o := range s.Options {
			word := regexp.MustCompile(`(^|[^a-z_])` + o.Key + `($|[^a-z_])`)
			var row []string
			for _, r := range rows {
				if len(r) > 2 && word.MatchString(r[1]) {
					row = r
				}
			}
			if row == nil {
				t.Errorf("README's az.conf table has no row for %s", o.Key)
				continue
			}
			cell := strings.TrimSpace(row[2])
			if len(keys[o.Key]) == 0 {
				if cell != "—" {
					t.Errorf("README maps %s to %s, but import-cape never carries it over", o.Key, cell)
				}
				continue
			}
			found := false
			for _, k := range keys[o.Key] {
				last := k[strings.LastIndexAny(k, ".")+1:]
				found = found || strings.Contains(cell, "`"+k+"`") || strings.Contains(cell, "`."+last+"`") ||
					strings.HasPrefix(k, "pools") && strings.Contains(cell, "`pools")
			}
			if !found {
				t.Errorf("README maps %s to %s; import-cape to %v", o.Key, cell, keys[o.Key])
			}
		}
	}
}

// TestKVMMachinePorts: a kvm.conf machine told a result-server port of its
// own keeps it in its libvirt pool (sandfleet listens on it); two told the
// same one cannot both have it, and the second is named.
func TestKVMMachinePorts(t *testing.T) {
	dir := t.TempDir()
	writeConf(t, dir, "cuckoo.conf", "[cuckoo]\nmachinery = kvm\n[resultserver]\nip = 10.0.0.1\nport = 2042\n")
	writeConf(t, dir, "kvm.conf", "[kvm]\nmachines = a, b, c\ndsn = qemu:///system\n"+
		"[a]\nlabel = a\nplatform = linux\nip = 10.0.0.2\narch = x64\nsnapshot = s1\nresultserver_port = 2100\n"+
		"[b]\nlabel = b\nplatform = linux\nip = 10.0.0.3\narch = x64\nsnapshot = s2\nresultserver_port = 2100\n"+
		"[c]\nlabel = c\nplatform = linux\nip = 10.0.0.4\narch = x64\nresultserver_port = 2042\n")
	r, yml := importDir(t, dir)
	cfg := loadYAML(t, yml)
	checkRoundTrip(t, r, cfg)
	checkEveryOption(t, dir, r, yml, nil)
	want := []config.Pool{{Name: "kvm", Provider: "libvirt", Platform: "linux", URI: "qemu:///system", Machines: []config.StaticMachine{
		{Label: "a", IP: "10.0.0.2", Arch: "x64", Platform: "linux", Snapshot: "s1", ResultServerPort: 2100},
		{Label: "b", IP: "10.0.0.3", Arch: "x64", Platform: "linux", Snapshot: "s2"},
		{Label: "c", IP: "10.0.0.4", Arch: "x64", Platform: "linux"},
	}}}
	if !reflect.DeepEqual(cfg.Pools, want) {
		t.Errorf("pools =\n%+v\nwant\n%+v", cfg.Pools, want)
	}
	for _, s := range []string{"resultserver_port: 2100 # a.resultserver_port", "b.resultserver_port: not carried over: port 2100 is already a's own",
		"reverted to its domain's current one"} {
		if !strings.Contains(yml, s) && !strings.Contains(flatten(yml), s) {
			t.Errorf("the YAML lacks %q:\n%s", s, yml)
		}
	}
}
