package resultserver

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// TestCommands sends one connection per case and compares the whole
// analysis folder afterwards with what CAPE's server would have left.
func TestCommands(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB, several reads
	for _, c := range []struct {
		name   string
		stream string
		want   map[string]string // every file in the folder afterwards
		stats  Stats             // Connections, Files, Streams, Truncated compared
	}{
		{
			name:   "LOG",
			stream: "LOG\n2026-01-01 10:00:00,000 [root] INFO: Starting analyzer\nline two\n",
			want:   map[string]string{"analysis.log": "2026-01-01 10:00:00,000 [root] INFO: Starting analyzer\nline two\n"},
			stats:  Stats{Connections: 1, Streams: 1},
		},
		{
			name:   "BSON",
			stream: "BSON 1234\n\x10\x00\x00\x00\x02type\x00\x03\x00\x00\x00ok\x00\x00",
			want:   map[string]string{"logs/1234.bson": "\x10\x00\x00\x00\x02type\x00\x03\x00\x00\x00ok\x00\x00"},
			stats:  Stats{Connections: 1, Streams: 1},
		},
		{
			name:   "BSON large",
			stream: "BSON 8\n" + string(big),
			want:   map[string]string{"logs/8.bson": string(big)},
			stats:  Stats{Connections: 1, Streams: 1},
		},
		{
			name:   "PROTO",
			stream: "PROTO 77\n\x08\x96\x01",
			want:   map[string]string{"logs/77.protobuf": "\x08\x96\x01"},
			stats:  Stats{Connections: 1, Streams: 1},
		},
		{
			name:   "FILE v1 screenshot, not in files.json",
			stream: "FILE\nshots/0001.jpg\n\xff\xd8\xff\xe0jpeg",
			want:   map[string]string{"shots/0001.jpg": "\xff\xd8\xff\xe0jpeg"},
			stats:  Stats{Connections: 1, Files: 1},
		},
		{
			name:   "FILE v1 dropped file",
			stream: "FILE\nfiles/abc_x.bin\nMZ\x90\x00",
			want: map[string]string{
				"files/abc_x.bin": "MZ\x90\x00",
				"files.json":      `{"path": "files/abc_x.bin", "filepath": "", "pids": [], "ppids": [], "metadata": "", "category": ""}` + "\n",
			},
			stats: Stats{Connections: 1, Files: 1},
		},
		{
			name:   "FILE v2",
			stream: fileV2("files/abc_x.exe", `C:\Users\x\x.exe`, "1 2", "3", "meta", "files", false) + string(big),
			want: map[string]string{
				"files/abc_x.exe": string(big),
				"files.json":      `{"path": "files/abc_x.exe", "filepath": "C:\\Users\\x\\x.exe", "pids": [1, 2], "ppids": [3], "metadata": "meta", "category": "files"}` + "\n",
			},
			stats: Stats{Connections: 1, Files: 1},
		},
		{
			name:   "FILE v2 duplicated: metadata only, bytes after the header ignored",
			stream: fileV2("CAPE/abc", `C:\x.dll`, "4", "", "", "CAPE", true) + "ignored",
			want: map[string]string{
				"files.json": `{"path": "CAPE/abc", "filepath": "C:\\x.dll", "pids": [4], "ppids": [], "metadata": "", "category": "CAPE"}` + "\n",
			},
			stats: Stats{Connections: 1},
		},
		{
			name:   "FILE v2 unknown category recorded empty",
			stream: fileV2("procdump/p.dmp", `C:\p.exe`, "", "", "", "weird", false) + "d",
			want: map[string]string{
				"procdump/p.dmp": "d",
				"files.json":     `{"path": "procdump/p.dmp", "filepath": "C:\\p.exe", "pids": [], "ppids": [], "metadata": "", "category": ""}` + "\n",
			},
			stats: Stats{Connections: 1, Files: 1},
		},
		{
			name:   "FILE 3 is read as version 2",
			stream: strings.Replace(fileV2("memory/1.dmp", "", "", "", "", "memory", false), "FILE 2", "FILE 3", 1) + "m",
			want: map[string]string{
				"memory/1.dmp": "m",
				"files.json":   `{"path": "memory/1.dmp", "filepath": "", "pids": [], "ppids": [], "metadata": "", "category": "memory"}` + "\n",
			},
			stats: Stats{Connections: 1, Files: 1},
		},
		{
			name:   "FILE backslashes, NUL and colon",
			stream: "FILE\nfiles\\a:b\x00c.txt\nx",
			want: map[string]string{
				"files/aXbXc.txt": "x",
				"files.json":      `{"path": "files/aXbXc.txt", "filepath": "", "pids": [], "ppids": [], "metadata": "", "category": ""}` + "\n",
			},
			stats: Stats{Connections: 1, Files: 1},
		},
		{
			name:   "FILE in aux subfolder, not in files.json",
			stream: "FILE\naux/amsi_etw/amsi.jsonl\n{}",
			want:   map[string]string{"aux/amsi_etw/amsi.jsonl": "{}"},
			stats:  Stats{Connections: 1, Files: 1},
		},
		{
			name:   "FILE empty upload",
			stream: "FILE\nsysmon/sysmon.xml\n",
			want:   map[string]string{"sysmon/sysmon.xml": ""},
			stats:  Stats{Connections: 1, Files: 1},
		},
		{
			name:   "connection closed without a command",
			stream: "",
			want:   map[string]string{},
			stats:  Stats{Connections: 1},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startServer(t, Options{}, nil)
			dir := filepath.Join(t.TempDir(), "1")
			if err := s.Register(ipA, 1, dir); err != nil {
				t.Fatal(err)
			}
			send(t, s, ipA, []byte(c.stream))
			st := s.Unregister(ipA, 1)
			if d := diffTrees(c.want, files(t, dir)); d != "" {
				t.Errorf("folder: %s", d)
			}
			if st.Connections != c.stats.Connections || st.Files != c.stats.Files || st.Streams != c.stats.Streams ||
				st.Truncated != c.stats.Truncated || len(st.Refused) != 0 {
				t.Errorf("stats %+v, want %+v", st, c.stats)
			}
			var sum int64
			for _, v := range files(t, dir) {
				sum += int64(len(v))
			}
			if st.Bytes != sum {
				t.Errorf("stats count %d bytes, the folder holds %d", st.Bytes, sum)
			}
		})
	}
}

