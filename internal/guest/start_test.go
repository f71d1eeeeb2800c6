package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// call is one request a fake agent received, as agent.py would parse it.
type call struct {
	method, path string
	contentType  string // media type only
	form         map[string]string
	files        map[string]filePartSeen
}

type filePartSeen struct {
	filename string
	data     string
}

func (c call) String() string { return c.method + " " + c.path }

// fakeAgent answers like agent.py from replies (by "METHOD /path"), records
// what it was sent, and answers 404 to the rest.
type fakeAgent struct {
	mu      sync.Mutex
	calls   []call
	replies map[string]func(w http.ResponseWriter, c call)
}

func (f *fakeAgent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := call{method: r.Method, path: r.URL.RequestURI(), form: map[string]string{}, files: map[string]filePartSeen{}}
	if r.ContentLength < 0 && r.Method == http.MethodPost {
		// agent.py reads Content-Length bytes: a chunked body is empty to it.
		http.Error(w, "no Content-Length", http.StatusLengthRequired)
		return
	}
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	c.contentType = mt
	switch mt {
	case "multipart/form-data":
		mr := multipart.NewReader(r.Body, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			b, _ := io.ReadAll(p)
			if p.FileName() != "" {
				c.files[p.FormName()] = filePartSeen{p.FileName(), string(b)}
			} else {
				c.form[p.FormName()] = string(b)
			}
		}
	case "application/x-www-form-urlencoded":
		b, _ := io.ReadAll(r.Body)
		v, _ := url.ParseQuery(string(b))
		for k := range v {
			c.form[k] = v.Get(k)
		}
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	h := f.replies[c.String()]
	f.mu.Unlock()
	if h == nil {
		writeJSON(w, http.StatusNotFound, `{"message": "Route not found", "error_code": 404}`)
		return
	}
	h(w, c)
}

func (f *fakeAgent) seen() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func writeJSON(w http.ResponseWriter, code int, body string) {
	w.WriteHeader(code)
	_, _ = io.WriteString(w, body)
}

func ok(body string) func(http.ResponseWriter, call) {
	return func(w http.ResponseWriter, _ call) { writeJSON(w, http.StatusOK, body) }
}

// windowsAgent is agent.py v0.22 on Windows, as far as Start needs it.
func windowsAgent(features string) *fakeAgent {
	return &fakeAgent{replies: map[string]func(http.ResponseWriter, call){
		"GET /":         ok(`{"message": "CAPE Agent!", "version": "0.22", "features": [` + features + `], "is_user_admin": true}`),
		"GET /pinning":  ok(`{"message": "Successfully pinned Agent", "client_ip": "127.0.0.1"}`),
		"GET /environ":  ok(`{"message": "Environment variables", "environ": {"SYSTEMDRIVE": "C:", "TEMP": "C:\\Users\\cape\\AppData\\Local\\Temp"}}`),
		"POST /mkdtemp": ok(`{"message": "Successfully created temporary directory", "dirpath": "C:/tmpk2j4x8"}`),
		"POST /mkdir":   ok(`{"message": "Successfully created directory"}`),
		"POST /extract": ok(`{"message": "Successfully extracted zip file"}`),
		"POST /store":   ok(`{"message": "Successfully stored file"}`),
		"POST /execpy":  ok(`{"message": "Successfully spawned command", "process_id": 4242}`),
		"POST /execute": ok(`{"message": "Successfully executed command", "stdout": null, "stderr": null}`),
		"GET /status":   ok(`{"message": "Analysis status", "status": "running", "description": "", "process_id": 4242}`),
	}}
}

// serve runs h on 127.0.0.1 and returns a fast client for it.
func serve(t *testing.T, h http.Handler) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	c := NewClient(p, 2*time.Second)
	c.RetryInterval = 10 * time.Millisecond
	return c
}

const windowsFeatures = `"execpy", "execute", "pinning", "logs", "largefile", "unicodepath", "subdir_upload", "mutex", "browser_extension"`

