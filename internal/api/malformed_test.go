package api_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/auth"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/provider/static"
	"github.com/sandfleet/sandfleet/internal/sample"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// rig is the API as the daemon serves it — a SQLite database, a static pool,
// a samples directory, analysis folders, optionally a tokens file — holding
// a few tasks, and what a request may not change: every table and every
// file.
type rig struct {
	srv *api.Server
	dir string // the data directory: database, samples, analyses, tokens
	db  *sql.DB
	key string // the token the API takes; "" without auth
	ids []int64
}

// maxRigSample is the rig's scheduler.max_sample_size.
const maxRigSample = 4096

func newRig(tb testing.TB, withToken bool) *rig {
	tb.Helper()
	// Not t.TempDir: a seed's name may hold a '#', which a SQLite path may not.
	dir, err := os.MkdirTemp("", "sandfleet-api")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	dbPath := filepath.Join(dir, "sandfleet.db")
	st, err := open.Open(ctx, "sqlite://"+dbPath)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	pool := config.Pool{Name: "lab", Provider: "static", Platform: "windows", Arch: "x64", Tags: []string{"win10"},
		Machines: []config.StaticMachine{{Label: "lab1", IP: "127.0.0.31"}, {Label: "lab2", IP: "127.0.0.32"}}}
	r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{pool}), Pools: []config.Pool{pool},
		ResultServerIP: "127.0.0.1", ResultServerPort: 2042})
	if err := r.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := r.Pass(ctx); err != nil {
		tb.Fatal(err)
	}
	smp, err := sample.Open(filepath.Join(dir, "samples"))
	if err != nil {
		tb.Fatal(err)
	}
	o := api.Options{Store: st, Fleet: fleet.NewFleet(r), Samples: smp, MaxSampleSize: maxRigSample, DataDir: dir}
	rg := &rig{dir: dir}
	if withToken {
		rg.key = "sf_" + strings.Repeat("k", 40)
		tokens := filepath.Join(dir, "tokens")
		if err := os.WriteFile(tokens, []byte(fmt.Sprintln(auth.Token{Name: "ops", Hash: auth.Hash(rg.key)})), 0o600); err != nil {
			tb.Fatal(err)
		}
		if o.Tokens, err = auth.Open(tokens, nil); err != nil {
			tb.Fatal(err)
		}
	}
	rg.srv = api.New(o)
	if rg.db, err = sql.Open("sqlite", "file:"+dbPath+"?mode=ro"); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rg.db.Close() })

	// Two file tasks, a URL task, and an analysis folder for each.
	for i, body := range []string{"MZ first sample", "MZ second sample"} {
		ctype, form := fileForm(map[string]string{"timeout": "60"}, "s"+strconv.Itoa(i)+".exe", body)
		rg.mustSubmit(tb, "/apiv2/tasks/create/file/", ctype, form)
	}
	rg.mustSubmit(tb, "/apiv2/tasks/create/url/", "application/x-www-form-urlencoded", "url=http%3A%2F%2F127.0.0.1%2F")
	for _, id := range rg.ids {
		d := filepath.Join(dir, "analyses", strconv.FormatInt(id, 10))
		if err := os.MkdirAll(d, 0o750); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "analysis.log"), []byte("log of "+d), 0o640); err != nil {
			tb.Fatal(err)
		}
	}
	return rg
}

// fileForm is a multipart task form: fields and one file.
func fileForm(fields map[string]string, name, content string) (contentType, body string) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range fields {
			if !yield(k) {
				return
			}
		}
	}) {
		mw.WriteField(k, fields[k])
	}
	fw, _ := mw.CreateFormFile("file", name)
	io.WriteString(fw, content)
	mw.Close()
	return mw.FormDataContentType(), b.String()
}

func (rg *rig) mustSubmit(tb testing.TB, path, ctype, body string) {
	tb.Helper()
	token := ""
	if rg.key != "" {
		token = "Token " + rg.key
	}
	rec := rg.do(http.MethodPost, path, "", ctype, body, token)
	var out struct {
		Data struct {
			TaskIDs []int64 `json:"task_ids"`
		} `json:"data"`
	}
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &out) != nil || len(out.Data.TaskIDs) == 0 {
		tb.Fatalf("submit to %s: %d %s", path, rec.Code, rec.Body)
	}
	rg.ids = append(rg.ids, out.Data.TaskIDs...)
}

