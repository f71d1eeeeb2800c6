package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestUnknownKeyNamesItsLine(t *testing.T) {
	_, err := load(t, "listen: 127.0.0.1:8090\nfleet:\n  reconcile_intervall: 5s\n")
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "reconcile_intervall") {
		t.Fatalf("err = %v, want it to name line 3 and the key", err)
	}
	if !strings.Contains(err.Error(), "line 3: fleet.reconcile_intervall: unknown key") || goWords.MatchString(err.Error()) {
		t.Fatalf("err = %v, want the key path and no Go type", err)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if cfg.Listen != "127.0.0.1:8090" || cfg.Fleet.ReconcileInterval != 30*time.Second ||
		cfg.Fleet.HealthInterval != 30*time.Second || cfg.Timeouts.CloudOperation != 300*time.Second || !cfg.Azure.Emulated() || len(cfg.Pools) != 1 {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
	if got := cfg.DatabaseURL(); got != "sqlite://sandfleet-data/sandfleet.db" {
		t.Fatalf("DatabaseURL = %q", got)
	}
	// The in-process emulator's gallery holds the image the default pool needs.
	if g := cfg.Azure.Emulator.GalleryImages; len(g) != 1 || g[0] != cfg.Pools[0].Image {
		t.Fatalf("azure.emulator.gallery_images = %v, want [%s]", g, cfg.Pools[0].Image)
	}
}

// A gallery in the file replaces the default one; it does not add to it.
func TestEmulatorGallery(t *testing.T) {
	cfg, err := load(t, "azure: {emulator: {gallery_images: [win11, ubuntu-22.04]}}\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if g := cfg.Azure.Emulator.GalleryImages; len(g) != 2 || g[0] != "win11" || g[1] != "ubuntu-22.04" {
		t.Fatalf("azure.emulator.gallery_images = %v", g)
	}
}

func TestFileOverridesDefaults(t *testing.T) {
	cfg, err := load(t, `
database: postgres://root@127.0.0.1:5432/x
fleet: { reconcile_interval: 5s, health_interval: 10s }
guest: { upload_max_size: 2MiB }
azure: { subscription_id: abc, credential: managed-identity, spot: true }
pools:
  - { name: lab, provider: static, platform: linux, machines: [ { label: l1, ip: 127.0.0.5 } ] }
`)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Fleet.ReconcileInterval != 5*time.Second || cfg.Fleet.HealthInterval != 10*time.Second ||
		cfg.Guest.UploadMaxSize != 2<<20 || cfg.Azure.Emulated() || !cfg.Azure.Spot || cfg.Azure.ReimageBatchWindow != 4*time.Second || cfg.Pools[0].Machines[0].IP != "127.0.0.5" {
		t.Fatalf("got %+v", cfg)
	}
}

func TestValidationNamesTheKey(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"pools:\n  - {name: ok, provider: azure, platform: windows, image: i, max_size: 2}\n  - {name: win_10, provider: azure, platform: windows, image: i}\n",
			`pools[1].name: "win_10" contains "_"`},
		{"pools:\n  - {name: a, provider: azure, platform: windows, image: i, initial_size: 5, max_size: 2}\n", "pools[0].max_size: 2 is below initial_size 5"},
		{"pools:\n  - {name: a, provider: azure, platform: windows, image: i, initial_size: 30}\n", "pools[0].initial_size: 30 exceeds azure.scale_set_limit 20"},
		{"pools:\n  - {name: a, provider: azure, platform: windows, image: i, max_size: 25}\n", "pools[0].max_size: 25 exceeds azure.scale_set_limit 20"},
		{"pools:\n  - {name: a, provider: cloud, platform: windows}\n", `pools[0].provider: "cloud"`},
		{"pools:\n  - {name: a, provider: static, platform: windows, machines: [{label: x, ip: nope}]}\n", `pools[0].machines[0].ip: "nope" is not an IP address`},
		{"pools:\n  - {name: a, provider: static, platform: beos, machines: [{label: x, ip: 127.0.0.1}]}\n", `pools[0].platform: "beos"`},
		{"pools:\n  - {name: a, provider: azure, platform: windows, image: i, max_size: 2}\n  - {name: a, provider: azure, platform: windows, image: i, max_size: 2}\n", `pools[1].name: "a" already used by pools[0]`},
		{"azure: {total_machines_limit: 5}\npools:\n  - {name: a, provider: azure, platform: windows, image: i, initial_size: 3}\n  - {name: b, provider: azure, platform: windows, image: i, initial_size: 3}\n",
			"azure.total_machines_limit: 5 is below the sum of the Azure pools' initial_size (6)"},
		{"listen: 0.0.0.0:8090\n", "auth.tokens_file: required when listen (0.0.0.0:8090) is not a loopback address: anyone who reaches the port could submit samples"},
		{"listen: :8090\n", "auth.tokens_file: required when listen (:8090) is not a loopback address"},
		{"database: mysql://x\n", `database: scheme "mysql" is not supported: want sqlite:///path or postgres://`},
		{"timeouts: {cloud_operation: 0s}\n", "timeouts.cloud_operation: must be positive"},
		{"azure: {credential: secret}\n", "azure.client_secret_file: required"},
		{"azure: {credential: magic}\n", `azure.credential: "magic"`},
		{"fleet: {lease_ttl: 1ns}\n", "fleet.lease_ttl: 1ns: must be at least 1s"},
		{"fleet: {health_interval: 0s}\n", "fleet.health_interval: must be positive (an unbounded wait is not allowed)"},
		{"fleet: {health_interval: -5s}\n", "fleet.health_interval: must be positive"},
		{"azure: {scale_set_limit: -1}\n", "azure.scale_set_limit: must be >= 0"},
		{"resultserver: {listen: nonsense}\n", `resultserver.listen: "nonsense" is not host:port`},
		{"resultserver: {listen: 0.0.0.0:2042}\n", "resultserver.advertise_ip: required when resultserver.listen (0.0.0.0:2042)"},
		{"resultserver: {listen: 127.0.0.1:99999}\n", "resultserver.listen"},
		{"resultserver: {listen: 0.0.0.0:2042, advertise_ip: ten}\n", `resultserver.advertise_ip: "ten" is not an IP address`},
		{"azure: {subscription_id: abc}\n", "pools: at least one pool is required"},
		{"hooks: {on_complete: [python3, process.py, -r, '{task}']}\n",
			`hooks.on_complete[3]: "{task}": unknown placeholder {task}; want one of {task_id}, {analysis_dir}, {status}`},
		{"hooks: {on_complete: ['', x]}\n", "hooks.on_complete[0]: the program to run is empty"},
		{"hooks: {on_complete: [true], timeout: 0s}\n", "hooks.timeout: must be positive"},
		{"log: {format: xml}\n", `log.format: "xml": want text or json`},
		{"log: {level: loud}\n", `log.level: "loud": want debug, info, warn or error`},
		{"azure: {emulator: {gallery_images: []}}\n", "azure.emulator.gallery_images: at least one image"},
		{"azure: {emulator: {gallery_images: [win10, 'win 10']}}\n", `azure.emulator.gallery_images[1]: "win 10": use letters, digits`},
		{"azure: {emulator: {gallery_images: [win10, -win10]}}\n", `azure.emulator.gallery_images[1]: "-win10"`},
		{"azure: {emulator: {gallery_images: [win10, WIN10]}}\n", `azure.emulator.gallery_images[1]: "WIN10" already listed at [0]`},
		{"pools:\n  - {name: k, provider: libvirt, platform: linux, snapshot: s}\n", "pools[0].machines: a libvirt pool needs at least one machine"},
		{"pools:\n  - {name: k, provider: libvirt, platform: linux, uri: 'vbox:///session', snapshot: s, machines: [{label: d1, ip: 127.0.0.2}]}\n",
			`pools[0].uri: "vbox:///session": want a libvirt URI of the qemu driver`},
		{"pools:\n  - {name: k, provider: libvirt, platform: linux, snapshot: s, initial_size: 2, machines: [{label: d1, ip: 127.0.0.2}]}\n",
			"pools[0].initial_size: a libvirt pool is its machines"},
		{"pools:\n  - {name: k, provider: libvirt, platform: linux, snapshot: s, image: t, machines: [{label: d1, ip: 127.0.0.2}]}\n",
			`pools[0].image: "t" differs from snapshot "s"`},
		{"pools:\n  - {name: k, provider: libvirt, platform: linux, snapshot: s, machines: [{label: d1, ip: 127.0.0.2, resultserver_port: 2100}, {label: d2, ip: 127.0.0.3, resultserver_port: 2100}]}\n",
			"pools[0].machines[1].resultserver_port: 2100 already used by pools[0].machines[0]"},
		{"pools:\n  - {name: k, provider: libvirt, platform: linux, snapshot: s, machines: [{label: d1, ip: 127.0.0.2, resultserver_port: 70000}]}\n",
			"pools[0].machines[0].resultserver_port: 70000 is not a port"},
		{"pools:\n  - {name: k, provider: libvirt, platform: linux, snapshot: s, machines: [{label: d1, ip: 127.0.0.2}]}\n  - {name: l, provider: static, platform: linux, machines: [{label: d1, ip: 127.0.0.3, snapshot: x}]}\n",
			`pools[1].machines[0].label: "d1" already used in pools[0].machines[0]`},
		{"pools:\n  - {name: l, provider: static, platform: linux, machines: [{label: d1, ip: 127.0.0.3, snapshot: x}]}\n",
			"pools[0].machines[0].snapshot: only libvirt machines are reverted to a snapshot"},
		{"pools:\n  - {name: a, provider: azure, platform: windows, image: i, snapshot: s}\n", "pools[0].snapshot: only libvirt pools"},
	}
	for _, tt := range tests {
		cfg, err := load(t, tt.yaml)
		if err != nil {
			t.Fatalf("%q: decode: %v", tt.yaml, err)
		}
		err = cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: Validate() = %v, want it to contain %q", tt.yaml, err, tt.want)
		}
	}
}

