package azemu

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// maxBody bounds request bodies.
const maxBody = 8 << 20

// handler routes admin endpoints to their handlers and everything else to
// the ARM emulation.
func (e *Emulator) handler() http.Handler {
	mux := http.NewServeMux()
	e.adminRoutes(mux)
	mux.Handle("/", http.HandlerFunc(e.serveARM))
	return mux
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// serveARM is the Resource Manager front door: request log, auth, injected
// faults, then the resource handlers.
func (e *Emulator) serveARM(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	rec := &statusRecorder{ResponseWriter: w}
	w = rec
	defer func() {
		e.reqlog.add(RequestRecord{
			Time: start.UTC(), Method: r.Method, Path: r.URL.Path,
			Status: rec.status, Body: loggedBody(body),
		})
		e.log.Debug("arm request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"duration", time.Since(start))
	}()
	w.Header().Set("x-ms-request-id", newID())
	w.Header().Set("x-ms-correlation-request-id", newID())
	if err != nil || len(body) > maxBody {
		armError(w, http.StatusBadRequest, "InvalidRequestContent", "The request body could not be read.")
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	e.mu.Lock()
	latency := time.Duration(e.faults.LatencyMS) * time.Millisecond
	e.mu.Unlock()
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
	}

	if code, msg := checkAuth(r); code != "" {
		armError(w, http.StatusUnauthorized, code, msg)
		return
	}
	if seg := strings.SplitN(strings.Trim(r.URL.Path, "/"), "/", 3); len(seg) >= 2 && strings.EqualFold(seg[0], "subscriptions") {
		e.limits.setHeaders(w, r, seg[1], start)
	}
	if code, msg := e.checkAPIVersion(r); code != "" {
		armError(w, http.StatusBadRequest, code, msg)
		return
	}

	e.mu.Lock()
	retryAfter, throttled := e.faults.throttles(r.Method, r.URL.Path)
	failed := !throttled && e.faults.ErrorRate > 0 && rand.Float64() < e.faults.ErrorRate
	e.mu.Unlock()
	if throttled {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		armError(w, http.StatusTooManyRequests, "TooManyRequests",
			"The request is being throttled as the limit has been reached for operation type - "+
				r.Method+" "+r.URL.Path+". Retry after "+strconv.Itoa(retryAfter)+" seconds.")
		return
	}
	if failed {
		armError(w, http.StatusInternalServerError, "InternalServerError",
			"An internal execution error occurred. Please retry later.")
		return
	}
	e.route(w, r, body)
}

// checkAuth returns an ARM error code when the request is not authorised.
func checkAuth(r *http.Request) (code, message string) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
	}
	scheme, tok, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) != Token {
		return "InvalidAuthenticationToken", "The access token is invalid."
	}
	return "", ""
}

// route dispatches an ARM request by its path. ARM paths are
// case-insensitive; names keep the case the client used.
func (e *Emulator) route(w http.ResponseWriter, r *http.Request, body []byte) {
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	lc := make([]string, len(seg))
	for i, s := range seg {
		lc[i] = strings.ToLower(s)
	}
	n := len(seg)
	is := func(i int, lit string) bool { return i < n && lc[i] == lit }
	m := r.Method
	notFound := func() {
		armError(w, http.StatusNotFound, "NotFound", "The sandfleet Azure emulator does not serve "+m+" "+r.URL.Path+".")
	}
	allow := func(methods ...string) bool {
		for _, x := range methods {
			if m == x {
				return true
			}
		}
		w.Header().Set("Allow", strings.Join(methods, ", "))
		armError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "The method '"+m+"' is not allowed here.")
		return false
	}
	if n < 4 || !is(0, "subscriptions") {
		notFound()
		return
	}
	sub := seg[1]

	// Subscription-level providers: SKUs, usages, operations.
	if is(2, "providers") && is(3, "microsoft.compute") {
		switch {
		case n == 5 && is(4, "skus"):
			if allow(http.MethodGet) {
				e.handleSKUs(w, r)
			}
		case n == 7 && is(4, "locations") && is(6, "usages"):
			if allow(http.MethodGet) {
				e.handleUsages(w, r, sub, seg[5])
			}
		case n == 8 && is(4, "locations") && is(6, "operations"):
			if allow(http.MethodGet) {
				e.handleOperation(w, r, sub, seg[7])
			}
		default:
			notFound()
		}
		return
	}
	if !(n >= 6 && is(2, "resourcegroups") && is(4, "providers")) {
		notFound()
		return
	}
	rg := seg[3]
	switch lc[5] {
	case "microsoft.network":
		if n == 9 && is(6, "virtualnetworks") && is(8, "subnets") {
			if allow(http.MethodGet) {
				e.handleSubnets(w, r, sub, rg, seg[7])
			}
			return
		}
		if n == 10 && is(6, "virtualnetworks") && is(8, "subnets") {
			if allow(http.MethodGet) {
				e.handleSubnet(w, r, sub, rg, seg[7], seg[9])
			}
			return
		}
	case "microsoft.compute":
		if n == 10 && is(6, "galleries") && is(8, "images") {
			if allow(http.MethodGet) {
				e.handleGalleryImage(w, r, sub, rg, seg[7], seg[9])
			}
			return
		}
		if !is(6, "virtualmachinescalesets") {
			break
		}
		if n == 7 {
			if allow(http.MethodGet) {
				e.handleListSets(w, r, sub, rg)
			}
			return
		}
		name := seg[7]
		switch {
		case n == 8:
			switch m {
			case http.MethodGet:
				e.handleGetSet(w, r, sub, rg, name)
			case http.MethodPut:
				e.handlePutSet(w, r, sub, rg, name, body)
			case http.MethodPatch:
				e.handlePatchSet(w, r, sub, rg, name, body)
			case http.MethodDelete:
				e.handleDeleteSet(w, r, sub, rg, name)
			default:
				allow(http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodDelete)
			}
			return
		case n == 9 && is(8, "virtualmachines"):
			if allow(http.MethodGet) {
				e.handleListVMs(w, r, sub, rg, name)
			}
			return
		case n == 9 && is(8, "instanceview"):
			if allow(http.MethodGet) {
				e.handleSetInstanceView(w, r, sub, rg, name)
			}
			return
		case n == 9 && is(8, "networkinterfaces"):
			if allow(http.MethodGet) {
				e.handleListNICs(w, r, sub, rg, name, "")
			}
			return
		case n == 9:
			if action, ok := setActions[lc[8]]; ok {
				if allow(http.MethodPost) {
					e.handleSetAction(w, r, sub, rg, name, action, body)
				}
				return
			}
		case n >= 10 && is(8, "virtualmachines"):
			id := seg[9]
			switch {
			case n == 10:
				switch m {
				case http.MethodGet:
					e.handleGetVM(w, r, sub, rg, name, id, false)
				case http.MethodDelete:
					e.handleDeleteVM(w, r, sub, rg, name, id)
				default:
					allow(http.MethodGet, http.MethodDelete)
				}
				return
			case n == 11 && is(10, "instanceview"):
				if allow(http.MethodGet) {
					e.handleGetVM(w, r, sub, rg, name, id, true)
				}
				return
			case n == 11 && is(10, "networkinterfaces"):
				if allow(http.MethodGet) {
					e.handleListNICs(w, r, sub, rg, name, id)
				}
				return
			case n == 12 && is(10, "networkinterfaces"):
				if allow(http.MethodGet) {
					e.handleGetNIC(w, r, sub, rg, name, id, seg[11])
				}
				return
			case n == 11:
				if lc[10] == "simulateeviction" {
					if allow(http.MethodPost) {
						e.handleSimulateEviction(w, r, sub, rg, name, id)
					}
					return
				}
				if action, ok := setActions[lc[10]]; ok && action != "delete" {
					if allow(http.MethodPost) {
						e.handleVMAction(w, r, sub, rg, name, id, action)
					}
					return
				}
			}
		}
	}
	notFound()
}

