// Package e2e runs the sandfleet binary as operators do: the emulator in its
// own process, the daemon in another, killed with SIGKILL at bad moments.
package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt/libvirttest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sandfleet-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "sandfleet")
	build := exec.Command("go", "build", "-o", binary, "github.com/sandfleet/sandfleet/cmd/sandfleet")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build sandfleet:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	libvirttest.RemoveImage()
	os.Exit(code)
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a sandfleet process whose output is kept for assertions.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func start(t testing.TB, args ...string) *proc {
	t.Helper()
	return startIn(t, "", args...)
}

// startIn starts the binary with dir as its working directory ("" = ours).
func startIn(t testing.TB, dir string, args ...string) *proc {
	t.Helper()
	p := &proc{done: make(chan struct{})}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, tail(p.output(), 60))
		}
	})
	return p
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.done
}

// emulator is a `sandfleet emulator` process.
type emulator struct {
	*proc
	url    string
	state  string
	client *http.Client
}

func startEmulator(t testing.TB, state string, extra ...string) *emulator {
	t.Helper()
	return startEmulatorOn(t, freePort(t), state, extra...)
}

// startEmulatorOn starts the emulator listening on addr.
func startEmulatorOn(t testing.TB, addr, state string, extra ...string) *emulator {
	t.Helper()
	e := &emulator{url: "https://" + addr, state: state}
	e.proc = start(t, append([]string{"emulator", "--listen", addr, "--state", state}, extra...)...)
	poll.Until(t, 30*time.Second, "emulator up", func() bool {
		pem, err := os.ReadFile(filepath.Join(state, "ca.pem"))
		if err != nil {
			return false
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return false
		}
		e.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		resp, err := e.client.Get(e.url + "/_emulator/faults")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return e
}

func (e *emulator) do(t testing.TB, method, path string, body any) []byte {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.url+path, r)
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %s: %s", method, path, resp.Status, out)
	}
	return out
}

// request is one ARM request the emulator served.
type request = azemu.RequestRecord

func (e *emulator) requests(t testing.TB) []request {
	t.Helper()
	var rs []request
	if err := json.Unmarshal(e.do(t, "GET", "/_emulator/requests", nil), &rs); err != nil {
		t.Fatal(err)
	}
	return rs
}

// count counts logged requests with method whose path ends with suffix.
func count(rs []request, method, suffix string) int {
	n := 0
	for _, r := range rs {
		if r.Method == method && strings.HasSuffix(strings.ToLower(r.Path), strings.ToLower(suffix)) {
			n++
		}
	}
	return n
}

// capeError reads CAPE's "error": true on failure, [] (or false) on success.
type capeError bool

func (e *capeError) UnmarshalJSON(b []byte) error {
	*e = string(b) == "true"
	return nil
}

// daemon is a `sandfleet serve` process.
type daemon struct {
	*proc
	api  string
	conf string
}

type daemonConfig struct {
	DataDir  string
	Database string
	Emulator *emulator
	Size     int
	// MaxSize is the pool's max_size; default Size: the pool does not grow.
	MaxSize  int
	Interval string
	LeaseTTL string
	// Health is fleet.health_interval; default 30s.
	Health string
	// Extra is YAML appended to the file: top-level sections of its own.
	Extra string
	// Azure is YAML lines added to the azure section, e.g. "monitor_interval: 3s".
	Azure []string
}

