package resultserver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The analysis machines of the tests: distinct loopback sources, so that
// the server's peer address → task mapping is what picks the folder.
const (
	ipA       = "127.0.0.7"
	ipB       = "127.0.0.8"
	ipUnknown = "127.0.0.9"
)

// logBuffer collects a server's log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startServer starts a server on a loopback port; its log goes to logs
// when given, else to the test's output when -v, else nowhere.
func startServer(t testing.TB, o Options, logs io.Writer) *Server {
	t.Helper()
	o.Listen = "127.0.0.1:0"
	if logs == nil {
		logs = io.Discard
		if testing.Verbose() {
			logs = t.Output()
		}
	}
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Close() })
	return s
}

// dial connects to s from the loopback address ip.
func dial(t testing.TB, s *Server, ip string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatalf("dial from %s: %v", ip, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// awaitClose reads c until the server closes it, which it does only once
// the handler has closed its files and counted its stats. Data the server
// never reads may turn its close into a reset; either way it is closed.
func awaitClose(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server did not close the connection from %s", c.LocalAddr())
	}
}

// send is one analyzer connection: stream, end of stream, wait for the
// server to be done with it. Write errors are expected when the server
// refuses early, so they are not failures.
func send(t testing.TB, s *Server, ip string, stream []byte) {
	t.Helper()
	c := dial(t, s, ip)
	c.Write(stream)
	c.CloseWrite()
	awaitClose(t, c)
}

// fileV2 is the header CAPE's analyzer sends for an upload with metadata.
func fileV2(path, guestPath, pids, ppids, metadata, category string, duplicated bool) string {
	d := 0
	if duplicated {
		d = 1
	}
	return fmt.Sprintf("FILE 2\n%s\n%s\n%s\n%s\n%s\n%s\n%d\n", path, guestPath, pids, ppids, metadata, category, d)
}

// tree lists every entry under dir: regular files with their content,
// directories as "<dir>", symlinks as "-> target". Two trees equal means
// nothing in dir was added, removed or changed.
func tree(t testing.TB, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			m[rel] = "-> " + target
		case d.IsDir():
			m[rel] = "<dir>"
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			m[rel] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// files is tree without the directories: what was written.
func files(t testing.TB, dir string) map[string]string {
	m := tree(t, dir)
	for k, v := range m {
		if v == "<dir>" {
			delete(m, k)
		}
	}
	return m
}

// diffTrees names what differs between two trees, "" if nothing.
func diffTrees(want, got map[string]string) string {
	var out []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			out = append(out, "missing "+k)
		case g != w:
			out = append(out, fmt.Sprintf("%s: %s, want %s", k, short(g), short(w)))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			out = append(out, fmt.Sprintf("unexpected %s (%s)", k, short(g)))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func short(s string) string {
	if len(s) > 60 {
		return fmt.Sprintf("%q…(%d bytes)", s[:60], len(s))
	}
	return fmt.Sprintf("%q", s)
}

func hasRefusal(st Stats, substr string) bool {
	for _, r := range st.Refused {
		if strings.Contains(r, substr) {
			return true
		}
	}
	return false
}
