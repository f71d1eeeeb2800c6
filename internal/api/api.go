// Package api serves sandfleet's HTTP API: CAPE's apiv2 paths and JSON shapes
// (reference cape.md §5), sandfleet's additions in the same envelope, and the
// health endpoints.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sandfleet/sandfleet/internal/auth"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/sample"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Version is the binary's version, set by cmd/sandfleet.
var Version = "dev"

// Server is the HTTP API.
type Server struct {
	tokens    *auth.Checker // nil: no auth (loopback only, enforced by config)
	log       *slog.Logger
	mux       *http.ServeMux
	routes    map[string]methods
	database  string
	samples   *sample.Dir
	maxSample int64
	dataDir   string
	// metricsHandler serves the registry, with the state collector.
	metricsHandler http.Handler

	// backend is nil until the database is open: the daemon serves (and
	// /readyz says why it is not ready) while it waits for one that is down.
	backend atomic.Pointer[backend]
	mu      sync.Mutex
	dbErr   string // the last failure to open the database, while backend is nil
}

// backend is what the handlers read and change: the store, and the fleet
// and scheduler that can only be built once the store exists.
type backend struct {
	store store.Store
	fleet *fleet.Fleet
	sched Scheduler
}

// Scheduler is the part of the scheduler the API drives.
type Scheduler interface {
	// Trigger asks for a dispatch: a task was submitted.
	Trigger()
	// Paused reports whether dispatch is paused (SIGUSR1).
	Paused() bool
	// Why says why each pending task of ts still waits (package sched).
	Why(ctx context.Context, ts []store.Task) (map[int64]string, error)
}

// Options configure a Server.
type Options struct {
	// Store and Fleet, when both set, are served at once; otherwise the
	// handlers answer 503 until Attach.
	Store  store.Store
	Fleet  *fleet.Fleet
	Tokens *auth.Checker // auth.tokens_file; nil: no authentication (loopback only)
	Logger *slog.Logger
	// Database names the database in 503 answers while it is unavailable;
	// it must not hold a password.
	Database string
	// Samples keeps submitted files; MaxSampleSize bounds one
	// (scheduler.max_sample_size).
	Samples       *sample.Dir
	MaxSampleSize int64
	// DataDir holds the analysis folders, removed with their task.
	DataDir string
	// Metrics is the registry /metrics serves, the scheduler's and the
	// reconcilers' instruments in it; nil makes one of its own.
	Metrics *metrics.Metrics
}

