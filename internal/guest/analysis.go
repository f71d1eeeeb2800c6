package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Analysis is what the guest needs to run one task.
type Analysis struct {
	ID       int64
	Category string // "file" | "url"
	// Target is the URL, or the sample's original file name.
	Target string
	// FileName is the name the sample gets in the guest (sanitised as CAPE
	// does; empty: the base name of Target).
	FileName string
	FileType string
	// Exports are a DLL's exported names, comma-separated, for the analyzer
	// to choose one (CAPE reads them from the PE; empty if none).
	Exports          string
	Package          string
	Options          string // "k=v,k=v"
	Timeout          time.Duration
	EnforceTimeout   bool
	Clock            time.Time // the guest's clock at start; zero: now
	Sample           io.Reader // nil for url tasks
	SampleSize       int64     // bytes in Sample; 0 or less: read it all first
	Analyzer         []byte    // the analyzer package as a zip (see LoadAnalyzer)
	ResultServerIP   string
	ResultServerPort int
	// UploadMaxSize is the largest file the analyzer uploads (0:
	// DefaultUploadMaxSize).
	UploadMaxSize int64
	Platform      string // windows | linux | darwin; empty: windows
	// Auxiliary are CAPE's auxiliary-module switches (auxiliary.conf
	// [auxiliary_modules]), written after the other keys in this order.
	Auxiliary []AuxModule
}

// AuxModule is one switch of CAPE's auxiliary modules in analysis.conf.
type AuxModule struct {
	Name    string
	Enabled bool
}

// DefaultUploadMaxSize is CAPE's resultserver upload_max_size.
const DefaultUploadMaxSize = 100000000

// clockLayout is how CAPE writes datetimes into analysis.conf (the way
// xmlrpc encodes them): %Y%m%dT%H:%M:%S.
const clockLayout = "20060102T15:04:05"

