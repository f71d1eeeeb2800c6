package api

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/sandfleet/sandfleet/internal/sample"
	"github.com/sandfleet/sandfleet/internal/store"
)

// CAPE's submission form (reference cape.md §5). Fields sandfleet has no use
// for are accepted and ignored, so that CAPE's clients work unchanged; a
// field CAPE does not know either is a 400 naming it.
var (
	taskFields    = []string{"package", "timeout", "priority", "options", "machine", "platform", "tags", "custom", "memory", "clock", "enforce_timeout", "unique", "route"}
	ignoredFields = []string{"referrer", "tlp", "tags_tasks", "lin_options", "cape", "static", "pcap"}
)

// submission is a parsed task form.
type submission struct {
	pkg, options, machine, platform, custom, route string
	timeout, priority                              int
	tags                                           []string
	memory, enforceTimeout, unique                 bool
	clock                                          time.Time
}

// maxField bounds one text field; maxFiles the files of one request.
const (
	maxField = 64 << 10
	maxFiles = 100
)

// errTooLarge carries the 413 of an upload past the limit.
type errTooLarge struct{ msg string }

func (e *errTooLarge) Error() string { return e.msg }

// parseSubmission reads the form's text fields, strictly: each known field
// once, typed as CAPE's clients send it.
func parseSubmission(vals url.Values, extra ...string) (submission, error) {
	sub := submission{priority: 1}
	for key, vs := range vals {
		switch {
		case slices.Contains(taskFields, key), slices.Contains(ignoredFields, key), slices.Contains(extra, key):
		default:
			return sub, fmt.Errorf("%s: not a field of the task form", key)
		}
		if len(vs) > 1 {
			return sub, fmt.Errorf("%s: given %d times", key, len(vs))
		}
	}
	get := func(k string) string { return strings.TrimSpace(vals.Get(k)) }
	for _, k := range []string{"static", "pcap"} {
		if on, _ := capeBool(get(k)); on {
			return sub, fmt.Errorf("%s: static and pcap tasks are not supported: sandfleet runs analyses in machines", k)
		}
	}
	var err error
	num := func(k string, lo, hi int, dst *int) {
		raw := get(k)
		if raw == "" || err != nil {
			return
		}
		n, perr := strconv.Atoi(raw)
		if perr != nil || n < lo || n > hi {
			err = fmt.Errorf("%s: %q is not a whole number from %d to %d", k, raw, lo, hi)
			return
		}
		*dst = n
	}
	num("timeout", 0, 7*24*3600, &sub.timeout)
	num("priority", 1, 10, &sub.priority)
	flag := func(k string, dst *bool) {
		if err != nil {
			return
		}
		on, ok := capeBool(get(k))
		if !ok {
			err = fmt.Errorf("%s: %q is not true or false", k, get(k))
			return
		}
		*dst = on
	}
	flag("memory", &sub.memory)
	flag("enforce_timeout", &sub.enforceTimeout)
	flag("unique", &sub.unique)
	if err != nil {
		return sub, err
	}
	sub.pkg, sub.options, sub.machine, sub.custom, sub.route = get("package"), get("options"), get("machine"), get("custom"), get("route")
	for k, v := range map[string]string{"package": sub.pkg, "options": sub.options, "machine": sub.machine,
		"custom": sub.custom, "route": sub.route} {
		if strings.ContainsFunc(v, unicode.IsControl) {
			return sub, fmt.Errorf("%s: holds a control character", k)
		}
	}
	switch sub.platform = get("platform"); sub.platform {
	case "", "windows", "linux", "darwin":
	default:
		return sub, fmt.Errorf("platform: %q: want windows, linux or darwin", sub.platform)
	}
	for _, t := range strings.Split(get("tags"), ",") {
		if t = strings.TrimSpace(t); t != "" {
			if strings.ContainsFunc(t, unicode.IsControl) || len(t) > 255 {
				return sub, fmt.Errorf("tags: %q is not a tag", t)
			}
			sub.tags = append(sub.tags, t)
		}
	}
	if raw := get("clock"); raw != "" {
		c, perr := time.Parse("01-02-2006 15:04:05", raw)
		if perr != nil {
			return sub, fmt.Errorf("clock: %q is not %%m-%%d-%%Y %%H:%%M:%%S", raw)
		}
		sub.clock = c
	}
	return sub, nil
}