func writeConfig(t testing.TB, c daemonConfig) (path, listen string) {
	t.Helper()
	listen = freePort(t)
	interval := c.Interval
	if interval == "" {
		interval = "1s"
	}
	lease := c.LeaseTTL
	if lease == "" {
		lease = "15s"
	}
	health := c.Health
	if health == "" {
		health = "30s"
	}
	azureLines := ""
	if !slices.ContainsFunc(c.Azure, func(l string) bool { return strings.HasPrefix(l, "reimage_batch_window:") }) {
		azureLines = "  reimage_batch_window: 0s\n"
	}
	for _, l := range c.Azure {
		azureLines += "  " + l + "\n"
	}
	db := c.Database
	if db == "" {
		db = "sqlite://" + filepath.Join(c.DataDir, "sandfleet.db")
	}
	yaml := fmt.Sprintf(`listen: %s
data_dir: %s
database: %s
resultserver: { listen: "%s" }
fleet:
  reconcile_interval: %s
  lease_ttl: %s
  health_interval: %s
timeouts:
  cloud_operation: 120s
azure:
  subscription_id: 11111111-2222-3333-4444-555555555555
  endpoint: %s
  ca_file: %s
  credential: emulator
  sandbox_resource_group: sandfleet-e2e
%spools:
  - name: win10x64
    provider: azure
    platform: windows
    arch: x64
    tags: [win10, x64]
    image: win10-gallery-image
    initial_size: %d
    max_size: %d
`, listen, c.DataDir, db, freePort(t), interval, lease, health, c.Emulator.url, filepath.Join(c.Emulator.state, "ca.pem"),
		azureLines, c.Size, max(c.MaxSize, c.Size)) + c.Extra
	path = filepath.Join(c.DataDir, "sandfleet.yaml")
	if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, listen
}

func startDaemon(t testing.TB, conf, listen string) *daemon {
	t.Helper()
	d := &daemon{api: "http://" + listen, conf: conf}
	d.proc = start(t, "serve", "--config", conf)
	poll.Until(t, 30*time.Second, "daemon answers", func() bool { return d.answers("/healthz") })
	return d
}

// answers reports whether GET path answers 200.
func (d *daemon) answers(path string) bool {
	resp, err := http.Get(d.api + path)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

type machine struct {
	ID         int64    `json:"id"`
	Name       string   `json:"name"`
	Label      string   `json:"label"`
	IP         string   `json:"ip"`
	Status     string   `json:"status"`
	State      string   `json:"state"`
	Locked     bool     `json:"locked"`
	Pool       string   `json:"pool"`
	InstanceID string   `json:"instance_id"`
	Tags       []string `json:"tags"`
}

func (d *daemon) get(t testing.TB, path string, data any) error {
	t.Helper()
	resp, err := http.Get(d.api + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var env struct {
		Error capeError       `json:"error"`
		Data  json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		return err
	}
	if env.Error || resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.Unmarshal(env.Data, data)
}

// metrics scrapes /metrics with Prometheus' own parser.
func (d *daemon) metrics(t testing.TB) metrics.Families {
	t.Helper()
	resp, err := http.Get(d.api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	fams, err := metrics.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// metric reads the samples of family name whose labels include the pairs
// given, summed; -1 if there is none.
func (d *daemon) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	v, ok := d.metrics(t).Value(name, labels...)
	if !ok {
		return -1
	}
	return v
}

func (d *daemon) machines(t testing.TB) []machine {
	t.Helper()
	var ms []machine
	if err := d.get(t, "/apiv2/machines/list/", &ms); err != nil {
		t.Fatal(err)
	}
	return ms
}

// live returns machines not gone, by label.
func live(ms []machine) map[string]machine {
	out := map[string]machine{}
	for _, m := range ms {
		if m.State != "gone" {
			out[m.Label] = m
		}
	}
	return out
}

func (d *daemon) waitReady(t testing.TB, n int, within time.Duration) map[string]machine {
	t.Helper()
	var got map[string]machine
	poll.Until(t, within, fmt.Sprintf("%d machines ready", n), func() bool {
		var ms []machine
		if d.get(t, "/apiv2/machines/list/", &ms) != nil {
			return false
		}
		got = live(ms)
		if len(got) != n {
			return false
		}
		for _, m := range got {
			if m.State != "ready" || m.Status != "ready" || m.IP == "" {
				return false
			}
		}
		return true
	})
	return got
}

// check runs `sandfleet check` and returns its exit code and output.
func (d *daemon) check(t testing.TB) (int, string) {
	t.Helper()
	out, err := exec.Command(binary, "check", "--server", d.api).CombinedOutput()
	if err == nil {
		return 0, string(out)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("check: %v", err)
	return -1, ""
}
