package api_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/sample"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// FuzzTaskForm sends arbitrary bodies to the task forms: each answer is a
// 200 or a 4xx naming the problem — never a 5xx — and a refused one queues
// nothing.
func FuzzTaskForm(f *testing.F) {
	const boundary = "sandfleetfuzzboundary"
	multi := func(parts ...string) string {
		var b strings.Builder
		for _, p := range parts {
			b.WriteString("--" + boundary + "\r\n" + p + "\r\n")
		}
		return b.String() + "--" + boundary + "--\r\n"
	}
	f.Add(true, multi(`Content-Disposition: form-data; name="file"; filename="a.exe"`+"\r\n\r\nMZ"))
	f.Add(true, multi(`Content-Disposition: form-data; name="file"; filename="../../x"`+"\r\n\r\nhello",
		`Content-Disposition: form-data; name="timeout"`+"\r\n\r\n60", `Content-Disposition: form-data; name="tags"`+"\r\n\r\nwin10,x64"))
	f.Add(true, multi(`Content-Disposition: form-data; name="machine"`+"\r\n\r\nall", `Content-Disposition: form-data; name="file"; filename="b"`+"\r\n\r\nb"))
	f.Add(true, "--"+boundary+"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c\"\r\n\r\ntruncated")
	f.Add(false, "url=http%3A%2F%2Fexample.com%2F&priority=3&options=a%3Db")
	f.Add(false, "url=%zz")
	f.Add(false, "url=http://x/&url=http://y/")
	// One store and server for the whole run, as a daemon has: each input
	// must leave the queue as it found it unless it was accepted.
	// Not f.TempDir: a seed's name may hold a '#', which a SQLite path may not.
	dir, err := os.MkdirTemp("", "sandfleet-fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	st, err := open.Open(ctx, "sqlite://"+filepath.Join(dir, "fuzz.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	smp, err := sample.Open(filepath.Join(dir, "samples"))
	if err != nil {
		f.Fatal(err)
	}
	srv := api.New(api.Options{Samples: smp, MaxSampleSize: 1 << 16, DataDir: dir})
	srv.Attach(st, nil, nil)
	count := func(t *testing.T) int {
		ts, err := st.ListTasks(ctx, store.TaskFilter{})
		if err != nil {
			t.Fatal(err)
		}
		return len(ts)
	}
	f.Fuzz(func(t *testing.T, file bool, body string) {
		before := count(t)
		path, ctype := "/apiv2/tasks/create/url/", "application/x-www-form-urlencoded"
		if file {
			path, ctype = "/apiv2/tasks/create/file/", "multipart/form-data; boundary="+boundary
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewBufferString(body))
		req.Header.Set("Content-Type", ctype)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		after := count(t)
		switch code := rec.Code; {
		case code == 200:
			if after == before {
				t.Fatalf("200 and no task: %s", rec.Body)
			}
		case code >= 400 && code < 500:
			if after != before {
				t.Fatalf("%d and %d tasks queued: %s", code, after-before, rec.Body)
			}
			if !strings.Contains(rec.Body.String(), `"error_value"`) {
				t.Fatalf("%d without a reason: %s", code, rec.Body)
			}
		default:
			t.Fatalf("answered %d: %s", code, rec.Body)
		}
	})
}