// do serves one request, built by hand so that any path reaches the
// handler, as a percent-encoded one does through net/http.
func (rg *rig) do(method, path, rawQuery, ctype, body, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/", strings.NewReader(body))
	req.Method = method
	req.URL.Path, req.URL.RawPath, req.URL.RawQuery = path, "", rawQuery
	req.RequestURI = req.URL.RequestURI()
	req.ContentLength = int64(len(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	rec := httptest.NewRecorder()
	rg.srv.ServeHTTP(rec, req)
	return rec
}

// state renders every row of every table and every file below the data
// directory but the database's own: what a refused request must leave as
// it was.
func (rg *rig) state(tb testing.TB) string {
	tb.Helper()
	var b strings.Builder
	tables, err := rg.db.Query(`SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name`)
	if err != nil {
		tb.Fatal(err)
	}
	var names []string
	for tables.Next() {
		var n string
		if err := tables.Scan(&n); err != nil {
			tb.Fatal(err)
		}
		names = append(names, n)
	}
	tables.Close()
	for _, n := range names {
		rows, err := rg.db.Query(`SELECT * FROM "` + n + `"`)
		if err != nil {
			tb.Fatal(err)
		}
		cols, _ := rows.Columns()
		var lines []string
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				tb.Fatal(err)
			}
			lines = append(lines, fmt.Sprintf("%q", vals))
		}
		rows.Close()
		slices.Sort(lines)
		fmt.Fprintf(&b, "table %s %v: %d rows\n%s\n", n, cols, len(lines), strings.Join(lines, "\n"))
	}
	err = filepath.WalkDir(rg.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(rg.dir, p)
		if strings.HasPrefix(rel, "sandfleet.db") {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		sum := ""
		if d.Type().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum = fmt.Sprintf("%x", sha256.Sum256(data))
		}
		fmt.Fprintf(&b, "file %s %v %s\n", rel, info.Mode(), sum)
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return b.String()
}

// refusal says what is wrong unless rec is a 4xx in the envelope, error
// true and a reason.
func refusal(rec *httptest.ResponseRecorder) error {
	if rec.Code < 400 || rec.Code > 499 {
		return fmt.Errorf("answered %d, want a 4xx: %s", rec.Code, rec.Body)
	}
	var env envelope
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("%d as %q, want the JSON envelope: %s", rec.Code, ct, rec.Body)
	}
	// CAPE's tasks/delete/ names the ids that failed in "failed".
	var failed struct{ Failed string }
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || !bool(env.Error) ||
		(env.ErrorValue == "" && (json.Unmarshal(rec.Body.Bytes(), &failed) != nil || failed.Failed == "")) {
		return fmt.Errorf("%d without error true and a reason: %s", rec.Code, rec.Body)
	}
	return nil
}

// endpoint is a route of the API and what a well-formed request to it looks
// like; the generator breaks one thing of it.
type endpoint struct {
	method  string
	path    string // a well-formed path, a "%s" where the parameter goes
	param   string // a valid parameter ("" without one)
	auth    bool
	queries []string // malformed queries it must refuse
	params  []string // malformed parameters it must refuse
	body    func(r *rand.Rand) (ctype, body string)
}

var (
	badTaskIDs   = []string{"0", "-1", "abc", "1.5", "1e3", "99999999999999999999", "9999", " 1", "1 ", "\x00", "１", "0x1", "+1"}
	badLimits    = []string{"+1", "-1", "abc", "1.5", "99999999999999999999", " 2", "\x00", "٣"}
	badMachines  = []string{"nope", "LAB1", "lab1 ", " lab1", "lab1\x00", "lab1\n", "la b1", "%6cab1", "lab3", "'; DROP TABLE machines; --"}
	badDeleteIDs = append(slices.Clone(badTaskIDs), "5-2", "1-20000", "1,abc", ",", "-", "1-", "-3", "9998,9999", "1--2")
)

