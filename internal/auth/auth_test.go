package auth

import (
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestNewKey(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		k, err := NewKey()
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^sf_[A-Za-z0-9_-]{43}$`).MatchString(k) {
			t.Fatalf("key %q: want sf_ and 43 base64url characters (32 bytes)", k)
		}
		if seen[k] {
			t.Fatalf("key %q made twice", k)
		}
		seen[k] = true
	}
}

// Create, List and Revoke through the file: the file holds hashes and no
// key, is 0600, keeps the operator's comments, and refuses what it should
// with the name or path that is wrong.
func TestCreateListRevoke(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.txt")
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ci, err := Create(path, "ci", now)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new tokens file: %v, mode %v; want 0600", err, fi.Mode())
	}
	// An operator's note, kept by every later edit.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("\n# laptop of alice, until 2027\n")
	f.Close()
	alice, err := Create(path, "alice.laptop", now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	for _, k := range []string{ci, alice} {
		body := strings.TrimPrefix(k, Prefix)
		if strings.Contains(string(data), body) || strings.Contains(string(data), body[:16]) {
			t.Fatalf("the tokens file holds a key in clear:\n%s", data)
		}
		h := Hash(k)
		if !strings.Contains(string(data), "sha256:"+hex.EncodeToString(h[:])) {
			t.Fatalf("the tokens file lacks the hash of a key:\n%s", data)
		}
	}
	if !strings.Contains(string(data), "ci sha256:") || !strings.Contains(string(data), " created=2026-11-30T12:00:00Z\n") {
		t.Fatalf("tokens file:\n%s", data)
	}

	tokens, err := List(path)
	if err != nil || len(tokens) != 2 || tokens[0].Name != "ci" || !tokens[0].Created.Equal(now) ||
		tokens[1].Name != "alice.laptop" || !tokens[1].Created.Equal(now.Add(time.Hour)) {
		t.Fatalf("List = %+v, %v", tokens, err)
	}
	if name, ok := Match(tokens, alice); !ok || name != "alice.laptop" {
		t.Fatalf("Match(alice's key) = %q, %v", name, ok)
	}

	if _, err := Create(path, "ci", now); err == nil || !strings.Contains(err.Error(), `token "ci" already exists in `+path) {
		t.Errorf("a second ci: %v", err)
	}
	for _, bad := range []string{"", "has space", "semi;colon", "sha256:x", strings.Repeat("a", 65)} {
		if _, err := Create(path, bad, now); err == nil || !strings.Contains(err.Error(), "token name") {
			t.Errorf("Create(%q): %v, want the name refused", bad, err)
		}
	}
	if _, err := Revoke(path, "bob"); err == nil || !strings.Contains(err.Error(), `no token named "bob" in `+path) {
		t.Errorf("revoke of an unknown name: %v", err)
	}
	left, err := Revoke(path, "ci")
	if err != nil || left != 1 {
		t.Fatalf("Revoke(ci) = %d, %v", left, err)
	}
	after, _ := os.ReadFile(path)
	if want := strings.Replace(string(data), tokens[0].String()+"\n", "", 1); string(after) != want {
		t.Fatalf("revoke changed more than the token's line:\n%s\nwant:\n%s", after, want)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("after revoke: mode %v", fi.Mode())
	}
	tokens, _ = List(path)
	if _, ok := Match(tokens, ci); ok || len(tokens) != 1 {
		t.Fatalf("after revoke: %+v", tokens)
	}
	if left, err := Revoke(path, "alice.laptop"); err != nil || left != 0 {
		t.Fatalf("last revoke: %d, %v", left, err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(leftovers) != 1 {
		t.Errorf("files beside the tokens file: %v", leftovers)
	}

	missing := filepath.Join(dir, "nodir", "tokens")
	if _, err := Create(missing, "ci", now); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "nodir")+" does not exist") {
		t.Errorf("a file in a missing directory: %v", err)
	}
	for _, err := range []error{func() error { _, err := List(filepath.Join(dir, "none")); return err }(),
		func() error { _, err := Revoke(filepath.Join(dir, "none"), "ci"); return err }()} {
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "none")+" does not exist") {
			t.Errorf("a missing file: %v", err)
		}
	}
}

// An edit keeps a file's mode: an operator who made it group-readable for
// the daemon's group keeps it so.
func TestEditKeepsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if _, err := Create(path, "a", time.Now()); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o640)
	if _, err := Create(path, "b", time.Now()); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640 kept", fi.Mode())
	}
}

// A line that does not parse is named by its number and never quoted: it
// may be a token written in clear.
func TestParseErrorsDoNotQuote(t *testing.T) {
	const clear = "sf_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	good := Token{Name: "ok", Hash: Hash("x")}.String()
	for _, tt := range []struct{ file, want string }{
		{"# old style\n" + clear + "\n", "line 2: want NAME sha256:HEX"},
		{good + "\nci " + clear + "\n", "line 2: the second field is not sha256:HEX"},
		{good + "\nci sha256:" + clear + "\n", "line 2: the hash is not 64 hexadecimal digits"},
		{good + "\n" + good + "\n", `line 2: token name "ok" already used on line 1`},
		{good + " note=" + clear + "\n", `line 1: token "ok": unknown field`},
		{good + " created=" + clear + "\n", `line 1: token "ok": created= is not an RFC 3339 time`},
		{clear + " " + clear + "\n", "line 1: the second field is not sha256:HEX"},
		{clear + "; " + clear + "\n", "line 1: the name is not"},
	} {
		_, err := Parse([]byte(tt.file))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) = %v, want %q", tt.file, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), clear[3:20]) {
			t.Errorf("Parse's error quotes the line: %v", err)
		}
	}
	path := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(path, []byte(clear+"\n"), 0o600)
	if _, err := Create(path, "ci", time.Now()); err == nil || !strings.Contains(err.Error(), "not changed") {
		t.Errorf("Create on a file that does not parse: %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != clear+"\n" {
		t.Errorf("a file that does not parse was changed: %q", data)
	}
}

// Match compares the key with every stored hash, whichever matches: no
// early exit, so the time it takes does not tell which token matched.
func TestMatchComparesEveryToken(t *testing.T) {
	var tokens []Token
	var keys []string
	for i := range 5 {
		k, _ := NewKey()
		keys = append(keys, k)
		tokens = append(tokens, Token{Name: fmt.Sprintf("t%d", i), Hash: Hash(k)})
	}
	var compared int
	compare = func(x, y []byte) int { compared++; return subtle.ConstantTimeCompare(x, y) }
	t.Cleanup(func() { compare = subtle.ConstantTimeCompare })
	for i, k := range append(keys, "sf_none") {
		compared = 0
		name, ok := Match(tokens, k)
		if want := i < len(tokens); ok != want || (ok && name != tokens[i].Name) {
			t.Errorf("Match(key %d) = %q, %v", i, name, ok)
		}
		if compared != len(tokens) {
			t.Errorf("Match(key %d) compared %d hashes, want all %d", i, compared, len(tokens))
		}
	}
	if _, ok := Match(tokens, ""); ok {
		t.Error("the empty key matched")
	}
}

// Concurrent creates each see the others' lines: none is lost. (The e2e
// test does the same from separate processes.)
func TestConcurrentCreates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	const n = 16
	var wg sync.WaitGroup
	keys := make([]string, n)
	for i := range n {
		wg.Go(func() {
			k, err := Create(path, fmt.Sprintf("c%d", i), time.Now())
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	tokens, err := List(path)
	if err != nil || len(tokens) != n {
		t.Fatalf("%d tokens after %d concurrent creates (%v)", len(tokens), n, err)
	}
	for i, k := range keys {
		if name, ok := Match(tokens, k); !ok || name != fmt.Sprintf("c%d", i) {
			t.Errorf("key %d: %q, %v", i, name, ok)
		}
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# nothing yet\n"), 0o600)
	if _, err := Open(empty, nil); err == nil || !strings.Contains(err.Error(), "auth.tokens_file: tokens file "+empty+" holds no token") {
		t.Errorf("Open of a file with no token: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "none"), nil); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "none")+" does not exist") {
		t.Errorf("Open of a missing file: %v", err)
	}
	path := filepath.Join(dir, "tokens")
	key, _ := Create(path, "ci", time.Now())
	c, err := Open(path, nil)
	if err != nil || c.Len() != 1 {
		t.Fatalf("Open: %v", err)
	}
	if name, err := c.Check(key); err != nil || name != "ci" {
		t.Errorf("Check(key) = %q, %v", name, err)
	}
	if _, err := c.Check(key + "x"); err != ErrUnknownKey {
		t.Errorf("Check(wrong) = %v, want ErrUnknownKey", err)
	}
	os.Remove(path)
	if _, err := c.Check(key); err == nil || err == ErrUnknownKey {
		t.Errorf("Check with the file gone = %v, want the file's error", err)
	}
}
