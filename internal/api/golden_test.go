package api_test

import (
	"bytes"
	"context"
	"flag"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
)

var update = flag.Bool("update", false, "rewrite the golden replies under testdata/golden")

// Normalised away: what changes from run to run (times, the test server's
// port, the host's name and disk), never the shape or the formats.
var volatile = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}`), "YYYY-MM-DD HH:MM:SS"},
	{regexp.MustCompile(`since \d{2}:\d{2}:\d{2}`), "since HH:MM:SS"},
	{regexp.MustCompile(`http://127\.0\.0\.1:\d+`), "http://HOST"},
	{regexp.MustCompile(`"hostname": "[^"]*"`), `"hostname": "HOST"`},
	{regexp.MustCompile(`"(storage|ram)": \{[^}]*\}`), `"$1": {…}`},
	{regexp.MustCompile(`"view_at": "[^"]*"`), `"view_at": "TIME"`},
}

// Every route of the API answers in a shape kept in testdata/golden, one
// file a reply, byte for byte but for the volatile values above. A change of
// shape fails here first; `go test -run Golden -update ./internal/api/`
// rewrites the files, and the diff is for review.
func TestGoldenReplies(t *testing.T) {
	s := newTaskServer(t, 1<<20)
	ctx := context.Background()
	do := func(method, path, ctype string, body io.Reader) []byte {
		t.Helper()
		req, _ := http.NewRequest(method, s.url+path, body)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return append([]byte(resp.Status+"\n"), b...)
	}
	form := func(fields map[string]string, files ...file) (io.Reader, string) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		for _, k := range []string{"package", "options", "tags", "timeout", "priority"} {
			if v, ok := fields[k]; ok {
				mw.WriteField(k, v)
			}
		}
		for _, f := range files {
			w, _ := mw.CreateFormFile("file", f.name)
			io.WriteString(w, f.body)
		}
		mw.Close()
		return &buf, mw.FormDataContentType()
	}
	urlForm := func(v url.Values) (io.Reader, string) {
		return strings.NewReader(v.Encode()), "application/x-www-form-urlencoded"
	}
	var steps []struct {
		name string
		got  []byte
	}
	step := func(name string, got []byte) {
		steps = append(steps, struct {
			name string
			got  []byte
		}{name, got})
	}
	body, ct := form(map[string]string{"package": "exe", "options": "free=yes", "tags": "win10", "timeout": "60"},
		file{"invoice.exe", "MZ golden sample"})
	step("tasks_create_file", do("POST", "/apiv2/tasks/create/file/", ct, body))
	body, ct = form(nil, file{"a.bin", "golden a"}, file{"b.bin", "golden b"})
	step("tasks_create_file_two", do("POST", "/apiv2/tasks/create/file/", ct, body))
	body, ct = urlForm(url.Values{"url": {"http://example.com/"}, "priority": {"2"}})
	step("tasks_create_url", do("POST", "/apiv2/tasks/create/url/", ct, body))
	body, ct = form(map[string]string{"package": "exe"})
	step("tasks_create_no_file", do("POST", "/apiv2/tasks/create/file/", ct, body))
	// Task 1 runs on lab1 and completes: the shapes of a finished task.
	task, _ := s.st.GetTask(ctx, 1)
	m, _ := s.st.GetMachine(ctx, "lab1")
	if _, err := s.st.Lease(ctx, []store.LeaseRequest{{TaskID: 1, TaskVersion: task.Version, Label: "lab1",
		MachineVersion: m.Version, Node: "golden", TTL: 60e9}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.st.EndTask(ctx, store.TaskEnd{TaskID: 1, Node: "golden", Status: store.TaskCompleted}); err != nil {
		t.Fatal(err)
	}
	step("tasks_view", do("GET", "/apiv2/tasks/view/1/", "", nil))
	step("tasks_view_missing", do("GET", "/apiv2/tasks/view/99/", "", nil))
	step("tasks_status", do("GET", "/apiv2/tasks/status/2/", "", nil))
	step("tasks_status_missing", do("GET", "/apiv2/tasks/status/99/", "", nil))
	step("tasks_list", do("GET", "/apiv2/tasks/list/2/", "", nil))
	step("tasks_list_ids", do("GET", "/apiv2/tasks/list/?status=pending&ids=True", "", nil))
	step("tasks_list_bad_status", do("GET", "/apiv2/tasks/list/?status=done", "", nil))
	step("tasks_reschedule", do("GET", "/apiv2/tasks/reschedule/1/", "", nil))
	step("tasks_delete", do("GET", "/apiv2/tasks/delete/5/", "", nil))
	step("machines_list", do("GET", "/apiv2/machines/list/", "", nil))
	step("machines_view", do("GET", "/apiv2/machines/view/lab1/", "", nil))
	step("machines_view_missing", do("GET", "/apiv2/machines/view/nope/", "", nil))
	step("cuckoo_status", do("GET", "/apiv2/cuckoo/status/", "", nil))
	step("pools_list", do("GET", "/apiv2/pools/list/", "", nil))
	step("fleet_check", do("GET", "/apiv2/fleet/check/", "", nil))
	step("operations_list", do("GET", "/apiv2/operations/list/", "", nil))
	body, ct = urlForm(url.Values{"reason": {"beaconing"}})
	step("machines_quarantine", do("POST", "/apiv2/machines/quarantine/lab1/", ct, body))
	step("machines_release", do("POST", "/apiv2/machines/release/lab1/", "", nil))
	step("method_not_allowed", do("DELETE", "/apiv2/machines/list/", "", nil))
	step("no_such_endpoint", do("GET", "/apiv2/no/such/", "", nil))

	dir := filepath.Join("testdata", "golden")
	for _, st := range steps {
		got := st.got
		for _, v := range volatile {
			got = v.re.ReplaceAll(got, []byte(v.with))
		}
		path := filepath.Join(dir, st.name+".json")
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: no golden reply (run with -update): %v", st.name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: reply changed\n got: %s\nwant: %s", st.name, got, want)
		}
	}
}
