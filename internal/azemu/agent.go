package azemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// agent is the CAPE guest agent (agent.py v0.22 protocol) of one emulated VM,
// listening on the VM's private IP, which is a loopback address of this host.
// It answers every route of agent.py with agent.py's JSON, keeps the guest's
// files in memory (guestFS), and runs no program: POST /execpy of an
// analyzer.py starts an emulated analyzer (analyzer.go) that reads the
// stored analysis.conf and reports to the result server named there.
//
// An agent lives while its VM is provisioned and running and its admin state
// is not "down"; a reimage or restart stops it and starts a fresh one (a new
// boot), so nothing of an analysis survives it. In the "hang" state it
// accepts connections and reads requests but never answers. In the "fail"
// state it answers, but each analyzer it starts fails.
type agent struct {
	addr     string
	ip       string
	windows  bool
	name     string
	boot     int
	agentPID int // the agent's own process id, the analyzer's parent
	analysis [2]time.Duration
	log      *slog.Logger
	srv      *http.Server

	ctx    context.Context // ends when the VM goes: the analyzer stops with it
	cancel context.CancelFunc
	wg     sync.WaitGroup // emulated analyzers

	mu      sync.Mutex
	hang    bool
	unhang  chan struct{} // closed to release hung requests
	fail    bool          // analyzers started from now on fail
	killed  bool          // GET /kill: the agent quit
	status  string        // init, running, complete, failed, exception
	descr   *string       // null after a POST /status without description
	child   *process      // the async child GET /status reports on
	pinned  string        // the IP the agent is pinned to ("" none)
	mutexes map[string]bool
	fs      *guestFS
	bext    string // the browser extension's file, once made
	stderr  logTail
}

// agentVersion is what CAPE agent v0.22 reports on GET /.
const agentVersion = "0.22"

// agentFeatures are agent.py v0.22's features; Windows adds mutex and
// browser_extension.
func agentFeatures(windows bool) []string {
	f := []string{"execpy", "execute", "pinning", "logs", "largefile", "unicodepath", "subdir_upload"}
	if windows {
		f = append(f, "mutex", "browser_extension")
	}
	return f
}

// Agent statuses, as agent.py's Status enum names them.
const (
	asInit      = "init"
	asRunning   = "running"
	asComplete  = "complete"
	asFailed    = "failed"
	asException = "exception"
)

// agentStatuses are agent.py's Status values in order: POST /status takes
// a name or its number.
var agentStatuses = []string{asInit, asRunning, asComplete, asFailed, asException}

// process is a child the agent started: an emulated analyzer, or a script
// that ends at once.
type process struct {
	pid      int
	done     bool // under the agent's lock
	exitCode int
	exited   chan struct{} // closed when done is set
}

// exit ends the process; the agent's lock is held.
func (p *process) exit(code int) {
	p.done, p.exitCode = true, code
	close(p.exited)
}

// agentSpec is what an agent is started with; a change of boot means the
// VM restarted and needs a fresh agent.
type agentSpec struct {
	mode    string // up, hang or fail
	boot    int
	windows bool
	name    string
}

// startAgent binds addr (the VM's ip and the agent port) and serves the
// agent protocol on it.
func startAgent(ip, addr string, spec agentSpec, analysis [2]time.Duration, logger *slog.Logger) (*agent, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{
		addr:     ln.Addr().String(),
		ip:       ip,
		windows:  spec.windows,
		name:     spec.name,
		boot:     spec.boot,
		analysis: analysis,
		agentPID: 4 * (100 + rand.IntN(200)),
		log:      logger.With("agent", addr),
		ctx:      ctx,
		cancel:   cancel,
		hang:     spec.mode == agentHang,
		fail:     spec.mode == agentFail,
		unhang:   make(chan struct{}),
		status:   asInit,
		descr:    new(string),
		mutexes:  map[string]bool{},
	}
	a.fs = newGuestFS(a.windows, a.cwd(), agentDiskBytes)
	for _, d := range []string{a.tempDir(), a.cwd()} {
		_ = a.fs.mkdirAll(d)
	}
	_ = a.fs.writeFile(a.agentPath(), []byte("# agent.py v"+agentVersion+" (emulated by sandfleet's azemu)\n"))
	a.srv = &http.Server{
		Handler:           a,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(discardWriter{}, "", 0),
	}
	go func() { _ = a.srv.Serve(ln) }()
	return a, nil
}

