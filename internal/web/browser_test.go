package web_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/web"
	"github.com/sandfleet/sandfleet/internal/web/browsertest"
)

// hostile is a target name as a submitter may choose it.
const hostile = `<img src=x onerror="window.pwned=1">.exe`

// fixture is a dashboard reply with something in every section.
func fixture() api.Dashboard {
	now := time.Now().UTC()
	at := func(d time.Duration) *string { s := now.Add(d).Format(time.RFC3339); return &s }
	str := func(s string) *string { return &s }
	id := func(n int64) *int64 { return &n }
	d := api.Dashboard{
		Now: now.Format(time.RFC3339), Version: "test", Ready: true,
		Pools: []fleet.PoolStatus{{Name: "win10x64", Provider: "azure", Platform: "windows", Arch: "x64", Tags: []string{"win10"},
			Desired: 3, Actual: 3, Capacity: 3, Machines: map[string]int{"ready": 1, "leased": 1, "quarantined": 1},
			ViewAt: now.Format("2006-01-02 15:04:05"), Throttled: true, Reason: "provider throttled (list instances) until later"}},
		Throttled: []api.DashThrottle{{Pool: "win10x64", Reason: "provider throttled (list instances) until later"}},
		Machines: []api.DashMachine{
			{Label: "win10x64_0", Pool: "win10x64", State: "ready", StateChangedOn: at(-90 * time.Second), IP: "127.0.1.1", InstanceID: "0"},
			{Label: "win10x64_1", Pool: "win10x64", State: "leased", StateChangedOn: at(-5 * time.Second), TaskID: id(7), IP: "127.0.1.2", InstanceID: "1"},
			{Label: "win10x64_2", Pool: "win10x64", State: "quarantined", StateChangedOn: at(-time.Hour), IP: "127.0.1.3", InstanceID: "2",
				QuarantineReason: str("agent silent for 300s"), Reason: str("quarantined since 11:00:00 because agent silent for 300s")},
		},
		Queue: []api.DashCount{{Status: "pending", Count: 1}, {Status: "running", Count: 1}, {Status: "completed", Count: 4}, {Status: "failed_analysis", Count: 1}},
		Tasks: []api.DashTask{
			{ID: 8, Target: "waiting.exe", Category: "file", Status: "pending", Attempt: 1, AddedOn: at(-2 * time.Second),
				Reason: str("max_machines 1 reached: 1 analyses running")},
			{ID: 7, Target: hostile, Category: "file", Status: "running", Machine: str("win10x64_1"), Attempt: 2,
				AddedOn: at(-time.Minute), StartedOn: at(-5 * time.Second)},
			{ID: 6, Target: "office.doc", Category: "file", Status: "failed_analysis", Attempt: 1, Error: str("tag office is on no pool"),
				AddedOn: at(-10 * time.Minute), CompletedOn: at(-10 * time.Minute)},
		},
		Operations: []api.DashOperation{{ID: 3, Pool: "win10x64", Kind: "reimage", State: "running", InstanceIDs: []string{"0", "2"},
			Attempt: 1, Resumable: true, CreatedAt: at(-3 * time.Second), Deadline: at(5 * time.Minute)}},
	}
	for i := range 12 {
		d.Hourly = append(d.Hourly, api.DashHour{Hour: now.Truncate(time.Hour).Add(time.Duration(i-11) * time.Hour).Format(time.RFC3339),
			Completed: i % 4, Failed: i % 3 / 2})
	}
	return d
}

// fakeAPI serves the page and a dashboard endpoint that wants Token good,
// until revoked.
type fakeAPI struct {
	revoked atomic.Bool
	mu      sync.Mutex
	auths   []string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/apiv2/dashboard/" {
		web.Handler().ServeHTTP(w, r)
		return
	}
	f.mu.Lock()
	f.auths = append(f.auths, r.Header.Get("Authorization"))
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get("Authorization") != "Token good" || f.revoked.Load() {
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(map[string]any{"error": true, "error_value": "authentication required"})
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"error": []string{}, "data": fixture()})
}

