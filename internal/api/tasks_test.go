package api_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/sample"
	"github.com/sandfleet/sandfleet/internal/store"
)

// wakes counts the scheduler's wake-ups: a submission must wake it.
type wakes struct{ n atomic.Int32 }

func (w *wakes) Trigger()     { w.n.Add(1) }
func (w *wakes) Paused() bool { return false }
func (w *wakes) Why(context.Context, []store.Task) (map[int64]string, error) {
	return nil, nil
}

type taskServer struct {
	url     string
	st      store.Store
	samples string
	wakes   *wakes
}

func newTaskServer(t *testing.T, maxSample int64) *taskServer {
	t.Helper()
	st, f := newFleet(t)
	dir := t.TempDir()
	smp, err := sample.Open(filepath.Join(dir, "samples"))
	if err != nil {
		t.Fatal(err)
	}
	srv := api.New(api.Options{Samples: smp, MaxSampleSize: maxSample, DataDir: dir})
	w := &wakes{}
	srv.Attach(st, f, w)
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return &taskServer{url: ts.URL, st: st, samples: filepath.Join(dir, "samples"), wakes: w}
}

type file struct{ name, body string }

// postFiles posts a multipart task form and returns the status and JSON body.
func (s *taskServer) postFiles(t *testing.T, fields map[string]string, files ...file) (int, map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		mw.WriteField(k, v)
	}
	for _, f := range files {
		w, _ := mw.CreateFormFile("file", f.name)
		io.WriteString(w, f.body)
	}
	mw.Close()
	return s.post(t, "/apiv2/tasks/create/file/", mw.FormDataContentType(), &buf)
}

func (s *taskServer) post(t *testing.T, path, ctype string, body io.Reader) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(s.url+path, ctype, body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST %s: %s, body not JSON: %v", path, resp.Status, err)
	}
	return resp.StatusCode, out
}

func (s *taskServer) getJSON(t *testing.T, path string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(s.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("GET %s: %s, body not JSON: %v", path, resp.Status, err)
	}
	return resp.StatusCode, out
}

func (s *taskServer) tasks(t *testing.T) []store.Task {
	t.Helper()
	ts, err := s.st.ListTasks(context.Background(), store.TaskFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// pe32 is the start of an x86 PE file.
func pe32() string {
	b := make([]byte, 0x100)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], 0x80)
	copy(b[0x80:], "PE\x00\x00")
	binary.LittleEndian.PutUint16(b[0x84:], 0x14c)
	return string(b)
}

// A file submission answers as CAPE does, with the task committed first;
// the sample is kept once by its SHA-256, never executable, never under the
// upload's name, which is kept as data.
func TestCreateFileTask(t *testing.T) {
	s := newTaskServer(t, 1<<20)
	code, out := s.postFiles(t, map[string]string{"package": "exe", "timeout": "120", "priority": "2",
		"options": "free=yes", "tags": "win10", "platform": "windows", "clock": "01-02-2026 03:04:05", "tlp": "amber"},
		file{"../../invoice.exe", pe32()})
	if code != 200 {
		t.Fatalf("create: %d %v", code, out)
	}
	want := map[string]any{"error": []any{}, "data": map[string]any{"task_ids": []any{1.0}, "message": "Task ID 1 has been submitted"},
		"errors": []any{}, "url": []any{s.url + "/submit/status/1/"}}
	got, _ := json.Marshal(out)
	wantJSON, _ := json.Marshal(want)
	if string(got) != string(wantJSON) {
		t.Errorf("reply %s\nwant  %s", got, wantJSON)
	}
	if s.wakes.n.Load() == 0 {
		t.Error("the scheduler was not woken")
	}
	ts := s.tasks(t)
	if len(ts) != 1 {
		t.Fatalf("%d tasks", len(ts))
	}
	task := ts[0]
	if task.Target != "invoice.exe" || task.FileName != "../../invoice.exe" || task.Package != "exe" || task.Timeout != 120 ||
		task.Priority != 2 || task.Options != "free=yes" || task.Platform != "windows" || task.Clock.Day() != 2 {
		t.Errorf("task %+v", task)
	}
	// The sample said it is x86: CAPE's dynamic architecture tag.
	if !slices.Equal(task.Tags, []string{"win10", "x86"}) {
		t.Errorf("tags %v, want win10 and the sample's x86", task.Tags)
	}
	smp, err := s.st.GetSample(context.Background(), task.SampleID)
	if err != nil {
		t.Fatal(err)
	}
	kept := filepath.Join(s.samples, smp.SHA256[:2], smp.SHA256)
	fi, err := os.Stat(kept)
	if err != nil || fi.Mode().Perm()&0o111 != 0 || fi.Size() != int64(len(pe32())) {
		t.Errorf("sample kept at %s: %v %v", kept, fi, err)
	}
	// Nothing under the upload's name, anywhere.
	filepath.Walk(filepath.Dir(s.samples), func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.Contains(info.Name(), "invoice") {
			t.Errorf("a file named after the upload: %s", p)
		}
		return nil
	})
	// Status and view in CAPE's shapes.
	code, st := s.getJSON(t, "/apiv2/tasks/status/1/")
	if code != 200 || st["data"] != "pending" || fmt.Sprint(st["error"]) != "[]" {
		t.Errorf("status: %d %v", code, st)
	}
	code, view := s.getJSON(t, "/apiv2/tasks/view/1/")
	data, _ := view["data"].(map[string]any)
	if code != 200 || data["target"] != "invoice.exe" || data["attempt"] != 1.0 || data["status"] != "pending" ||
		data["sample"].(map[string]any)["sha256"] != smp.SHA256 || data["added_on"] == nil {
		t.Errorf("view: %d %v", code, view)
	}
}