// setActions are the POST actions on a scale set (and, but for delete, on
// one of its VMs), by lower-case path segment.
var setActions = map[string]string{
	"delete":     "delete",
	"reimage":    "reimage",
	"reimageall": "reimage",
	"restart":    "restart",
	"poweroff":   "powerOff",
	"start":      "start",
	"deallocate": "deallocate",
}

// armError writes ARM's error document.
func armError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "message": message}})
}

// writeJSON writes v as the response body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		armError(w, http.StatusInternalServerError, "InternalServerError", err.Error())
		return
	}
	writeRaw(w, status, b)
}

func writeRaw(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// page is one page of a list: the items after the $skiptoken, and the
// nextLink to the following page (empty at the end). keys must be sorted.
func page(r *http.Request, keys []string, size int) (from, to int, nextLink string) {
	tok := r.URL.Query().Get("$skiptoken")
	if tok != "" {
		from = sort.SearchStrings(keys, tok)
		if from < len(keys) && keys[from] == tok {
			from++
		}
	}
	to = min(from+size, len(keys))
	if to < len(keys) {
		q := r.URL.Query()
		// The caller's api-version stays in the link, as ARM keeps it.
		q.Set("$skiptoken", keys[to-1])
		nextLink = "https://" + r.Host + r.URL.EscapedPath() + "?" + q.Encode()
	}
	return from, to, nextLink
}

// listPage renders the page of a list that the request asks for: keys are
// the items' sort keys, ascending, and item(i) is the i-th item.
func (e *Emulator) listPage(r *http.Request, keys []string, item func(i int) any) []byte {
	from, to, next := page(r, keys, e.opts.PageSize)
	items := make([]json.RawMessage, 0, to-from)
	for i := from; i < to; i++ {
		items = append(items, mustJSON(item(i)))
	}
	return listBody(items, next)
}

// indexKeys are sort keys for a list of n items in a fixed order.
func indexKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%04d", i)
	}
	return keys
}

// listBody assembles an ARM list document from rendered items.
func listBody(items []json.RawMessage, nextLink string) []byte {
	var b bytes.Buffer
	b.Grow(64 + len(items)*512)
	b.WriteString(`{"value":[`)
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(it)
	}
	b.WriteByte(']')
	if nextLink != "" {
		b.WriteString(`,"nextLink":`)
		nl, _ := json.Marshal(nextLink)
		b.Write(nl)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// resourceID builds an ARM resource id.
func resourceID(sub, rg string, parts ...string) string {
	var b strings.Builder
	b.WriteString("/subscriptions/")
	b.WriteString(sub)
	b.WriteString("/resourceGroups/")
	b.WriteString(rg)
	b.WriteString("/providers")
	for _, p := range parts {
		b.WriteByte('/')
		b.WriteString(p)
	}
	return b.String()
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
