package azemu

import (
	"encoding/json"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// agent is the CAPE guest agent (agent.py v0.22 protocol) of one emulated VM,
// listening on the VM's private IP, which is a loopback address of this host.
//
// An agent lives while its VM is provisioned and running and its admin state
// is not "down"; a reimage or restart stops it and starts a fresh one. In the
// "hang" state it accepts connections and reads requests but never answers.
type agent struct {
	addr string
	log  *slog.Logger
	srv  *http.Server
	mux  *http.ServeMux

	mu     sync.Mutex
	hang   bool
	unhang chan struct{} // closed to release hung requests
	status string        // analysis status: init, running, complete, failed, exception
	descr  *string
}

// agentVersion and agentFeatures are what CAPE agent v0.22 reports on GET /.
const agentVersion = "0.22"

var agentFeatures = []string{"execpy", "execute", "pinning", "logs", "largefile", "unicodepath"}

// startAgent binds addr and serves the agent protocol on it.
func startAgent(addr string, hang bool, logger *slog.Logger) (*agent, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	a := &agent{
		addr:   addr,
		log:    logger.With("agent", addr),
		hang:   hang,
		unhang: make(chan struct{}),
		status: "init",
	}
	a.mux = http.NewServeMux()
	a.routes()
	a.srv = &http.Server{
		Handler:           a,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(discardWriter{}, "", 0),
	}
	go func() { _ = a.srv.Serve(ln) }()
	return a, nil
}

func (a *agent) routes() {
	a.mux.HandleFunc("GET /{$}", a.handleIndex)
	a.mux.HandleFunc("GET /status", a.handleGetStatus)
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		agentError(w, http.StatusNotFound, "Not found")
	})
}

// ServeHTTP holds requests while the agent hangs.
func (a *agent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	hang, unhang := a.hang, a.unhang
	a.mu.Unlock()
	if hang {
		select {
		case <-unhang:
		case <-r.Context().Done():
		}
		// Whatever was asked of a hung agent gets no answer: drop the connection.
		panic(http.ErrAbortHandler)
	}
	a.mux.ServeHTTP(w, r)
}

// setHang switches between answering and hanging.
func (a *agent) setHang(hang bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hang == hang {
		return
	}
	a.hang = hang
	if !hang {
		close(a.unhang)
		a.unhang = make(chan struct{})
	}
}

func (a *agent) hanging() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hang
}

// stop closes the listener and every connection.
func (a *agent) stop() {
	a.setHang(false)
	_ = a.srv.Close()
}

func (a *agent) handleIndex(w http.ResponseWriter, r *http.Request) {
	agentJSON(w, http.StatusOK, map[string]any{
		"message":       "CAPE Agent!",
		"version":       agentVersion,
		"features":      agentFeatures,
		"is_user_admin": true,
	})
}

func (a *agent) handleGetStatus(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	status, descr := a.status, a.descr
	a.mu.Unlock()
	agentJSON(w, http.StatusOK, map[string]any{
		"message":     "Analysis status",
		"status":      status,
		"description": descr,
	})
}

// agentJSON answers as agent.py does: the body carries status_code too.
func agentJSON(w http.ResponseWriter, code int, body map[string]any) {
	body["status_code"] = code
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// agentError answers with agent.py's error shape.
func agentError(w http.ResponseWriter, code int, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"message": message, "error_code": code})
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
