package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
)

// send makes one request and decodes the JSON envelope of its answer.
func send(t *testing.T, method, url, contentType string, body io.Reader) (*http.Response, envelope) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var env envelope
	if method != http.MethodHead {
		if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
			t.Fatalf("%s %s: body is not the JSON envelope: %v", method, url, err)
		}
	}
	return resp, env
}

// snapshot is what a rejected request must leave as it was.
type snapshot struct {
	state   store.MachineState
	version int64
	reason  string
	events  int
}

func snap(t *testing.T, st store.Store, label string) snapshot {
	t.Helper()
	ctx := context.Background()
	m, err := st.GetMachine(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := st.MachineEvents(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{m.State, m.Version, m.QuarantineReason, len(evs)}
}

// multipartBody is a multipart/form-data body whose "reason" is a text field
// or a file.
func multipartBody(file bool) (contentType, body string) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	if file {
		fw, _ := mw.CreateFormFile("reason", "reason.txt")
		fw.Write([]byte("beaconing"))
	} else {
		mw.WriteField("reason", "beaconing")
	}
	mw.Close()
	return mw.FormDataContentType(), b.String()
}

// A body that cannot be read as the endpoint's fields is a 4xx naming the
// problem, and the machine is left exactly as it was: no default reason
// slips through for a field that did not parse.
func TestMalformedBodiesChangeNothing(t *testing.T) {
	const (
		form = "application/x-www-form-urlencoded"
		js   = "application/json"
	)
	big := strings.Repeat("x", 70<<10)
	mpFile, mpFileBody := multipartBody(true)
	cases := []struct {
		name        string
		contentType string
		body        string
		code        int
		want        string
	}{
		{"bad escape", form, "reason=%zz", 400, `invalid URL escape "%zz"`},
		{"field twice", form, "reason=a&reason=b", 400, `"reason": given 2 times`},
		{"unknown field", form, "reasn=typo", 400, `form field "reasn" is not known`},
		{"semicolon", form, "reason=a;b", 400, "semicolon"},
		{"too long", form, "reason=" + strings.Repeat("y", 1001), 400, "reason: longer than 1000"},
		{"form too big", form, "reason=" + big, 413, "65536 bytes"},
		{"truncated JSON", js, `{"reason": "beaconing`, 400, "truncated JSON"},
		{"not JSON", js, `reason=beaconing`, 400, "invalid JSON"},
		{"unknown JSON field", js, `{"reasn": "typo"}`, 400, `unknown field "reasn"`},
		{"wrong JSON type", js, `{"reason": 5}`, 400, "reason"},
		{"two JSON values", js, `{"reason": "a"} {"reason": "b"}`, 400, "more than one JSON value"},
		{"JSON array", js, `["a"]`, 400, "invalid JSON"},
		{"JSON too big", js, `{"reason": "` + big + `"}`, 413, "65536 bytes"},
		{"bad Content-Type", "application/json; =", `{}`, 400, "Content-Type"},
		{"unsupported type", "text/plain", "beaconing", 415, "text/plain"},
		{"body without type", "", "reason=beaconing", 415, "without a Content-Type"},
		{"multipart without boundary", "multipart/form-data", "reason=x", 400, "multipart"},
		{"multipart file", mpFile, mpFileBody, 400, `form field "reason": a file`},
	}
	srv, st := newServer(t, nil)
	// quarantine is tried on a ready machine, release on a quarantined one:
	// each would succeed with a well-formed body.
	for _, endpoint := range []string{"quarantine", "release"} {
		if endpoint == "release" {
			if code, env := post(t, srv.URL+"/apiv2/machines/quarantine/lab1/", nil); code != 200 {
				t.Fatalf("quarantine: %d %+v", code, env)
			}
		}
		before := snap(t, st, "lab1")
		for _, c := range cases {
			t.Run(endpoint+"/"+c.name, func(t *testing.T) {
				resp, env := send(t, "POST", srv.URL+"/apiv2/machines/"+endpoint+"/lab1/", c.contentType, strings.NewReader(c.body))
				if resp.StatusCode != c.code || !bool(env.Error) || !strings.Contains(env.ErrorValue, c.want) {
					t.Errorf("%d %q, want %d naming %q", resp.StatusCode, env.ErrorValue, c.code, c.want)
				}
				if after := snap(t, st, "lab1"); after != before {
					t.Errorf("machine changed: before %+v, after %+v", before, after)
				}
			})
		}
	}
}

// Well-formed bodies in every accepted encoding take effect.
func TestOperatorNoteEncodings(t *testing.T) {
	srv, st := newServer(t, nil)
	url := srv.URL + "/apiv2/machines/"
	mpType, mpBody := multipartBody(false)
	steps := []struct {
		endpoint, contentType string
		body                  io.Reader
		state, reason, cause  string
	}{
		{"quarantine", "application/json; charset=utf-8", strings.NewReader(`{"reason": " beaconing "}`), "quarantined", "beaconing", ""},
		{"release", "application/json", strings.NewReader(`{"reason": "false positive"}`), "dirty", "", "released by an operator (false positive); reimaging before use"},
		{"quarantine", mpType, strings.NewReader(mpBody), "quarantined", "beaconing", ""},
		{"release", "", nil, "dirty", "", "released by an operator; reimaging before use"},
		{"quarantine", "application/json", strings.NewReader(``), "quarantined", "quarantined by an operator", ""},
	}
	for i, s := range steps {
		if s.endpoint == "quarantine" && i > 0 {
			// Back to ready by hand: the reimage the release asks for is the
			// reconciler's, not run here.
			m, _ := st.GetMachine(context.Background(), "lab1")
			if _, err := st.TransitionMachine(context.Background(), store.Transition{Label: "lab1", From: m.State, To: store.Ready}); err != nil {
				t.Fatal(err)
			}
		}
		resp, env := send(t, "POST", url+s.endpoint+"/lab1/", s.contentType, s.body)
		if resp.StatusCode != 200 {
			t.Fatalf("step %d %s: %d %q", i, s.endpoint, resp.StatusCode, env.ErrorValue)
		}
		m, _ := st.GetMachine(context.Background(), "lab1")
		if string(m.State) != s.state || m.QuarantineReason != s.reason {
			t.Fatalf("step %d %s: state %s reason %q, want %s %q", i, s.endpoint, m.State, m.QuarantineReason, s.state, s.reason)
		}
		if s.cause != "" {
			evs, _ := st.MachineEvents(context.Background(), "lab1")
			if last := evs[len(evs)-1]; last.Cause != s.cause {
				t.Fatalf("step %d %s: cause %q, want %q", i, s.endpoint, last.Cause, s.cause)
			}
		}
	}
}

// A wrong method on a known path is a 405 in the JSON envelope with Allow;
// GET routes answer HEAD; an unknown path stays a JSON 404.
func TestWrongMethod(t *testing.T) {
	srv, st := newServer(t, nil)
	before := snap(t, st, "lab1")
	cases := []struct {
		method, path, allow string
	}{
		{"DELETE", "/apiv2/machines/list/", "GET, HEAD"},
		{"POST", "/apiv2/machines/list", "GET, HEAD"},
		{"PUT", "/apiv2/machines/view/lab1/", "GET, HEAD"},
		{"POST", "/apiv2/pools/list/", "GET, HEAD"},
		{"POST", "/apiv2/fleet/check/", "GET, HEAD"},
		{"PATCH", "/apiv2/operations/list/", "GET, HEAD"},
		{"GET", "/apiv2/machines/quarantine/lab1/", "POST"},
		{"PUT", "/apiv2/machines/quarantine/lab1", "POST"},
		{"GET", "/apiv2/machines/release/lab1/", "POST"},
		{"DELETE", "/apiv2/machines/release/lab1", "POST"},
		{"POST", "/healthz", "GET, HEAD"},
		{"POST", "/readyz", "GET, HEAD"},
		{"DELETE", "/metrics", "GET, HEAD"},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			resp, env := send(t, c.method, srv.URL+c.path, "", nil)
			want := "method " + c.method + " not allowed on " + c.path + "; allowed: " + c.allow
			if resp.StatusCode != 405 || resp.Header.Get("Allow") != c.allow || !bool(env.Error) || env.ErrorValue != want {
				t.Errorf("%d Allow %q %q, want 405 Allow %q %q", resp.StatusCode, resp.Header.Get("Allow"), env.ErrorValue, c.allow, want)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
	if after := snap(t, st, "lab1"); after != before {
		t.Errorf("machine changed: before %+v, after %+v", before, after)
	}
	for _, path := range []string{"/apiv2/machines/list/", "/apiv2/machines/view/lab1", "/healthz"} {
		if resp, _ := send(t, "HEAD", srv.URL+path, "", nil); resp.StatusCode != 200 {
			t.Errorf("HEAD %s: %d", path, resp.StatusCode)
		}
	}
	resp, env := send(t, "DELETE", srv.URL+"/apiv2/no/such/thing/", "", nil)
	if resp.StatusCode != 404 || !bool(env.Error) || !strings.Contains(env.ErrorValue, "no such endpoint: DELETE /apiv2/no/such/thing/") {
		t.Errorf("unknown path: %d %q", resp.StatusCode, env.ErrorValue)
	}
}
