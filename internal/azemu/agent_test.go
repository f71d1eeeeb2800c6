package azemu

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/guest/guesttest"
	"github.com/sandfleet/sandfleet/internal/poll"
)

// testAgent starts one agent on a random loopback address of its own, as
// the emulator gives each VM.
func testAgent(t *testing.T, windows bool, mode string, run time.Duration) (*agent, *agentCaller) {
	t.Helper()
	for range 20 {
		ip := fmt.Sprintf("127.%d.%d.%d", 16+rand.IntN(230), rand.IntN(256), 1+rand.IntN(254))
		a, err := startAgent(ip, net.JoinHostPort(ip, "0"), agentSpec{mode: mode, windows: windows, name: "win10_3"},
			[2]time.Duration{run, run}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			continue
		}
		t.Cleanup(a.stop)
		return a, &agentCaller{t: t, addr: a.addr}
	}
	t.Fatal("no free loopback address for an agent")
	return nil, nil
}

// agentCaller calls an agent from a chosen source address.
type agentCaller struct {
	t    *testing.T
	addr string
}

// agentResp is an agent's answer: status, raw body and the body as JSON.
type agentResp struct {
	status int
	raw    []byte
	json   map[string]any
}

// form is urlencoded fields; files (field → name, data) make it multipart.
type form struct {
	fields map[string]string
	files  map[string][2]string
}

// do sends a request from 127.0.0.1, or from the address given.
func (c *agentCaller) do(method, path string, f *form, from ...string) (agentResp, error) {
	var body io.Reader
	ctype := ""
	if f != nil {
		if f.files == nil {
			v := url.Values{}
			for k, x := range f.fields {
				v.Set(k, x)
			}
			body, ctype = strings.NewReader(v.Encode()), "application/x-www-form-urlencoded"
		} else {
			var buf bytes.Buffer
			mw := multipart.NewWriter(&buf)
			for k, x := range f.fields {
				_ = mw.WriteField(k, x)
			}
			for k, nd := range f.files {
				w, _ := mw.CreateFormFile(k, nd[0])
				_, _ = w.Write([]byte(nd[1]))
			}
			_ = mw.Close()
			body, ctype = &buf, mw.FormDataContentType()
		}
	}
	req, err := http.NewRequest(method, "http://"+c.addr+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	src := "127.0.0.1"
	if len(from) > 0 {
		src = from[0]
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext:       (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}).DialContext,
	}}
	resp, err := hc.Do(req)
	if err != nil {
		return agentResp{}, err
	}
	defer resp.Body.Close()
	r := agentResp{status: resp.StatusCode}
	r.raw, _ = io.ReadAll(resp.Body)
	_ = json.Unmarshal(r.raw, &r.json)
	return r, nil
}

// must is do for a request that gets an answer.
func (c *agentCaller) must(method, path string, f *form, from ...string) agentResp {
	c.t.Helper()
	r, err := c.do(method, path, f, from...)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func fields(kv ...string) *form {
	f := &form{fields: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		f.fields[kv[i]] = kv[i+1]
	}
	return f
}

func (f *form) file(field, name, data string) *form {
	if f.files == nil {
		f.files = map[string][2]string{}
	}
	f.files[field] = [2]string{name, data}
	return f
}

// asJSON re-encodes a reply for comparison with what agent.py sends.
func same(t *testing.T, what string, r agentResp, status int, want string) {
	t.Helper()
	var w map[string]any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: bad want: %v", what, err)
	}
	if r.status != status || !reflect.DeepEqual(r.json, w) {
		t.Errorf("%s: %d %s\nwant %d %s", what, r.status, r.raw, status, want)
	}
}