// New returns the API handler.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{tokens: o.Tokens, log: o.Logger, mux: http.NewServeMux(), routes: map[string]methods{}, database: o.Database,
		samples: o.Samples, maxSample: o.MaxSampleSize, dataDir: o.DataDir}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if err := o.Metrics.Register(state{s}); err != nil {
		s.log.Warn("metrics: register the state collector", "err", err)
	}
	s.metricsHandler = o.Metrics.Handler()
	if o.Store != nil && o.Fleet != nil {
		s.Attach(o.Store, o.Fleet, nil)
	}
	s.route(http.MethodGet, "/healthz", s.healthz)
	s.route(http.MethodGet, "/readyz", s.readyz)
	s.route(http.MethodGet, "/metrics", s.metrics)
	s.handle(http.MethodGet, "/apiv2/machines/list/", s.machinesList)
	s.handle(http.MethodGet, "/apiv2/machines/view/{name}/", s.machinesView)
	s.handle(http.MethodGet, "/apiv2/pools/list/", s.poolsList)
	s.handle(http.MethodGet, "/apiv2/fleet/check/", s.fleetCheck)
	s.handle(http.MethodGet, "/apiv2/operations/list/", s.operationsList)
	s.handle(http.MethodPost, "/apiv2/machines/quarantine/{name}/", s.quarantine)
	s.handle(http.MethodPost, "/apiv2/machines/release/{name}/", s.release)
	s.handle(http.MethodPost, "/apiv2/tasks/create/file/", s.tasksCreateFile)
	s.handle(http.MethodPost, "/apiv2/tasks/create/url/", s.tasksCreateURL)
	s.handle(http.MethodGet, "/apiv2/tasks/list/", s.tasksList)
	s.handle(http.MethodGet, "/apiv2/tasks/list/{limit}/", s.tasksList)
	s.handle(http.MethodGet, "/apiv2/tasks/list/{limit}/{offset}/", s.tasksList)
	s.handle(http.MethodGet, "/apiv2/tasks/list/{limit}/{offset}/{window}/", s.tasksList)
	s.handle(http.MethodGet, "/apiv2/tasks/view/{id}/", s.tasksView)
	s.handle(http.MethodGet, "/apiv2/tasks/status/{id}/", s.tasksStatus)
	s.handle(http.MethodGet, "/apiv2/tasks/reschedule/{id}/", s.tasksReschedule)
	s.handle(http.MethodGet, "/apiv2/tasks/delete/{id}/", s.tasksDelete)
	s.handle(http.MethodGet, "/apiv2/cuckoo/status/", s.cuckooStatus)
	s.registerDashboard()
	// Everything else is a 404 in the envelope — never the mux's plain text,
	// nor its redirect of /apiv2 to /apiv2/.
	for _, p := range []string{"/", "/apiv2", "/static"} {
		s.mux.HandleFunc(p, noEndpoint)
	}
	return s
}

func noEndpoint(w http.ResponseWriter, r *http.Request) {
	fail(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", printable(r.Method), printable(r.URL.Path)))
}

// ServeHTTP implements http.Handler. A path with ".", ".." or empty
// segments names no endpoint: it is a 404 saying so, not the mux's
// redirect to the cleaned path.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p := r.URL.Path; r.Method != http.MethodConnect && p != cleanPath(p) {
		fail(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s (a path has no '.', '..' or empty segments: %s)",
			printable(r.Method), printable(p), printable(cleanPath(p))))
		return
	}
	s.mux.ServeHTTP(w, r)
}

// cleanPath is p as the mux cleans it: rooted, without "." or ".."
// segments or repeated slashes, its trailing slash kept.
func cleanPath(p string) string {
	if p == "" {
		return "/"
	}
	if p[0] != '/' {
		p = "/" + p
	}
	np := path.Clean(p)
	if strings.HasSuffix(p, "/") && np != "/" {
		np += "/"
	}
	return np
}

// Attach gives the handlers the opened store and the fleet and scheduler
// built on it (nil: submissions wake nothing). The daemon opens its database
// once, so a second call changes nothing.
func (s *Server) Attach(st store.Store, f *fleet.Fleet, sch Scheduler) {
	if sch == nil {
		sch = idle{}
	}
	s.backend.CompareAndSwap(nil, &backend{store: st, fleet: f, sched: sch})
}

// idle stands for a scheduler where none runs.
type idle struct{}

func (idle) Trigger()     {}
func (idle) Paused() bool { return false }
func (idle) Why(context.Context, []store.Task) (map[int64]string, error) {
	return nil, nil
}

// Unavailable records why the database could not be opened; /readyz and the
// 503 answers name it until Attach.
func (s *Server) Unavailable(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dbErr = err.Error()
}

// unavailable says why there is no backend yet.
func (s *Server) unavailable() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dbErr == "" {
		return "not open yet"
	}
	return s.dbErr
}

// methods are one path's handlers by HTTP method. The mux routes by path
// alone and leaves the method to this table, so that a wrong method gets
// the JSON envelope and an Allow header rather than the mux's plain text.
type methods map[string]http.HandlerFunc