// A database URL that Validate refuses is not shown: it may hold a password.
func TestValidationHidesTheDatabasePassword(t *testing.T) {
	for _, db := range []string{
		"mysql://root:hunter2@db/x",
		"root:hunter2@db://x",
		"host=db user=root password=hunter2",
		"postgress://root:hunter2@db/x",
	} {
		cfg, err := load(t, fmt.Sprintf("database: %q\n", db))
		if err != nil {
			t.Fatal(err)
		}
		err = cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), "database: ") {
			t.Errorf("database %s: Validate() = %v, want an error naming database", db, err)
		} else if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("database %s: Validate() shows the password: %v", db, err)
		}
	}
}

func TestResultServerAddr(t *testing.T) {
	cfg, err := load(t, "resultserver: {listen: 0.0.0.0:2043, advertise_ip: 10.0.0.4}\n")
	if err != nil || cfg.Validate() != nil {
		t.Fatal(err, cfg.Validate())
	}
	if host, port := cfg.ResultServerAddr(); host != "10.0.0.4" || port != 2043 {
		t.Fatalf("ResultServerAddr = %s, %d", host, port)
	}
}

func TestMaxSizeDefaultsToTheLimit(t *testing.T) {
	cfg, err := load(t, "azure: {scale_set_limit: 12}\npools:\n  - {name: a, provider: azure, platform: windows, image: i, initial_size: 10}\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Pools[0].MaxSize != 12 {
		t.Fatalf("max_size = %d, want azure.scale_set_limit 12", cfg.Pools[0].MaxSize)
	}
}