// TestLayout: CAPE's processing expects its result folders to exist even
// when nothing was uploaded to them.
func TestLayout(t *testing.T) {
	s := startServer(t, Options{}, nil)
	dir := filepath.Join(t.TempDir(), "a", "42")
	if err := s.Register(ipA, 42, dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"CAPE", "aux/amsi_etw", "aux/sslkeylogfile", "files", "logs", "memory", "procdump", "shots", "tlsdump"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", f, err)
		}
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o750 {
		t.Errorf("folder mode %v, want 0750", fi.Mode().Perm())
	}
}

// TestUploadModes: uploads never overwrite, except the two kinds CAPE
// lets accumulate (*_script.log) or replace (tlsdump/ and the snapshots of
// the ETW and key-log auxiliaries); a monitor stream for a pid replaces
// the earlier one; analysis.log is written by one connection only.
func TestUploadModes(t *testing.T) {
	for _, c := range []struct {
		name    string
		streams []string
		want    map[string]string
		refused string
	}{
		{
			name:    "exclusive",
			streams: []string{"FILE\nshots/1.jpg\nfirst", "FILE\nshots/1.jpg\nsecond"},
			want:    map[string]string{"shots/1.jpg": "first"},
			refused: `FILE "shots/1.jpg": file exists`,
		},
		{
			name:    "exclusive, v2 with a files.json line written once",
			streams: []string{fileV2("files/a", "C:\\a", "1", "", "", "files", false) + "one", fileV2("files/a", "C:\\a", "1", "", "", "files", false) + "two"},
			want: map[string]string{
				"files/a":    "one",
				"files.json": `{"path": "files/a", "filepath": "C:\\a", "pids": [1], "ppids": [], "metadata": "", "category": "files"}` + "\n",
			},
			refused: `FILE "files/a": file exists`,
		},
		{
			name:    "script log appended",
			streams: []string{"FILE\nfiles/ps_script.log\nline1\n", "FILE\nfiles/ps_script.log\nline2\n"},
			want: map[string]string{
				"files/ps_script.log": "line1\nline2\n",
				"files.json":          strings.Repeat(`{"path": "files/ps_script.log", "filepath": "", "pids": [], "ppids": [], "metadata": "", "category": ""}`+"\n", 2),
			},
		},
		{
			name:    "tlsdump replaced",
			streams: []string{"FILE\ntlsdump/tlsdump.log\nkeys-1 and more", "FILE\ntlsdump/tlsdump.log\nkeys-2"},
			want:    map[string]string{"tlsdump/tlsdump.log": "keys-2"},
		},
		{
			name:    "sslkeylogfile replaced",
			streams: []string{"FILE\naux/sslkeylogfile/sslkeys.log\nold old", "FILE\naux\\sslkeylogfile\\sslkeys.log\nnew"},
			want:    map[string]string{"aux/sslkeylogfile/sslkeys.log": "new"},
		},
		{
			name:    "BSON stream for a pid replaced",
			streams: []string{"BSON 100\nfirst stream", "BSON 100\nsecond"},
			want:    map[string]string{"logs/100.bson": "second"},
		},
		{
			name:    "second LOG refused",
			streams: []string{"LOG\nfirst\n", "LOG\nforged\n"},
			want:    map[string]string{"analysis.log": "first\n"},
			refused: "LOG: analysis.log was already opened",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := startServer(t, Options{}, nil)
			dir := t.TempDir()
			if err := s.Register(ipA, 1, dir); err != nil {
				t.Fatal(err)
			}
			for _, st := range c.streams {
				send(t, s, ipA, []byte(st))
			}
			st := s.Unregister(ipA, 1)
			if d := diffTrees(c.want, files(t, dir)); d != "" {
				t.Errorf("folder: %s", d)
			}
			switch {
			case c.refused == "" && len(st.Refused) > 0:
				t.Errorf("refused: %q", st.Refused)
			case c.refused != "" && !hasRefusal(st, c.refused):
				t.Errorf("refused %q, want %q", st.Refused, c.refused)
			}
		})
	}
}

