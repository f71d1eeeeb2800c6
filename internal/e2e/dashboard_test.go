package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/web/browsertest"
)

// The operator's dashboard in a real headless Chromium, against the
// binary's embedded default: the default pool's machines appear and become
// ready, and a task submitted through the API appears and reaches completed
// on the page — all without a reload. With SANDFLEET_DASHBOARD_SCREENSHOT
// set it then stages machines and tasks in several states and writes a
// screenshot there (docs/dashboard.png is made so).
func TestDashboardInBrowser(t *testing.T) {
	shot := os.Getenv("SANDFLEET_DASHBOARD_SCREENSHOT")
	b := browsertest.New(t)
	dir := t.TempDir()
	// The embedded default but for the result server's port: its default,
	// 2042, is one any other daemon on the machine may hold.
	conf := fmt.Sprintf("resultserver: { listen: %q }\n", freePort(t))
	if shot != "" {
		// Slow enough that a screenshot catches analyses running and
		// reimages in flight.
		conf += "azure: { emulator: { analysis_duration: 30s, lro_delay: 20s } }\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "sandfleet.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := freePort(t)
	d := &daemon{proc: startIn(t, dir, "serve", "--listen", listen), api: "http://" + listen}
	poll.Until(t, 60*time.Second, "daemon ready", func() bool { return d.answers("/readyz") })

	b.Do(t, chromedp.Navigate(d.api+"/"))
	// A mark on the page that a reload would wipe.
	b.Do(t, chromedp.Evaluate[chromedp.Void](`window.sandfleetTestMark = "same page"`))
	machines := `["win10x64_0", "win10x64_1", "win10x64_2"].map(l => document.querySelector('#machines tr[data-label="' + l + '"] [data-state]'))`
	b.Until(t, 60*time.Second, "the default pool's three machines", machines+`.every(e => e !== null)`)
	b.Until(t, 60*time.Second, "the three machines ready", machines+`.every(e => e && e.dataset.state === "ready")`)

	id := d.submit(t, "dashboard-sample.exe", []byte("MZ a sample for the dashboard"))
	row := fmt.Sprintf(`document.querySelector('#tasks tr[data-task="%d"]')`, id)
	b.Until(t, 30*time.Second, fmt.Sprintf("task %d listed", id), row+` !== null && `+row+`.textContent.includes("dashboard-sample.exe")`)
	b.Until(t, 120*time.Second, fmt.Sprintf("task %d completed", id), row+`.querySelector("[data-status]").dataset.status === "completed"`)
	if ran := browsertest.Eval[string](t, b, row+`.children[3].textContent`); !strings.HasPrefix(ran, "win10x64_") {
		t.Errorf("task %d's machine on the page: %q", id, ran)
	}
	b.Until(t, 10*time.Second, "the completion counted in analyses per hour",
		`[...document.querySelectorAll("#hourly .total")].reduce((n, e) => n + Number(e.textContent || 0), 0) === 1`)
	if mark := browsertest.Eval[string](t, b, `String(window.sandfleetTestMark)`); mark != "same page" {
		t.Fatalf("the page was reloaded (mark %q): it must update itself", mark)
	}

	if shot != "" {
		stage(t, d, b)
		if err := os.WriteFile(shot, b.Screenshot(t), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot written to %s", shot)
	}
	if off := b.Offsite(); len(off) > 0 {
		t.Errorf("the page reached beyond loopback: %v", off)
	}
	if errs := b.Errors(); len(errs) > 0 {
		t.Errorf("browser errors:\n%s", strings.Join(errs, "\n"))
	}
}

// stage puts machines and tasks in several states for the screenshot: one
// machine quarantined by an operator, a task nothing can serve, analyses
// running and waiting.
func stage(t *testing.T, d *daemon, b *browsertest.Browser) {
	t.Helper()
	resp, err := http.PostForm(d.api+"/apiv2/machines/quarantine/win10x64_2/",
		url.Values{"reason": {"operator: beaconing seen after analysis 1"}})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("quarantine: %v %v", resp, err)
	}
	resp.Body.Close()
	submitWith(t, d, "invoice.doc", map[string]string{"tags": "office"})
	for _, name := range []string{"dropper.exe", "loader.dll", "update.msi", "setup.exe"} {
		d.submit(t, name, []byte("MZ "+name))
	}
	b.Until(t, 60*time.Second, "analyses running and waiting, a reimage in flight",
		`document.querySelector('#tasks [data-status="running"]') && document.querySelector('#tasks [data-status="pending"]') && `+
			`document.querySelector('#tasks [data-status="failed_analysis"]') && document.querySelector('#operations tr[data-op]')`)
}

// submitWith posts one file with extra form fields and returns the task id.
func submitWith(t *testing.T, d *daemon, name string, fields map[string]string) int64 {
	t.Helper()
	return d.submitForm(t, name, []byte("sample "+name), fields)
}
