package api_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/auth"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/store"
)

// checker is a tokens file in a temporary directory holding the hashes of
// keys, read as the daemon reads it; nil when there are no keys.
func checker(t *testing.T, keys ...string) *auth.Checker {
	t.Helper()
	if len(keys) == 0 {
		return nil
	}
	var b strings.Builder
	for i, k := range keys {
		fmt.Fprintln(&b, auth.Token{Name: fmt.Sprintf("t%d", i), Hash: auth.Hash(k)})
	}
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := auth.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newHTTPServer serves st and f, checking tokens with c.
func newHTTPServer(t *testing.T, st store.Store, f *fleet.Fleet, c *auth.Checker) string {
	t.Helper()
	srv := httptest.NewServer(api.New(api.Options{Store: st, Fleet: f, Tokens: c}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// call GETs path with the Authorization header h (none if empty) and
// returns the status, the WWW-Authenticate header and the body.
func call(t *testing.T, url, h string) (int, string, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if h != "" {
		req.Header.Set("Authorization", h)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate"), string(body)
}

func TestTokenAuth(t *testing.T) {
	const (
		key   = "sf_right0123456789abcdefghijklmnopqrstuvwxyzAB"
		other = "sf_other0123456789abcdefghijklmnopqrstuvwxyzAB"
		wrong = "sf_wrong0123456789abcdefghijklmnopqrstuvwxyzAB"
	)
	srv, _ := newServer(t, map[string]bool{key: true, other: true})
	tests := []struct {
		name, path, header string
		code               int
		says               string // in the error reply
	}{
		{"no header", "/apiv2/machines/list/", "", 401, "send the header Authorization: Token <key>"},
		{"wrong token", "/apiv2/machines/list/", "Token " + wrong, 401, "invalid token: send Authorization: Token <key>"},
		{"right token, one character off", "/apiv2/machines/list/", "Token " + key[:len(key)-1] + "C", 401, "invalid token"},
		{"a stored hash sent as the token", "/apiv2/machines/list/", "Token " + fmt.Sprintf("%x", auth.Hash(key)), 401, "invalid token"},
		{"empty key", "/apiv2/machines/list/", "Token ", 401, "must be Token <key>"},
		{"other scheme", "/apiv2/machines/list/", "Basic " + wrong, 401, "must be Token <key>"},
		{"key alone", "/apiv2/machines/list/", key, 401, "must be Token <key>"},
		{"right token", "/apiv2/machines/list/", "Token " + key, 200, ""},
		{"the other token", "/apiv2/machines/list/", "Token " + other, 200, ""},
		{"scheme in lower case, as DRF allows", "/apiv2/machines/list/", "token " + key, 200, ""},
		{"Bearer", "/apiv2/machines/list/", "Bearer " + key, 200, ""},
		{"spaces around the key", "/apiv2/machines/list/", "Token   " + key + "  ", 200, ""},
		{"no trailing slash, no header", "/apiv2/machines/list", "", 401, "Authorization: Token <key>"},
		{"no trailing slash, right token", "/apiv2/machines/list", "Token " + key, 200, ""},
		{"healthz needs none", "/healthz", "", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, www, body := call(t, srv.URL+tt.path, tt.header)
			if code != tt.code {
				t.Fatalf("%d, want %d: %s", code, tt.code, body)
			}
			var env envelope
			if code == 401 && (www != `Token realm="sandfleet"` || json.Unmarshal([]byte(body), &env) != nil || !bool(env.Error) ||
				!strings.Contains(env.ErrorValue, tt.says)) {
				t.Errorf("401 reply: WWW-Authenticate %q, body %s; want the error envelope saying %q", www, body, tt.says)
			}
			for _, secret := range []string{key, other, wrong, key[3 : len(key)-1]} {
				if strings.Contains(body, secret) {
					t.Errorf("the reply holds a token: %s", body)
				}
			}
		})
	}
}

// A token made or revoked while the server runs counts at once; a tokens
// file that becomes unusable (the last token revoked, a line that does not
// parse) refuses every request rather than keep the tokens it last read.
func TestTokensFileChangesTakeEffect(t *testing.T) {
	st, f := newFleet(t)
	path := filepath.Join(t.TempDir(), "tokens")
	first, err := auth.Create(path, "first", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := auth.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPServer(t, st, f, c)
	status := func(key string) int {
		code, _, _ := call(t, srv+"/apiv2/machines/list/", "Token "+key)
		return code
	}
	if code := status(first); code != 200 {
		t.Fatalf("first token: %d", code)
	}
	second, err := auth.Create(path, "second", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if a, b := status(second), status(first); a != 200 || b != 200 {
		t.Fatalf("after creating a second token: second %d, first %d; want 200 200", a, b)
	}
	if _, err := auth.Revoke(path, "first"); err != nil {
		t.Fatal(err)
	}
	if a, b := status(first), status(second); a != 401 || b != 200 {
		t.Fatalf("after revoking the first: first %d, second %d; want 401 200", a, b)
	}
	if _, err := auth.Revoke(path, "second"); err != nil {
		t.Fatal(err)
	}
	if code := status(second); code != 503 {
		t.Fatalf("no token left: %d, want 503", code)
	}
	// Written in place, same size as the last good file would be: the
	// modification time and the re-reads right after a change catch it.
	if err := os.WriteFile(path, []byte(second+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, body := call(t, srv+"/apiv2/machines/list/", "Token "+second)
	if code != 503 || strings.Contains(body, second) || strings.Contains(body, path) {
		t.Fatalf("a token in clear in the file: %d %s; want 503 naming neither the token nor the file", code, body)
	}
	third, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(auth.Token{Name: "third", Hash: auth.Hash(third)}.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := status(third); code != 200 {
		t.Fatalf("a fixed file: %d", code)
	}
}