// TestLOGWhileOpen: a second LOG is refused while the first is still
// streaming, and the first keeps its data.
func TestLOGWhileOpen(t *testing.T) {
	s := startServer(t, Options{}, nil)
	dir := t.TempDir()
	if err := s.Register(ipA, 1, dir); err != nil {
		t.Fatal(err)
	}
	first := dial(t, s, ipA)
	first.Write([]byte("LOG\nstarted\n"))
	poll.Until(t, 5*time.Second, "analysis.log written", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "analysis.log"))
		return string(b) == "started\n"
	})
	send(t, s, ipA, []byte("LOG\nintruder\n"))
	first.Write([]byte("finished\n"))
	first.CloseWrite()
	awaitClose(t, first)
	st := s.Unregister(ipA, 1)
	if b, _ := os.ReadFile(filepath.Join(dir, "analysis.log")); string(b) != "started\nfinished\n" {
		t.Errorf("analysis.log = %q", b)
	}
	if !hasRefusal(st, "LOG: analysis.log was already opened") || st.Streams != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestUnknownPeer: a peer with no task is dropped and logged once, and
// nothing is written for it anywhere.
func TestUnknownPeer(t *testing.T) {
	var logs logBuffer
	s := startServer(t, Options{}, &logs)
	base := t.TempDir()
	dir := filepath.Join(base, "1")
	if err := s.Register(ipA, 1, dir); err != nil {
		t.Fatal(err)
	}
	before := tree(t, base)
	for range 3 {
		send(t, s, ipUnknown, []byte("FILE\nfiles/x\nfrom a stranger"))
	}
	if d := diffTrees(before, tree(t, base)); d != "" {
		t.Errorf("something was written: %s", d)
	}
	if n := strings.Count(logs.String(), "peer="+ipUnknown); n != 1 {
		t.Errorf("unknown peer logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("not logged at warn:\n%s", logs.String())
	}
	if st := s.Unregister(ipA, 1); st.Connections != 0 {
		t.Errorf("task 1 counted the stranger's connections: %+v", st)
	}
}

// TestTwoTasks: two machines upload the same names at once; each task's
// folder gets its own machine's data only.
func TestTwoTasks(t *testing.T) {
	s := startServer(t, Options{}, nil)
	base := t.TempDir()
	dirs := map[string]string{ipA: filepath.Join(base, "1"), ipB: filepath.Join(base, "2")}
	ids := map[string]int64{ipA: 1, ipB: 2}
	for ip, d := range dirs {
		if err := s.Register(ip, ids[ip], d); err != nil {
			t.Fatal(err)
		}
	}
	payload := func(ip string, i int) string {
		return strings.Repeat(fmt.Sprintf("%s-%d;", ip, i), 5000)
	}
	var wg sync.WaitGroup
	for ip := range dirs {
		for i := range 8 {
			wg.Go(func() {
				send(t, s, ip, []byte(fmt.Sprintf("FILE\nfiles/f%d\n%s", i, payload(ip, i))))
				send(t, s, ip, []byte(fmt.Sprintf("BSON %d\n%s", i, payload(ip, i))))
			})
		}
		wg.Go(func() { send(t, s, ip, []byte("LOG\nlog of "+ip+"\n")) })
	}
	wg.Wait()
	for ip, d := range dirs {
		st := s.Unregister(ip, ids[ip])
		want := map[string]string{"analysis.log": "log of " + ip + "\n"}
		var filesJSON []string
		for i := range 8 {
			want[fmt.Sprintf("files/f%d", i)] = payload(ip, i)
			want[fmt.Sprintf("logs/%d.bson", i)] = payload(ip, i)
			filesJSON = append(filesJSON, fmt.Sprintf(`{"path": "files/f%d", "filepath": "", "pids": [], "ppids": [], "metadata": "", "category": ""}`, i))
		}
		got := files(t, d)
		// files.json lines come in arrival order; compare them as a set.
		lines := strings.Split(strings.TrimSuffix(got["files.json"], "\n"), "\n")
		delete(got, "files.json")
		if diff := diffTrees(want, got); diff != "" {
			t.Errorf("task %d: %s", ids[ip], diff)
		}
		if d := diffTrees(setOf(filesJSON), setOf(lines)); d != "" {
			t.Errorf("task %d files.json: %s", ids[ip], d)
		}
		if st.Connections != 17 || st.Files != 8 || st.Streams != 9 {
			t.Errorf("task %d stats %+v", ids[ip], st)
		}
	}
	if d := diffTrees(map[string]string{"1": "<dir>", "2": "<dir>"}, topLevel(t, base)); d != "" {
		t.Errorf("outside the folders: %s", d)
	}
}

func setOf(lines []string) map[string]string {
	m := map[string]string{}
	for _, l := range lines {
		m[l] = ""
	}
	return m
}

func topLevel(t *testing.T, dir string) map[string]string {
	m := tree(t, dir)
	for k := range m {
		if strings.Contains(k, string(filepath.Separator)) {
			delete(m, k)
		}
	}
	return m
}

func TestRegister(t *testing.T) {
	s := startServer(t, Options{}, nil)
	base := t.TempDir()
	d1, d2 := filepath.Join(base, "1"), filepath.Join(base, "2")
	if err := s.Register(ipA, 1, d1); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ip  string
		id  int64
		dir string
		err string
	}{
		{ipA, 1, d1, ""}, // the same registration again
		{ipA, 2, d2, "registered to task 1"},
		{ipA, 1, d2, "registered to task 1"},
		{ipB, 1, d2, "already registered at " + ipA},
		{ipB, 2, d1, "belongs to task 1"},
		{"::ffff:" + ipA, 2, d2, "registered to task 1"}, // the same IPv4 address
		{"nonsense", 2, d2, "ip"},
		{ipB, 2, "", "empty analysis folder"},
	} {
		err := s.Register(c.ip, c.id, c.dir)
		if (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("Register(%s, %d, %s) = %v, want %q", c.ip, c.id, c.dir, err, c.err)
		}
	}
	if st := s.Unregister(ipA, 2); st.Connections != 0 {
		t.Errorf("unregistering the wrong task returned %+v", st)
	}
	s.Unregister(ipA, 1)
	if err := s.Register(ipA, 2, d2); err != nil {
		t.Errorf("the address is free again: %v", err)
	}
}