// capeBool reads a form boolean as CAPE's clients write one.
func capeBool(s string) (on, ok bool) {
	switch strings.ToLower(s) {
	case "", "0", "false", "no", "off":
		return false, true
	case "1", "true", "yes", "on":
		return true, true
	}
	return false, false
}

// upload is one file of a submission, kept already.
type upload struct {
	name   string // as the client named it: data only
	staged *sample.Staged
}

// discard drops the uploads not kept: a refused request leaves the samples
// directory as it found it.
func discard(files []upload) {
	for _, f := range files {
		f.staged.Discard()
	}
}

// readFileForm streams a multipart task form: each "file" part straight into
// a staged file of the samples directory (never whole in memory, cut at the
// size limit), the text fields into values. On error nothing stays staged;
// otherwise the caller keeps or discards the uploads.
func (s *Server) readFileForm(w http.ResponseWriter, r *http.Request) (url.Values, []upload, error) {
	vals, files, err := s.readFileParts(w, r)
	if err != nil {
		discard(files)
		return nil, nil, err
	}
	return vals, files, nil
}

func (s *Server) readFileParts(w http.ResponseWriter, r *http.Request) (url.Values, []upload, error) {
	mediaType, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mediaType != "multipart/form-data" || params["boundary"] == "" {
		return nil, nil, fmt.Errorf("body: want multipart/form-data with a file field (Content-Type %q)", r.Header.Get("Content-Type"))
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFiles*s.maxSample+maxBody)
	mr := multipart.NewReader(r.Body, params["boundary"])
	vals := url.Values{}
	var files []upload
	textBytes := 0
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, files, fmt.Errorf("body: malformed multipart form: %v", err)
		}
		name := part.FormName()
		if name == "file" {
			if len(files) == maxFiles {
				return nil, files, fmt.Errorf("file: more than %d files in one request", maxFiles)
			}
			st, err := s.samples.Stage(part, s.maxSample)
			var tl *sample.TooLargeError
			switch {
			case errors.As(err, &tl):
				return nil, files, &errTooLarge{fmt.Sprintf("file %q: larger than scheduler.max_sample_size (%d bytes)",
					printable(part.FileName()), tl.Limit)}
			case err != nil:
				return nil, files, fmt.Errorf("file %q: %v", printable(part.FileName()), err)
			}
			files = append(files, upload{name: rawFileName(part), staged: st})
			continue
		}
		b, err := io.ReadAll(io.LimitReader(part, maxField+1))
		if err != nil {
			return nil, files, fmt.Errorf("%s: %v", name, err)
		}
		if textBytes += len(b); len(b) > maxField || textBytes > maxBody {
			return nil, files, &errTooLarge{fmt.Sprintf("%s: the form's text is larger than %d bytes", name, maxBody)}
		}
		if !utf8.Valid(b) {
			return nil, files, fmt.Errorf("%s: not UTF-8 text", name)
		}
		vals.Add(name, string(b))
	}
	if len(files) == 0 {
		return nil, files, errors.New("file: No file was submitted")
	}
	return vals, files, nil
}

// rawFileName is the file name a part was sent under, as sent: Go's
// FileName keeps only its base, and the original is the task's data.
func rawFileName(p *multipart.Part) string {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil || params["filename"] == "" {
		return p.FileName()
	}
	return params["filename"]
}

