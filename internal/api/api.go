// Package api serves sandfleet's HTTP API: CAPE's apiv2 paths and JSON shapes
// (reference cape.md §5), sandfleet's additions in the same envelope, and the
// health endpoints.
package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Version is the binary's version, set by cmd/sandfleet.
var Version = "dev"

// Server is the HTTP API.
type Server struct {
	store  store.Store
	fleet  *fleet.Fleet
	tokens map[string]bool // nil: no auth (loopback only, enforced by config)
	log    *slog.Logger
	mux    *http.ServeMux
}

// Options configure a Server.
type Options struct {
	Store  store.Store
	Fleet  *fleet.Fleet
	Tokens map[string]bool
	Logger *slog.Logger
}

// New returns the API handler.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{store: o.Store, fleet: o.Fleet, tokens: o.Tokens, log: o.Logger, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /metrics", s.metrics)
	s.handle("GET /apiv2/machines/list/", s.machinesList)
	s.handle("GET /apiv2/machines/view/{name}/", s.machinesView)
	s.handle("GET /apiv2/pools/list/", s.poolsList)
	s.handle("GET /apiv2/fleet/check/", s.fleetCheck)
	s.handle("GET /apiv2/operations/list/", s.operationsList)
	s.handle("POST /apiv2/machines/quarantine/{name}/", s.quarantine)
	s.handle("POST /apiv2/machines/release/{name}/", s.release)
	s.mux.HandleFunc("/apiv2/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// handle registers an authenticated route; paths also answer without the
// trailing slash, as CAPE's router does.
func (s *Server) handle(pattern string, h http.HandlerFunc) {
	auth := func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			fail(w, http.StatusUnauthorized, "authentication required: send Authorization: Token <key>")
			return
		}
		// Every request is bounded: an exhausted database pool must not hold
		// clients forever (fleet/check/ sets its own, longer, bound).
		ctx, cancel := context.WithTimeout(r.Context(), 90*time.Second)
		defer cancel()
		h(w, r.WithContext(ctx))
	}
	s.mux.HandleFunc(pattern, auth)
	if trimmed := strings.TrimSuffix(pattern, "/"); trimmed != pattern {
		s.mux.HandleFunc(trimmed, auth)
	}
}

func (s *Server) authorized(r *http.Request) bool {
	if s.tokens == nil {
		return true
	}
	h := r.Header.Get("Authorization")
	key, ok := strings.CutPrefix(h, "Token ")
	return ok && s.tokens[strings.TrimSpace(key)]
}

// LoadTokens reads one token a line; blank lines and # comments are skipped.
func LoadTokens(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth.tokens_file: %w", err)
	}
	defer f.Close()
	tokens := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		tokens[line] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth.tokens_file: %w", err)
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("auth.tokens_file %s: no tokens", path)
	}
	return tokens, nil
}

type envelope struct {
	Error      bool     `json:"error"`
	Data       any      `json:"data,omitempty"`
	ErrorValue string   `json:"error_value,omitempty"`
	Errors     []string `json:"errors,omitempty"`
}

func reply(w http.ResponseWriter, data any) {
	write(w, http.StatusOK, envelope{Data: data})
}

func fail(w http.ResponseWriter, code int, msg string) {
	write(w, code, envelope{Error: true, ErrorValue: msg})
}

func write(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (s *Server) internal(w http.ResponseWriter, r *http.Request, err error) {
	s.log.Error("api", "path", r.URL.Path, "err", err)
	fail(w, http.StatusServiceUnavailable, fmt.Sprintf("%s: %v", r.URL.Path, err))
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	write(w, http.StatusOK, map[string]string{"status": "ok", "version": Version})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if _, err := s.store.ListPools(ctx); err != nil {
		write(w, http.StatusServiceUnavailable, map[string]string{"status": "database unavailable", "error": err.Error()})
		return
	}
	select {
	case <-s.fleet.Ready():
		write(w, http.StatusOK, map[string]string{"status": "ready"})
	default:
		write(w, http.StatusServiceUnavailable, map[string]string{"status": "first reconcile not finished"})
	}
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

func (s *Server) machinesList(w http.ResponseWriter, r *http.Request) {
	f := store.MachineFilter{Pool: r.URL.Query().Get("pool")}
	if !s.knownPool(w, r, f.Pool) {
		return
	}
	if st := r.URL.Query().Get("state"); st != "" {
		if !validState(st) {
			fail(w, http.StatusBadRequest, fmt.Sprintf("state: %q is not a machine state", st))
			return
		}
		f.States = []store.MachineState{store.MachineState(st)}
	}
	ms, err := s.store.ListMachines(r.Context(), f)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	out := make([]Machine, 0, len(ms))
	for _, m := range ms {
		out = append(out, MachineJSON(m))
	}
	reply(w, out)
}

// knownPool answers 404 naming the pool when a filter names one that does not
// exist, rather than an empty list that looks like an empty pool.
func (s *Server) knownPool(w http.ResponseWriter, r *http.Request, pool string) bool {
	if pool == "" {
		return true
	}
	_, err := s.store.GetPool(r.Context(), pool)
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

func (s *Server) machinesView(w http.ResponseWriter, r *http.Request) {
	if m, ok := s.machine(w, r); ok {
		reply(w, MachineJSON(m))
	}
}

// machine reads the machine the path names; on failure it has answered (404
// naming it, or the error) and ok is false.
func (s *Server) machine(w http.ResponseWriter, r *http.Request) (m store.Machine, ok bool) {
	name := r.PathValue("name")
	m, err := s.store.GetMachine(r.Context(), name)
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

func (s *Server) poolsList(w http.ResponseWriter, r *http.Request) {
	ps, err := s.fleet.Status(r.Context())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	reply(w, ps)
}

func (s *Server) fleetCheck(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 60*time.Second)
	defer cancel()
	rep, err := s.fleet.Check(ctx)
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

func (s *Server) operationsList(w http.ResponseWriter, r *http.Request) {
	f := store.OperationFilter{Pool: r.URL.Query().Get("pool"), Limit: 100}
	if v := r.URL.Query().Get("unfinished"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			fail(w, http.StatusBadRequest, fmt.Sprintf("unfinished: %q is not true or false", v))
			return
		}
		f.Unfinished = b
	}
	if !s.knownPool(w, r, f.Pool) {
		return
	}
	ops, err := s.store.ListOperations(r.Context(), f)
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