// TestUnregisterEndsConnections: an analysis ends with its connections
// still open (a hung analyzer, a stream the guest never closes);
// Unregister closes them, waits for their handlers, and later connections
// from that address are strangers.
func TestUnregisterEndsConnections(t *testing.T) {
	s := startServer(t, Options{}, nil)
	base := t.TempDir()
	dir := filepath.Join(base, "1")
	if err := s.Register(ipA, 1, dir); err != nil {
		t.Fatal(err)
	}
	logConn := dial(t, s, ipA)
	logConn.Write([]byte("LOG\nrunning\n"))
	bson := dial(t, s, ipA)
	bson.Write([]byte("BSON 5\npartial"))
	handshaking := dial(t, s, ipA) // closed by Unregister: not a refusal
	poll.Until(t, 5*time.Second, "both streams written, three connections open", func() bool {
		a, _ := os.ReadFile(filepath.Join(dir, "analysis.log"))
		b, _ := os.ReadFile(filepath.Join(dir, "logs", "5.bson"))
		return string(a) == "running\n" && string(b) == "partial" && openConns(s, ipA) == 3
	})
	start := time.Now()
	st := s.Unregister(ipA, 1)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Unregister took %s", d)
	}
	if st.Connections != 3 || st.Streams != 2 || st.Bytes != int64(len("running\npartial")) || len(st.Refused) != 0 {
		t.Errorf("stats %+v", st)
	}
	awaitClose(t, logConn)
	awaitClose(t, bson)
	awaitClose(t, handshaking)
	before := tree(t, base)
	send(t, s, ipA, []byte("FILE\nfiles/late\nafter the end"))
	if d := diffTrees(before, tree(t, base)); d != "" {
		t.Errorf("written after Unregister: %s", d)
	}
}