// The page asks for a token when the API wants one, keeps it for the tab,
// sends it, asks again when it is refused; and it draws every section,
// showing a hostile target name as text.
func TestPageInBrowser(t *testing.T) {
	f := &fakeAPI{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	b := browsertest.New(t)
	b.Do(t, chromedp.Navigate(srv.URL+"/"))

	b.Until(t, 10*time.Second, "the token form", `!document.getElementById("login").hidden && document.getElementById("board").hidden`)
	b.Do(t, chromedp.SendKeys(chromedp.ID("token"), "wrong"), chromedp.Click(chromedp.CSS(`#login button`)))
	b.Until(t, 10*time.Second, "the token refused, the form again",
		`!document.getElementById("login").hidden && document.getElementById("login-error").textContent.includes("refused")`)
	b.Do(t, chromedp.SendKeys(chromedp.ID("token"), "good"), chromedp.Click(chromedp.CSS(`#login button`)))
	b.Until(t, 10*time.Second, "the board", `!document.getElementById("board").hidden && document.getElementById("login").hidden`)

	for what, js := range map[string]string{
		"three machines, states coloured": `document.querySelectorAll("#machines tr[data-label]").length === 3 &&
			document.querySelector('tr[data-label="win10x64_2"] [data-state]').classList.contains("quarantined")`,
		"the quarantine reason":   `document.querySelector('tr[data-label="win10x64_2"]').textContent.includes("agent silent for 300s")`,
		"the leasing task":        `document.querySelector('tr[data-label="win10x64_1"]').textContent.includes("#7")`,
		"the machine's age":       `/^1m 3\ds ago$/.test(document.querySelector('tr[data-label="win10x64_0"] [data-since]').textContent)`,
		"the hostile target":      `document.querySelector('tr[data-task="7"] .target').textContent === ` + jsString(hostile) + ` && window.pwned === undefined && !document.querySelector("#tasks img")`,
		"a failed task's reason":  `document.querySelector('tr[data-task="6"]').textContent.includes("tag office is on no pool")`,
		"a waiting task's reason": `document.querySelector('tr[data-task="8"]').textContent.includes("max_machines 1 reached")`,
		"why a machine waits":     `document.querySelector('tr[data-label="win10x64_2"]').textContent.includes("quarantined since 11:00:00 because")`,
		"the throttle banner":     `document.getElementById("banners").textContent.includes("provider throttled")`,
		"throttled in the pools":  `document.querySelector('tr[data-pool="win10x64"]').textContent.includes("throttled")`,
		"an operation in flight":  `document.querySelector('tr[data-op="3"]').textContent.includes("reimage")`,
		"twelve hours":            `document.querySelectorAll("#hourly .col").length === 12`,
		"the queue":               `document.getElementById("summary").textContent.includes("failed analysis")`,
	} {
		b.Until(t, 5*time.Second, what, js)
	}
	if got := browsertest.Eval[string](t, b, `sessionStorage.getItem("sandfleet.token")`); got != "good" {
		t.Errorf("sessionStorage token = %q", got)
	}

	// Revoked: the next poll is refused and the form is back.
	f.revoked.Store(true)
	b.Until(t, 10*time.Second, "the form after a 401", `!document.getElementById("login").hidden && document.getElementById("board").hidden`)
	if got := browsertest.Eval[bool](t, b, `sessionStorage.getItem("sandfleet.token") === null`); !got {
		t.Error("a refused token stays in sessionStorage")
	}
	f.mu.Lock()
	sent := strings.Join(f.auths, ",")
	f.mu.Unlock()
	if !strings.Contains(sent, "Token good") || !strings.Contains(sent, "Token wrong") {
		t.Errorf("Authorization headers sent: %s", sent)
	}
	if off := b.Offsite(); len(off) > 0 {
		t.Errorf("the page reached beyond loopback: %v", off)
	}
	for _, e := range b.Errors() {
		// The refused polls are logged by Chromium itself; anything else
		// (a script error, a style the CSP refused) is a bug.
		if !strings.Contains(e, "status of 401") {
			t.Errorf("browser error: %s", e)
		}
	}
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