// The guest's layout: where agent.py runs from, and its TEMP.
func (a *agent) cwd() string {
	if a.windows {
		return `C:\agent`
	}
	return "/root"
}

func (a *agent) agentPath() string { return a.fs.join(a.cwd(), "agent.py") }

func (a *agent) tempDir() string {
	if a.windows {
		return `C:\Users\cape\AppData\Local\Temp`
	}
	return "/tmp"
}

// environ is what os.environ holds in the guest (Windows spells the names
// in capitals to Python).
func (a *agent) environ() map[string]string {
	if !a.windows {
		return map[string]string{
			"HOME": "/root", "LANG": "C.UTF-8", "LOGNAME": "root", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"PWD": "/root", "SHELL": "/bin/bash", "USER": "root", "HOSTNAME": a.name,
		}
	}
	computer := strings.ToUpper(a.name)
	if len(computer) > 15 {
		computer = computer[:15]
	}
	return map[string]string{
		"ALLUSERSPROFILE": `C:\ProgramData`, "APPDATA": `C:\Users\cape\AppData\Roaming`, "COMPUTERNAME": computer,
		"COMSPEC": `C:\Windows\system32\cmd.exe`, "HOMEDRIVE": "C:", "HOMEPATH": `\Users\cape`,
		"LOCALAPPDATA": `C:\Users\cape\AppData\Local`, "NUMBER_OF_PROCESSORS": "2", "OS": "Windows_NT",
		"PATH": `C:\Windows\system32;C:\Windows;C:\Windows\System32\Wbem;C:\Python311`, "PATHEXT": ".COM;.EXE;.BAT;.CMD;.PY;.PYW",
		"PROCESSOR_ARCHITECTURE": "AMD64", "PROGRAMDATA": `C:\ProgramData`, "PROGRAMFILES": `C:\Program Files`,
		"PROGRAMFILES(X86)": `C:\Program Files (x86)`, "PUBLIC": `C:\Users\Public`, "SYSTEMDRIVE": "C:",
		"SYSTEMROOT": `C:\Windows`, "TEMP": a.tempDir(), "TMP": a.tempDir(), "USERDOMAIN": computer,
		"USERNAME": "cape", "USERPROFILE": `C:\Users\cape`, "WINDIR": `C:\Windows`,
	}
}

// setMode switches between answering (up), hanging and failing analyzers.
func (a *agent) setMode(mode string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fail = mode == agentFail
	hang := mode == agentHang
	if a.hang == hang {
		return
	}
	a.hang = hang
	if !hang {
		close(a.unhang)
		a.unhang = make(chan struct{})
	}
}

// state is what the admin API reports of the agent: up, down, hang or fail.
func (a *agent) state() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.killed:
		return agentDown
	case a.hang:
		return agentHang
	case a.fail:
		return agentFail
	default:
		return agentUp
	}
}

// stop closes the listener and every connection, and ends the emulated
// analyzer: the VM is gone or rebooting.
func (a *agent) stop() {
	a.setMode(agentUp)
	a.cancel()
	_ = a.srv.Close()
	a.wg.Wait()
}

// agentRequest is a request as agent.py sees it: the client's IP, the form
// fields, and the files (multipart parts with a file name).
type agentRequest struct {
	method, path string
	clientIP     string
	form         map[string]string
	files        map[string][]byte
}

// agentReply is one of agent.py's answers.
type agentReply struct {
	status int
	body   map[string]any // nil: no body
	raw    []byte         // a file (POST /retrieve)
	after  func()         // run once the reply is written
}

