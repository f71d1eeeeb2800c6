package guest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/guest/guesttest"
	"github.com/sandfleet/sandfleet/internal/poll"
)

// syncBuffer collects a process's output while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestCAPEAgent runs the client's whole sequence against CAPE's own
// agent.py (v0.22) with the stand-in analyzer: the analyzer zip is
// extracted, analysis.conf and the sample land where the analyzer looks,
// /execpy starts it, the result server gets LOG, FILE 2 and BSON, and
// GET /status reaches complete. agent.py is not part of sandfleet: name a
// copy of it in SANDFLEET_CAPE_AGENT.
func TestCAPEAgent(t *testing.T) {
	agentPy := os.Getenv("SANDFLEET_CAPE_AGENT")
	if agentPy == "" {
		t.Skip("SANDFLEET_CAPE_AGENT does not name CAPE's agent/agent.py; the interop test is skipped")
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}

	// agent.py binds the host and port it is given: a loopback address of
	// its own, as a VM has.
	var ip string
	var port int
	for range 20 {
		ip = fmt.Sprintf("127.%d.%d.%d", 16+rand.IntN(230), rand.IntN(256), 1+rand.IntN(254))
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			continue
		}
		port = ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		break
	}
	out := &syncBuffer{}
	cmd := exec.Command(py, agentPy, ip, strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("agent.py output:\n%s", out.String())
		}
	})

	rs := guesttest.NewResultServer(t)
	c := guest.NewClient(port, 5*time.Second)
	c.RetryInterval = 100 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	info, err := c.WaitReady(ctx, ip)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent.py at %s:%d: version %s, features %v", ip, port, info.Version, info.Features)

	analyzer, err := guest.LoadAnalyzer("")
	if err != nil {
		t.Fatal(err)
	}
	// Bytes that a careless multipart or line-ending handling would mangle.
	sample := append([]byte("MZ\x90\x00\r\n\n\r\x00\xff--boundary\r\n"), bytes.Repeat([]byte{0, 1, 2, 0xfe}, 4096)...)
	id := int64(900000 + rand.IntN(99999))
	a := guest.Analysis{
		ID: id, Category: "file", Target: "invoice (1).exe", FileName: "invoice (1).exe", FileType: "PE32 executable",
		Package: "exe", Options: "free=yes,procmemdump=1", Timeout: 2 * time.Second,
		Sample: bytes.NewReader(sample), SampleSize: int64(len(sample)), Analyzer: analyzer,
		ResultServerIP: rs.IP, ResultServerPort: rs.Port, Platform: "linux",
	}
	start := time.Now()
	if err := c.Start(ctx, ip, a); err != nil {
		t.Fatal(err)
	}
	t.Logf("Start: done in %s", time.Since(start).Round(time.Millisecond))
	if err := c.Wait(ctx, ip); err != nil {
		t.Fatal(err)
	}
	st, err := c.GetStatus(ctx, ip)
	if err != nil || st.Status != "complete" {
		t.Fatalf("GET /status after Wait: %+v %v", st, err)
	}
	t.Logf("Wait: analyzer complete after %s; GET /status now says %q", time.Since(start).Round(time.Millisecond), st.Status)

	poll.Until(t, 10*time.Second, "LOG, FILE 2 and BSON", func() bool {
		n := 0
		for _, s := range rs.Streams() {
			if s.Closed {
				n++
			}
		}
		return n == 3
	})
	for _, s := range rs.Streams() {
		t.Logf("result server got %q from %s: %d bytes", s.Command, s.PeerIP, len(s.Data))
	}
	log, _ := rs.Find("LOG")
	t.Logf("analysis log:\n%s", log.Data)
	sum := sha256.Sum256(sample)
	samplePath := fmt.Sprintf("/tmp/%d/invoice _1_.exe", id)
	for _, want := range []string{
		fmt.Sprintf("task %d: category file, target invoice (1).exe, package exe, options free=yes,procmemdump=1", id),
		fmt.Sprintf("sample %s: %d bytes, sha256 %s", samplePath, len(sample), hex.EncodeToString(sum[:])),
		"analysis completed",
	} {
		if !strings.Contains(string(log.Data), want) {
			t.Errorf("LOG lacks %q", want)
		}
	}
	fs, _ := rs.Find("FILE 2")
	f, err := fs.File()
	if err != nil || !strings.Contains(string(f.Data), fmt.Sprintf("task: %d", id)) {
		t.Errorf("FILE 2: %+v %v", f, err)
	}
	if b, ok := rs.Find("BSON "); !ok || len(b.Data) == 0 {
		t.Errorf("BSON: %+v", b)
	}

	// The sample as agent.py stored it, read back through /retrieve; then
	// the guest's /tmp is tidied, as a reimage would.
	stored := agentPost(t, ip, port, "/retrieve", url.Values{"filepath": {samplePath}})
	if !bytes.Equal(stored, sample) {
		t.Errorf("the stored sample differs: %d bytes, want %d", len(stored), len(sample))
	}
	dir := regexp.MustCompile(`stand-in analyzer started in (\S+):`).FindStringSubmatch(string(log.Data))
	if dir == nil || !strings.HasPrefix(dir[1], "/tmp/") {
		t.Fatalf("analyzer folder not in the log")
	}
	t.Logf("analyzer ran from %s", dir[1])
	agentPost(t, ip, port, "/remove", url.Values{"path": {dir[1]}})
	agentPost(t, ip, port, "/remove", url.Values{"path": {fmt.Sprintf("/tmp/%d", id)}})
}

func agentPost(t *testing.T, ip string, port int, path string, form url.Values) []byte {
	t.Helper()
	resp, err := http.PostForm(fmt.Sprintf("http://%s:%d%s", ip, port, path), form)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s %s", path, resp.Status, b)
	}
	return b
}