func (ms methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, ok := ms[r.Method]
	if !ok && r.Method == http.MethodHead {
		// net/http drops the body of a HEAD reply.
		h, ok = ms[http.MethodGet]
	}
	if !ok {
		allowed := ms.allowed()
		w.Header().Set("Allow", allowed)
		fail(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s; allowed: %s", r.Method, r.URL.Path, allowed))
		return
	}
	h(w, r)
}

func (ms methods) allowed() string {
	names := slices.Sorted(maps.Keys(ms))
	if ms[http.MethodGet] != nil && ms[http.MethodHead] == nil {
		names = append(names, http.MethodHead)
	}
	return strings.Join(names, ", ")
}

// route serves method on path.
func (s *Server) route(method, path string, h http.HandlerFunc) {
	ms, ok := s.routes[path]
	if !ok {
		ms = methods{}
		s.routes[path] = ms
		s.mux.Handle(path, ms)
	}
	ms[method] = h
}

// handle registers an authenticated route that needs the database; paths
// also answer without the trailing slash, as CAPE's router does.
func (s *Server) handle(method, path string, h func(http.ResponseWriter, *http.Request, *backend)) {
	auth := func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(w, r) {
			return
		}
		if _, err := url.ParseQuery(r.URL.RawQuery); err != nil {
			// r.URL.Query() would drop the pair silently.
			fail(w, http.StatusBadRequest, fmt.Sprintf("query: malformed: %s", printable(err.Error())))
			return
		}
		b := s.backend.Load()
		if b == nil {
			fail(w, http.StatusServiceUnavailable, s.unavailableMessage())
			return
		}
		// Every request is bounded: an exhausted database pool must not hold
		// clients forever (fleet/check/ sets its own, longer, bound).
		ctx, cancel := context.WithTimeout(r.Context(), 90*time.Second)
		defer cancel()
		h(w, r.WithContext(ctx), b)
	}
	if trimmed := strings.TrimSuffix(path, "/"); trimmed != path {
		// "{$}": a pattern ending in a slash would match any path below it.
		s.route(method, path+"{$}", auth)
		s.route(method, trimmed, auth)
		return
	}
	s.route(method, path, auth)
}

// unavailableMessage is the 503 answer while there is no backend.
func (s *Server) unavailableMessage() string {
	if s.database == "" {
		return "database unavailable: " + s.unavailable()
	}
	return fmt.Sprintf("database unavailable (%s): %s", s.database, s.unavailable())
}

func (s *Server) internal(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error("api", "path", r.URL.Path, "err", err)
	fail(w, http.StatusServiceUnavailable, fmt.Sprintf("%s: %v", r.URL.Path, err))
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	write(w, http.StatusOK, obj{{"status", "ok"}, {"version", Version}})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	b := s.backend.Load()
	if b == nil {
		s.databaseDown(w, s.unavailable())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if _, err := b.store.ListPools(ctx); err != nil {
		s.databaseDown(w, err.Error())
		return
	}
	select {
	case <-b.fleet.Ready():
		write(w, http.StatusOK, obj{{"status", "ready"}})
	default:
		write(w, http.StatusServiceUnavailable, obj{{"status", "first reconcile not finished"}})
	}
}

func (s *Server) databaseDown(w http.ResponseWriter, why string) {
	write(w, http.StatusServiceUnavailable, obj{{"status", "database unavailable"}, {"database", s.database}, {"error", why}})
}

const timeFormat = "2006-01-02 15:04:05"

func capeTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(timeFormat)
	return &s
}