// ServeHTTP holds requests while the agent hangs, drops those agent.py
// ignores, and answers the rest.
func (a *agent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	hang, unhang := a.hang, a.unhang
	a.mu.Unlock()
	if hang {
		select {
		case <-unhang:
		case <-r.Context().Done():
		}
		// Whatever was asked of a hung agent gets no answer: drop the connection.
		panic(http.ErrAbortHandler)
	}
	switch r.Method {
	case http.MethodGet, http.MethodPost, http.MethodDelete:
	default:
		// http.server's own answer to a method agent.py has no do_X for.
		http.Error(w, fmt.Sprintf("Unsupported method (%q)", r.Method), http.StatusNotImplemented)
		return
	}
	req, err := a.parse(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
		return
	}
	rep, answered := a.handle(req)
	if !answered {
		// A pinned agent sends nothing at all to anyone else.
		panic(http.ErrAbortHandler)
	}
	a.mu.Lock()
	a.stderr.printf("%s - - [%s] \"%s %s HTTP/1.1\" %d -", req.clientIP, time.Now().Format("02/Jan/2006 15:04:05"), req.method, req.path, rep.status)
	a.mu.Unlock()
	switch {
	case rep.raw != nil:
		w.Header().Set("Content-Length", strconv.Itoa(len(rep.raw)))
		w.WriteHeader(rep.status)
		_, _ = w.Write(rep.raw)
	case rep.body != nil:
		w.WriteHeader(rep.status)
		_ = json.NewEncoder(w).Encode(rep.body)
	default:
		w.WriteHeader(rep.status)
	}
	if rep.after != nil {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		rep.after()
	}
}

// parse reads a request as agent.py's handler does: GET has no form at
// all; a POST or DELETE body is read to Content-Length (a chunked body,
// without one, is empty to it) and parsed as multipart (file parts are
// those with a file name) or urlencoded (blank values dropped).
func (a *agent) parse(r *http.Request) (agentRequest, error) {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	req := agentRequest{method: r.Method, path: r.RequestURI, clientIP: host, form: map[string]string{}, files: map[string][]byte{}}
	if r.Method == http.MethodGet || r.ContentLength <= 0 {
		return req, nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, agentDiskBytes+1<<20))
	if err != nil {
		return req, fmt.Errorf("request body: %w", err)
	}
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "multipart/form-data":
		mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			data, err := io.ReadAll(p)
			if err != nil || p.FormName() == "" {
				continue
			}
			if p.FileName() != "" {
				req.files[p.FormName()] = data
			} else {
				req.form[p.FormName()] = string(data)
			}
		}
	case "application/x-www-form-urlencoded":
		v, _ := url.ParseQuery(string(body))
		for k, vals := range v {
			if last := vals[len(vals)-1]; last != "" {
				req.form[k] = last
			}
		}
	}
	return req, nil
}

// handle answers a request; false: no answer at all.
func (a *agent) handle(req agentRequest) (agentReply, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pinned != "" && req.clientIP != a.pinned {
		// Only the guest itself may still report its status. Its own
		// loopback is, on this host, its own address: 127.0.0.1 is the host.
		if req.clientIP != a.ip {
			return agentReply{}, false
		}
		if req.method != http.MethodPost || (req.path != "/status" && req.path != "/browser_extension") {
			return agentReply{}, false
		}
	}
	h := agentRoutes[req.method+" "+req.path]
	if h == nil {
		return agentError(http.StatusNotFound, "Route not found"), true
	}
	return h(a, req), true
}