func TestLibvirtPool(t *testing.T) {
	cfg, err := load(t, `pools:
  - name: kvm
    provider: libvirt
    platform: windows
    snapshot: clean
    machines:
      - { label: cuckoo1, ip: 127.0.0.2, arch: x64, tags: [win10], resultserver_port: 2101 }
      - { label: cuckoo2, ip: 127.0.0.3, arch: x86, snapshot: other, resultserver_port: 2102 }
      - { label: cuckoo3, ip: 127.0.0.4, arch: x64, resultserver_port: 2042 }
`)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools[0]
	if p.URI != DefaultLibvirtURI || p.Image != "clean" {
		t.Errorf("uri %q, image %q; want the default %s and the snapshot as image", p.URI, p.Image, DefaultLibvirtURI)
	}
	if p.SnapshotOf(p.Machines[0]) != "clean" || p.SnapshotOf(p.Machines[1]) != "other" {
		t.Errorf("snapshots %q, %q; want the pool's, then the machine's own", p.SnapshotOf(p.Machines[0]), p.SnapshotOf(p.Machines[1]))
	}
	if got := cfg.MachinePorts(); len(got) != 2 || got[0] != 2101 || got[1] != 2102 {
		t.Errorf("MachinePorts = %v, want [2101 2102]: 2042, the server's own port as in SPEC's example, is no port of cuckoo3's own", got)
	}
	// SPEC's image names a libvirt pool's snapshot too.
	cfg, err = load(t, "pools:\n  - {name: k, provider: libvirt, platform: linux, image: clean, machines: [{label: d1, ip: 127.0.0.2}]}\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil || cfg.Pools[0].Snapshot != "clean" {
		t.Errorf("image as snapshot: %v, snapshot %q", err, cfg.Pools[0].Snapshot)
	}
}