// endpoints are every route of the API.
func endpoints() []endpoint {
	none := func(*rand.Rand) (string, string) { return "", "" }
	return []endpoint{
		{method: "GET", path: "/healthz"},
		{method: "GET", path: "/readyz"},
		{method: "GET", path: "/metrics"},
		{method: "GET", path: "/"},
		{method: "GET", path: "/static/app.js"},
		{method: "GET", path: "/apiv2/machines/list/", auth: true,
			queries: []string{"state=sleepy", "state=READY", "pool=nope", "reserved=maybe", "state=%zz", "pool=lab&pool=%", "reserved=2"}},
		{method: "GET", path: "/apiv2/machines/view/%s/", param: "lab1", auth: true, params: badMachines},
		{method: "GET", path: "/apiv2/pools/list/", auth: true},
		{method: "GET", path: "/apiv2/fleet/check/", auth: true},
		{method: "GET", path: "/apiv2/operations/list/", auth: true,
			queries: []string{"unfinished=maybe", "pool=nope", "unfinished=%", "pool=%ff%zz"}},
		{method: "POST", path: "/apiv2/machines/quarantine/%s/", param: "lab1", auth: true, params: badMachines, body: badNote},
		{method: "POST", path: "/apiv2/machines/release/%s/", param: "lab1", auth: true, params: badMachines, body: badNote},
		{method: "POST", path: "/apiv2/tasks/create/file/", auth: true, body: badFileForm},
		{method: "POST", path: "/apiv2/tasks/create/url/", auth: true, body: badURLForm},
		{method: "GET", path: "/apiv2/tasks/list/", auth: true, queries: badListQueries},
		{method: "GET", path: "/apiv2/tasks/list/%s/", param: "5", auth: true, params: badLimits, queries: badListQueries},
		{method: "GET", path: "/apiv2/tasks/list/5/%s/", param: "1", auth: true, params: badLimits},
		{method: "GET", path: "/apiv2/tasks/list/5/0/%s/", param: "60", auth: true, params: badLimits},
		{method: "GET", path: "/apiv2/tasks/view/%s/", param: "1", auth: true, params: badTaskIDs},
		{method: "GET", path: "/apiv2/tasks/status/%s/", param: "2", auth: true, params: badTaskIDs},
		{method: "GET", path: "/apiv2/tasks/reschedule/%s/", param: "9999", auth: true, params: badTaskIDs},
		{method: "GET", path: "/apiv2/tasks/delete/%s/", param: "9999", auth: true, params: badDeleteIDs},
		{method: "GET", path: "/apiv2/cuckoo/status/", auth: true},
		{method: "GET", path: "/apiv2/dashboard/", auth: true},
		{method: "POST", path: "/apiv2/unknown/", body: none},
	}
}

var badListQueries = []string{"status=bogus", "status=pending|", "status=|", "status=Pending", "completed_after=yesterday",
	"completed_after=1.5", "status=%zz", "ids=%", "completed_after=99999999999999999999"}

// badNote is a machines/quarantine/ or release/ body that cannot be read.
func badNote(r *rand.Rand) (string, string) {
	form := "application/x-www-form-urlencoded"
	cases := [][2]string{
		{form, "reasn=typo"},
		{form, "reason=a&reason=b"},
		{form, "reason=%zz"},
		{form, "reason=ok&extra=1"},
		{"application/json", "{"},
		{"application/json", `{"reason": "a"} {"reason": "b"}`},
		{"application/json", `{"reason": 5}`},
		{"application/json", `{"why": "x"}`},
		{"application/json", `["reason"]`},
		{"application/json", `{"reason": "` + strings.Repeat("x", 70<<10) + `"}`},
		{"text/plain", "beaconing"},
		{"", "beaconing"},
		{"application/json; charset", "{}"},
		{"multipart/form-data; boundary=zz", "--zz\r\nContent-Disposition: form-data; name=\"reason\"; filename=\"r.txt\"\r\n\r\nx\r\n--zz--\r\n"},
		{"multipart/form-data; boundary=zz", "--zz\r\nContent-Disposition: form-data; name=\"reason\"\r\n\r\nx"},
		{"multipart/form-data", "--zz--\r\n"},
	}
	c := cases[r.IntN(len(cases))]
	return c[0], c[1]
}