// agentRoutes are agent.py's routes. A key is the method and the exact
// path: agent.py's anchored patterns match the raw path, so a query string
// makes a 404.
var agentRoutes = map[string]func(*agent, agentRequest) agentReply{
	"GET /":                   (*agent).getIndex,
	"GET /status":             (*agent).getStatus,
	"POST /status":            (*agent).postStatus,
	"GET /logs":               (*agent).getLogs,
	"GET /system":             (*agent).getSystem,
	"GET /environ":            (*agent).getEnviron,
	"GET /path":               (*agent).getPath,
	"POST /mkdir":             (*agent).postMkdir,
	"GET /mktemp":             (*agent).mktemp,
	"POST /mktemp":            (*agent).mktemp,
	"GET /mkdtemp":            (*agent).mkdtemp,
	"POST /mkdtemp":           (*agent).mkdtemp,
	"POST /store":             (*agent).postStore,
	"POST /retrieve":          (*agent).postRetrieve,
	"POST /extract":           (*agent).postExtract,
	"POST /remove":            (*agent).postRemove,
	"POST /execute":           (*agent).postExecute,
	"POST /execpy":            (*agent).postExecpy,
	"GET /pinning":            (*agent).getPinning,
	"GET /kill":               (*agent).getKill,
	"POST /mutex":             (*agent).postMutex,
	"DELETE /mutex":           (*agent).deleteMutex,
	"POST /browser_extension": (*agent).postBrowserExtension,
}

// agentSuccess is agent.py's json_success: the message and the values (its
// status code is the HTTP status, not a key of the body).
func agentSuccess(status int, message string, kv ...any) agentReply {
	body := map[string]any{"message": message}
	for i := 0; i+1 < len(kv); i += 2 {
		body[kv[i].(string)] = kv[i+1]
	}
	return agentReply{status: status, body: body}
}

func agentOK(message string, kv ...any) agentReply {
	return agentSuccess(http.StatusOK, message, kv...)
}

// agentError is agent.py's json_error.
func agentError(status int, message string, kv ...any) agentReply {
	r := agentSuccess(status, message, kv...)
	r.body["error_code"] = status
	return r
}

// agentException is agent.py's json_exception: a 500 with the traceback.
func agentException(message string, err error) agentReply {
	tb := "Traceback (most recent call last):\n  (emulated by sandfleet's azemu)\n"
	if err != nil {
		tb += "OSError: " + err.Error() + "\n"
	}
	return agentError(http.StatusInternalServerError, message, "traceback", tb)
}

func (a *agent) getIndex(agentRequest) agentReply {
	return agentOK("CAPE Agent!", "version", agentVersion, "features", agentFeatures(a.windows), "is_user_admin", true)
}

// getStatus is agent.py's: while an async child runs, running with its
// process id; once it has exited, complete (exit 0) or failed with the
// exit code, learnt at this poll; otherwise the status last set.
func (a *agent) getStatus(agentRequest) agentReply {
	if a.status == asComplete || a.child == nil {
		return agentOK("Analysis status", "status", a.status, "description", a.descr)
	}
	c := a.child
	if !c.done {
		a.status = asRunning
		return agentOK("Analysis status", "status", a.status, "description", a.descr, "process_id", c.pid)
	}
	a.child = nil
	d := ""
	if c.exitCode == 0 {
		a.status = asComplete
	} else {
		a.status = asFailed
		d = fmt.Sprintf("Exited with exit code %d", c.exitCode)
	}
	a.descr = &d
	return agentOK("Analysis status", "status", a.status, "description", a.descr, "exitcode", c.exitCode)
}

func (a *agent) postStatus(req agentRequest) agentReply {
	v := strings.ToLower(req.form["status"])
	status := ""
	for i, s := range agentStatuses {
		if v == s || v == strconv.Itoa(i+1) {
			status = s
		}
	}
	if status == "" {
		return agentError(http.StatusBadRequest, "No valid status has been provided")
	}
	if status == asComplete || status == asFailed || status == asException {
		a.child = nil
	}
	a.status = status
	a.descr = nil
	if d, ok := req.form["description"]; ok {
		a.descr = &d
	}
	return agentOK("Analysis status updated")
}

