package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/provider/static"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// newServer serves a fleet of one static pool; tokens, when not nil, are
// the keys it accepts.
func newServer(t *testing.T, tokens map[string]bool) (*httptest.Server, store.Store) {
	t.Helper()
	st, f := newFleet(t)
	var keys []string
	for k := range tokens {
		keys = append(keys, k)
	}
	srv := httptest.NewServer(api.New(api.Options{Store: st, Fleet: f, Tokens: checker(t, keys...)}))
	t.Cleanup(srv.Close)
	return srv, st
}

// newFleet is a SQLite store and a fleet of one static pool (machine lab1),
// passed once: lab1 is ready.
func newFleet(t *testing.T) (store.Store, *fleet.Fleet) {
	t.Helper()
	ctx := context.Background()
	st, err := open.Open(ctx, "sqlite://"+filepath.Join(t.TempDir(), "api.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pool := config.Pool{Name: "lab", Provider: "static", Platform: "windows", Arch: "x64", Tags: []string{"win10"},
		Machines: []config.StaticMachine{{Label: "lab1", IP: "127.0.0.31"}}}
	r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{pool}), Pools: []config.Pool{pool},
		ResultServerIP: "127.0.0.1", ResultServerPort: 2042})
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	return st, fleet.NewFleet(r)
}

// capeError reads CAPE's "error": true on failure, [] (or false) on success.
type capeError bool

func (e *capeError) UnmarshalJSON(b []byte) error {
	*e = string(b) == "true"
	return nil
}

type envelope struct {
	Error      capeError       `json:"error"`
	ErrorValue string          `json:"error_value"`
	Data       json.RawMessage `json:"data"`
}

func get(t *testing.T, url, token string) (int, envelope) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Token "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var env envelope
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		t.Fatalf("GET %s: body is not the JSON envelope: %v", url, err)
	}
	return resp.StatusCode, env
}

func TestMachinesInCAPEShape(t *testing.T) {
	srv, _ := newServer(t, nil)
	code, env := get(t, srv.URL+"/apiv2/machines/list/", "")
	if code != 200 || bool(env.Error) {
		t.Fatalf("list: %d %+v", code, env)
	}
	var ms []map[string]any
	if err := json.Unmarshal(env.Data, &ms); err != nil || len(ms) != 1 {
		t.Fatalf("data = %s", env.Data)
	}
	m := ms[0]
	for _, k := range []string{"id", "name", "label", "arch", "ip", "platform", "interface", "snapshot", "locked",
		"locked_changed_on", "status", "status_changed_on", "resultserver_ip", "resultserver_port", "reserved", "tags",
		"pool", "instance_id", "state"} {
		if _, ok := m[k]; !ok {
			t.Errorf("machine lacks CAPE field %q", k)
		}
	}
	if m["label"] != "lab1" || m["ip"] != "127.0.0.31" || m["state"] != "ready" || m["status"] != "ready" ||
		m["locked"] != false || m["pool"] != "lab" || m["resultserver_port"] != "2042" {
		t.Errorf("machine = %v", m)
	}
	if _, err := time.Parse("2006-01-02 15:04:05", m["status_changed_on"].(string)); err != nil {
		t.Errorf("status_changed_on not in CAPE's format: %v", m["status_changed_on"])
	}

	code, env = get(t, srv.URL+"/apiv2/machines/view/lab1/", "")
	if code != 200 || bool(env.Error) {
		t.Fatalf("view: %d %+v", code, env)
	}
	code, env = get(t, srv.URL+"/apiv2/machines/view/nope/", "")
	if code != 404 || !bool(env.Error) || env.ErrorValue == "" {
		t.Fatalf("view of unknown machine: %d %+v", code, env)
	}
	code, env = get(t, srv.URL+"/apiv2/machines/list/?state=sleepy", "")
	if code != 400 || !bool(env.Error) {
		t.Fatalf("bad state filter: %d %+v", code, env)
	}
}