// TestIdleTimeout: a stream that goes silent is closed after IdleTimeout,
// and what it sent is kept.
func TestIdleTimeout(t *testing.T) {
	s := startServer(t, Options{IdleTimeout: 300 * time.Millisecond}, nil)
	dir := t.TempDir()
	if err := s.Register(ipA, 1, dir); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, ipA)
	c.Write([]byte("LOG\nthen silence\n"))
	awaitClose(t, c) // the server closes it; the client never does
	st := s.Unregister(ipA, 1)
	if b, _ := os.ReadFile(filepath.Join(dir, "analysis.log")); string(b) != "then silence\n" || st.Streams != 1 {
		t.Errorf("analysis.log %q, stats %+v", b, st)
	}
}

// TestClose: Close ends open connections and returns; the port is free.
func TestClose(t *testing.T) {
	s := startServer(t, Options{}, nil)
	dir := t.TempDir()
	if err := s.Register(ipA, 1, dir); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s, ipA)
	c.Write([]byte("LOG\nx\n"))
	idle := dial(t, s, ipA) // still in its handshake
	poll.Until(t, 5*time.Second, "analysis.log written", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "analysis.log"))
		return len(b) > 0
	})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	awaitClose(t, c)
	awaitClose(t, idle)
	if err := s.Register(ipB, 2, t.TempDir()); err == nil {
		t.Error("Register after Close succeeded")
	}
	ln, err := net.Listen("tcp", s.Addr().String())
	if err != nil {
		t.Fatalf("port still held: %v", err)
	}
	ln.Close()
}

// openConns is how many connections the task at ip holds open.
func openConns(s *Server, ip string) int {
	s.mu.Lock()
	t := s.byPeer[peer{ip: netip.MustParseAddr(ip)}]
	s.mu.Unlock()
	if t == nil {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}
