// Package guesttest serves stand-ins for the two ends of CAPE's guest
// protocol in tests: a guest agent (the agent of a static machine, say,
// where no emulator runs one) and a result server that records what
// analyzers send it.
package guesttest

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// Agent answers GET / as CAPE's agent.py does, on 127.0.0.1, until the test
// ends, and returns its IP and port.
func Agent(tb testing.TB) (ip string, port int) {
	tb.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"message": "CAPE Agent!", "version": "0.22", "features": [], "status_code": 200}`))
	}))
	tb.Cleanup(srv.Close)
	host, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
	port, _ = strconv.Atoi(p)
	return host, port
}