func (a *agent) getLogs(agentRequest) agentReply {
	// agent.py not in verbose mode captures its output; the request log
	// goes to stderr, and so do the emulated analyzer's complaints.
	return agentOK("Agent logs", "stdout", "", "stderr", a.stderr.String())
}

func (a *agent) getSystem(agentRequest) agentReply {
	if a.windows {
		return agentOK("System", "system", "Windows")
	}
	return agentOK("System", "system", "Linux")
}

func (a *agent) getEnviron(agentRequest) agentReply {
	return agentOK("Environment variables", "environ", a.environ())
}

func (a *agent) getPath(agentRequest) agentReply {
	return agentOK("Agent path", "filepath", a.agentPath())
}

func (a *agent) postMkdir(req agentRequest) agentReply {
	dir, has := req.form["dirpath"]
	if !has {
		return agentError(http.StatusBadRequest, "No dirpath has been provided")
	}
	if m, has := req.form["mode"]; has {
		if _, err := strconv.Atoi(m); err != nil {
			return agentException("Error creating directory", fmt.Errorf("invalid literal for int() with base 10: '%s'", m))
		}
	}
	if err := a.fs.mkdirAll(dir); err != nil {
		return agentException("Error creating directory", err)
	}
	return agentOK("Successfully created directory")
}

func (a *agent) mktemp(req agentRequest) agentReply {
	p, err := a.fs.mktemp(req.form["dirpath"], req.form["prefix"], req.form["suffix"], a.tempDir(), false)
	if err != nil {
		return agentException("Error creating temporary file", err)
	}
	return agentOK("Successfully created temporary file", "filepath", p)
}

func (a *agent) mkdtemp(req agentRequest) agentReply {
	p, err := a.fs.mktemp(req.form["dirpath"], req.form["prefix"], req.form["suffix"], a.tempDir(), true)
	if err != nil {
		return agentException("Error creating temporary directory", err)
	}
	return agentOK("Successfully created temporary directory", "dirpath", p)
}

func (a *agent) postStore(req agentRequest) agentReply {
	p, has := req.form["filepath"]
	if !has {
		return agentError(http.StatusBadRequest, "No filepath has been provided")
	}
	data, has := req.files["file"]
	if !has {
		return agentError(http.StatusBadRequest, "No file has been provided")
	}
	if d := a.fs.dirname(p); d != "" {
		if err := a.fs.mkdirAll(d); err != nil {
			return agentException("Error storing file: "+err.Error(), err)
		}
	}
	if err := a.fs.writeFile(p, data); err != nil {
		return agentException("Error storing file: "+err.Error(), err)
	}
	return agentOK("Successfully stored file")
}

// postRetrieve sends a file as agent.py's send_file does: the bytes with
// their length, or base64 in 1 MiB chunks each encoded on its own and no
// length; a missing file is a bare 404. Streaming (tail -f) sends what
// there is and ends, as nothing in an emulated guest appends to files.
func (a *agent) postRetrieve(req agentRequest) agentReply {
	p, has := req.form["filepath"]
	if !has {
		return agentError(http.StatusBadRequest, "No filepath has been provided")
	}
	data, found := a.fs.readFile(p)
	if !found {
		return agentReply{status: http.StatusNotFound}
	}
	if req.form["encoding"] != "base64" {
		return agentReply{status: http.StatusOK, raw: bytes.Clone(data)}
	}
	var out []byte
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		out = base64.StdEncoding.AppendEncode(out, data[:n])
		data = data[n:]
	}
	if out == nil {
		out = []byte{}
	}
	return agentReply{status: http.StatusOK, raw: out}
}

func (a *agent) postExtract(req agentRequest) agentReply {
	dir, has := req.form["dirpath"]
	if !has {
		return agentError(http.StatusBadRequest, "No dirpath has been provided")
	}
	z, has := req.files["zipfile"]
	if !has {
		return agentError(http.StatusBadRequest, "No zip file has been provided")
	}
	if err := a.fs.extract(z, dir); err != nil {
		return agentException("Error extracting zip file "+err.Error(), err)
	}
	return agentOK("Successfully extracted zip file")
}