// badFileForm is a tasks/create/file/ body that must be refused.
func badFileForm(r *rand.Rand) (string, string) {
	fields := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	sampleBody := fmt.Sprintf("MZ sample %d", r.Int64())
	switch r.IntN(6) {
	case 0: // a valid file with a field that is not
		bad := [][]string{{"timeout", "abc"}, {"timeout", "-5"}, {"priority", "99"}, {"colour", "red"}, {"machine", "nope"},
			{"clock", "tomorrow"}, {"static", "1"}, {"enforce_timeout", "perhaps"}, {"memory", "2"}, {"timeout", "1e9"}}
		kv := bad[r.IntN(len(bad))]
		return fileForm(fields(kv...), "a.exe", sampleBody)
	case 1: // a file that cannot be taken
		if r.IntN(2) == 0 {
			return fileForm(nil, "empty.exe", "")
		}
		return fileForm(nil, "big.exe", strings.Repeat("A", maxRigSample+1+r.IntN(100)))
	case 2: // a valid form, truncated before its end
		ctype, body := fileForm(fields("timeout", "30"), "a.exe", sampleBody)
		end := strings.LastIndex(body, "--")
		return ctype, body[:r.IntN(end)]
	case 3: // no file
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		mw.WriteField("timeout", "30")
		mw.Close()
		return mw.FormDataContentType(), b.String()
	case 4: // not a multipart form
		cases := [][2]string{
			{"application/x-www-form-urlencoded", "file=MZ"},
			{"application/json", `{"file": "MZ"}`},
			{"multipart/form-data", "--x--"},
			{"multipart/form-data; boundary=", "--x--"},
			{"", sampleBody},
			{"multipart/form-data; boundary=other", "--x\r\n\r\n"},
		}
		c := cases[r.IntN(len(cases))]
		return c[0], c[1]
	default: // a field given twice, or not text
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		if r.IntN(2) == 0 {
			mw.WriteField("tags", "win10")
			mw.WriteField("tags", "x64")
		} else {
			mw.WriteField("options", "\xff\xfe")
		}
		fw, _ := mw.CreateFormFile("file", "a.exe")
		io.WriteString(fw, sampleBody)
		mw.Close()
		return mw.FormDataContentType(), b.String()
	}
}

// badURLForm is a tasks/create/url/ body that must be refused.
func badURLForm(r *rand.Rand) (string, string) {
	form := "application/x-www-form-urlencoded"
	cases := [][2]string{
		{form, ""},
		{form, "url="},
		{form, "url=example.com"},
		{form, "url=%zz"},
		{form, "url=http%3A%2F%2Fa%2F&url=http%3A%2F%2Fb%2F"},
		{form, "url=http%3A%2F%2Fa%2F&timeout=soon"},
		{form, "url=http%3A%2F%2Fa%2F&priority=0"},
		{form, "url=http%3A%2F%2Fa%2F&machine=nope"},
		{form, "url=http%3A%2F%2Fa%2F&colour=red"},
		{form, "url=http%3A%2F%2Fa%2F%0Ab"},
		{form, "url=" + strings.Repeat("a", 70<<10)},
		{"application/json", `{"url": "http://a/"}`},
		{"", "url=http%3A%2F%2Fa%2F"},
		{"text/plain", "url=http%3A%2F%2Fa%2F"},
		{"multipart/form-data; boundary=zz", "--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nMZ\r\n--zz--\r\n"},
		{"multipart/form-data; boundary=zz", "--zz\r\nContent-Disposition: form-data; name=\"url\"\r\n\r\nhttp://a/"},
	}
	c := cases[r.IntN(len(cases))]
	return c[0], c[1]
}

// shapes match the paths that reach a handler; a mutated path matching
// none of them must be a 404.
func shapes(eps []endpoint) []*regexp.Regexp {
	var out []*regexp.Regexp
	for _, ep := range eps {
		p := strings.TrimSuffix(ep.path, "/")
		if p == "" || p == "/static/app.js" || p == "/apiv2/unknown" {
			continue // "/" and /static/* are checked by their own rules below
		}
		segs := strings.Split(p, "/")
		for i, seg := range segs {
			if seg == "%s" || allDigits(seg) {
				segs[i] = "[^/]*" // a parameter
			} else {
				segs[i] = regexp.QuoteMeta(seg)
			}
		}
		out = append(out, regexp.MustCompile("^"+strings.Join(segs, "/")+"/?$"))
	}
	return out
}