func TestCreateSeveralFiles(t *testing.T) {
	s := newTaskServer(t, 1<<20)
	code, out := s.postFiles(t, nil, file{"a.bin", "aaa"}, file{"b.bin", "bbb"})
	data, _ := out["data"].(map[string]any)
	if code != 200 || data["message"] != "Task IDs 1, 2 have been submitted" {
		t.Fatalf("%d %v", code, out)
	}
}

// Bad submissions get a 4xx naming what is wrong, and nothing is queued.
func TestCreateFileRefusals(t *testing.T) {
	s := newTaskServer(t, 64)
	for _, tt := range []struct {
		name   string
		fields map[string]string
		files  []file
		code   int
		says   string
	}{
		{"no file", map[string]string{"package": "exe"}, nil, 400, "file"},
		{"too large", nil, []file{{"big.exe", strings.Repeat("x", 65)}}, 413, "scheduler.max_sample_size (64 bytes)"},
		{"empty file", nil, []file{{"empty.exe", ""}}, 400, "empty"},
		{"unknown field", map[string]string{"pakage": "exe"}, []file{{"a", "x"}}, 400, "pakage"},
		{"timeout not a number", map[string]string{"timeout": "soon"}, []file{{"a", "x"}}, 400, "timeout"},
		{"negative priority", map[string]string{"priority": "-1"}, []file{{"a", "x"}}, 400, "priority"},
		{"platform", map[string]string{"platform": "beos"}, []file{{"a", "x"}}, 400, "platform"},
		{"boolean", map[string]string{"enforce_timeout": "maybe"}, []file{{"a", "x"}}, 400, "enforce_timeout"},
		{"clock", map[string]string{"clock": "tomorrow"}, []file{{"a", "x"}}, 400, "clock"},
		{"unknown machine", map[string]string{"machine": "nope"}, []file{{"a", "x"}}, 400, "Machine 'nope' does not exist. Available: lab1"},
		{"pcap", map[string]string{"pcap": "1"}, []file{{"a", "x"}}, 400, "pcap"},
		{"control character", map[string]string{"options": "a=\x01"}, []file{{"a", "x"}}, 400, "options"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out := s.postFiles(t, tt.fields, tt.files...)
			if code != tt.code || out["error"] != true || !strings.Contains(fmt.Sprint(out["error_value"]), tt.says) {
				t.Errorf("%d %v, want %d naming %q", code, out, tt.code, tt.says)
			}
		})
	}
	if ts := s.tasks(t); len(ts) != 0 {
		t.Fatalf("refused submissions queued %d tasks", len(ts))
	}
	code, out := s.post(t, "/apiv2/tasks/create/file/", "application/json", strings.NewReader("{}"))
	if code != 400 || !strings.Contains(fmt.Sprint(out["error_value"]), "multipart") {
		t.Errorf("a JSON body: %d %v", code, out)
	}
}