func (a *agent) postRemove(req agentRequest) agentReply {
	p, has := req.form["path"]
	if !has {
		return agentError(http.StatusBadRequest, "No path has been provided")
	}
	dir, found := a.fs.remove(p)
	switch {
	case !found:
		return agentError(http.StatusNotFound, "Path provided does not exist")
	case dir:
		return agentOK("Successfully deleted directory")
	default:
		return agentOK("Successfully deleted file")
	}
}

// postExecute runs nothing: an async command naming analyzer.py starts the
// emulated analyzer, which, as CAPE's analyzer does when run this way,
// reports its end by setting the status itself; any other command "runs"
// with no output. As in agent.py, the status is running afterwards, and
// the guest itself may run nothing but "date".
func (a *agent) postExecute(req agentRequest) agentReply {
	cmd, has := req.form["command"]
	if !has {
		return agentError(http.StatusBadRequest, "No command has been provided")
	}
	if req.clientIP == a.ip && cmd != "date" && cmd != "cmd /c date /t" {
		return agentError(http.StatusInternalServerError, "Not allowed to execute commands")
	}
	_, async := req.form["async"]
	a.status, a.descr = asRunning, new(string)
	if !async {
		return agentOK("Successfully executed command", "stdout", "", "stderr", "")
	}
	if script := analyzerIn(cmd); script != "" {
		a.spawnLocked(script, false)
	}
	return agentOK("Successfully executed command", "stdout", nil, "stderr", nil)
}