func TestCheckAndPools(t *testing.T) {
	srv, _ := newServer(t, nil)
	code, env := get(t, srv.URL+"/apiv2/fleet/check/", "")
	if code != 200 {
		t.Fatalf("check: %d", code)
	}
	var rep fleet.Report
	if err := json.Unmarshal(env.Data, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Consistent || len(rep.Pools) != 1 || rep.Pools[0].DBMachines != 1 || rep.Pools[0].ProviderInstances != 1 {
		t.Fatalf("check = %+v", rep)
	}
	var raw map[string]any
	json.Unmarshal(env.Data, &raw)
	p := raw["pools"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "db_machines", "provider_instances", "missing_in_db", "missing_in_provider", "mismatched"} {
		if _, ok := p[k]; !ok {
			t.Errorf("check pool lacks %q", k)
		}
	}
	code, env = get(t, srv.URL+"/apiv2/pools/list/", "")
	var ps []fleet.PoolStatus
	if code != 200 || json.Unmarshal(env.Data, &ps) != nil || len(ps) != 1 || ps[0].Machines["ready"] != 1 || ps[0].Drift != 0 {
		t.Fatalf("pools = %d %s", code, env.Data)
	}
}

func TestMetrics(t *testing.T) {
	srv, _ := newServer(t, map[string]bool{"k": true})
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	fams, err := metrics.Parse(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		name   string
		labels []string
		value  float64
	}{
		{"sandfleet_machines", []string{"pool", "lab", "state", "ready"}, 1},
		{"sandfleet_machines", []string{"pool", "lab", "state", "leased"}, 0},
		{"sandfleet_pool_drift", []string{"pool", "lab"}, 0},
		{"sandfleet_pool_instances", []string{"pool", "lab"}, 1},
		{"sandfleet_pool_throttled", []string{"pool", "lab"}, 0},
		{"sandfleet_reconcile_passes_total", []string{"provider", "static", "outcome", "ok"}, 1},
		{"sandfleet_tasks", []string{"status", "pending"}, 0},
		{"sandfleet_database_up", nil, 1},
	} {
		if got, ok := fams.Value(want.name, want.labels...); !ok || got != want.value {
			t.Errorf("%s%v = %v (present %v), want %v", want.name, want.labels, got, ok, want.value)
		}
	}
	if fams["sandfleet_db_round_trips_total"].GetType().String() != "COUNTER" {
		t.Errorf("sandfleet_db_round_trips_total is %v", fams["sandfleet_db_round_trips_total"].GetType())
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("the Go runtime collector is missing")
	}
}

func post(t *testing.T, url string, form url.Values) (int, envelope) {
	t.Helper()
	resp, err := http.PostForm(url, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var env envelope
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		t.Fatalf("POST %s: body is not the JSON envelope: %v", url, err)
	}
	return resp.StatusCode, env
}

// An operator quarantines a machine with a reason and releases it; released,
// it is dirty (reimaged before use), never straight back to ready.
func TestQuarantineAndRelease(t *testing.T) {
	srv, st := newServer(t, nil)
	code, env := post(t, srv.URL+"/apiv2/machines/quarantine/lab1/", url.Values{"reason": {"beaconing to 8.8.8.8"}})
	var m api.Machine
	if code != 200 || json.Unmarshal(env.Data, &m) != nil || m.State != "quarantined" || m.QuarantineReason == nil || *m.QuarantineReason != "beaconing to 8.8.8.8" {
		t.Fatalf("quarantine: %d %s", code, env.Data)
	}
	if code, env = post(t, srv.URL+"/apiv2/machines/quarantine/lab1/", nil); code != 409 || !strings.Contains(env.ErrorValue, "quarantined") {
		t.Fatalf("quarantine twice: %d %+v", code, env)
	}
	if code, _ = post(t, srv.URL+"/apiv2/machines/quarantine/nope/", nil); code != 404 {
		t.Fatalf("quarantine of an unknown machine: %d", code)
	}
	if code, env = post(t, srv.URL+"/apiv2/machines/release/lab1/", nil); code != 200 || json.Unmarshal(env.Data, &m) != nil || m.State != "dirty" {
		t.Fatalf("release: %d %s", code, env.Data)
	}
	if code, _ = post(t, srv.URL+"/apiv2/machines/release/lab1/", nil); code != 409 {
		t.Fatalf("release of a machine not quarantined: %d", code)
	}
	evs, _ := st.MachineEvents(context.Background(), "lab1")
	if last := evs[len(evs)-1]; last.From != store.Quarantined || last.To != store.Dirty {
		t.Fatalf("last event %+v", last)
	}
}

func TestFiltersNameBadInput(t *testing.T) {
	srv, _ := newServer(t, nil)
	for path, want := range map[string]string{
		"/apiv2/machines/list/?pool=nosuch":          `pool: "nosuch" is not a pool`,
		"/apiv2/operations/list/?pool=nosuch":        `pool: "nosuch" is not a pool`,
		"/apiv2/operations/list/?unfinished=perhaps": `unfinished: "perhaps" is not true or false`,
		"/apiv2/machines/list/?state=sleepy":         `state: "sleepy" is not a machine state`,
		"/apiv2/no/such/thing/":                      "no such endpoint",
	} {
		code, env := get(t, srv.URL+path, "")
		if code < 400 || code >= 500 || !bool(env.Error) || !strings.Contains(env.ErrorValue, want) {
			t.Errorf("%s: %d %q, want a 4xx naming %q", path, code, env.ErrorValue, want)
		}
	}
	if code, env := get(t, srv.URL+"/apiv2/machines/list/?pool=lab", ""); code != 200 || !strings.Contains(string(env.Data), "lab1") {
		t.Errorf("pool filter: %d %s", code, env.Data)
	}
	if code, env := get(t, srv.URL+"/apiv2/operations/list/?unfinished=true", ""); code != 200 || string(env.Data) != "[]" {
		t.Errorf("unfinished operations: %d %s", code, env.Data)
	}
}

// check reports a row whose IP disagrees with the provider.
func TestCheckReportsDrift(t *testing.T) {
	srv, st := newServer(t, nil)
	stale := "127.0.0.99"
	if _, err := st.TransitionMachine(context.Background(), store.Transition{Label: "lab1", From: store.Ready, To: store.Ready, IP: &stale}); err != nil {
		t.Fatal(err)
	}
	_, env := get(t, srv.URL+"/apiv2/fleet/check/", "")
	var rep fleet.Report
	json.Unmarshal(env.Data, &rep)
	want := fleet.Mismatch{Label: "lab1", Field: "ip", DB: stale, Provider: "127.0.0.31"}
	if rep.Consistent || len(rep.Pools[0].Mismatched) != 1 || rep.Pools[0].Mismatched[0] != want {
		t.Fatalf("check = %+v, want %+v", rep, want)
	}
}

func TestReadyz(t *testing.T) {
	srv, _ := newServer(t, nil)
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The test's fleet was passed by hand, never Run: not ready.
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("readyz before any run: %d", resp.StatusCode)
	}
}