// Machine is a machine in CAPE's shape plus pool, instance_id and state.
type Machine struct {
	ID               int64    `json:"id"`
	Name             string   `json:"name"`
	Label            string   `json:"label"`
	Arch             string   `json:"arch"`
	IP               string   `json:"ip"`
	Platform         string   `json:"platform"`
	Interface        *string  `json:"interface"`
	Snapshot         *string  `json:"snapshot"`
	Locked           bool     `json:"locked"`
	LockedChangedOn  *string  `json:"locked_changed_on"`
	Status           string   `json:"status"`
	StatusChangedOn  *string  `json:"status_changed_on"`
	ResultServerIP   string   `json:"resultserver_ip"`
	ResultServerPort string   `json:"resultserver_port"`
	Reserved         bool     `json:"reserved"`
	Tags             []string `json:"tags"`
	Pool             string   `json:"pool"`
	InstanceID       string   `json:"instance_id"`
	State            string   `json:"state"`
	QuarantineReason *string  `json:"quarantine_reason"`
	// Reason, in machines/view/ only: what a machine that is not ready
	// waits on, and since when.
	Reason *string `json:"reason,omitempty"`
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// MachineJSON converts a machine row to its API shape.
func MachineJSON(m store.Machine) Machine {
	tags := m.Tags
	if tags == nil {
		tags = []string{}
	}
	port := ""
	if m.ResultServerPort != 0 {
		port = fmt.Sprint(m.ResultServerPort)
	}
	return Machine{
		ID: m.ID, Name: m.Name, Label: m.Label, Arch: m.Arch, IP: m.IP, Platform: m.Platform,
		Interface: nullable(m.Interface), Snapshot: nullable(m.Snapshot),
		Locked: m.Locked(), LockedChangedOn: capeTime(m.LockedChangedOn),
		Status: string(m.State), StatusChangedOn: capeTime(m.StateChangedOn),
		ResultServerIP: m.ResultServerIP, ResultServerPort: port, Reserved: m.Reserved, Tags: tags,
		Pool: m.Pool, InstanceID: m.InstanceID, State: string(m.State),
		QuarantineReason: nullable(m.QuarantineReason),
	}
}

func (s *Server) machinesList(w http.ResponseWriter, r *http.Request, b *backend) {
	f := store.MachineFilter{Pool: r.URL.Query().Get("pool")}
	if !s.knownPool(w, r, b, f.Pool) {
		return
	}
	if st := r.URL.Query().Get("state"); st != "" {
		if !validState(st) {
			fail(w, http.StatusBadRequest, fmt.Sprintf("state: %q is not a machine state", st))
			return
		}
		f.States = []store.MachineState{store.MachineState(st)}
	}
	// As CAPE's: reserved machines are left out, unless asked for.
	withReserved := false
	if v := r.URL.Query().Get("reserved"); v != "" {
		var err error
		if withReserved, err = strconv.ParseBool(v); err != nil {
			fail(w, http.StatusBadRequest, fmt.Sprintf("reserved: %q is not true or false", v))
			return
		}
	}
	ms, err := b.store.ListMachines(r.Context(), f)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	out := make([]Machine, 0, len(ms))
	for _, m := range ms {
		if !m.Reserved || withReserved || f.Pool != "" {
			out = append(out, MachineJSON(m))
		}
	}
	replyMachines(w, out)
}

// replyMachines is CAPE's envelope of the machine routes: data first.
func replyMachines(w http.ResponseWriter, data any) {
	write(w, http.StatusOK, obj{{"data", data}, {"error", []string{}}})
}

// knownPool answers 404 naming the pool when a filter names one that does not
// exist, rather than an empty list that looks like an empty pool.
func (s *Server) knownPool(w http.ResponseWriter, r *http.Request, b *backend, pool string) bool {
	if pool == "" {
		return true
	}
	_, err := b.store.GetPool(r.Context(), pool)
	switch {
	case errors.Is(err, store.ErrNotFound):
		fail(w, http.StatusNotFound, fmt.Sprintf("pool: %q is not a pool", pool))
		return false
	case err != nil:
		s.internal(w, r, err)
		return false
	}
	return true
}

func validState(s string) bool {
	for _, st := range store.MachineStates {
		if string(st) == s {
			return true
		}
	}
	return false
}

func (s *Server) machinesView(w http.ResponseWriter, r *http.Request, b *backend) {
	m, ok := s.machine(w, r, b)
	if !ok {
		return
	}
	out := MachineJSON(m)
	if m.State != store.Ready {
		why, err := s.machineWhy(r.Context(), b, m)
		if err != nil {
			s.internal(w, r, err)
			return
		}
		out.Reason = nullable(why)
	}
	replyMachines(w, out)
}

// machineWhy says what m waits on: from the operations in flight, the
// cause of its last state change and what this node's fleet knows live.
func (s *Server) machineWhy(ctx context.Context, b *backend, m store.Machine) (string, error) {
	ops, err := b.store.ListOperations(ctx, store.OperationFilter{Pool: m.Pool, Unfinished: true})
	if err != nil {
		return "", err
	}
	evs, err := b.store.MachineEvents(ctx, m.Label)
	if err != nil {
		return "", err
	}
	cause := ""
	if len(evs) > 0 {
		cause = evs[len(evs)-1].Cause
	}
	if b.fleet == nil {
		return fleet.Explain(m, ops, fleet.Live{LastCause: cause}, time.Now()), nil
	}
	return b.fleet.Why(m, ops, cause), nil
}

// machine reads the machine the path names; on failure it has answered (404
// naming it, or the error) and ok is false.
func (s *Server) machine(w http.ResponseWriter, r *http.Request, b *backend) (m store.Machine, ok bool) {
	name := r.PathValue("name")
	m, err := b.store.GetMachine(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		fail(w, http.StatusNotFound, fmt.Sprintf("machine %q not found", name))
		return m, false
	}
	if err != nil {
		s.internal(w, r, err)
		return m, false
	}
	return m, true
}

func (s *Server) poolsList(w http.ResponseWriter, r *http.Request, b *backend) {
	ps, err := b.fleet.Status(r.Context())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	reply(w, ps)
}

func (s *Server) fleetCheck(w http.ResponseWriter, r *http.Request, b *backend) {
	ctx, cancel := context.WithTimeout(r.Context(), 60*time.Second)
	defer cancel()
	rep, err := b.fleet.Check(ctx)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	reply(w, rep)
}

// Operation is a journal entry as operations/list/ shows it.
type Operation struct {
	ID          int64    `json:"id"`
	Pool        string   `json:"pool"`
	Kind        string   `json:"kind"`
	InstanceIDs []string `json:"instance_ids"`
	Capacity    int      `json:"capacity,omitempty"`
	State       string   `json:"state"`
	Resumable   bool     `json:"resumable"`
	Attempt     int      `json:"attempt"`
	Deadline    *string  `json:"deadline"`
	Error       *string  `json:"error"`
	CreatedAt   *string  `json:"created_at"`
	UpdatedAt   *string  `json:"updated_at"`
}

func (s *Server) operationsList(w http.ResponseWriter, r *http.Request, b *backend) {
	f := store.OperationFilter{Pool: r.URL.Query().Get("pool"), Limit: 100}
	if v := r.URL.Query().Get("unfinished"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			fail(w, http.StatusBadRequest, fmt.Sprintf("unfinished: %q is not true or false", v))
			return
		}
		f.Unfinished = b
	}
	if !s.knownPool(w, r, b, f.Pool) {
		return
	}
	ops, err := b.store.ListOperations(r.Context(), f)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	out := make([]Operation, 0, len(ops))
	for _, op := range ops {
		ids := op.InstanceIDs
		if ids == nil {
			ids = []string{}
		}
		out = append(out, Operation{ID: op.ID, Pool: op.Pool, Kind: string(op.Kind), InstanceIDs: ids, Capacity: op.Capacity,
			State: string(op.State), Resumable: op.ResumeToken != "", Attempt: op.Attempt, Deadline: capeTime(op.Deadline),
			Error: nullable(op.Error), CreatedAt: capeTime(op.CreatedAt), UpdatedAt: capeTime(op.UpdatedAt)})
	}
	reply(w, out)
}