// printable is a client's string made safe for a message.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// targetName is a task's target for an uploaded file: the upload's base
// name, printable and bounded — never a path.
func targetName(upload, sha256 string) string {
	base := path.Base(strings.ReplaceAll(upload, `\`, "/"))
	if base == "." || base == "/" || base == ".." || base == "" {
		return sha256
	}
	return printable(base)
}

// POST tasks/create/file/: one task per file (per machine with machine=all).
func (s *Server) tasksCreateFile(w http.ResponseWriter, r *http.Request, b *backend) {
	vals, files, err := s.readFileForm(w, r)
	if err != nil {
		s.badSubmission(w, err)
		return
	}
	defer discard(files) // those kept are gone from it
	sub, err := parseSubmission(vals)
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	machines, err := s.machinesFor(r, b, sub.machine)
	if err != nil {
		s.badSubmission(w, err)
		return
	}
	var ts []store.Task
	var errs []string
	for _, f := range files {
		// The request is valid: the file joins the samples, before its
		// record does.
		if err := f.staged.Keep(); err != nil {
			s.internal(w, r, err)
			return
		}
		smp, err := b.store.PutSample(r.Context(), f.staged.Sample)
		if err != nil {
			s.internal(w, r, err)
			return
		}
		if sub.unique {
			seen, err := b.store.ListTasks(r.Context(), store.TaskFilter{SampleID: smp.ID, Limit: 1})
			if err != nil {
				s.internal(w, r, err)
				return
			}
			if len(seen) > 0 {
				errs = append(errs, fmt.Sprintf("%s: already submitted as task %d (unique)", targetName(f.name, smp.SHA256), seen[0].ID))
				continue
			}
		}
		tags := slices.Clone(sub.tags)
		if !slices.Contains(tags, "x86") && !slices.Contains(tags, "x64") {
			// CAPE's dynamic_arch_determination: the sample says which it needs.
			switch {
			case strings.HasSuffix(sub.pkg, "_x64"):
				tags = append(tags, "x64")
			default:
				if arch := sample.Arch(f.staged.Head); arch != "" {
					tags = append(tags, arch)
				}
			}
		}
		for _, m := range machines {
			ts = append(ts, s.newTask(sub, "file", targetName(f.name, smp.SHA256), f.name, smp.ID, m, tags))
		}
	}
	s.createTasks(w, r, b, ts, errs)
}

// POST tasks/create/url/.
func (s *Server) tasksCreateURL(w http.ResponseWriter, r *http.Request, b *backend) {
	vals, err := readForm(w, r)
	if err != nil {
		s.badSubmission(w, err)
		return
	}
	sub, err := parseSubmission(vals, "url")
	if err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	raw := strings.TrimSpace(vals.Get("url"))
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		fail(w, http.StatusBadRequest, "url: No URL was submitted")
		return
	case err != nil || u.Scheme == "" || u.Host == "" || strings.ContainsFunc(raw, unicode.IsControl) || len(raw) > 8192:
		fail(w, http.StatusBadRequest, fmt.Sprintf("url: %q is not an absolute URL", printable(raw)))
		return
	}
	machines, err := s.machinesFor(r, b, sub.machine)
	if err != nil {
		s.badSubmission(w, err)
		return
	}
	// A browser runs on either architecture: CAPE tags URL tasks with both.
	tags := sub.tags
	for _, a := range []string{"x64", "x86"} {
		if !slices.Contains(tags, a) {
			tags = append(tags, a)
		}
	}
	var ts []store.Task
	for _, m := range machines {
		ts = append(ts, s.newTask(sub, "url", raw, "", 0, m, tags))
	}
	s.createTasks(w, r, b, ts, nil)
}

// readForm reads a form of text fields, url-encoded or multipart.
func readForm(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	mediaType, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil {
		return nil, fmt.Errorf("body: want a form (Content-Type %q)", r.Header.Get("Content-Type"))
	}
	switch mediaType {
	case "application/x-www-form-urlencoded":
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		vals, err := url.ParseQuery(string(b))
		if err != nil {
			return nil, fmt.Errorf("body: malformed form: %v", err)
		}
		return vals, nil
	case "multipart/form-data":
		form, err := r.MultipartReader()
		if err != nil {
			return nil, fmt.Errorf("body: malformed multipart form: %v", err)
		}
		f, err := form.ReadForm(maxBody)
		if err != nil {
			return nil, fmt.Errorf("body: malformed multipart form: %v", err)
		}
		defer f.RemoveAll()
		if len(f.File) > 0 {
			return nil, errors.New("file: this form takes a url, not a file")
		}
		return url.Values(f.Value), nil
	}
	return nil, fmt.Errorf("body: want a form, not %s", mediaType)
}

// badSubmission answers a submission that cannot be taken: 413 for one too
// large, else 400.
func (s *Server) badSubmission(w http.ResponseWriter, err error) {
	var tl *errTooLarge
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &tl):
		fail(w, http.StatusRequestEntityTooLarge, tl.msg)
	case errors.As(err, &mb):
		fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body: larger than %d bytes", mb.Limit))
	default:
		fail(w, http.StatusBadRequest, err.Error())
	}
}

// machinesFor resolves the machine field: "" is any machine; "all" one task
// for each machine that is not reserved; a label must be a machine's.
func (s *Server) machinesFor(r *http.Request, b *backend, machine string) ([]string, error) {
	if machine == "" {
		return []string{""}, nil
	}
	ms, err := b.store.ListMachines(r.Context(), store.MachineFilter{})
	if err != nil {
		return nil, err
	}
	var labels []string
	for _, m := range ms {
		if m.State == store.Gone {
			continue
		}
		if machine == "all" && !m.Reserved {
			labels = append(labels, m.Label)
		}
		if m.Label == machine {
			return []string{machine}, nil
		}
	}
	if machine == "all" && len(labels) > 0 {
		return labels, nil
	}
	var all []string
	for _, m := range ms {
		if m.State != store.Gone {
			all = append(all, m.Label)
		}
	}
	return nil, fmt.Errorf("machine: Machine '%s' does not exist. Available: %s", printable(machine), strings.Join(all, ", "))
}

func (s *Server) newTask(sub submission, category, target, fileName string, sampleID int64, machine string, tags []string) store.Task {
	if len(fileName) > 1024 {
		fileName = fileName[:1024]
	}
	return store.Task{Target: target, Category: category, SampleID: sampleID, FileName: fileName,
		Timeout: sub.timeout, Priority: sub.priority, Custom: sub.custom, Machine: machine, Package: sub.pkg,
		Route: sub.route, Options: sub.options, Platform: sub.platform, Memory: sub.memory,
		EnforceTimeout: sub.enforceTimeout, Clock: sub.clock, Tags: tags}
}

// createTasks commits the tasks — all or none — before answering, and
// wakes the scheduler.
func (s *Server) createTasks(w http.ResponseWriter, r *http.Request, b *backend, ts []store.Task, errs []string) {
	if errs == nil {
		errs = []string{}
	}
	if len(ts) == 0 {
		write(w, http.StatusBadRequest, obj{{"error", true}, {"error_value", "Error adding task to database"}, {"errors", errs}})
		return
	}
	created, err := b.store.CreateTasks(r.Context(), ts, "submitted through the API")
	if err != nil {
		s.internal(w, r, err)
		return
	}
	b.sched.Trigger()
	ids := make([]int64, len(created))
	urls := make([]string, len(created))
	base := "http://" + r.Host
	for i, t := range created {
		ids[i] = t.ID
		urls[i] = fmt.Sprintf("%s/submit/status/%d/", base, t.ID)
		s.log.Info("task submitted", "task_id", t.ID, "category", t.Category, "target", printable(t.Target), "tags", t.Tags)
	}
	msg := fmt.Sprintf("Task ID %d has been submitted", ids[0])
	if len(ids) > 1 {
		parts := make([]string, len(ids))
		for i, id := range ids {
			parts[i] = strconv.FormatInt(id, 10)
		}
		msg = fmt.Sprintf("Task IDs %s have been submitted", strings.Join(parts, ", "))
	}
	write(w, http.StatusOK, obj{
		{"error", []string{}},
		{"data", obj{{"task_ids", ids}, {"message", msg}}},
		{"errors", errs},
		{"url", urls},
	})
}