func TestCreateURLTask(t *testing.T) {
	s := newTaskServer(t, 1<<20)
	form := url.Values{"url": {"http://example.com/x"}, "tags": {"win10"}}
	code, out := s.post(t, "/apiv2/tasks/create/url/", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	ts := s.tasks(t)
	if len(ts) != 1 || ts[0].Category != "url" || ts[0].Target != "http://example.com/x" || !slices.Equal(ts[0].Tags, []string{"win10", "x64", "x86"}) {
		t.Fatalf("task %+v", ts)
	}
	for _, bad := range []string{"", "example.com", "http://", "javascript:alert(1)"} {
		code, out := s.post(t, "/apiv2/tasks/create/url/", "application/x-www-form-urlencoded",
			strings.NewReader(url.Values{"url": {bad}}.Encode()))
		if code != 400 || !strings.Contains(fmt.Sprint(out["error_value"]), "url") {
			t.Errorf("url %q: %d %v", bad, code, out)
		}
	}
}

// tasks/list/ in CAPE's shape: data, config, buf; the ids form dist.py
// asks for; filters that name what is wrong.
func TestTasksList(t *testing.T) {
	s := newTaskServer(t, 1<<20)
	for i := range 12 {
		s.postFiles(t, nil, file{fmt.Sprintf("f%d", i), fmt.Sprintf("body %d", i)})
	}
	code, out := s.getJSON(t, "/apiv2/tasks/list/")
	if code != 200 || out["config"] != "Limit: 10, Offset: None" || out["buf"] != 10.0 || len(out["data"].([]any)) != 10 {
		t.Fatalf("list: %d config %v buf %v", code, out["config"], out["buf"])
	}
	if _, ok := out["error"]; ok {
		t.Error("tasks/list/ carries no error key in CAPE")
	}
	code, out = s.getJSON(t, "/apiv2/tasks/list/5/10/")
	if code != 200 || out["config"] != "Limit: 5, Offset: 10" || len(out["data"].([]any)) != 2 {
		t.Errorf("paged list: %d %v %d", code, out["config"], len(out["data"].([]any)))
	}
	code, out = s.getJSON(t, "/apiv2/tasks/list/?status=pending|running&ids=True")
	first, _ := out["data"].([]any)[0].(map[string]any)
	if code != 200 || len(first) != 1 || first["id"] == nil {
		t.Errorf("ids list: %d %v", code, out["data"])
	}
	code, out = s.getJSON(t, "/apiv2/tasks/list/100/")
	if code != 200 || out["warning"] == nil || len(out["data"].([]any)) != 12 {
		t.Errorf("over the max limit: %d %v", code, out["warning"])
	}
	for path, says := range map[string]string{
		"/apiv2/tasks/list/?status=done":           "status",
		"/apiv2/tasks/list/?completed_after=never": "completed_after",
		"/apiv2/tasks/list/ten/":                   "limit",
		"/apiv2/tasks/view/abc/":                   "task id",
	} {
		code, out := s.getJSON(t, path)
		if code != 400 || !strings.Contains(fmt.Sprint(out["error_value"]), says) {
			t.Errorf("%s: %d %v, want 400 naming %s", path, code, out, says)
		}
	}
	if code, _ := s.getJSON(t, "/apiv2/tasks/view/999/"); code != 404 {
		t.Errorf("an unknown task: %d", code)
	}
}

func TestRescheduleDeleteAndStatus(t *testing.T) {
	s := newTaskServer(t, 1<<20)
	s.postFiles(t, nil, file{"a", "aaa"})
	if code, out := s.getJSON(t, "/apiv2/tasks/reschedule/1/"); code != 409 {
		t.Errorf("rescheduling a pending task: %d %v", code, out)
	}
	if _, err := s.st.TransitionTask(context.Background(), store.TaskTransition{TaskID: 1, From: store.TaskPending,
		To: store.TaskFailedAnalysis, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	code, out := s.getJSON(t, "/apiv2/tasks/reschedule/1/")
	if code != 200 || out["data"].(map[string]any)["new_task_id"] != 2.0 {
		t.Fatalf("reschedule: %d %v", code, out)
	}
	if code, out := s.getJSON(t, "/apiv2/tasks/delete/1/"); code != 200 || out["data"] != "Task(s) ID(s) 1 has been deleted" {
		t.Errorf("delete: %d %v", code, out)
	}
	if code, _ := s.getJSON(t, "/apiv2/tasks/view/1/"); code != 404 {
		t.Errorf("a deleted task still answers: %d", code)
	}
	code, out = s.getJSON(t, "/apiv2/cuckoo/status/")
	data, _ := out["data"].(map[string]any)
	tasks, _ := data["tasks"].(map[string]any)
	machines, _ := data["machines"].(map[string]any)
	if code != 200 || tasks["total"] != 1.0 || tasks["pending"] != 1.0 || machines["total"] != 1.0 || data["server"] == nil {
		t.Errorf("cuckoo/status: %d %v", code, out)
	}
}