// The replies agent.py v0.22 sends (read from a real agent.py on Linux and
// its source for Windows), status and body.
func TestAgentAnswersAsAgentPy(t *testing.T) {
	_, c := testAgent(t, true, agentUp, time.Second)
	for _, x := range []struct {
		method, path string
		f            *form
		status       int
		want         string
	}{
		{"GET", "/", nil, 200, `{"message": "CAPE Agent!", "version": "0.22", "features": ["execpy", "execute", "pinning", "logs", "largefile", "unicodepath", "subdir_upload", "mutex", "browser_extension"], "is_user_admin": true}`},
		{"GET", "/status", nil, 200, `{"message": "Analysis status", "status": "init", "description": ""}`},
		{"GET", "/nope", nil, 404, `{"message": "Route not found", "error_code": 404}`},
		{"GET", "/status?x=1", nil, 404, `{"message": "Route not found", "error_code": 404}`},
		{"GET", "/store", nil, 404, `{"message": "Route not found", "error_code": 404}`},
		{"POST", "/store", fields(), 400, `{"message": "No filepath has been provided", "error_code": 400}`},
		{"POST", "/store", fields("filepath", `C:\x`), 400, `{"message": "No file has been provided", "error_code": 400}`},
		{"POST", "/mkdir", fields(), 400, `{"message": "No dirpath has been provided", "error_code": 400}`},
		{"POST", "/mkdir", fields("dirpath", `C:\a\b`, "mode", "493"), 200, `{"message": "Successfully created directory"}`},
		{"POST", "/extract", fields(), 400, `{"message": "No dirpath has been provided", "error_code": 400}`},
		{"POST", "/extract", fields("dirpath", "C:/"), 400, `{"message": "No zip file has been provided", "error_code": 400}`},
		{"POST", "/remove", fields(), 400, `{"message": "No path has been provided", "error_code": 400}`},
		{"POST", "/remove", fields("path", `C:\nope`), 404, `{"message": "Path provided does not exist", "error_code": 404}`},
		{"POST", "/retrieve", fields(), 400, `{"message": "No filepath has been provided", "error_code": 400}`},
		{"POST", "/execute", fields(), 400, `{"message": "No command has been provided", "error_code": 400}`},
		{"POST", "/execpy", fields(), 400, `{"message": "No Python file has been provided", "error_code": 400}`},
		{"POST", "/status", fields("status", "sideways"), 400, `{"message": "No valid status has been provided", "error_code": 400}`},
		{"GET", "/system", nil, 200, `{"message": "System", "system": "Windows"}`},
		{"GET", "/path", nil, 200, `{"message": "Agent path", "filepath": "C:\\agent\\agent.py"}`},
		{"POST", "/mutex", fields(), 400, `{"message": "no mutex provided", "error_code": 400}`},
		{"POST", "/mutex", fields("mutex", "m1"), 201, `{"message": "got mutex: m1"}`},
		{"POST", "/mutex", fields("mutex", "m1"), 200, `{"message": "have mutex: m1"}`},
		{"DELETE", "/mutex", fields("mutex", "m1"), 200, `{"message": "released mutex: m1"}`},
		{"DELETE", "/mutex", fields("mutex", "m1"), 404, `{"message": "mutex does not exist: m1", "error_code": 404}`},
		{"POST", "/browser_extension", fields("networkData", "{}"), 200, `{"message": "OK"}`},
		// A status by number, and without a description (null).
		{"POST", "/status", fields("status", "3"), 200, `{"message": "Analysis status updated"}`},
		{"GET", "/status", nil, 200, `{"message": "Analysis status", "status": "complete", "description": null}`},
	} {
		same(t, x.method+" "+x.path+" "+fmt.Sprint(x.f), c.must(x.method, x.path, x.f), x.status, x.want)
	}

	// A blank multipart field is there (and open('') fails); a blank
	// urlencoded value is no value at all (parse_qs drops it).
	if r := c.must("POST", "/store", fields("filepath", "").file("file", "f", "x")); r.status != 500 ||
		r.json["message"] != "Error storing file: [Errno 2] No such file or directory: ''" {
		t.Errorf("blank multipart filepath: %d %s", r.status, r.raw)
	}
	same(t, "blank dirpath", c.must("POST", "/mkdir", fields("dirpath", "")), 400, `{"message": "No dirpath has been provided", "error_code": 400}`)
	if r := c.must("PUT", "/", nil); r.status != http.StatusNotImplemented {
		t.Errorf("PUT: %d", r.status)
	}
	env := c.must("GET", "/environ", nil).json["environ"].(map[string]any)
	if env["SYSTEMDRIVE"] != "C:" || env["TEMP"] != `C:\Users\cape\AppData\Local\Temp` || env["COMPUTERNAME"] != "WIN10_3" {
		t.Errorf("environ: %v", env)
	}
	logs := c.must("GET", "/logs", nil)
	if logs.json["stdout"] != "" || !strings.Contains(logs.json["stderr"].(string), `"GET /environ HTTP/1.1" 200`) {
		t.Errorf("logs: %s", logs.raw)
	}

	_, lc := testAgent(t, false, agentUp, time.Second)
	same(t, "linux GET /", lc.must("GET", "/", nil), 200, `{"message": "CAPE Agent!", "version": "0.22", "features": ["execpy", "execute", "pinning", "logs", "largefile", "unicodepath", "subdir_upload"], "is_user_admin": true}`)
	same(t, "linux mutex", lc.must("POST", "/mutex", fields("mutex", "m")), 400, `{"message": "mutex feature not supported on linux", "error_code": 400}`)
	if r := lc.must("POST", "/mkdtemp", fields("dirpath", "/nope")); r.status != 500 || r.json["message"] != "Error creating temporary directory" {
		t.Errorf("mkdtemp in a missing folder: %d %s", r.status, r.raw)
	}
}