func TestBadValuesAreDecodeErrors(t *testing.T) {
	for _, y := range []string{
		"fleet: {reconcile_interval: soon}\n",
		"guest: {upload_max_size: lots}\n",
		"pools: {name: x}\n",
		"scheduler: {max_machines: many}\n",
		"guest: {upload_max_size: 99999999999999999999GiB}\n",
		"listen: 127.0.0.1:1\n---\nlisten: 127.0.0.1:2\n",
	} {
		if _, err := load(t, y); err == nil || !strings.Contains(err.Error(), "line") {
			t.Errorf("%q: err = %v, want a decode error naming a line", y, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]Size{"100MiB": 100 << 20, "2GB": 2e9, "512": 512, "1.5KiB": 1536, "3 kb": 3000} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1XB", "1..2MB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func load(t *testing.T, yaml string) (*Config, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sandfleet.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return Load(path)
}

// FuzzDecode: no input panics the decoder or the validator, every decode
// error says something on each of its lines, and whatever decodes either
// validates or says which key is wrong.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("listen: 127.0.0.1:8090\npools:\n  - {name: a, provider: azure, platform: windows, image: i, max_size: 2}\n"))
	f.Add([]byte("guest: {upload_max_size: 100MiB}\n"))
	f.Add([]byte("pools:\n  - {name: a, provider: static, platform: linux, machines: [{label: x, ip: 127.0.0.1}]}\n"))
	f.Add([]byte("fleet: {reconcile_interval: fast, health_interval: 0s}\npools: [{initial_size: three, tags: x}]\n"))
	f.Add([]byte("pools:\n  - &b {name: a, tags: [x]}\n  - <<: *b\n    name: b\n  - {<<: [*b, {arch: x86}]}\n"))
	f.Add([]byte("pools: &x [*x, {<<: *x}]\nfleet: {lease_ttl: 1s, lease_ttl: 2s}\n"))
	f.Add([]byte("azure: {dns_servers: &t [a, b]}\npools: [&p {machines: [&m {tags: *t}, *m]}, *p]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := Default()
		if err := Decode(data, cfg); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.TrimSpace(line) == "" {
					t.Fatalf("decode error with an empty line: %q", err)
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.Contains(line, ":") {
					t.Fatalf("validation error without a key: %q", line)
				}
			}
		}
	})
}
