package resultserver

import (
	"bytes"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// memConn is one connection whose whole stream is known in advance: the
// fuzzer's input, without the cost of a socket per run.
type memConn struct {
	mu     sync.Mutex
	r      *bytes.Reader
	closed bool
}

func (c *memConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

func (c *memConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *memConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2042} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.ParseIP(ipA), Port: 49152} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// fuzzOptions are caps small enough that random streams meet them.
var fuzzOptions = Options{MaxFile: 64, MaxLog: 96, MaxStream: 160, MaxAnalysis: 128, MaxFiles: 3}

// FuzzStream feeds arbitrary bytes as one connection's whole stream and
// checks what must hold whatever the guest sends: no panic, nothing
// written or changed outside the task's folder, nothing in it but plain
// files and the layout's folders, every cap respected, every byte counted.
func FuzzStream(f *testing.F) {
	for _, seed := range []string{
		"LOG\nhello\n",
		"BSON 1234\n\x10\x00\x00\x00",
		"PROTO 5\n\x08\x01",
		"FILE\nshots/0001.jpg\n\xff\xd8",
		"FILE\nfiles/a_script.log\nx",
		"FILE\ntlsdump/tlsdump.log\nk",
		fileV2("files/abc", `C:\x.exe`, "1 2", "3", "m", "files", false) + "MZ",
		fileV2("CAPE/abc", `C:\x.dll`, "1", "", "", "CAPE", true),
		"FILE\n../../x\nevil",
		"FILE\nfiles/..\nevil",
		"FILE\n/etc/passwd\nevil",
		"FILE\nfiles/a:\x00b\nz",
		"FILE\nfiles/" + strings.Repeat("n", 300) + "\n",
		strings.Repeat("A", 5000),
		"LOG\n" + strings.Repeat("l", 200),
		"FILE 2\nfiles/a\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		base := t.TempDir()
		dir := filepath.Join(base, "A")
		other := filepath.Join(base, "other")
		if err := os.Mkdir(other, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(other, "canary"), []byte("canary"), 0o640); err != nil {
			t.Fatal(err)
		}
		s := newServer(fuzzOptions)
		if err := s.Register(ipA, 1, dir); err != nil {
			t.Fatal(err)
		}
		before := outsideOf(t, base, "A")

		s.handleConn(&memConn{r: bytes.NewReader(stream)}, 0)
		st := s.Unregister(ipA, 1)

		if d := diffTrees(before, outsideOf(t, base, "A")); d != "" {
			t.Fatalf("written outside the task's folder: %s", d)
		}
		var sum int64
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			if d.IsDir() {
				if rel != "." && !resultFolders[filepath.ToSlash(rel)] {
					t.Errorf("unexpected folder %q", rel)
				}
				return nil
			}
			if !d.Type().IsRegular() {
				t.Errorf("%q is not a plain file (%v)", rel, d.Type())
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			sum += fi.Size()
			slash := filepath.ToSlash(rel)
			limit := fuzzOptions.MaxFile + int64(len(truncatedMarker))
			switch {
			case slash == "analysis.log":
				limit = fuzzOptions.MaxLog
			case slash == "files.json":
				limit = fuzzOptions.MaxAnalysis
			case strings.HasPrefix(slash, "logs/") && (strings.HasSuffix(slash, ".bson") || strings.HasSuffix(slash, ".protobuf")):
				limit = fuzzOptions.MaxStream // or an upload named so, which is smaller
			case !resultFolders[path.Dir(slash)]:
				t.Errorf("file %q outside the upload folders", rel)
			}
			if fi.Size() > limit {
				t.Errorf("%q is %d bytes, over its cap %d", rel, fi.Size(), limit)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if sum != st.Bytes || st.Bytes > fuzzOptions.MaxAnalysis {
			t.Errorf("folder holds %d bytes, stats count %d, cap %d", sum, st.Bytes, fuzzOptions.MaxAnalysis)
		}
		if st.Files > fuzzOptions.MaxFiles || st.Connections != 1 {
			t.Errorf("stats %+v", st)
		}
	})
}
