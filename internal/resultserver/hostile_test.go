package resultserver

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// hostileOptions are small caps, so that the tests meet them.
var hostileOptions = Options{
	MaxFile:          1024,
	MaxLog:           1024,
	MaxStream:        2048,
	MaxAnalysis:      16 << 10,
	MaxFiles:         5,
	HandshakeTimeout: 300 * time.Millisecond,
	IdleTimeout:      5 * time.Second,
}

// victim fills task B's folder the normal way, so that the hostile task A
// has something real to aim at.
func victim(t *testing.T, s *Server) {
	t.Helper()
	for _, st := range []string{
		"LOG\nB's log\n",
		fileV2("files/target", `C:\target.exe`, "10", "1", "", "files", false) + "B's dropped file",
		"FILE\ntlsdump/keys.log\nB's keys",
		"BSON 1\nB's behaviour",
	} {
		send(t, s, ipB, []byte(st))
	}
}

func TestHostile(t *testing.T) {
	const filesJSONLine = `{"path": "%s", "filepath": "", "pids": [], "ppids": [], "metadata": "", "category": ""}` + "\n"
	pad := func(n int, c string) string { return strings.Repeat(c, n) }
	type env struct{ a, b, outside string }
	for _, c := range []struct {
		name    string
		prepare func(t *testing.T, e env) // plants things in A before the stream
		streams []string
		hold    bool // the client never closes; the server must
		wantA   map[string]string
		check   func(t *testing.T, e env, st Stats) // instead of wantA
		refused string
		cut     int // Stats.Truncated
	}{
		{name: "dot-dot", streams: []string{"FILE\n../B/files/x\nevil"}, refused: `folder "../B/files"`},
		{name: "dot-dot inside an allowed folder", streams: []string{"FILE\nfiles/../../B/files/x\nevil"}, refused: `folder "files/../../B/files"`},
		{name: "dot-dot with backslashes", streams: []string{"FILE\n..\\..\\outside\\x\nevil"}, refused: `folder "../../outside"`},
		{name: "dot-dot v2", streams: []string{fileV2("../x", "", "", "", "", "files", false) + "evil"}, refused: `folder ".."`},
		{name: "name dot-dot", streams: []string{"FILE\nfiles/..\nevil"}, refused: `".." is not a file name`},
		{name: "absolute path", prepare: nil, streams: []string{"FILE\n/tmp/x\nevil"}, refused: `folder "/tmp"`},
		{name: "absolute path into B", check: nil, streams: []string{"FILE\n{B}/files/x\nevil"}, refused: "is not an upload folder"},
		{name: "windows absolute path", streams: []string{"FILE\nC:\\Windows\\x\nevil"}, refused: `folder "C:/Windows"`},
		{name: "folder outside the allow-list", streams: []string{"FILE\nstorage/x\nevil"}, refused: `folder "storage"`},
		{name: "subfolder of an allowed folder", streams: []string{"FILE\nfiles/sub/x\nevil"}, refused: `folder "files/sub"`},
		{name: "no folder", streams: []string{"FILE\nx\nevil"}, refused: `folder ""`},
		{name: "empty name", streams: []string{"FILE\nfiles/\nevil"}, refused: "empty file name"},
		{name: "over-long name", streams: []string{"FILE\nfiles/" + pad(300, "n") + "\nevil"}, refused: "over 255"},
		{name: "NUL and colon become X", streams: []string{"FILE\nfiles/:\x00..\nz"},
			wantA: map[string]string{"files/XX..": "z", "files.json": fmt.Sprintf(filesJSONLine, "files/XX..")}},
		{name: "NUL in the folder", streams: []string{"FILE\nfiles\x00/x\nz"}, refused: "is not an upload folder"},
		{name: "metadata cannot forge files.json fields",
			streams: []string{fileV2("files/ok", `C:\a", "path": "../../evil`, "1", "", `", "category": "x`, "files", false) + "ok"},
			check: func(t *testing.T, e env, st Stats) {
				b, _ := os.ReadFile(filepath.Join(e.a, "files.json"))
				var m map[string]any
				if err := json.Unmarshal(b, &m); err != nil || m["path"] != "files/ok" || m["category"] != "files" || len(m) != 6 {
					t.Errorf("files.json %s: %v", b, err)
				}
			}},
		{name: "over-long first line", streams: []string{pad(5000, "A")}, refused: "first line: line over 4096 bytes"},
		{name: "over-long first line with a newline", streams: []string{pad(5000, "A") + "\nLOG\n"}, refused: "line over 4096 bytes"},
		{name: "over-long path line", streams: []string{"FILE\nfiles/" + pad(5000, "x") + "\n"}, refused: "path line: line over 4096 bytes"},
		{name: "over-long v2 line", streams: []string{"FILE 2\nfiles/a\n" + pad(5000, "x") + "\n"}, refused: "header: line over 4096 bytes"},
		{name: "no first line within the deadline", streams: []string{""}, hold: true, refused: "header not complete within 300ms"},
		{name: "half a first line then silence", streams: []string{"FI"}, hold: true, refused: "header not complete within 300ms"},
		{name: "header never finished", streams: []string{"FILE 2\nfiles/a\nC:\\a\n"}, hold: true, refused: "header not complete"},
		{name: "stream cut inside the header", streams: []string{"FILE 2\nfiles/a\nC:\\a\n1 2\n"}, refused: "connection ended inside the header"},
		{name: "stream cut inside the first line", streams: []string{"BSO"}, refused: "connection ended inside the header"},
		{name: "stream cut mid-file keeps what came, as CAPE does", streams: []string{"FILE\nfiles/half\nfirst half"},
			wantA: map[string]string{"files/half": "first half", "files.json": fmt.Sprintf(filesJSONLine, "files/half")}},
		{name: "oversized FILE cut and marked", streams: []string{"FILE\nfiles/big\n" + pad(3000, "f")}, cut: 1,
			wantA: map[string]string{"files/big": pad(1024, "f") + "... (truncated)", "files.json": fmt.Sprintf(filesJSONLine, "files/big")}},
		{name: "FILE of exactly MaxFile is whole", streams: []string{"FILE\nshots/1.jpg\n" + pad(1024, "s")},
			wantA: map[string]string{"shots/1.jpg": pad(1024, "s")}},
		{name: "oversized LOG cut", streams: []string{"LOG\n" + pad(3000, "l")}, cut: 1,
			wantA: map[string]string{"analysis.log": pad(1024, "l")}},
		{name: "oversized BSON cut", streams: []string{"BSON 7\n" + pad(5000, "b")}, cut: 1,
			wantA: map[string]string{"logs/7.bson": pad(2048, "b")}},
		{name: "oversized PROTO cut", streams: []string{"PROTO 7\n" + pad(5000, "p")}, cut: 1,
			wantA: map[string]string{"logs/7.protobuf": pad(2048, "p")}},
		{name: "analysis cap", streams: bsonStreams(12, 2000), cut: 1, refused: "BSON 9: analysis byte cap reached",
			check: func(t *testing.T, e env, st Stats) {
				want := map[string]string{}
				for i := range 8 {
					want[fmt.Sprintf("logs/%d.bson", i)] = pad(2000, "x")
				}
				want["logs/8.bson"] = pad(16<<10-8*2000, "x")
				if d := diffTrees(want, files(t, e.a)); d != "" {
					t.Error(d)
				}
				if st.Bytes != 16<<10 || len(st.Refused) != 3 {
					t.Errorf("stats %+v", st)
				}
			}},
		{name: "analysis cap on files.json", streams: dupStreams(200), refused: "analysis byte cap reached",
			check: func(t *testing.T, e env, st Stats) {
				fi, err := os.Stat(filepath.Join(e.a, "files.json"))
				if err != nil || fi.Size() > 16<<10 || fi.Size() < 15<<10 || st.Bytes != fi.Size() {
					t.Errorf("files.json %v %v, stats %+v", fi.Size(), err, st)
				}
			}},
		{name: "file count cap", streams: []string{"FILE\nshots/1\n", "FILE\nshots/2\n", "FILE\nshots/3\n", "FILE\nshots/4\n", "FILE\nshots/5\n", "FILE\nshots/6\n"},
			refused: `FILE "shots/6": over 5 files`,
			wantA:   map[string]string{"shots/1": "", "shots/2": "", "shots/3": "", "shots/4": "", "shots/5": ""}},
		{name: "pids not numbers", streams: []string{fileV2("files/a", "", "1 x", "", "", "", false) + "d"}, refused: `pids: "x" is not an integer`},
		{name: "duplicated not a number", streams: []string{fileV2("files/a", "", "", "", "", "", false)[:len(fileV2("files/a", "", "", "", "", "", false))-2] + "yes\nd"}, refused: "duplicated:"},
		{name: "three words", streams: []string{"FILE 2 3\nfiles/a\n"}, refused: "not COMMAND [version]"},
		{name: "version not a number", streams: []string{"FILE two\nfiles/a\n"}, refused: "is not an integer"},
		{name: "BSON without pid", streams: []string{"BSON\ndata"}, refused: "BSON: no pid"},
		{name: "BSON negative pid", streams: []string{"BSON -1\ndata"}, refused: "BSON -1: not a pid"},
		{name: "BSON pid too large", streams: []string{"BSON 4294967296\ndata"}, refused: "not a pid"},
		{name: "unknown command", streams: []string{"GET / HTTP/1.1\r\nHost: x\r\n\r\n"}, refused: "not COMMAND [version]"},
		{name: "unknown command word", streams: []string{"DELETE\n"}, refused: `command "DELETE": unknown command`},

		// Planted links: os.Root keeps every open inside A, and the
		// checks on top refuse links that stay inside it too.
		{name: "symlink to B as an upload name", prepare: func(t *testing.T, e env) {
			must(t, os.Symlink("../../B/files/target", filepath.Join(e.a, "files", "link")))
		}, streams: []string{"FILE\nfiles/link\nevil"}, refused: "file exists",
			wantA: map[string]string{"files/link": "-> ../../B/files/target"}},
		{name: "symlink to B as a replaced upload", prepare: func(t *testing.T, e env) {
			must(t, os.Symlink("../../B/tlsdump/keys.log", filepath.Join(e.a, "tlsdump", "keys.log")))
		}, streams: []string{"FILE\ntlsdump/keys.log\nevil"}, refused: "not a plain file",
			wantA: map[string]string{"tlsdump/keys.log": "-> ../../B/tlsdump/keys.log"}},
		{name: "symlink inside A as a replaced upload", prepare: func(t *testing.T, e env) {
			must(t, os.WriteFile(filepath.Join(e.a, "files", "own"), []byte("A's own"), 0o640))
			must(t, os.Symlink("../files/own", filepath.Join(e.a, "tlsdump", "keys.log")))
		}, streams: []string{"FILE\ntlsdump/keys.log\nevil"}, refused: "not a plain file",
			wantA: map[string]string{"files/own": "A's own", "tlsdump/keys.log": "-> ../files/own"}},
		{name: "symlink outside as an appended script log", prepare: func(t *testing.T, e env) {
			must(t, os.Symlink(filepath.Join(e.outside, "canary"), filepath.Join(e.a, "files", "x_script.log")))
		}, streams: []string{"FILE\nfiles/x_script.log\nevil"}, refused: "not a plain file", check: func(t *testing.T, e env, st Stats) {}},
		{name: "symlinked folder into B", prepare: func(t *testing.T, e env) {
			must(t, os.Remove(filepath.Join(e.a, "memory")))
			must(t, os.Symlink("../B/memory", filepath.Join(e.a, "memory")))
		}, streams: []string{"FILE\nmemory/x.dmp\nevil"}, refused: "folder memory is not a directory",
			wantA: map[string]string{"memory": "-> ../B/memory"}},
		{name: "symlinked folder inside A", prepare: func(t *testing.T, e env) {
			must(t, os.Remove(filepath.Join(e.a, "memory")))
			must(t, os.Symlink("files", filepath.Join(e.a, "memory")))
		}, streams: []string{"FILE\nmemory/x.dmp\nevil"}, refused: "folder memory is not a directory",
			wantA: map[string]string{"memory": "-> files"}},
		{name: "symlinked parent of a nested folder", prepare: func(t *testing.T, e env) {
			must(t, os.RemoveAll(filepath.Join(e.a, "aux")))
			must(t, os.Symlink("../B", filepath.Join(e.a, "aux")))
			must(t, os.MkdirAll(filepath.Join(e.b, "amsi_etw"), 0o750))
		}, streams: []string{"FILE\naux/amsi_etw/x\nevil"}, refused: "folder aux is not a directory",
			wantA: map[string]string{"aux": "-> ../B"}},
		{name: "hard link to B's file as a replaced upload", prepare: func(t *testing.T, e env) {
			must(t, os.Link(filepath.Join(e.b, "tlsdump", "keys.log"), filepath.Join(e.a, "tlsdump", "hl.log")))
		}, streams: []string{"FILE\ntlsdump/hl.log\nevil"}, refused: "other hard links",
			wantA: map[string]string{"tlsdump/hl.log": "B's keys"}},
		{name: "symlinked analysis.log", prepare: func(t *testing.T, e env) {
			must(t, os.Symlink("../B/analysis.log", filepath.Join(e.a, "analysis.log")))
		}, streams: []string{"LOG\nevil"}, refused: "LOG: analysis.log was already opened",
			wantA: map[string]string{"analysis.log": "-> ../B/analysis.log"}},
		{name: "symlinked BSON log", prepare: func(t *testing.T, e env) {
			must(t, os.Symlink("../../B/logs/1.bson", filepath.Join(e.a, "logs", "1.bson")))
		}, streams: []string{"BSON 1\nevil"}, refused: "BSON 1: existing logs/1.bson is not a plain file",
			wantA: map[string]string{"logs/1.bson": "-> ../../B/logs/1.bson"}},
		{name: "symlinked files.json", prepare: func(t *testing.T, e env) {
			must(t, os.Symlink("../B/files.json", filepath.Join(e.a, "files.json")))
		}, streams: []string{"FILE\nfiles/y\nfine"},
			wantA: map[string]string{"files.json": "-> ../B/files.json", "files/y": "fine"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startServer(t, hostileOptions, nil)
			base := t.TempDir()
			e := env{a: filepath.Join(base, "A"), b: filepath.Join(base, "B"), outside: filepath.Join(base, "outside")}
			must(t, os.Mkdir(e.outside, 0o750))
			must(t, os.WriteFile(filepath.Join(e.outside, "canary"), []byte("canary"), 0o640))
			must(t, s.Register(ipA, 1, e.a))
			must(t, s.Register(ipB, 2, e.b))
			victim(t, s)
			if c.prepare != nil {
				c.prepare(t, e)
			}
			before := outsideOf(t, base, "A")

			for _, st := range c.streams {
				st = strings.ReplaceAll(st, "{B}", e.b)
				if c.hold {
					conn := dial(t, s, ipA)
					conn.Write([]byte(st))
					awaitClose(t, conn)
				} else {
					send(t, s, ipA, []byte(st))
				}
			}
			st := s.Unregister(ipA, 1)

			if d := diffTrees(before, outsideOf(t, base, "A")); d != "" {
				t.Errorf("written outside task A's folder: %s", d)
			}
			if c.check != nil {
				c.check(t, e, st)
			} else {
				want := c.wantA
				if want == nil {
					want = map[string]string{}
				}
				if d := diffTrees(want, files(t, e.a)); d != "" {
					t.Errorf("task A's folder: %s", d)
				}
			}
			switch {
			case c.refused == "" && len(st.Refused) > 0:
				t.Errorf("refused %q", st.Refused)
			case c.refused != "" && !hasRefusal(st, c.refused):
				t.Errorf("refused %q, want %q", st.Refused, c.refused)
			}
			if st.Truncated != c.cut {
				t.Errorf("truncated %d, want %d", st.Truncated, c.cut)
			}
			if st.Bytes > hostileOptions.MaxAnalysis {
				t.Errorf("wrote %d bytes, over the analysis cap", st.Bytes)
			}
		})
	}
}