// Start runs CAPE's host sequence on the agent at ip up to the start of the
// analyzer: GET / (anything but 200 is an error), GET /pinning if offered,
// GET /environ, POST /mkdtemp (or /mkdir with the analpath option), POST
// /extract of the analyzer, POST /store of analysis.conf, POST /store of the
// sample (file tasks), then POST /execpy analyzer.py asynchronously (/execute
// for agents without execpy). The first failing step ends it with an *Error.
func (c *Client) Start(ctx context.Context, ip string, a Analysis) error {
	if err := a.check(); err != nil {
		return fmt.Errorf("agent %s: analysis %d: %w", ip, a.ID, err)
	}
	win := a.platform() == "windows"

	info, err := c.Hello(ctx, ip)
	if err != nil {
		return err
	}
	if info.Has("pinning") {
		// From now on the agent answers only this host: another VM on the
		// sandbox network cannot drive it.
		if err := c.getJSON(ctx, ip, "/pinning", nil); err != nil {
			return err
		}
	}
	var env struct {
		Environ map[string]string `json:"environ"`
	}
	if err := c.getJSON(ctx, ip, "/environ", &env); err != nil {
		return err
	}
	drive, temp := "/", "/tmp"
	if win {
		drive = "C:"
		if d := env.Environ["SYSTEMDRIVE"]; d != "" {
			drive = d
		}
		drive += "/"
		if temp = env.Environ["TEMP"]; temp == "" {
			return &Error{IP: ip, Step: "GET /environ", Err: errors.New("no TEMP variable: the analyzer looks for the sample there")}
		}
	}

	analyzerDir, err := c.analyzerDir(ctx, ip, a, win, drive)
	if err != nil {
		return err
	}
	if err := c.post(ctx, ip, "/extract", [][2]string{{"dirpath", analyzerDir}},
		&filePart{field: "zipfile", name: "zipfile", r: bytes.NewReader(a.Analyzer), size: int64(len(a.Analyzer))}, nil); err != nil {
		return err
	}

	fileName := ""
	if a.Category == "file" {
		if fileName, err = a.guestFileName(info.Has("subdir_upload"), win); err != nil {
			return fmt.Errorf("agent %s: analysis %d: %w", ip, a.ID, err)
		}
	}
	conf, err := renderConf(a, fileName)
	if err != nil {
		return fmt.Errorf("agent %s: analysis %d: %w", ip, a.ID, err)
	}
	if err := c.post(ctx, ip, "/store", [][2]string{{"filepath", joinSlash(analyzerDir, "analysis.conf")}},
		&filePart{field: "file", name: "file", r: strings.NewReader(conf), size: int64(len(conf))}, nil); err != nil {
		return err
	}

	if a.Category == "file" {
		sample, size := a.Sample, a.SampleSize
		if size <= 0 {
			b, err := io.ReadAll(sample)
			if err != nil {
				return fmt.Errorf("agent %s: analysis %d: read sample: %w", ip, a.ID, err)
			}
			sample, size = bytes.NewReader(b), int64(len(b))
		}
		samplePath := "/tmp/" + fileName
		if win {
			samplePath = joinWindows(temp, fileName)
		}
		// CAPE names the part sample.bin whatever the sample is: the agent
		// stores it at filepath, and the real name never crosses the wire.
		if err := c.post(ctx, ip, "/store", [][2]string{{"filepath", samplePath}},
			&filePart{field: "file", name: "sample.bin", r: &exactReader{r: sample, left: size}, size: size}, nil); err != nil {
			return err
		}
	}

	if info.Has("execpy") {
		return c.post(ctx, ip, "/execpy", [][2]string{
			{"filepath", joinSlash(analyzerDir, "analyzer.py")},
			{"async", "yes"},
			{"cwd", analyzerDir},
		}, nil, nil)
	}
	python, sep := "python3", "/"
	if win {
		python, sep = "python", `\`
	}
	return c.post(ctx, ip, "/execute", [][2]string{
		{"command", python + " " + analyzerDir + sep + "analyzer.py"},
		{"async", "yes"},
		{"cwd", analyzerDir},
	}, nil, nil)
}

// analyzerDir makes the folder the analyzer goes to: a fresh temporary one
// under the system drive, or the fixed one the analpath option names (a
// known path that malware looking for "tmpXXXX" folders will not find).
func (c *Client) analyzerDir(ctx context.Context, ip string, a Analysis, win bool, drive string) (string, error) {
	if p := optionValue(a.Options, "analpath"); p != "" {
		dir := drive + p
		return dir, c.post(ctx, ip, "/mkdir", [][2]string{{"dirpath", dir}}, nil, nil)
	}
	base := "/tmp"
	if win {
		base = drive
	}
	var made struct {
		DirPath string `json:"dirpath"`
	}
	if err := c.post(ctx, ip, "/mkdtemp", [][2]string{{"dirpath", base}}, nil, &made); err != nil {
		return "", err
	}
	if made.DirPath == "" {
		return "", &Error{IP: ip, Step: "POST /mkdtemp", Err: errors.New("the reply names no dirpath")}
	}
	return made.DirPath, nil
}

// Status is the agent's answer to GET /status.
type Status struct {
	Status      string  `json:"status"` // init, running, complete, failed, exception
	Description *string `json:"description"`
	ProcessID   *int    `json:"process_id"`
	ExitCode    *int    `json:"exitcode"`
}

// AnalyzerError is an analyzer that ended badly: the agent reported it
// failed (a non-zero exit) or caught an exception.
type AnalyzerError struct {
	IP          string
	Status      string // failed | exception
	Description string
	ExitCode    *int // nil when the agent reported none (an exception)
}

func (e *AnalyzerError) Error() string {
	msg := fmt.Sprintf("agent %s: analyzer %s", e.IP, e.Status)
	if e.Description != "" {
		msg += ": " + e.Description
	}
	if e.ExitCode != nil && !strings.Contains(e.Description, "exit code") {
		msg += fmt.Sprintf(" (exit code %d)", *e.ExitCode)
	}
	return msg
}

// ErrAgentLost: GET /status failed MaxStatusFailures times in a row; the VM
// is gone, hung or cut off from the host.
var ErrAgentLost = errors.New("agent lost")

// ErrAgentRestarted: the agent reports init after an analyzer was started:
// it restarted (the VM rebooted) and knows nothing of the analysis.
var ErrAgentRestarted = errors.New("agent reports init: it restarted and lost the analysis")

// GetStatus calls GET /status once.
func (c *Client) GetStatus(ctx context.Context, ip string) (Status, error) {
	var st Status
	err := c.getJSON(ctx, ip, "/status", &st)
	return st, err
}

// Wait polls GET /status every RetryInterval until the analyzer reports
// complete (nil), failed or exception (an *AnalyzerError: never a success),
// or ctx ends. MaxStatusFailures failed polls in a row end it with the last
// cause; a success in between starts the count again. An agent back at
// init has lost the analysis (ErrAgentRestarted).
func (c *Client) Wait(ctx context.Context, ip string) error {
	maxFail := c.MaxStatusFailures
	if maxFail <= 0 {
		maxFail = DefaultMaxStatusFailures
	}
	failures := 0
	last := "none yet"
	for {
		st, err := c.GetStatus(ctx, ip)
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("agent %s: wait for the analyzer (last status %s): %w", ip, last, ctx.Err())
		case err != nil:
			failures++
			if failures >= maxFail {
				why := strings.TrimPrefix(err.Error(), "agent "+ip+": ")
				return fmt.Errorf("agent %s: %w: %d polls in a row failed, the last: %s", ip, ErrAgentLost, failures, why)
			}
		default:
			failures = 0
			last = st.Status
			switch st.Status {
			case "complete":
				return nil
			case "failed", "exception":
				e := &AnalyzerError{IP: ip, Status: st.Status, ExitCode: st.ExitCode}
				if st.Description != nil {
					e.Description = *st.Description
				}
				return e
			case "init":
				return fmt.Errorf("agent %s: %w", ip, ErrAgentRestarted)
			case "running":
			default:
				return fmt.Errorf("agent %s: GET /status: unknown status %q", ip, st.Status)
			}
		}
		if c.pause(ctx) != nil {
			return fmt.Errorf("agent %s: wait for the analyzer (last status %s): %w", ip, last, ctx.Err())
		}
	}
}

// filePart is the file of a multipart form.
type filePart struct {
	field, name string
	r           io.Reader
	size        int64
}

// post sends fields (and file, if any) as agent.py reads them: a urlencoded
// form, or multipart with the fields before the file as requests sends them,
// and decodes the JSON reply into out (if not nil).
func (c *Client) post(ctx context.Context, ip, path string, fields [][2]string, file *filePart, out any) error {
	if file == nil {
		form := url.Values{}
		for _, f := range fields {
			form.Add(f[0], f[1])
		}
		enc := form.Encode()
		return c.callJSON(ctx, ip, http.MethodPost, path, &requestBody{
			contentType: "application/x-www-form-urlencoded",
			r:           strings.NewReader(enc),
			size:        int64(len(enc)),
		}, out)
	}
	// The file streams between a head and a tail built up front, so that a
	// large sample is never held in memory and Content-Length is exact.
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, f := range fields {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return err
		}
	}
	if _, err := mw.CreateFormFile(file.field, file.name); err != nil {
		return err
	}
	head := bytes.Clone(buf.Bytes())
	buf.Reset()
	if err := mw.Close(); err != nil {
		return err
	}
	tail := buf.Bytes()
	return c.callJSON(ctx, ip, http.MethodPost, path, &requestBody{
		contentType: mw.FormDataContentType(),
		r:           io.MultiReader(bytes.NewReader(head), file.r, bytes.NewReader(tail)),
		size:        int64(len(head)) + file.size + int64(len(tail)),
	}, out)
}

// exactReader reads exactly left bytes of r, and fails if r has more or
// fewer: a sample that is not the size it was said to be must not be sent
// cut short, or padded by whatever follows it.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		var one [1]byte
		if n, _ := e.r.Read(one[:]); n > 0 {
			return 0, errors.New("sample is larger than SampleSize")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF && e.left > 0 {
		return n, fmt.Errorf("sample ended %d bytes short of SampleSize", e.left)
	}
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// check refuses what would make a broken analysis.conf or a task the guest
// cannot run, before anything is sent.
func (a Analysis) check() error {
	switch a.Category {
	case "file":
		if a.Sample == nil {
			return errors.New("a file task without a sample")
		}
	case "url":
	default:
		return fmt.Errorf("category %q: want file or url", a.Category)
	}
	switch a.platform() {
	case "windows", "linux", "darwin":
	default:
		return fmt.Errorf("platform %q: want windows, linux or darwin", a.Platform)
	}
	if a.Timeout < time.Second {
		return fmt.Errorf("timeout %s: want at least 1s", a.Timeout)
	}
	if a.ResultServerIP == "" || a.ResultServerPort < 1 || a.ResultServerPort > 65535 {
		return fmt.Errorf("result server %q port %d: want an address and a port", a.ResultServerIP, a.ResultServerPort)
	}
	if len(a.Analyzer) == 0 {
		return errors.New("no analyzer (see LoadAnalyzer)")
	}
	name := ""
	if a.Category == "file" {
		var err error
		if name, err = a.guestFileName(false, a.platform() == "windows"); err != nil {
			return err
		}
	}
	_, err := renderConf(a, name)
	return err
}

func (a Analysis) platform() string {
	if a.Platform == "" {
		return "windows"
	}
	return a.Platform
}

// guestFileName is file_name in analysis.conf: the sample's name made safe
// as CAPE does, under a folder named after the task when the agent offers
// subdir_upload (so two samples of one name cannot collide).
func (a Analysis) guestFileName(subdir, win bool) (string, error) {
	name := a.FileName
	if name == "" {
		name = a.Target[strings.LastIndexAny(a.Target, `/\`)+1:]
	}
	safe := SanitizeFileName(name)
	if strings.Trim(safe, ". ") == "" {
		return "", fmt.Errorf("file name %q: nothing usable is left of it", name)
	}
	if !subdir {
		return safe, nil
	}
	sep := "/"
	if win {
		sep = `\`
	}
	return strconv.FormatInt(a.ID, 10) + sep + safe, nil
}

// CAPE's sanitize_len and sanitize_to_len: names this long are cut, as some
// malware checks whether it runs under a hash-like name.
const (
	sanitizeLen   = 32
	sanitizeToLen = 24
)

// SanitizeFileName is CAPE's sanitize_filename: leading spaces dropped,
// every character but ASCII letters, digits, space, '_', '-' and '.'
// replaced by '_', and names of 32 characters or more cut to 24 keeping the
// extension.
func SanitizeFileName(name string) string {
	if strings.HasPrefix(name, " ") {
		// Python's lstrip(): once a space leads, all leading white space goes.
		name = strings.TrimLeftFunc(name, unicode.IsSpace)
	}
	var b strings.Builder
	for _, r := range name {
		if r < 128 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(" _-.", r)) {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) < sanitizeLen {
		return out
	}
	stem, ext, hasExt := cutLast(out, ".")
	if !hasExt {
		return out[:sanitizeToLen]
	}
	return pySlice(stem, sanitizeToLen-(len(ext)+1)) + "." + ext
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// pySlice is Python's s[:n], where a negative n counts from the end.
func pySlice(s string, n int) string {
	if n < 0 {
		n = max(0, len(s)+n)
	}
	return s[:min(n, len(s))]
}

// optionValue finds key in CAPE's "k=v,k=v" options.
func optionValue(options, key string) string {
	for _, f := range strings.Split(options, ",") {
		k, v, ok := strings.Cut(f, "=")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// renderConf writes analysis.conf as CAPE's guest manager does: "[analysis]"
// then "key = value" lines joined by "\n", Python's spelling of values
// (True/False), the keys in CAPE's order. A line break in a value would let
// a target or an option inject keys, so it is refused.
func renderConf(a Analysis, fileName string) (string, error) {
	clock := a.Clock
	if clock.IsZero() {
		clock = time.Now()
	}
	maxSize := a.UploadMaxSize
	if maxSize <= 0 {
		maxSize = DefaultUploadMaxSize
	}
	kv := [][2]string{
		{"id", strconv.FormatInt(a.ID, 10)},
		{"ip", a.ResultServerIP},
		{"port", strconv.Itoa(a.ResultServerPort)},
		{"category", a.Category},
		{"target", a.Target},
		{"package", a.Package},
		{"options", a.Options},
		{"enforce_timeout", pyBool(a.EnforceTimeout)},
		{"clock", clock.Format(clockLayout)},
		// CAPE's defaults (cuckoo.conf terminate_processes, resultserver
		// do_upload_max_size, web.conf enable_trim), which sandfleet does
		// not expose.
		{"terminate_processes", "False"},
		{"upload_max_size", strconv.FormatInt(maxSize, 10)},
		{"do_upload_max_size", "0"},
		{"enable_trim", "0"},
		{"timeout", strconv.FormatInt(int64((a.Timeout+time.Second-1)/time.Second), 10)},
	}
	if a.Category == "file" {
		kv = append(kv, [2]string{"file_name", fileName}, [2]string{"file_type", a.FileType}, [2]string{"exports", a.Exports})
	}
	for _, m := range a.Auxiliary {
		if m.Name == "" || strings.ContainsAny(m.Name, "=: \t[]") {
			return "", fmt.Errorf("analysis.conf: auxiliary module name %q", m.Name)
		}
		kv = append(kv, [2]string{m.Name, pyBool(m.Enabled)})
	}
	lines := []string{"[analysis]"}
	for _, p := range kv {
		if strings.ContainsAny(p[1], "\r\n") {
			return "", fmt.Errorf("analysis.conf: %s contains a line break", p[0])
		}
		lines = append(lines, p[0]+" = "+p[1])
	}
	return strings.Join(lines, "\n"), nil
}

func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

// joinSlash joins a guest folder and a name as CAPE's host does (Python's
// os.path.join on Linux): with '/', which Windows accepts too.
func joinSlash(dir, name string) string {
	if strings.HasSuffix(dir, "/") || strings.HasSuffix(dir, `\`) {
		return dir + name
	}
	return dir + "/" + name
}

// joinWindows is ntpath.join for a folder and a relative name.
func joinWindows(dir, name string) string {
	if strings.HasSuffix(dir, "/") || strings.HasSuffix(dir, `\`) || strings.HasSuffix(dir, ":") {
		return dir + name
	}
	return dir + `\` + name
}