// mutatePath breaks a path: a letter changed, a segment added, dropped or
// doubled, "." or ".." inserted, case changed.
func mutatePath(r *rand.Rand, p string) string {
	segs := strings.Split(strings.Trim(p, "/"), "/")
	i := r.IntN(len(segs))
	junk := []string{"x", "..", ".", "", "%", "\x00", "é", "apiv2", "tasks", "list", "view", strings.Repeat("z", 300)}
	switch r.IntN(6) {
	case 0:
		s := []rune(segs[i])
		if len(s) == 0 {
			s = []rune{'a'}
		}
		swaps := []rune("xQ_-.~%é\x00\t ")
		s[r.IntN(len(s))] = swaps[r.IntN(len(swaps))]
		segs[i] = string(s)
	case 1:
		segs = slices.Insert(segs, i, junk[r.IntN(len(junk))])
	case 2:
		segs = slices.Delete(segs, i, i+1)
	case 3:
		segs = slices.Insert(segs, i, segs[i])
	case 4:
		segs[i] = strings.ToUpper(segs[i])
	default:
		segs = append(segs, junk[r.IntN(len(junk))])
	}
	out := "/" + strings.Join(segs, "/")
	if r.IntN(2) == 0 {
		out += "/"
	}
	return out
}

var otherMethods = []string{"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND", "BREW"}

// malformed is one request that must be refused.
type malformed struct {
	what                           string
	method, path, query, ctype, by string
	body                           string
}

// generate breaks one thing of a request to one endpoint.
func generate(r *rand.Rand, rg *rig, eps []endpoint, re []*regexp.Regexp) malformed {
	token := ""
	if rg.key != "" {
		token = "Token " + rg.key
	}
	applies := func(ep endpoint, kind int) bool {
		return []bool{ep.auth && rg.key != "", ep.path != "/apiv2/unknown/", true, len(ep.params) > 0,
			len(ep.queries) > 0, ep.body != nil && ep.path != "/apiv2/unknown/"}[kind]
	}
	for {
		// What to break first, then a route where it can be broken: each
		// kind gets its share of the requests.
		kind := r.IntN(6)
		var fit []endpoint
		for _, ep := range eps {
			if applies(ep, kind) {
				fit = append(fit, ep)
			}
		}
		ep := fit[r.IntN(len(fit))]
		m := malformed{method: ep.method, path: ep.path, by: token}
		if ep.param != "" {
			m.path = fmt.Sprintf(ep.path, ep.param)
		}
		if ep.body != nil && ep.method == "POST" {
			m.ctype, m.body = "application/x-www-form-urlencoded", ""
		}
		switch kind {
		case 0: // no token, or not the right one
			if !ep.auth || rg.key == "" {
				continue
			}
			bad := []string{"", "Token", "Token ", "Token " + rg.key[:len(rg.key)-1], "Token " + rg.key + "x",
				"Basic " + rg.key, rg.key, "Token " + strings.Repeat("\x00", 8), "Token " + fmt.Sprintf("%x", auth.Hash(rg.key))}
			m.by = bad[r.IntN(len(bad))]
			if ep.body != nil {
				m.ctype, m.body = ep.body(r)
			}
			m.what = fmt.Sprintf("token %q", m.by)
		case 1: // a method the route does not take
			m.method = otherMethods[r.IntN(len(otherMethods))]
			if m.method == ep.method || (ep.method == "GET" && m.method == "HEAD") || ep.path == "/apiv2/unknown/" {
				continue
			}
			m.what = "method " + m.method
		case 2: // a path no route has
			m.path = mutatePath(r, m.path)
			if slices.ContainsFunc(re, func(x *regexp.Regexp) bool { return x.MatchString(m.path) }) ||
				m.path == "/" || strings.HasPrefix(m.path, "/static/") {
				continue
			}
			m.what = "path " + strconv.Quote(m.path)
		case 3: // a parameter that names nothing
			if len(ep.params) == 0 {
				continue
			}
			m.path = fmt.Sprintf(ep.path, ep.params[r.IntN(len(ep.params))])
			if ep.body != nil {
				m.ctype, m.body = "application/json", `{"reason": "fuzz"}`
			}
			m.what = "parameter in " + strconv.Quote(m.path)
		case 4: // a query it cannot take
			if len(ep.queries) == 0 {
				continue
			}
			m.query = ep.queries[r.IntN(len(ep.queries))]
			m.what = "query " + m.query
		default: // a body it cannot read
			if ep.body == nil || ep.path == "/apiv2/unknown/" {
				continue
			}
			m.ctype, m.body = ep.body(r)
			m.what = fmt.Sprintf("body %q as %q", truncate(m.body), m.ctype)
		}
		return m
	}
}

