package doctor_test

import (
	"archive/zip"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/doctor"
	"github.com/sandfleet/sandfleet/internal/guest/guesttest"
	"github.com/sandfleet/sandfleet/internal/resultserver"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// healthy is the embedded default, every part of it up as serve would have
// it: a migrated SQLite database in the data directory holding one ready
// machine whose agent answers, the in-process emulator serving from the data
// directory, and a result server listening.
func healthy(t *testing.T) *config.Config {
	t.Helper()
	cfg := defaults(t)
	rs, err := resultserver.New(resultserver.Options{Listen: "127.0.0.1:0", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	rs.Start()
	t.Cleanup(func() { rs.Close() })
	cfg.ResultServer.Listen = rs.Addr().String()
	ip, port := guesttest.Agent(t)
	cfg.Guest.AgentPort = port
	addMachines(t, cfg, store.Machine{Label: "win10x64_0", Pool: "win10x64", InstanceID: "0", IP: ip, State: store.Ready})
	startEmulator(t, cfg, azemu.Options{})
	return cfg
}

// defaults is the embedded default with its data directory for the test.
func defaults(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Load("")
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = t.TempDir()
	return cfg
}

// addMachines migrates cfg's database and inserts machines into it.
func addMachines(t *testing.T, cfg *config.Config, ms ...store.Machine) {
	t.Helper()
	st, err := open.Open(context.Background(), cfg.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.InsertMachines(context.Background(), ms, "test"); err != nil {
		t.Fatal(err)
	}
}

// startEmulator runs the emulator as serve does: from cfg's emulator
// directory, with cfg's gallery.
func startEmulator(t *testing.T, cfg *config.Config, opts azemu.Options) *azemu.Emulator {
	t.Helper()
	opts.StateDir = cfg.EmulatorDir()
	opts.GalleryImages = cfg.Azure.Emulator.GalleryImages
	opts.Logger = quiet
	e, err := azemu.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func run(t *testing.T, cfg *config.Config) []doctor.Check {
	t.Helper()
	return doctor.Run(context.Background(), doctor.Options{Config: cfg, Timeout: 5 * time.Second})
}

// named returns the checks called name.
func named(cs []doctor.Check, name string) []doctor.Check {
	var out []doctor.Check
	for _, c := range cs {
		if c.Check == name {
			out = append(out, c)
		}
	}
	return out
}

// one returns the one check called name, failing the test if there is not
// exactly one.
func one(t *testing.T, cs []doctor.Check, name string) doctor.Check {
	t.Helper()
	got := named(cs, name)
	if len(got) != 1 {
		t.Fatalf("%d checks %q in:\n%s", len(got), name, report(cs))
	}
	return got[0]
}

// failed checks that c failed, saying each of want in its detail or fix.
func failed(t *testing.T, c doctor.Check, want ...string) {
	t.Helper()
	if c.OK || c.Fix == "" {
		t.Errorf("%s: %+v, want it failed with a fix", c.Check, c)
	}
	for _, w := range want {
		if !strings.Contains(c.Detail+" — "+c.Fix, w) {
			t.Errorf("%s: %q — %q does not say %q", c.Check, c.Detail, c.Fix, w)
		}
	}
}

func report(cs []doctor.Check) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "  %v %s: %s — %s\n", c.OK, c.Check, c.Detail, c.Fix)
	}
	return b.String()
}

func TestHealthySetupPasses(t *testing.T) {
	cs := run(t, healthy(t))
	if !doctor.OK(cs) {
		t.Fatalf("a healthy setup fails:\n%s", report(cs))
	}
	var order []string
	for _, c := range cs {
		if len(order) == 0 || order[len(order)-1] != c.Check {
			order = append(order, c.Check)
		}
	}
	want := "configuration database azure azure image win10x64 azure quota azure subnet resultserver resultserver address analyzer agents"
	if got := strings.Join(order, " "); got != want {
		t.Errorf("checks in order %q, want %q", got, want)
	}
	if c := one(t, cs, "agents"); !strings.Contains(c.Detail, "win10x64_0 127.0.0.1: agent answers (version 0.22)") {
		t.Errorf("agents: %q", c.Detail)
	}
	if c := one(t, cs, "analyzer"); !strings.Contains(c.Detail, "stand-in") {
		t.Errorf("analyzer: %q does not say the stand-in is used", c.Detail)
	}
}

// A configuration that does not load fails, and so does every check that
// needs it, saying why.
func TestInvalidConfigurationSkipsTheRest(t *testing.T) {
	cfg := healthy(t)
	cfg.Pools[0].Name = "win_10"
	cs := run(t, cfg)
	failed(t, one(t, cs, "configuration"), `pools[0].name: "win_10" contains "_"`)
	for _, name := range []string{"database", "providers", "resultserver", "analyzer", "agents"} {
		failed(t, one(t, cs, name), "configuration invalid")
	}
	cs = doctor.Run(context.Background(), doctor.Options{ConfigErr: fmt.Errorf("config x.yaml: line 3: fleet.reconcile_intervall: unknown key")})
	failed(t, one(t, cs, "configuration"), "line 3: fleet.reconcile_intervall")
}

func TestDatabase(t *testing.T) {
	cfg := healthy(t)
	path := filepath.Join(t.TempDir(), "none.db")
	cfg.Database = "sqlite://" + path
	cs := run(t, cfg)
	failed(t, one(t, cs, "database"), "not created yet", "sandfleet migrate or sandfleet serve")
	failed(t, one(t, cs, "agents"), "not checked: the database is not created yet")
	if _, err := os.Stat(path); err == nil {
		t.Fatal("doctor created the database")
	}

	// A file that is a database, never migrated.
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE other (x INTEGER)`); err != nil {
		t.Fatal(err)
	}
	failed(t, one(t, run(t, cfg), "database"), "not migrated", "sandfleet migrate")
	if n := tables(t, db); n != 1 {
		t.Fatalf("doctor changed the database: %d tables", n)
	}

	// Migrated, then aged: the newest migration forgotten.
	addMachines(t, cfg, store.Machine{Label: "m", State: store.Provisioning})
	if _, err := db.Exec(`DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)`); err != nil {
		t.Fatal(err)
	}
	st, err := open.OpenReadOnly(context.Background(), cfg.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	sc, err := st.Schema(context.Background())
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	failed(t, one(t, run(t, cfg), "database"), fmt.Sprintf("migrations %d not applied", sc.Latest), "run sandfleet migrate")

	cfg.Database = "postgres://root@127.0.0.1:1/none?sslmode=disable"
	failed(t, one(t, run(t, cfg), "database"), "127.0.0.1:1", "start PostgreSQL")
}

func tables(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'table'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A pool whose image is not in the emulator's gallery fails its check,
// naming the image and where the gallery is configured.
func TestGalleryImageMissing(t *testing.T) {
	cfg := healthy(t)
	cfg.Pools[0].Image = "win11"
	failed(t, one(t, run(t, cfg), "azure image win10x64"),
		"gallery image win11 not found", "add win11 to azure.emulator.gallery_images", "pools[0].image", "win10-gallery-image")

	// The same against a subscription (an emulator of its own, as a cloud).
	e, err := azemu.New(azemu.Options{StateDir: t.TempDir(), GalleryImages: []string{"win10"}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cfg.Azure.SubscriptionID = "11111111-2222-3333-4444-555555555555"
	cfg.Azure.Endpoint, cfg.Azure.CAFile, cfg.Azure.Credential = e.URL(), e.CAFile(), "emulator"
	cs := run(t, cfg)
	if c := one(t, cs, "azure"); !c.OK || !strings.Contains(c.Detail, "Azure Resource Manager at "+e.URL()+": credentials work") {
		t.Errorf("azure: %+v", c)
	}
	failed(t, one(t, cs, "azure image win10x64"), "gallery image win11 not found in gallery sandfleetgallery of resource group sandfleet-sandbox",
		"create the image definition win11 in gallery sandfleetgallery (azure.gallery), or set pools[0].image")
	cfg.Pools[0].Image = "win10"
	if c := one(t, run(t, cfg), "azure image win10x64"); !c.OK {
		t.Errorf("an image the gallery holds: %+v", c)
	}
}

func TestQuota(t *testing.T) {
	cfg := defaults(t)
	startEmulator(t, cfg, azemu.Options{Faults: azemu.Faults{Quota: &azemu.Quota{Cores: 6, LowPriorityCores: 6}}})
	// 10 machines of 2 vCPUs, in a quota of 6.
	failed(t, one(t, run(t, cfg), "azure quota"),
		"cores in westeurope: 0 of 6 vCPUs used, 6 free", "need 20 more (10 machines × 2 vCPUs of Standard_D2s_v5)",
		"raise the cores quota in westeurope to at least 20 vCPUs, or lower the pools' max_size (room for 3 more machines now)")

	cfg.Pools[0].MaxSize = 3
	if c := one(t, run(t, cfg), "azure quota"); !c.OK {
		t.Errorf("3 machines in a quota of 6 vCPUs: %+v", c)
	}
	// Spot machines count against the low-priority quota.
	cfg.Azure.Spot = true
	cfg.Pools[0].MaxSize = 4
	failed(t, one(t, run(t, cfg), "azure quota"), "lowPriorityCores in westeurope")
}

func TestSubnetTooSmall(t *testing.T) {
	cfg := defaults(t)
	startEmulator(t, cfg, azemu.Options{SubnetPrefix: "10.0.0.0/28"})
	failed(t, one(t, run(t, cfg), "azure subnet"), "holds 3 machines; the pools at max_size need 10", "lower their max_size to 3")
}

// The in-process emulator runs inside serve: with no serve, or a serve
// gone without cleaning up, doctor says so.
func TestEmulatorNotRunning(t *testing.T) {
	cfg := defaults(t)
	failed(t, one(t, run(t, cfg), "azure"), "not running", "runs inside sandfleet serve: start it")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "https://" + l.Addr().String()
	l.Close()
	if err := os.MkdirAll(cfg.EmulatorDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.EmulatorDir(), azemu.EndpointFile), []byte(dead+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	failed(t, one(t, run(t, cfg), "azure"), "does not answer at "+dead, "start it")
}

func TestResultServer(t *testing.T) {
	cfg := healthy(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := l.Addr().String()
	l.Close()
	cfg.ResultServer.Listen = free
	failed(t, one(t, run(t, cfg), "resultserver"), "nothing listens at "+free, "start sandfleet serve")

	cfg = healthy(t)
	_, port, _ := net.SplitHostPort(cfg.ResultServer.Listen)
	cfg.ResultServer.Listen = "0.0.0.0:" + port
	cfg.ResultServer.AdvertiseIP = "192.0.2.7" // TEST-NET-1: no host's
	cs := run(t, cfg)
	if c := one(t, cs, "resultserver"); !c.OK || !strings.Contains(c.Detail, "127.0.0.1:"+port) {
		t.Errorf("a wildcard listen is dialled on 127.0.0.1: %+v", c)
	}
	failed(t, one(t, cs, "resultserver address"), "192.0.2.7 (resultserver.advertise_ip), which is not an address of this host",
		"set resultserver.advertise_ip to this host's address")

	cfg = healthy(t)
	cfg.ResultServer.AdvertiseIP = "127.0.0.2"
	failed(t, one(t, run(t, cfg), "resultserver address"), "listens on 127.0.0.1 only", "set resultserver.listen to 127.0.0.2:")
}

func TestAnalyzer(t *testing.T) {
	cfg := healthy(t)
	dir := t.TempDir()
	cfg.Guest.Analyzer = dir
	fix := "set guest.analyzer to CAPE's analyzer folder"
	failed(t, one(t, run(t, cfg), "analyzer"), dir+": no analyzer.py at its top", fix)
	if err := os.WriteFile(filepath.Join(dir, "analyzer.py"), []byte("print('analyzing')\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := one(t, run(t, cfg), "analyzer"); !c.OK || !strings.Contains(c.Detail, "analyzer.py found") {
		t.Errorf("a folder holding analyzer.py: %+v", c)
	}

	cfg.Guest.Analyzer = writeZip(t, "lib/core.py")
	failed(t, one(t, run(t, cfg), "analyzer"), "no analyzer.py at its top", fix)
	cfg.Guest.Analyzer = writeZip(t, "analyzer.py", "lib/core.py")
	if c := one(t, run(t, cfg), "analyzer"); !c.OK {
		t.Errorf("a zip holding analyzer.py: %+v", c)
	}
	cfg.Guest.Analyzer = filepath.Join(dir, "missing")
	failed(t, one(t, run(t, cfg), "analyzer"), "no such file", fix)
}

func writeZip(t *testing.T, names ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "analyzer.zip")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	for _, n := range names {
		w, err := zw.Create(n)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(w, "# %s\n", n)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// Each ready machine's agent is asked: one that answers passes, one that
// refuses or hangs fails, within the check's time.
func TestAgents(t *testing.T) {
	cfg := healthy(t)
	hung := hang(t, "127.0.0.3:"+fmt.Sprint(cfg.Guest.AgentPort))
	addMachines(t, cfg,
		store.Machine{Label: "win10x64_1", Pool: "win10x64", InstanceID: "1", IP: "127.0.0.2", State: store.Ready},
		store.Machine{Label: "win10x64_2", Pool: "win10x64", InstanceID: "2", IP: hung, State: store.Ready},
		store.Machine{Label: "win10x64_3", Pool: "win10x64", InstanceID: "3", IP: "127.0.0.4", State: store.Dirty},
		store.Machine{Label: "win10x64_4", Pool: "win10x64", InstanceID: "4", State: store.Ready},
	)
	start := time.Now()
	cs := doctor.Run(context.Background(), doctor.Options{Config: cfg, Timeout: 2 * time.Second})
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("doctor took %s with a hung agent and a 2s timeout", took)
	}
	agents := named(cs, "agents")
	if len(agents) != 4 {
		t.Fatalf("%d agents checked, want the 4 ready machines':\n%s", len(agents), report(cs))
	}
	port := fmt.Sprint(cfg.Guest.AgentPort)
	byLabel := map[string]doctor.Check{}
	for _, c := range agents {
		label, _, _ := strings.Cut(c.Detail, " ")
		byLabel[strings.TrimSuffix(label, ":")] = c
	}
	if c := byLabel["win10x64_0"]; !c.OK {
		t.Errorf("the answering agent: %+v", c)
	}
	failed(t, byLabel["win10x64_1"], "agent at 127.0.0.2:"+port+" does not answer", "connection refused", "guest.agent_port")
	failed(t, byLabel["win10x64_2"], "agent at 127.0.0.3:"+port+" does not answer")
	// Not asked at all: without an address, a client would ask this host.
	failed(t, byLabel["win10x64_4"], "ready, with no IP address")

	cfg = healthy(t)
	st, err := open.Open(context.Background(), cfg.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetMachine(context.Background(), "win10x64_0")
	if err == nil {
		_, err = st.TransitionMachine(context.Background(), store.Transition{Label: m.Label, From: store.Ready, To: store.Provisioning, Cause: "test"})
	}
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	failed(t, one(t, run(t, cfg), "agents"), "no machine is ready (1 provisioning)", "sandfleet machines list")
}

// hang accepts connections at addr and never answers, until the test ends;
// it returns addr's IP.
func hang(t *testing.T, addr string) string {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	host, _, _ := net.SplitHostPort(addr)
	return host
}

func TestDaemon(t *testing.T) {
	cfg := healthy(t)
	ready, token := http.StatusOK, ""
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/readyz" && ready != http.StatusOK:
			w.WriteHeader(ready)
			w.Write([]byte(`{"status": "database unavailable", "error": "connection refused"}`))
		case r.URL.Path == "/readyz":
		case token != "" && r.Header.Get("Authorization") != "Token "+token:
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	defer srv.Close()
	check := func(given string) doctor.Check {
		t.Helper()
		return one(t, doctor.Run(context.Background(), doctor.Options{Config: cfg, Server: srv.URL, Token: given, Timeout: 5 * time.Second}), "daemon")
	}
	if c := check(""); !c.OK {
		t.Errorf("a ready daemon: %+v", c)
	}
	token = "sf_secret"
	failed(t, check(""), "wants an API token", "--token")
	failed(t, check("sf_wrong"), "refuses the token given")
	if c := check(token); !c.OK {
		t.Errorf("a ready daemon and its token: %+v", c)
	}
	ready = http.StatusServiceUnavailable
	failed(t, check(token), "not ready: database unavailable connection refused", "see its log")
	srv.Close()
	failed(t, check(token), "no daemon answers at "+srv.URL, "start sandfleet serve")
}

// When everything hangs — the emulator, the agents, the daemon — the
// report still comes, in a few check timeouts.
func TestEverythingHangs(t *testing.T) {
	cfg := healthy(t)
	emuAddr := "127.0.0.5:" + fmt.Sprint(cfg.Guest.AgentPort)
	hang(t, emuAddr)
	if err := os.WriteFile(filepath.Join(cfg.EmulatorDir(), azemu.EndpointFile), []byte("https://"+emuAddr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	daemonAddr := "127.0.0.6:" + fmt.Sprint(cfg.Guest.AgentPort)
	hang(t, daemonAddr)
	addMachines(t, cfg, store.Machine{Label: "win10x64_1", Pool: "win10x64", InstanceID: "1",
		IP: hang(t, "127.0.0.7:"+fmt.Sprint(cfg.Guest.AgentPort)), State: store.Ready})
	start := time.Now()
	cs := doctor.Run(context.Background(), doctor.Options{Config: cfg, Server: "http://" + daemonAddr, Timeout: time.Second})
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("doctor took %s with a 1s timeout a check", took)
	}
	failed(t, one(t, cs, "azure"), "context deadline exceeded")
	failed(t, one(t, cs, "daemon"), "no daemon answers")
	if doctor.OK(cs) {
		t.Fatalf("everything hangs, and doctor passes:\n%s", report(cs))
	}
}