func TestStartSendsCAPEsSequence(t *testing.T) {
	agent := windowsAgent(windowsFeatures)
	c := serve(t, agent)
	a := fileAnalysis()
	a.Sample, a.SampleSize = strings.NewReader("MZ\x00\r\n\x90binary"), 12
	if err := c.Start(context.Background(), "127.0.0.1", a); err != nil {
		t.Fatal(err)
	}
	calls := agent.seen()
	var steps []string
	for _, c := range calls {
		steps = append(steps, c.String())
	}
	want := []string{"GET /", "GET /pinning", "GET /environ", "POST /mkdtemp", "POST /extract", "POST /store", "POST /store", "POST /execpy"}
	if fmt.Sprint(steps) != fmt.Sprint(want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
	check := func(i int, contentType string, form map[string]string, files map[string]filePartSeen) {
		t.Helper()
		c := calls[i]
		if c.contentType != contentType || fmt.Sprint(c.form) != fmt.Sprint(form) || fmt.Sprint(c.files) != fmt.Sprint(files) {
			t.Errorf("%s:\n got %s form %v files %v\nwant %s form %v files %v", c, c.contentType, c.form, c.files, contentType, form, files)
		}
	}
	const urlenc, mp = "application/x-www-form-urlencoded", "multipart/form-data"
	check(3, urlenc, map[string]string{"dirpath": "C:/"}, map[string]filePartSeen{})
	check(4, mp, map[string]string{"dirpath": "C:/tmpk2j4x8"}, map[string]filePartSeen{"zipfile": {"zipfile", "zip"}})
	check(5, mp, map[string]string{"filepath": "C:/tmpk2j4x8/analysis.conf"}, map[string]filePartSeen{"file": {"file", goldenFileConf}})
	check(6, mp, map[string]string{"filepath": `C:\Users\cape\AppData\Local\Temp\42\invoice _1_.exe`},
		map[string]filePartSeen{"file": {"sample.bin", "MZ\x00\r\n\x90binary"}})
	check(7, urlenc, map[string]string{"filepath": "C:/tmpk2j4x8/analyzer.py", "async": "yes", "cwd": "C:/tmpk2j4x8"}, map[string]filePartSeen{})
}

// An old agent without pinning, execpy or subdir_upload, on Linux, with the
// analyzer's folder fixed by the analpath option.
func TestStartOnAnOldLinuxAgent(t *testing.T) {
	agent := windowsAgent(`"execute"`)
	c := serve(t, agent)
	a := fileAnalysis()
	a.Platform, a.Options = "linux", "analpath=opt/cape"
	if err := c.Start(context.Background(), "127.0.0.1", a); err != nil {
		t.Fatal(err)
	}
	calls := agent.seen()
	var steps []string
	for _, c := range calls {
		steps = append(steps, c.String()+" "+fmt.Sprint(c.form))
	}
	want := []string{
		"GET / map[]",
		"GET /environ map[]",
		"POST /mkdir map[dirpath:/opt/cape]",
		"POST /extract map[dirpath:/opt/cape]",
		"POST /store map[filepath:/opt/cape/analysis.conf]",
		"POST /store map[filepath:/tmp/invoice _1_.exe]",
		"POST /execute map[async:yes command:python3 /opt/cape/analyzer.py cwd:/opt/cape]",
	}
	if strings.Join(steps, "\n") != strings.Join(want, "\n") {
		t.Fatalf("steps:\n%s\nwant:\n%s", strings.Join(steps, "\n"), strings.Join(want, "\n"))
	}
	if conf := calls[4].files["file"].data; !strings.Contains(conf, "\nfile_name = invoice _1_.exe\n") {
		t.Errorf("without subdir_upload file_name is the bare name:\n%s", conf)
	}
}

func TestStartStopsAtTheFailingStep(t *testing.T) {
	for _, c := range []struct {
		step, reply string
		code        int
		wantErr     string
	}{
		{"GET /", `<html>`, 503, "agent 127.0.0.1: GET /: HTTP 503: <html>"},
		{"GET /pinning", `{"message": "Agent has already been pinned to an IP!", "error_code": 500}`, 500,
			"agent 127.0.0.1: GET /pinning: HTTP 500: Agent has already been pinned to an IP!"},
		{"POST /extract", `{"message": "Error extracting zip file File is not a zip file", "error_code": 500, "traceback": "..."}`, 500,
			"agent 127.0.0.1: POST /extract: HTTP 500: Error extracting zip file File is not a zip file"},
		{"POST /store", `{"message": "Error storing file: [Errno 28] No space left on device", "error_code": 500}`, 500,
			"agent 127.0.0.1: POST /store: HTTP 500: Error storing file: [Errno 28] No space left on device"},
		{"POST /execpy", `{"message": "Async process already running.", "error_code": 400}`, 400,
			"agent 127.0.0.1: POST /execpy: HTTP 400: Async process already running."},
	} {
		agent := windowsAgent(windowsFeatures)
		agent.replies[c.step] = func(w http.ResponseWriter, _ call) { writeJSON(w, c.code, c.reply) }
		cl := serve(t, agent)
		err := cl.Start(context.Background(), "127.0.0.1", fileAnalysis())
		var ae *Error
		if err == nil || err.Error() != c.wantErr || !errors.As(err, &ae) || ae.StatusCode != c.code {
			t.Errorf("%s failing: got %v, want %q", c.step, err, c.wantErr)
			continue
		}
		calls := agent.seen()
		if last := calls[len(calls)-1]; !strings.HasPrefix(c.step, last.method+" "+last.path) {
			t.Errorf("%s failing: went on to %s", c.step, last)
		}
	}
}

func TestStartChecksTheTaskFirst(t *testing.T) {
	agent := windowsAgent(windowsFeatures)
	c := serve(t, agent)
	for name, mutate := range map[string]func(*Analysis){
		"no sample":        func(a *Analysis) { a.Sample = nil },
		"bad category":     func(a *Analysis) { a.Category = "pcap" },
		"bad platform":     func(a *Analysis) { a.Platform = "beos" },
		"no timeout":       func(a *Analysis) { a.Timeout = 0 },
		"no result server": func(a *Analysis) { a.ResultServerIP = "" },
		"no analyzer":      func(a *Analysis) { a.Analyzer = nil },
		"line break":       func(a *Analysis) { a.Options = "a=1\nip = 6.6.6.6" },
		"no file name":     func(a *Analysis) { a.FileName, a.Target = "", "" },
	} {
		a := fileAnalysis()
		mutate(&a)
		if err := c.Start(context.Background(), "127.0.0.1", a); err == nil {
			t.Errorf("%s: started", name)
		}
	}
	if n := len(agent.seen()); n != 0 {
		t.Errorf("bad tasks reached the agent: %d calls", n)
	}
}

func TestStartRefusesASampleOfTheWrongSize(t *testing.T) {
	for _, size := range []int64{1, 100} {
		agent := windowsAgent(windowsFeatures)
		c := serve(t, agent)
		a := fileAnalysis()
		a.Sample, a.SampleSize = strings.NewReader("MZ\x90\x00"), size
		if err := c.Start(context.Background(), "127.0.0.1", a); err == nil || !strings.Contains(err.Error(), "POST /store") {
			t.Errorf("SampleSize %d for 4 bytes: %v", size, err)
		}
		for _, c := range agent.seen() {
			if c.path == "/execpy" {
				t.Errorf("SampleSize %d for 4 bytes: the analyzer was started", size)
			}
		}
	}
}

// statusAgent answers GET /status from a script, one reply per poll, the
// last one for ever.
func statusAgent(t *testing.T, script ...string) *Client {
	var mu sync.Mutex
	n := 0
	return serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		s := script[min(n, len(script)-1)]
		n++
		mu.Unlock()
		if s == "500" {
			writeJSON(w, 500, `{"message": "boom", "error_code": 500}`)
			return
		}
		writeJSON(w, 200, s)
	}))
}