// Until the daemon has opened its database, every route that needs it
// answers 503 naming the database and why; healthz answers; after Attach the
// same server serves.
func TestDatabaseUnavailableUntilAttached(t *testing.T) {
	const db = "postgres://root@127.0.0.1:1/sandfleet"
	srv := api.New(api.Options{Database: db, Tokens: checker(t, "k")})
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	srv.Unavailable(errors.New("connection refused"))

	call := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", ts.URL+path, nil)
		req.Header.Set("Authorization", "Token k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, path := range []string{"/apiv2/machines/list/", "/apiv2/machines/view/lab1/", "/apiv2/fleet/check/"} {
		if code, body := call(path); code != 503 || !strings.Contains(body, "database unavailable ("+db+"): connection refused") {
			t.Errorf("%s before the database: %d %s", path, code, body)
		}
	}
	// /metrics still answers, so a scrape sees the database is down.
	if code, body := call("/metrics"); code != 200 || !strings.Contains(body, "\nsandfleet_database_up 0\n") {
		t.Errorf("/metrics before the database: %d %s", code, body)
	}
	code, body := call("/readyz")
	var ready map[string]string
	if code != 503 || json.Unmarshal([]byte(body), &ready) != nil || ready["status"] != "database unavailable" ||
		ready["database"] != db || ready["error"] != "connection refused" {
		t.Errorf("readyz before the database: %d %s", code, body)
	}
	if code, _ := call("/healthz"); code != 200 {
		t.Errorf("healthz before the database: %d", code)
	}

	st, f := newFleet(t)
	srv.Attach(st, f, nil)
	if code, body := call("/apiv2/machines/view/lab1/"); code != 200 {
		t.Errorf("after Attach: %d %s", code, body)
	}
}