func zipOf(t *testing.T, files ...string) string {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for i := 0; i+1 < len(files); i += 2 {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: files[i], Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = w.Write([]byte(files[i+1]))
	}
	_ = zw.Close()
	return buf.String()
}

func TestAgentFiles(t *testing.T) {
	a, c := testAgent(t, true, agentUp, time.Second)
	dir := c.must("POST", "/mkdtemp", fields("dirpath", "C:/")).json["dirpath"].(string)
	if !strings.HasPrefix(dir, "C:/") || len(dir) != len("C:/")+8 {
		t.Fatalf("mkdtemp: %q", dir)
	}
	tmp := c.must("GET", "/mktemp", nil).json["filepath"].(string)
	if !strings.HasPrefix(tmp, `C:\Users\cape\AppData\Local\Temp\`) {
		t.Errorf("mktemp: %q", tmp)
	}

	z := zipOf(t, "analyzer.py", "print(1)", "lib/core/config.py", "x = 1", "../../escape.txt", "caught", "bad:name?.txt", "w")
	same(t, "extract", c.must("POST", "/extract", fields("dirpath", dir).file("zipfile", "zipfile", z)), 200, `{"message": "Successfully extracted zip file"}`)
	for p, want := range map[string]string{
		dir + "/analyzer.py":        "print(1)",
		dir + `\LIB\core\config.py`: "x = 1", // Windows: either slash, any case
		dir + "/escape.txt":         "caught",
		dir + "/bad_name_.txt":      "w",
	} {
		r := c.must("POST", "/retrieve", fields("filepath", p))
		if r.status != 200 || string(r.raw) != want {
			t.Errorf("retrieve %s: %d %q", p, r.status, r.raw)
		}
	}
	if r := c.must("POST", "/extract", fields("dirpath", dir).file("zipfile", "zipfile", "PK no zip")); r.status != 500 ||
		r.json["message"] != "Error extracting zip file File is not a zip file" || r.json["traceback"] == nil {
		t.Errorf("bad zip: %d %s", r.status, r.raw)
	}

	// /store makes the folders, binary data lands byte for byte.
	bin := "MZ\x00\x01\r\n\xff\xfe" + strings.Repeat("x", 3<<20)
	same(t, "store", c.must("POST", "/store", fields("filepath", `C:\Users\cape\AppData\Local\Temp\42\s.exe`).file("file", "sample.bin", bin)), 200, `{"message": "Successfully stored file"}`)
	if r := c.must("POST", "/retrieve", fields("filepath", `c:/users/cape/appdata/local/temp/42/S.EXE`)); r.status != 200 || string(r.raw) != bin {
		t.Errorf("retrieve binary: %d, %d bytes", r.status, len(r.raw))
	}
	// base64: each 1 MiB chunk encoded on its own, as send_file does.
	b64 := c.must("POST", "/retrieve", fields("filepath", `C:\Users\cape\AppData\Local\Temp\42\s.exe`, "encoding", "base64"))
	want := ""
	for rest := bin; rest != ""; rest = rest[min(len(rest), 1<<20):] {
		want += base64.StdEncoding.EncodeToString([]byte(rest[:min(len(rest), 1<<20)]))
	}
	if string(b64.raw) != want {
		t.Errorf("base64 retrieve differs (%d bytes, want %d)", len(b64.raw), len(want))
	}
	if r := c.must("POST", "/retrieve", fields("filepath", `C:\nope`)); r.status != 404 || len(r.raw) != 0 {
		t.Errorf("retrieve missing: %d %q", r.status, r.raw)
	}

	same(t, "remove file", c.must("POST", "/remove", fields("path", `C:\Users\cape\AppData\Local\Temp\42\s.exe`)), 200, `{"message": "Successfully deleted file"}`)
	same(t, "remove dir", c.must("POST", "/remove", fields("path", dir)), 200, `{"message": "Successfully deleted directory"}`)
	if r := c.must("POST", "/retrieve", fields("filepath", dir+"/lib/core/config.py")); r.status != 404 {
		t.Errorf("a file under a removed folder: %d", r.status)
	}

	// A body without Content-Length (chunked) is empty to agent.py.
	req, _ := http.NewRequest("POST", "http://"+a.addr+"/store", io.MultiReader(strings.NewReader("filepath=C%3A%5Cx")))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("chunked POST: %d, want 400 (no filepath)", resp.StatusCode)
	}

	// The disk is bounded.
	a.mu.Lock()
	a.fs.limit = a.fs.used + 1000
	a.mu.Unlock()
	r := c.must("POST", "/store", fields("filepath", `C:\big`).file("file", "b", strings.Repeat("x", 2000)))
	if r.status != 500 || r.json["message"] != `Error storing file: [Errno 28] No space left on device: 'C:\big'` {
		t.Errorf("disk full: %d %s", r.status, r.raw)
	}
}

func TestAgentPinning(t *testing.T) {
	a, c := testAgent(t, true, agentUp, time.Second)
	same(t, "pin", c.must("GET", "/pinning", nil), 200, `{"message": "Successfully pinned Agent", "client_ip": "127.0.0.1"}`)
	if r, err := c.do("GET", "/", nil, "127.0.0.2"); err == nil {
		t.Errorf("another host got an answer: %d %s", r.status, r.raw)
	}
	// The guest itself may report its status, and only that.
	same(t, "guest's own status", c.must("POST", "/status", fields("status", "complete", "description", "done"), a.ip), 200, `{"message": "Analysis status updated"}`)
	if r, err := c.do("GET", "/", nil, a.ip); err == nil {
		t.Errorf("the guest got an answer to GET /: %d", r.status)
	}
	same(t, "second pin", c.must("GET", "/pinning", nil), 500, `{"message": "Agent has already been pinned to an IP!", "error_code": 500}`)
	same(t, "status", c.must("GET", "/status", nil), 200, `{"message": "Analysis status", "status": "complete", "description": "done"}`)
	if r, err := c.do("POST", "/execute", fields("command", "date"), a.ip); err == nil {
		t.Errorf("the guest got an answer to POST /execute: %d", r.status)
	}

	// Unpinned, the guest itself may run nothing but date.
	b, bc := testAgent(t, true, agentUp, time.Second)
	same(t, "execute from the guest", bc.must("POST", "/execute", fields("command", "calc.exe"), b.ip), 500, `{"message": "Not allowed to execute commands", "error_code": 500}`)
	same(t, "date from the guest", bc.must("POST", "/execute", fields("command", "date"), b.ip), 200, `{"message": "Successfully executed command", "stdout": "", "stderr": ""}`)
	same(t, "execute from the host", bc.must("POST", "/execute", fields("command", "calc.exe")), 200, `{"message": "Successfully executed command", "stdout": "", "stderr": ""}`)
}

// analysisConf is analysis.conf as CAPE writes it (see guest's golden).
func analysisConf(rs *guesttest.ResultServer, category, fileName string) string {
	c := fmt.Sprintf("[analysis]\nid = 42\nip = %s\nport = %d\ncategory = %s\ntarget = invoice.exe\npackage = exe\noptions = free=yes\n"+
		"enforce_timeout = False\nclock = 20260102T03:04:05\nterminate_processes = False\nupload_max_size = 100000000\n"+
		"do_upload_max_size = 0\nenable_trim = 0\ntimeout = 200", rs.IP, rs.Port, category)
	if category == "file" {
		c += "\nfile_name = " + fileName + "\nfile_type = PE32\nexports = "
	}
	return c
}

// prepare stores what the host stores before execpy and returns the
// analyzer's folder.
func prepare(t *testing.T, c *agentCaller, conf string, sample string) string {
	t.Helper()
	dir := c.must("POST", "/mkdtemp", fields("dirpath", "C:/")).json["dirpath"].(string)
	if r := c.must("POST", "/extract", fields("dirpath", dir).file("zipfile", "zipfile", zipOf(t, "analyzer.py", "#"))); r.status != 200 {
		t.Fatalf("extract: %s", r.raw)
	}
	if r := c.must("POST", "/store", fields("filepath", dir+"/analysis.conf").file("file", "file", conf)); r.status != 200 {
		t.Fatalf("store conf: %s", r.raw)
	}
	if sample != "" {
		if r := c.must("POST", "/store", fields("filepath", `C:\Users\cape\AppData\Local\Temp\42\invoice.exe`).file("file", "sample.bin", sample)); r.status != 200 {
			t.Fatalf("store sample: %s", r.raw)
		}
	}
	return dir
}

func waitStatus(t *testing.T, c *agentCaller, want string) agentResp {
	t.Helper()
	var last agentResp
	poll.Until(t, 10*time.Second, "agent status "+want, func() bool {
		last = c.must("GET", "/status", nil)
		return last.json["status"] == want
	})
	return last
}

func TestAgentRunsTheEmulatedAnalyzer(t *testing.T) {
	rs := guesttest.NewResultServer(t)
	a, c := testAgent(t, true, agentUp, 300*time.Millisecond)
	sample := "MZ\x90 sample"
	dir := prepare(t, c, analysisConf(rs, "file", `42\invoice.exe`), sample)

	r := c.must("POST", "/execpy", fields("filepath", dir+"/analyzer.py", "async", "yes", "cwd", dir))
	pid, _ := r.json["process_id"].(float64)
	if r.status != 200 || r.json["message"] != "Successfully spawned command" || pid == 0 {
		t.Fatalf("execpy: %d %s", r.status, r.raw)
	}
	st := c.must("GET", "/status", nil)
	if st.json["status"] != "running" || st.json["process_id"] != pid {
		t.Errorf("status while running: %s", st.raw)
	}
	same(t, "second async execpy", c.must("POST", "/execpy", fields("filepath", dir+"/analyzer.py", "async", "yes")), 400, `{"message": "Async process already running.", "error_code": 400}`)

	same(t, "the end", waitStatus(t, c, "complete"), 200, `{"message": "Analysis status", "status": "complete", "description": "", "exitcode": 0}`)
	same(t, "after the end", c.must("GET", "/status", nil), 200, `{"message": "Analysis status", "status": "complete", "description": ""}`)

	poll.Until(t, 5*time.Second, "three closed streams", func() bool {
		n := 0
		for _, s := range rs.Streams() {
			if s.Closed {
				n++
			}
		}
		return n == 3
	})
	for _, s := range rs.Streams() {
		if s.PeerIP != a.ip {
			t.Errorf("%s came from %s, not the VM's %s", s.Command, s.PeerIP, a.ip)
		}
	}
	log, _ := rs.Find("LOG")
	sum := sha256.Sum256([]byte(sample))
	for _, want := range []string{
		"[azemu.analyzer] INFO: task 42: category file, target invoice.exe, package exe, options free=yes",
		fmt.Sprintf(`sample C:\Users\cape\AppData\Local\Temp\42\invoice.exe: %d bytes, sha256 %s`, len(sample), hex.EncodeToString(sum[:])),
		"INFO: analysis completed",
	} {
		if !strings.Contains(string(log.Data), want) {
			t.Errorf("LOG lacks %q:\n%s", want, log.Data)
		}
	}
	fs, _ := rs.Find("FILE")
	f, err := fs.File()
	if err != nil {
		t.Fatal(err)
	}
	fsum := sha256.Sum256(f.Data)
	if f.Path != "files/"+hex.EncodeToString(fsum[:]) || f.PIDs != fmt.Sprint(pid) || f.Category != "files" || f.Duplicated ||
		f.GuestPath != `C:\Users\cape\AppData\Local\Temp\azemu-report.txt` {
		t.Errorf("FILE 2: %+v", f)
	}
	b, _ := rs.Find("BSON")
	if b.Command != fmt.Sprintf("BSON %d", int(pid)) || int(binary.LittleEndian.Uint32(b.Data)) != len(b.Data) {
		t.Errorf("BSON: %q %q", b.Command, b.Data)
	}
}

// processInfoBSON is the document the stand-in analyzer's encoder makes
// (guest/standin/analyzer.py bson_doc): two encoders, one answer.
func TestProcessInfoBSON(t *testing.T) {
	want := "a500000010490000000000026e616d65000c0000005f5f70726f636573735f5f0002747970650005000000696e666f000263617465676f727900110000005f5f6e6f74696669636174696f6e5f5f000461726773004f0000000230001200000050726f636573734964656e7469666965720002310018000000506172656e7450726f636573734964656e746966696572000232000b0000004d6f64756c6550617468000000"
	if got := hex.EncodeToString(processInfoBSON()); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestAgentFailState(t *testing.T) {
	rs := guesttest.NewResultServer(t)
	_, c := testAgent(t, true, agentFail, time.Hour)
	dir := prepare(t, c, analysisConf(rs, "url", ""), "")
	c.must("POST", "/execpy", fields("filepath", dir+"/analyzer.py", "async", "yes", "cwd", dir))
	same(t, "failed", waitStatus(t, c, "failed"), 200, `{"message": "Analysis status", "status": "failed", "description": "Exited with exit code 1", "exitcode": 1}`)
	poll.Until(t, 5*time.Second, "the log", func() bool { s, ok := rs.Find("LOG"); return ok && s.Closed })
	if log, _ := rs.Find("LOG"); !strings.Contains(string(log.Data), `ERROR: failing as the emulator was told to (agent state "fail")`) {
		t.Errorf("LOG:\n%s", log.Data)
	}
}

func TestAgentAnalyzerFailures(t *testing.T) {
	rs := guesttest.NewResultServer(t)

	// No analysis.conf: exit 1, and the agent's captured stderr says why.
	_, c := testAgent(t, true, agentUp, time.Second)
	c.must("POST", "/mkdir", fields("dirpath", `C:\an`))
	c.must("POST", "/store", fields("filepath", `C:\an\analyzer.py`).file("file", "file", "#"))
	c.must("POST", "/execpy", fields("filepath", `C:\an\analyzer.py`, "async", "yes"))
	waitStatus(t, c, "failed")
	if logs := c.must("GET", "/logs", nil); !strings.Contains(logs.json["stderr"].(string), `no analysis.conf at C:\an\analysis.conf`) {
		t.Errorf("logs: %s", logs.raw)
	}

	// The sample is not where the conf says.
	_, c = testAgent(t, true, agentUp, time.Second)
	dir := prepare(t, c, analysisConf(rs, "file", `42\other.exe`), "MZ")
	c.must("POST", "/execpy", fields("filepath", dir+"/analyzer.py", "async", "yes"))
	same(t, "no sample", waitStatus(t, c, "failed"), 200, `{"message": "Analysis status", "status": "failed", "description": "Exited with exit code 1", "exitcode": 1}`)

	// A script that is not there: python exits 2.
	_, c = testAgent(t, true, agentUp, time.Second)
	c.must("POST", "/execpy", fields("filepath", `C:\nope.py`, "async", "yes"))
	same(t, "missing script", waitStatus(t, c, "failed"), 200, `{"message": "Analysis status", "status": "failed", "description": "Exited with exit code 2", "exitcode": 2}`)
	r := c.must("POST", "/execpy", fields("filepath", `C:\nope.py`))
	if r.status != 400 || r.json["message"] != "Error executing python command." || r.json["exitcode"] != float64(2) {
		t.Errorf("sync missing script: %d %s", r.status, r.raw)
	}
}

// Run through /execute (agents without execpy), the analyzer reports its
// own end, as CAPE's analyzer does by POST /status.
func TestAgentExecuteRunsTheAnalyzer(t *testing.T) {
	rs := guesttest.NewResultServer(t)
	_, c := testAgent(t, true, agentUp, 100*time.Millisecond)
	dir := prepare(t, c, analysisConf(rs, "url", ""), "")
	same(t, "execute", c.must("POST", "/execute", fields("command", `python `+dir+`\analyzer.py`, "async", "yes", "cwd", dir)), 200,
		`{"message": "Successfully executed command", "stdout": null, "stderr": null}`)
	same(t, "running", c.must("GET", "/status", nil), 200, `{"message": "Analysis status", "status": "running", "description": ""}`)
	same(t, "complete", waitStatus(t, c, "complete"), 200, `{"message": "Analysis status", "status": "complete", "description": "True"}`)
}

// A VM that goes (reimage, delete) ends its analyzer where it is: the
// result server's connections close, and no end is reported.
func TestAgentStopEndsTheAnalyzer(t *testing.T) {
	rs := guesttest.NewResultServer(t)
	a, c := testAgent(t, true, agentUp, time.Hour)
	dir := prepare(t, c, analysisConf(rs, "url", ""), "")
	c.must("POST", "/execpy", fields("filepath", dir+"/analyzer.py", "async", "yes"))
	poll.Until(t, 5*time.Second, "the BSON stream", func() bool { _, ok := rs.Find("BSON"); return ok })
	a.stop() // returns once the analyzer has stopped
	poll.Until(t, 5*time.Second, "the log to end", func() bool { s, _ := rs.Find("LOG"); return s.Closed })
	if log, _ := rs.Find("LOG"); strings.Contains(string(log.Data), "analysis completed") {
		t.Error("an analysis on a VM that went completed")
	}
	if _, err := c.do("GET", "/", nil); err == nil {
		t.Error("a stopped agent answers")
	}
}

func TestAgentKill(t *testing.T) {
	a, c := testAgent(t, false, agentUp, time.Second)
	same(t, "kill", c.must("GET", "/kill", nil), 200, `{"message": "Quit the CAPE Agent"}`)
	poll.Until(t, 5*time.Second, "the agent to quit", func() bool { _, err := c.do("GET", "/", nil); return err != nil })
	if a.state() != agentDown {
		t.Errorf("a killed agent is %s", a.state())
	}
}

func TestAgentHangs(t *testing.T) {
	a, c := testAgent(t, true, agentHang, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+c.addr+"/", nil)
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("a hung agent answered")
	}
	a.setMode(agentUp)
	c.must("GET", "/", nil)
}

func TestParseAnalysisConf(t *testing.T) {
	got := parseAnalysisConf([]byte("[analysis]\r\nid = 42\nclock = 20260102T03:04:05\nOptions : a=b,c=d\n; comment\nexports = \n[other]\nid = 1\n"))
	want := map[string]string{"id": "42", "clock": "20260102T03:04:05", "options": "a=b,c=d", "exports": ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// Without async, /execpy answers once the analyzer has ended.
func TestAgentSyncExecpy(t *testing.T) {
	rs := guesttest.NewResultServer(t)
	_, c := testAgent(t, true, agentUp, 100*time.Millisecond)
	dir := prepare(t, c, analysisConf(rs, "url", ""), "")
	same(t, "sync execpy", c.must("POST", "/execpy", fields("filepath", dir+"/analyzer.py", "cwd", dir)), 200,
		`{"message": "Successfully executed command", "stdout": "", "stderr": ""}`)
	same(t, "status", c.must("GET", "/status", nil), 200, `{"message": "Analysis status", "status": "complete", "description": ""}`)
	poll.Until(t, 5*time.Second, "the log's last line", func() bool {
		log, _ := rs.Find("LOG")
		return strings.Contains(string(log.Data), "analysis completed")
	})
}