func bsonStreams(n, size int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("BSON %d\n%s", i, strings.Repeat("x", size)))
	}
	return out
}

// dupStreams are duplicated uploads: no bytes on disk but a files.json line
// each, which the analysis budget must count too.
func dupStreams(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fileV2(fmt.Sprintf("files/%d", i), `C:\`+strings.Repeat("p", 60), "1 2 3", "4", strings.Repeat("m", 20), "files", true))
	}
	return out
}

// outsideOf is the tree of base without the folder skip: what a task
// writing in skip must never change.
func outsideOf(t *testing.T, base, skip string) map[string]string {
	m := tree(t, base)
	for k := range m {
		if k == skip || strings.HasPrefix(k, skip+string(filepath.Separator)) {
			delete(m, k)
		}
	}
	return m
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestConnectionCap: a guest opening connection after connection is
// refused past MaxConns, without costing the connections it already has.
func TestConnectionCap(t *testing.T) {
	o := hostileOptions
	o.MaxConns = 2
	o.HandshakeTimeout = 10 * time.Second
	s := startServer(t, o, nil)
	dir := t.TempDir()
	must(t, s.Register(ipA, 1, dir))
	a := dial(t, s, ipA)
	a.Write([]byte("LOG\none\n"))
	b := dial(t, s, ipA)
	b.Write([]byte("BSON 1\ntwo"))
	poll.Until(t, 5*time.Second, "both streams open", func() bool {
		x, _ := os.ReadFile(filepath.Join(dir, "analysis.log"))
		y, _ := os.ReadFile(filepath.Join(dir, "logs", "1.bson"))
		return len(x) > 0 && len(y) > 0
	})
	third := dial(t, s, ipA)
	awaitClose(t, third) // refused at once, though it is still within its handshake
	a.Write([]byte("still here\n"))
	a.CloseWrite()
	awaitClose(t, a)
	st := s.Unregister(ipA, 1)
	if x, _ := os.ReadFile(filepath.Join(dir, "analysis.log")); string(x) != "one\nstill here\n" {
		t.Errorf("analysis.log %q", x)
	}
	if !hasRefusal(st, "over 2 open connections") || st.Connections != 3 {
		t.Errorf("stats %+v", st)
	}
}

// TestRefusedBounded: a guest making endless bad requests grows Stats by
// a bounded amount.
func TestRefusedBounded(t *testing.T) {
	s := newServer(Options{})
	dir := t.TempDir()
	must(t, s.Register(ipA, 1, dir))
	t1 := s.byPeer[peer{ip: netip.MustParseAddr(ipA)}]
	for range maxRefused + 50 {
		t1.refuse("x")
	}
	st := s.Unregister(ipA, 1)
	if len(st.Refused) != maxRefused+1 || st.Refused[maxRefused] != "50 more refusals not listed" {
		t.Errorf("%d refusals, last %q", len(st.Refused), st.Refused[len(st.Refused)-1])
	}
}
