package guest

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/guest/guesttest"
	"github.com/sandfleet/sandfleet/internal/poll"
)

// unzip returns a zip's files by name, failing on compressed entries: the
// agent gets them stored, as CAPE sends them.
func unzip(t *testing.T, b []byte) map[string]string {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range zr.File {
		if f.Method != zip.Store {
			t.Errorf("%s is compressed (method %d)", f.Name, f.Method)
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		out[f.Name] = string(data)
	}
	return out
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLoadAnalyzerFolder(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{"analyzer.py": "print(1)", "lib/core/config.py": "x = 1", "bin/monitor.dll": "MZ\x00\x01"}
	writeFiles(t, dir, files)
	b, err := LoadAnalyzer(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := unzip(t, b); fmt.Sprint(got) != fmt.Sprint(files) {
		t.Errorf("zipped %v, want %v", got, files)
	}

	empty := t.TempDir()
	writeFiles(t, empty, map[string]string{"lib/analyzer.py": "nested is not enough"})
	if _, err := LoadAnalyzer(empty); err == nil || !strings.Contains(err.Error(), "no analyzer.py") {
		t.Errorf("folder without analyzer.py: %v", err)
	}
}

func TestLoadAnalyzerZip(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, entries ...string) string {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		for _, e := range entries {
			w, _ := zw.Create(e)
			_, _ = w.Write([]byte("x"))
		}
		_ = zw.Close()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := mk("good.zip", "analyzer.py", "lib/x.py")
	b, err := LoadAnalyzer(good)
	if want, _ := os.ReadFile(good); err != nil || !bytes.Equal(b, want) {
		t.Errorf("a good zip is sent as it is: %v", err)
	}
	for name, p := range map[string]string{
		"no analyzer.py": mk("nested.zip", "windows/analyzer.py"),
		"zip slip":       mk("slip.zip", "analyzer.py", "../../evil.py"),
		"absolute":       mk("abs.zip", "analyzer.py", "/etc/x"),
		"drive":          mk("drive.zip", "analyzer.py", `C:\x.py`),
		"missing":        filepath.Join(dir, "nope.zip"),
	} {
		if _, err := LoadAnalyzer(p); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
	notZip := filepath.Join(dir, "fake.zip")
	_ = os.WriteFile(notZip, []byte("analyzer.py"), 0o644)
	if _, err := LoadAnalyzer(notZip); err == nil || !strings.Contains(err.Error(), "not a zip") {
		t.Errorf("not a zip: %v", err)
	}
	other := filepath.Join(dir, "analyzer.tar")
	_ = os.WriteFile(other, []byte("x"), 0o644)
	if _, err := LoadAnalyzer(other); err == nil {
		t.Error("a .tar loaded")
	}
}

func TestLoadAnalyzerStandIn(t *testing.T) {
	b, err := LoadAnalyzer("")
	if err != nil {
		t.Fatal(err)
	}
	files := unzip(t, b)
	if len(files) != 1 || files["analyzer.py"] != string(StandInAnalyzer()) {
		t.Errorf("stand-in zip holds %d files", len(files))
	}
}

func python(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found: the stand-in analyzer cannot be run")
	}
	return p
}

func TestStandInAnalyzerCompiles(t *testing.T) {
	py := python(t)
	p := filepath.Join(t.TempDir(), "analyzer.py")
	if err := os.WriteFile(p, StandInAnalyzer(), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(py, "-m", "py_compile", p).CombinedOutput(); err != nil {
		t.Fatalf("py_compile: %v\n%s", err, out)
	}
}

// The stand-in, run by python3 as the agent would run it, reads the
// analysis.conf Start writes and sends LOG, FILE 2 and BSON to the result
// server it names.
func TestStandInAnalyzerSpeaksTheProtocol(t *testing.T) {
	py := python(t)
	rs := guesttest.NewResultServer(t)
	dir, tmp := t.TempDir(), t.TempDir()
	sample := []byte("MZ\x90\x00 not really a PE")
	a := Analysis{
		ID: 42, Category: "file", Target: "invoice.exe", FileType: "PE32 executable", Package: "exe",
		Options: "free=yes", Timeout: time.Second, ResultServerIP: rs.IP, ResultServerPort: rs.Port, Platform: "linux",
	}
	name, err := a.guestFileName(true, false)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := renderConf(a, name)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"analyzer.py": string(StandInAnalyzer()), "analysis.conf": conf})
	writeFiles(t, tmp, map[string]string{name: string(sample)})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, filepath.Join(dir, "analyzer.py"))
	cmd.Dir = t.TempDir() // the stand-in finds analysis.conf next to itself, not in its cwd
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("stand-in: %v\n%s", err, out)
	}
	pid := cmd.ProcessState.Pid()

	poll.Until(t, 10*time.Second, "three closed streams", func() bool {
		n := 0
		for _, s := range rs.Streams() {
			if s.Closed {
				n++
			}
		}
		return n == 3
	})
	for _, s := range rs.Streams() {
		if s.PeerIP != "127.0.0.1" {
			t.Errorf("%s came from %s", s.Command, s.PeerIP)
		}
	}
	log, _ := rs.Find("LOG")
	sum := sha256.Sum256(sample)
	for _, want := range []string{
		"task 42: category file, target invoice.exe, package exe, options free=yes",
		fmt.Sprintf("%d bytes, sha256 %s", len(sample), hex.EncodeToString(sum[:])),
		"[sandfleet.standin] INFO: analysis completed",
	} {
		if !strings.Contains(string(log.Data), want) {
			t.Errorf("LOG lacks %q:\n%s", want, log.Data)
		}
	}

	st, _ := rs.Find("FILE")
	f, err := st.File()
	if err != nil {
		t.Fatal(err)
	}
	fileSum := sha256.Sum256(f.Data)
	if f.Path != "files/"+hex.EncodeToString(fileSum[:]) || f.Category != "files" || f.Duplicated ||
		f.PIDs != fmt.Sprint(pid) || !strings.Contains(string(f.Data), "task: 42") {
		t.Errorf("FILE 2 upload: %+v", f)
	}

	b, _ := rs.Find("BSON")
	if b.Command != fmt.Sprintf("BSON %d", pid) {
		t.Errorf("BSON command %q, want the analyzer's pid %d", b.Command, pid)
	}
	if len(b.Data) < 5 || int(binary.LittleEndian.Uint32(b.Data)) != len(b.Data) || b.Data[len(b.Data)-1] != 0 ||
		!bytes.Contains(b.Data, []byte("__process__")) {
		t.Errorf("BSON stream is not one BSON document: %q", b.Data)
	}
}

// A sample that is not where the conf says makes the stand-in fail, as
// CAPE's analyzer would: a host that stored it wrong must not see success.
func TestStandInAnalyzerFailsWithoutItsSample(t *testing.T) {
	py := python(t)
	rs := guesttest.NewResultServer(t)
	dir := t.TempDir()
	a := Analysis{ID: 9, Category: "file", Target: "x.exe", Timeout: time.Second, ResultServerIP: rs.IP, ResultServerPort: rs.Port}
	conf, _ := renderConf(a, "9/x.exe")
	writeFiles(t, dir, map[string]string{"analyzer.py": string(StandInAnalyzer()), "analysis.conf": conf})
	cmd := exec.Command(py, filepath.Join(dir, "analyzer.py"))
	cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("exit %v, want 1\n%s", err, out)
	}
	poll.Until(t, 10*time.Second, "the log to close", func() bool {
		s, ok := rs.Find("LOG")
		return ok && s.Closed
	})
	if log, _ := rs.Find("LOG"); !strings.Contains(string(log.Data), "ERROR: stand-in analyzer failed: the sample is not where the host put it") {
		t.Errorf("LOG:\n%s", log.Data)
	}
}
