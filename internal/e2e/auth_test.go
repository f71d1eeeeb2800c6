package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/auth"
	"github.com/sandfleet/sandfleet/internal/guest/guesttest"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
)

// tokenCreate runs `sandfleet token create` and returns the key: the last
// line of its standard output, as `| tail -1` would.
func tokenCreate(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"token", "create"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("token create %v: %v\n%s%s", args, err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	key := lines[len(lines)-1]
	if !strings.HasPrefix(key, auth.Prefix) || len(key) != 46 {
		t.Fatalf("token create %v: the last line is not a token:\n%s", args, out)
	}
	return key
}

// The token commands through the binary: the file they share with the
// configuration, what each prints, what each refuses.
func TestTokenCommands(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens.txt")
	conf := filepath.Join(dir, "sandfleet.yaml")
	if err := os.WriteFile(conf, []byte("auth: { tokens_file: "+file+" }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := runCLI(t, "token", "list"); code != 2 || !strings.Contains(out, "pass --tokens-file FILE, or set auth.tokens_file") {
		t.Fatalf("token list with no tokens file anywhere: exit %d\n%s", code, out)
	}
	ci := tokenCreate(t, "ci", "--config", conf)
	ops := tokenCreate(t, "ops", "--tokens-file", file)
	if ci == ops {
		t.Fatal("two creates printed the same token")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{ci, ops} {
		if strings.Contains(string(data), k[len(auth.Prefix):len(auth.Prefix)+20]) {
			t.Fatalf("the tokens file holds a token in clear:\n%s", data)
		}
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Errorf("tokens file mode %v, want 0600", fi.Mode())
	}

	code, out := runCLI(t, "token", "list", "--config", conf)
	if code != 0 || !regexp.MustCompile(`(?m)^NAME +CREATED\nci +20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ\nops +20`).MatchString(out) {
		t.Fatalf("token list: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "sha256") || strings.Contains(out, ci) || strings.Contains(out, ops) {
		t.Fatalf("token list shows a hash or a token:\n%s", out)
	}
	if code, out := runCLI(t, "token", "create", "ci", "--config", conf); code != 2 || !strings.Contains(out, `token "ci" already exists in `+file) {
		t.Errorf("a second ci: exit %d\n%s", code, out)
	}
	if code, out := runCLI(t, "token", "revoke", "bob", "--config", conf); code != 2 || !strings.Contains(out, `no token named "bob" in `+file) {
		t.Errorf("revoke of an unknown token: exit %d\n%s", code, out)
	}
	if code, out := runCLI(t, "token", "create", "x", "--tokens-file", filepath.Join(dir, "nodir", "t")); code != 2 ||
		!strings.Contains(out, filepath.Join(dir, "nodir")+" does not exist") {
		t.Errorf("a tokens file in a missing directory: exit %d\n%s", code, out)
	}
	if code, out := runCLI(t, "token", "revoke", "ci", "--config", conf); code != 0 || !strings.Contains(out, `token "ci" revoked in `+file+" (1 left)") {
		t.Fatalf("revoke: exit %d\n%s", code, out)
	}
	if code, out := runCLI(t, "token", "list", "--tokens-file", file); code != 0 || strings.Contains(out, "ci ") || !strings.Contains(out, "ops ") {
		t.Fatalf("token list after revoke: exit %d\n%s", code, out)
	}
	if code, out := runCLI(t, "token", "revoke", "ops", "--config", conf); code != 0 || !strings.Contains(out, "No token is left") {
		t.Fatalf("revoke of the last token: exit %d\n%s", code, out)
	}
}

// Token creates run at once from separate processes each keep their line.
func TestConcurrentTokenCreates(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens.txt")
	const n = 12
	keys := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { keys[i] = tokenCreate(t, fmt.Sprintf("p%d", i), "--tokens-file", file) })
	}
	wg.Wait()
	tokens, err := auth.List(file)
	if err != nil || len(tokens) != n {
		t.Fatalf("%d tokens in the file after %d concurrent creates (%v)", len(tokens), n, err)
	}
	for i, k := range keys {
		if name, ok := auth.Match(tokens, k); !ok || name != fmt.Sprintf("p%d", i) {
			t.Errorf("the token printed for p%d is in the file as %q (%v)", i, name, ok)
		}
	}
}

// serve refuses to start where tokens are needed and missing, naming why.
func TestServeRefusesWithoutTokens(t *testing.T) {
	dir := t.TempDir()
	code, out := runCLI(t, "serve", "--data-dir", dir, "--listen", "0.0.0.0:0")
	if code != 2 || !strings.Contains(out, "auth.tokens_file: required when listen (0.0.0.0:0) is not a loopback address: anyone who reaches the port could submit samples") {
		t.Fatalf("serve on every address without tokens: exit %d\n%s", code, out)
	}
	empty := filepath.Join(dir, "tokens.txt")
	os.WriteFile(empty, []byte("# none yet\n"), 0o600)
	conf := filepath.Join(dir, "sandfleet.yaml")
	os.WriteFile(conf, []byte(fmt.Sprintf("listen: 127.0.0.1:0\ndata_dir: %s\nauth: { tokens_file: %s }\n", dir, empty)), 0o644)
	if code, out := runCLI(t, "serve", "--config", conf); code != 2 || !strings.Contains(out, "tokens file "+empty+" holds no token") {
		t.Fatalf("serve with a tokens file holding no token: exit %d\n%s", code, out)
	}
}

// No secret reaches the daemon's output or an API reply: not the database
// password, not a token that is right, wrong or revoked, not a stored hash.
func TestServeKeepsSecrets(t *testing.T) {
	db, err := url.Parse(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	var pw [12]byte
	rand.Read(pw[:])
	password := "pw" + hex.EncodeToString(pw[:])
	// Trust authentication ignores the password: it is there to be kept secret.
	db.User = url.UserPassword(db.User.Username(), password)

	dir := t.TempDir()
	file := filepath.Join(dir, "tokens.txt")
	key := tokenCreate(t, "ci", "--tokens-file", file)
	revoked := tokenCreate(t, "old", "--tokens-file", file)
	if code, out := runCLI(t, "token", "revoke", "old", "--tokens-file", file); code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	wrong := "sf_" + strings.Repeat("W", 43)
	hash := auth.Hash(key)
	secrets := map[string]string{"database password": password, "token": key, "revoked token": revoked,
		"wrong token": wrong, "stored hash": hex.EncodeToString(hash[:])}

	listen := freePort(t)
	agentIP, agentPort := guesttest.Agent(t)
	conf := filepath.Join(dir, "sandfleet.yaml")
	yaml := fmt.Sprintf(`listen: %s
data_dir: %s
database: %s
auth: { tokens_file: %s }
resultserver: { listen: "%s" }
fleet: { reconcile_interval: 1s }
guest: { agent_port: %d }
pools:
  - name: lab
    provider: static
    platform: windows
    machines:
      - { label: lab1, ip: %s, arch: x64 }
`, listen, dir, db.String(), file, freePort(t), agentPort, agentIP)
	if err := os.WriteFile(conf, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &daemon{api: "http://" + listen, conf: conf}
	d.proc = start(t, "serve", "--config", conf)
	poll.Until(t, 60*time.Second, "/readyz 200", func() bool { return d.answers("/readyz") })

	var replies []string
	request := func(method, path, authorization, contentType string, body io.Reader) int {
		t.Helper()
		req, _ := http.NewRequest(method, d.api+path, body)
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		replies = append(replies, fmt.Sprintf("%s %s: %d %s", method, path, resp.StatusCode, b))
		return resp.StatusCode
	}
	sample := func() (string, io.Reader) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		w, _ := mw.CreateFormFile("file", "sample.exe")
		w.Write([]byte("MZ sample"))
		mw.Close()
		return mw.FormDataContentType(), &buf
	}
	for _, tt := range []struct {
		method, path, authorization string
		code                        int
	}{
		{"GET", "/apiv2/machines/list/", "Token " + key, 200},
		{"GET", "/apiv2/machines/view/lab1/", "Token " + key, 200},
		{"GET", "/apiv2/cuckoo/status/", "Token " + key, 200},
		{"GET", "/apiv2/machines/list/", "", 401},
		{"GET", "/apiv2/machines/list/", "Token " + wrong, 401},
		{"GET", "/apiv2/machines/list/", "Token " + revoked, 401},
		{"GET", "/apiv2/machines/list/", "Basic " + wrong, 401},
		{"POST", "/apiv2/tasks/create/file/", "Token " + wrong, 401},
		{"POST", "/apiv2/tasks/create/file/", "Token " + key, 200},
		{"GET", "/apiv2/nothing/", "Token " + wrong, 404},
		{"GET", "/readyz", "Token " + wrong, 200},
		{"GET", "/healthz", "", 200},
		{"GET", "/metrics", "", 200},
	} {
		var ctype string
		var body io.Reader
		if tt.method == "POST" {
			ctype, body = sample()
		}
		if code := request(tt.method, tt.path, tt.authorization, ctype, body); code != tt.code {
			t.Errorf("%s %s (%.9s…): %d, want %d\n%s", tt.method, tt.path, tt.authorization, code, tt.code, replies[len(replies)-1])
		}
	}
	// The CLI, with the right token and a wrong one.
	if code, out := runCLI(t, "machines", "list", "--server", d.api, "--token", key); code != 0 || !strings.Contains(out, "lab1") {
		t.Errorf("machines list --token: exit %d\n%s", code, out)
	}
	code, out := runCLI(t, "machines", "list", "--server", d.api, "--token", wrong)
	if code == 0 || !strings.Contains(out, "invalid token") {
		t.Errorf("machines list with a wrong token: exit %d\n%s", code, out)
	}
	replies = append(replies, out)

	// A token made while the daemon runs works at once, and the daemon's
	// log line about reading the file again holds no secret either.
	fresh := tokenCreate(t, "fresh", "--tokens-file", file)
	secrets["token made while serving"] = fresh
	if code := request("GET", "/apiv2/machines/list/", "Token "+fresh, "", nil); code != 200 {
		t.Errorf("a token made while serving: %d", code)
	}
	poll.Until(t, 10*time.Second, "the daemon logs the refusals", func() bool {
		return strings.Count(d.output(), "request refused") >= 4
	})

	logs := d.output()
	if !strings.Contains(logs, "xxxxx") {
		t.Errorf("the log does not name the database (password masked):\n%s", tail(logs, 30))
	}
	for what, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("the %s is in the daemon's output:\n%s", what, logs)
		}
		for _, r := range replies {
			if strings.Contains(r, s) {
				t.Errorf("the %s is in a reply: %s", what, r)
			}
		}
	}
}
