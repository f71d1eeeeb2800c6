package guest

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// agentAt serves h on 127.0.0.1 at a free port and returns a client for it.
func agentAt(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	return NewClient(p, 500*time.Millisecond)
}

func TestHello(t *testing.T) {
	c := agentAt(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"message": "CAPE Agent!", "version": "0.22", "features": ["execpy", "pinning"], "is_user_admin": true, "status_code": 200}`))
	})
	info, err := c.Hello(context.Background(), "127.0.0.1")
	if err != nil || info.Version != "0.22" || len(info.Features) != 2 || !info.IsUserAdmin {
		t.Fatalf("Hello = %+v, %v", info, err)
	}
}

func TestNotAnAgent(t *testing.T) {
	for name, h := range map[string]http.HandlerFunc{
		"error status": func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusInternalServerError) },
		"not JSON":     func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) },
		"hangs": func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		},
	} {
		c := agentAt(t, h)
		start := time.Now()
		if c.Ping(context.Background(), "127.0.0.1") == nil {
			t.Errorf("%s: counted alive", name)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: took %s; the client timeout is 500ms", name, d)
		}
	}
}

func TestNobodyListening(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	p, _ := strconv.Atoi(port)
	if NewClient(p, 500*time.Millisecond).Ping(context.Background(), "127.0.0.1") == nil {
		t.Fatal("a closed port counted alive")
	}
}
