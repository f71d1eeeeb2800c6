package web_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/sandfleet/sandfleet/internal/web"
)

func get(t *testing.T, h http.Handler, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Result(), string(body)
}

// The page must work where the daemon runs, often with no way out to the
// internet: it may load nothing from anywhere but its own origin.
func TestNothingFromElsewhere(t *testing.T) {
	h := web.Handler()
	_, page := get(t, h, "/")
	refs := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(page, -1)
	if len(refs) < 3 {
		t.Fatalf("the page references %d assets: %v", len(refs), refs)
	}
	for _, ref := range refs {
		if !strings.HasPrefix(ref[1], "/static/") {
			t.Errorf("the page loads %q, not one of its own assets", ref[1])
		}
		resp, body := get(t, h, ref[1])
		if resp.StatusCode != 200 || body == "" {
			t.Errorf("GET %s: %d", ref[1], resp.StatusCode)
		}
	}
	for _, asset := range []string{"/static/app.js", "/static/style.css"} {
		_, body := get(t, h, asset)
		for _, bad := range []string{"http:", "https:", "url(", "@import", "import(", "innerHTML", "eval("} {
			if strings.Contains(body, bad) {
				t.Errorf("%s contains %q", asset, bad)
			}
		}
	}
}

func TestHeaders(t *testing.T) {
	h := web.Handler()
	resp, _ := get(t, h, "/")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Error("no nosniff")
	}
	if resp, _ := get(t, h, "/static/"); resp.StatusCode != 404 {
		t.Errorf("a directory listing: %d", resp.StatusCode)
	}
}