const (
	running  = `{"message": "Analysis status", "status": "running", "description": "", "process_id": 77}`
	complete = `{"message": "Analysis status", "status": "complete", "description": "", "exitcode": 0}`
)

func TestWait(t *testing.T) {
	ctx := context.Background()
	if err := statusAgent(t, running, running, complete).Wait(ctx, "127.0.0.1"); err != nil {
		t.Errorf("complete: %v", err)
	}
	// Failures that do not come MaxStatusFailures in a row are ridden out.
	if err := statusAgent(t, running, "500", "500", running, "500", "500", "500", "500", complete).Wait(ctx, "127.0.0.1"); err != nil {
		t.Errorf("scattered poll failures: %v", err)
	}

	err := statusAgent(t, running, `{"message": "Analysis status", "status": "failed", "description": "Exited with exit code 3", "exitcode": 3}`).Wait(ctx, "127.0.0.1")
	var ae *AnalyzerError
	if !errors.As(err, &ae) || ae.Status != "failed" || ae.ExitCode == nil || *ae.ExitCode != 3 ||
		err.Error() != "agent 127.0.0.1: analyzer failed: Exited with exit code 3" {
		t.Errorf("failed: %v", err)
	}
	err = statusAgent(t, `{"message": "Analysis status", "status": "exception", "description": "You probably submitted the job with wrong package"}`).Wait(ctx, "127.0.0.1")
	if !errors.As(err, &ae) || ae.Status != "exception" || ae.ExitCode != nil || !strings.Contains(err.Error(), "wrong package") {
		t.Errorf("exception: %v", err)
	}
	err = statusAgent(t, running, `{"message": "Analysis status", "status": "init", "description": ""}`).Wait(ctx, "127.0.0.1")
	if !errors.Is(err, ErrAgentRestarted) {
		t.Errorf("init: %v", err)
	}
	err = statusAgent(t, running, "500").Wait(ctx, "127.0.0.1")
	if !errors.Is(err, ErrAgentLost) || !strings.Contains(err.Error(), "5 polls in a row failed, the last: GET /status: HTTP 500: boom") {
		t.Errorf("agent failing: %v", err)
	}
	err = statusAgent(t, running, `{"message": "Analysis status", "status": "sideways"}`).Wait(ctx, "127.0.0.1")
	if err == nil || !strings.Contains(err.Error(), `unknown status "sideways"`) {
		t.Errorf("unknown status: %v", err)
	}

	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	err = statusAgent(t, running).Wait(short, "127.0.0.1")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "last status running") {
		t.Errorf("deadline: %v", err)
	}
}
