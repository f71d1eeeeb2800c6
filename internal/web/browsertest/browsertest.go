// Package browsertest drives the dashboard in a real headless Chromium, for
// tests: the page's script is most of the dashboard, and only a browser
// runs it. Chromium is Debian's (/usr/bin/chromium, or $SANDFLEET_CHROMIUM);
// a test that needs it fails, rather than skips, when it is missing, so that
// a machine without it cannot pass for one that ran the test.
package browsertest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// DefaultPath is where Debian's chromium package puts the browser.
const DefaultPath = "/usr/bin/chromium"

// Path returns the Chromium to run: $SANDFLEET_CHROMIUM, else DefaultPath.
// It fails tb, saying how to install one, when there is none.
func Path(tb testing.TB) string {
	tb.Helper()
	path := os.Getenv("SANDFLEET_CHROMIUM")
	if path == "" {
		path = DefaultPath
	}
	if st, err := os.Stat(path); err != nil || st.IsDir() {
		tb.Fatalf("no Chromium at %s: the dashboard's browser tests need one. Install it with "+
			"`apt-get install -y chromium` (Debian; .ci/run does this), or point SANDFLEET_CHROMIUM at a Chromium or Chrome binary", path)
	}
	return path
}

// Browser is a headless Chromium with one tab, closed when the test ends.
// It keeps what the page did that a test should not let pass unseen:
// requests to hosts outside 127.0.0.0/8 and errors on the console.
type Browser struct {
	ctx context.Context

	mu       sync.Mutex
	requests []string
	errors   []string
}

// New starts Chromium. Every call it makes is bounded by the test's life
// and at most ten minutes.
func New(t testing.TB) *Browser {
	t.Helper()
	path := Path(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // tests run as root in CI containers
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		chromedp.WindowSize(1600, 1000),
		// Without these Chromium reaches for Google's services (updates,
		// field trials, sync, safe browsing) and logs its failures; the
		// tests talk to 127.0.0.0/8 only.
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("no-pings", true),
		// And should anything still try, no name resolves.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"),
		// /dev/shm is small in many containers.
		chromedp.Flag("disable-dev-shm-usage", true),
	}
	bounded, stop := context.WithTimeout(context.Background(), 10*time.Minute)
	actx, cancelAlloc := chromedp.NewExecAllocator(bounded, opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // waits for Chromium to exit, before its data dir goes
		stop()
	})
	b := &Browser{ctx: ctx}
	// The first action starts the browser under ctx (not under a shorter
	// per-call timeout, which would close it when it ends).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium (%s): %v", path, err)
	}
	if err := chromedp.Listen(ctx, b.note); err != nil {
		t.Fatal(err)
	}
	return b
}

// note keeps the events a test checks. It runs in chromedp's read loop:
// it must return at once.
func (b *Browser) note(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		b.requests = append(b.requests, ev.Request.URL)
	case *log.EventEntryAdded:
		if ev.Entry.Level == log.EntryLevelError {
			b.errors = append(b.errors, fmt.Sprintf("%s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
		}
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			msg = d.Exception.Description
		}
		b.errors = append(b.errors, fmt.Sprintf("exception: %s (%s:%d)", msg, d.URL, d.LineNumber+1))
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError {
			var parts []string
			for _, a := range ev.Args {
				parts = append(parts, strings.Trim(string(a.Value), `"`)+a.Description)
			}
			b.errors = append(b.errors, "console.error: "+strings.Join(parts, " "))
		}
	}
}

// Do runs actions, failing t if they do not end within a minute.
func (b *Browser) Do(t testing.TB, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("browser: %v\npage:\n%s", err, b.text())
	}
}

// Eval evaluates a JavaScript expression in the page.
func Eval[T any](t testing.TB, b *Browser, js string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// Until waits for a JavaScript expression to be truthy in the page, failing t
// with what it waited for and the page's text if it is not within the time.
func (b *Browser) Until(t testing.TB, within time.Duration, what, js string) {
	t.Helper()
	err := poll.UntilCtx(b.ctx, within, func() bool {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		// Boolean(): an expression may well end in an element or null.
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("Boolean("+js+")"))
		return err == nil && ok
	})
	if err != nil {
		t.Fatalf("timed out after %s waiting for the page to show: %s\npage:\n%s", within, what, b.text())
	}
}

// text is what the page shows, for failure messages.
func (b *Browser) text() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	return s
}

// Screenshot returns a PNG of the whole page.
func (b *Browser) Screenshot(t testing.TB) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	return png
}

// Errors returns the console's errors and the page's uncaught exceptions
// so far.
func (b *Browser) Errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

// Offsite returns the requests the page made to anything but a loopback
// address (data: and about: URLs aside).
func (b *Browser) Offsite() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, raw := range b.requests {
		u, err := url.Parse(raw)
		if err != nil {
			out = append(out, raw)
			continue
		}
		if u.Scheme == "data" || u.Scheme == "about" {
			continue
		}
		if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
			out = append(out, raw)
		}
	}
	return out
}