func truncate(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

// A thousand requests, each broken in one way — no token or a wrong one, a
// method the route does not take, a path no route has, a parameter naming
// nothing, a query or a body it cannot read — to every route: each gets a
// 4xx in the JSON envelope naming what was wrong, and the database and the
// data directory are byte for byte as they were. SANDFLEET_MALFORMED_SEED
// replays a run.
func TestThousandMalformedRequests(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("SANDFLEET_MALFORMED_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("SANDFLEET_MALFORMED_SEED=%q: %v", v, err)
		}
	}
	t.Logf("SANDFLEET_MALFORMED_SEED=%d", seed)
	r := rand.New(rand.NewPCG(seed, seed>>1|1))
	rg := newRig(t, true)
	eps := endpoints()
	re := shapes(eps)
	before := rg.state(t)
	kinds := map[string]int{}
	for i := range 1000 {
		m := generate(r, rg, eps, re)
		kinds[strings.Fields(m.what)[0]]++
		rec := rg.do(m.method, m.path, m.query, m.ctype, m.body, m.by)
		err := refusal(rec)
		if err == nil {
			if after := rg.state(t); after != before {
				err = fmt.Errorf("the request changed what is stored:\n%s", diff(before, after))
			}
		}
		if err != nil {
			t.Fatalf("request %d of seed %d: %s %q ?%s (%s): %v", i, seed, m.method, m.path, m.query, m.what, err)
		}
	}
	t.Logf("requests by what was wrong: %v", kinds)
	for _, k := range []string{"token", "method", "path", "parameter", "query", "body"} {
		if kinds[k] < 100 {
			t.Errorf("only %d requests with a wrong %s", kinds[k], k)
		}
	}
	// The rig holds what the requests could have destroyed.
	if !strings.Contains(before, "file samples/") || !strings.Contains(before, "file analyses/1/analysis.log") ||
		!strings.Contains(before, "table tasks") {
		t.Fatalf("the rig's state lacks its tasks, samples or analyses:\n%s", before)
	}
}

func allDigits(s string) bool { return s != "" && strings.Trim(s, "0123456789") == "" }

// diff is the lines only one of a and b has.
func diff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range al {
		if !slices.Contains(bl, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bl {
		if !slices.Contains(al, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// FuzzRequest sends arbitrary requests — method, path, query, content type,
// body — to the API: none is a 5xx, and one refused leaves the database and
// the data directory as they were.
func FuzzRequest(f *testing.F) {
	for _, ep := range endpoints() {
		p := ep.path
		if ep.param != "" {
			p = fmt.Sprintf(ep.path, ep.param)
		}
		ctype, body := "", ""
		if ep.body != nil {
			ctype, body = ep.body(rand.New(rand.NewPCG(1, 2)))
		}
		f.Add(ep.method, p, "", ctype, body)
	}
	f.Add("GET", "/apiv2/tasks/list/", "status=pending|reported&ids=1", "", "")
	f.Add("GET", "/apiv2//tasks/../list/", "", "", "")
	f.Add("POST", "/apiv2/tasks/create/url/", "", "application/x-www-form-urlencoded", "url=http%3A%2F%2F127.0.0.1%2F&tags=win10")
	rg := newRig(f, false)
	before := rg.state(f)
	f.Fuzz(func(t *testing.T, method, path, query, ctype, body string) {
		if !validMethod(method) {
			return // net/http refuses such a request line before any handler
		}
		rec := rg.do(method, path, query, ctype, body, "")
		switch {
		case rec.Code == 503 && path == "/readyz" && method == "GET":
			// Not ready is the answer of a readiness probe, by design.
		case rec.Code >= 500:
			t.Fatalf("%s %q ?%q answered %d: %s", method, path, query, rec.Code, rec.Body)
		case rec.Code >= 400:
			if after := rg.state(t); after != before {
				t.Fatalf("%s %q ?%q: refused with %d but changed what is stored:\n%s", method, path, query, rec.Code, diff(before, after))
			}
		default:
			before = rg.state(t) // accepted: this is the new state
		}
	})
}

// validMethod is an HTTP token, as net/http requires of a method.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range m {
		if c > 0x7e || c <= ' ' || strings.ContainsRune(`()<>@,;:\"/[]?={}`, c) {
			return false
		}
	}
	return true
}