// analyzerIn finds the analyzer.py a command line runs.
func analyzerIn(cmd string) string {
	for _, f := range strings.Fields(cmd) {
		f = strings.Trim(f, `"'`)
		if strings.HasSuffix(strings.ToLower(strings.ReplaceAll(f, `\`, "/")), "analyzer.py") {
			return f
		}
	}
	return ""
}

// postExecpy "runs" a Python script: analyzer.py is the emulated analyzer,
// a missing script exits 2 as python does, any other exits 0 at once.
func (a *agent) postExecpy(req agentRequest) agentReply {
	p, has := req.form["filepath"]
	if !has {
		return agentError(http.StatusBadRequest, "No Python file has been provided")
	}
	_, async := req.form["async"]
	if async && a.status == asRunning && a.child != nil {
		return agentError(http.StatusBadRequest, "Async process already running.")
	}
	if async {
		c := a.spawnLocked(p, true)
		a.status, a.descr, a.child = asRunning, new(string), c
		return agentOK("Successfully spawned command", "process_id", c.pid)
	}
	// Synchronous: wait for the script's end, outside the lock.
	c := a.spawnLocked(p, true)
	a.mu.Unlock()
	done := a.waitExit(c)
	a.mu.Lock()
	if !done {
		return agentException("Error executing Python command: the VM is going down", nil)
	}
	if c.exitCode == 0 {
		a.status, a.descr = asComplete, new(string)
		return agentOK("Successfully executed command", "stdout", "", "stderr", "")
	}
	msg := "Error executing python command."
	a.status, a.descr = asFailed, &msg
	return agentError(http.StatusBadRequest, msg, "stdout", "", "stderr", a.stderr.last(), "exitcode", c.exitCode)
}

// spawnLocked starts a child for script: the emulated analyzer if it is an
// analyzer.py (reporting by exit code, or by setting the status itself when
// started through /execute), else a script that ends at once.
func (a *agent) spawnLocked(script string, byExit bool) *process {
	c := &process{pid: a.newPID(), exited: make(chan struct{})}
	_, found := a.fs.readFile(script)
	base := strings.ToLower(script[strings.LastIndexAny(script, `/\`)+1:])
	switch {
	case !found:
		a.stderr.printf("python: can't open file '%s': [Errno 2] No such file or directory", script)
		c.exit(2)
	case base != "analyzer.py":
		c.exit(0)
	default:
		run := &analyzerRun{agent: a, proc: c, script: script, fail: a.fail, byExit: byExit}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			run.run()
		}()
	}
	return c
}

// waitExit waits for a child's end; false if the VM went first.
func (a *agent) waitExit(c *process) bool {
	select {
	case <-c.exited:
		return true
	case <-a.ctx.Done():
		return false
	}
}

// newPID is a process id as Windows hands them out (multiples of 4).
func (a *agent) newPID() int {
	if a.windows {
		return 4 * (300 + rand.IntN(2000))
	}
	return 1000 + rand.IntN(30000)
}

func (a *agent) getPinning(req agentRequest) agentReply {
	if a.pinned != "" {
		return agentError(http.StatusInternalServerError, "Agent has already been pinned to an IP!")
	}
	a.pinned = req.clientIP
	return agentOK("Successfully pinned Agent", "client_ip", req.clientIP)
}

// getKill quits the agent after answering, as agent.py's shutdown does;
// children keep running. The VM's next boot starts a fresh agent.
func (a *agent) getKill(agentRequest) agentReply {
	a.killed = true
	r := agentOK("Quit the CAPE Agent")
	r.after = func() {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if a.srv.Shutdown(ctx) != nil {
				_ = a.srv.Close()
			}
		}()
	}
	return r
}

// postMutex acquires a named mutex. Nothing else runs in an emulated guest,
// so every mutex exists and is free.
func (a *agent) postMutex(req agentRequest) agentReply {
	if !a.windows {
		return agentError(http.StatusBadRequest, "mutex feature not supported on linux")
	}
	name := req.form["mutex"]
	if name == "" {
		return agentError(http.StatusBadRequest, "no mutex provided")
	}
	if a.mutexes[name] {
		return agentOK("have mutex: " + name)
	}
	a.mutexes[name] = true
	return agentSuccess(http.StatusCreated, "got mutex: "+name)
}

func (a *agent) deleteMutex(req agentRequest) agentReply {
	if !a.windows {
		return agentError(http.StatusBadRequest, "mutex feature not supported on linux")
	}
	name := req.form["mutex"]
	if name == "" {
		return agentError(http.StatusBadRequest, "no mutex provided")
	}
	if !a.mutexes[name] {
		return agentError(http.StatusNotFound, "mutex does not exist: "+name)
	}
	delete(a.mutexes, name)
	return agentOK("released mutex: " + name)
}

// postBrowserExtension keeps the network data CAPE's browser extension
// posts in a file of a temporary folder, as agent.py does.
func (a *agent) postBrowserExtension(req agentRequest) agentReply {
	if a.bext == "" {
		dir, err := a.fs.mktemp("", "", "", a.tempDir(), true)
		if err != nil {
			return agentException("Error creating temporary directory", err)
		}
		const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		name := []byte("bext_")
		for range 11 {
			name = append(name, letters[rand.IntN(len(letters))])
		}
		a.bext = a.fs.join(dir, string(name)+".json")
	}
	if d := req.form["networkData"]; d != "" {
		if err := a.fs.writeFile(a.bext, []byte(d)); err != nil {
			return agentException("Error storing browser data", err)
		}
	}
	return agentOK("OK")
}

// logTail keeps the end of what the agent wrote to its captured stderr.
type logTail struct{ b []byte }

const logTailBytes = 64 << 10

func (l *logTail) printf(format string, args ...any) {
	l.b = fmt.Appendf(l.b, format+"\n", args...)
	if over := len(l.b) - logTailBytes; over > 0 {
		l.b = l.b[over:]
	}
}

func (l *logTail) String() string { return string(l.b) }

// last is the last line written.
func (l *logTail) last() string {
	s := strings.TrimSuffix(string(l.b), "\n")
	return s[strings.LastIndex(s, "\n")+1:] + "\n"
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
