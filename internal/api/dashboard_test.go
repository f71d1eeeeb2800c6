package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/store"
)

// The dashboard's data is one authenticated reply holding every section;
// the page that reads it is served to anyone, since it must load to ask
// for the token.
func TestDashboard(t *testing.T) {
	srv, st := newServer(t, map[string]bool{"k": true})
	ctx := context.Background()
	ts, err := st.CreateTasks(ctx, []store.Task{
		{Target: `C:\samples\first.exe`, Category: "file", Timeout: 60},
		{Target: "second.exe", Category: "file", Timeout: 60, Tags: []string{"office"}},
		{Target: "http://example.test/", Category: "url", Timeout: 60},
	}, "submitted")
	if err != nil {
		t.Fatal(err)
	}
	lab1, err := st.GetMachine(ctx, "lab1")
	if err != nil {
		t.Fatal(err)
	}
	if res, err := st.Lease(ctx, []store.LeaseRequest{{TaskID: ts[0].ID, TaskVersion: ts[0].Version, Label: "lab1",
		MachineVersion: lab1.Version, Node: "n", TTL: time.Minute}}); err != nil || res[0].Err != nil {
		t.Fatalf("lease: %v %v", err, res)
	}
	if _, err := st.TransitionTask(ctx, store.TaskTransition{TaskID: ts[1].ID, From: store.TaskPending,
		To: store.TaskFailedAnalysis, Error: "no machine could ever serve this task: tag office is on no pool"}); err != nil {
		t.Fatal(err)
	}

	if code, env := get(t, srv.URL+"/apiv2/dashboard/", ""); code != 401 || !env.Error {
		t.Fatalf("dashboard without a token: %d %+v", code, env)
	}
	code, env := get(t, srv.URL+"/apiv2/dashboard/", "k")
	if code != 200 || env.Error {
		t.Fatalf("dashboard: %d %+v", code, env)
	}
	var d api.Dashboard
	if err := json.Unmarshal(env.Data, &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Pools) != 1 || d.Pools[0].Name != "lab" || d.Pools[0].Machines["leased"] != 1 || len(d.Throttled) != 0 {
		t.Errorf("pools = %+v, throttled = %+v", d.Pools, d.Throttled)
	}
	if len(d.Machines) != 1 || d.Machines[0].Label != "lab1" || d.Machines[0].State != "leased" ||
		d.Machines[0].TaskID == nil || *d.Machines[0].TaskID != ts[0].ID || d.Machines[0].StateChangedOn == nil {
		t.Errorf("machines = %s", jsonOf(d.Machines))
	}
	queue := map[string]int{}
	for _, q := range d.Queue {
		queue[q.Status] = q.Count
	}
	if len(d.Queue) != 4 || queue["pending"] != 1 || queue["running"] != 1 || queue["completed"] != 0 || queue["failed_analysis"] != 1 {
		t.Errorf("queue = %+v", d.Queue)
	}
	if len(d.Tasks) != 3 || d.Tasks[0].ID != ts[2].ID || d.Tasks[2].ID != ts[0].ID {
		t.Fatalf("tasks = %s, want the three, newest first", jsonOf(d.Tasks))
	}
	if first := d.Tasks[2]; first.Target != "first.exe" || first.Status != "running" || first.Machine == nil || *first.Machine != "lab1" || first.Attempt != 1 {
		t.Errorf("running task = %s", jsonOf(first))
	}
	if failed := d.Tasks[1]; failed.Status != "failed_analysis" || failed.Error == nil || !strings.Contains(*failed.Error, "tag office") {
		t.Errorf("failed task = %s", jsonOf(failed))
	}
	if len(d.Hourly) != 12 {
		t.Fatalf("hourly = %+v, want 12 hours", d.Hourly)
	}
	last := d.Hourly[11]
	if hour, err := time.Parse(time.RFC3339, last.Hour); err != nil || !hour.Equal(time.Now().UTC().Truncate(time.Hour)) ||
		last.Failed != 1 || last.Completed != 0 {
		t.Errorf("the current hour = %+v (%v), want one failure", last, err)
	}
	if d.Operations == nil || d.Now == "" {
		t.Errorf("operations = %v, now = %q", d.Operations, d.Now)
	}
}

func TestDashboardPageNeedsNoToken(t *testing.T) {
	srv, _ := newServer(t, map[string]bool{"k": true})
	for path, ctype := range map[string]string{
		"/":                   "text/html",
		"/static/app.js":      "javascript",
		"/static/style.css":   "text/css",
		"/static/favicon.svg": "image/svg+xml",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), ctype) || len(body) == 0 {
			t.Errorf("GET %s: %s %q", path, resp.Status, resp.Header.Get("Content-Type"))
		}
		if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: no CSP", path)
		}
	}
	for _, path := range []string{"/static/", "/static/nope.js", "/nope"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET %s: %s, want 404", path, resp.Status)
		}
	}
	resp, err := http.Post(srv.URL+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("POST /: %s, want 405", resp.Status)
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
