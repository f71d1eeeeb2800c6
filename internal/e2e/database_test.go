package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/guest/guesttest"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
)

// serve started while its PostgreSQL is down keeps running: the API answers
// 503 and /readyz names the database (its password masked) while serve
// retries with backoff; once the database answers, migrations run, the
// reconcilers start and /readyz turns 200, in the same process.
func TestServeWaitsForDatabase(t *testing.T) {
	real, err := url.Parse(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	dbName := strings.TrimPrefix(real.Path, "/")
	// Nothing listens on addr until the proxy below does. Trust
	// authentication ignores the password; it is there to be kept secret.
	addr := freePort(t)
	down := *real
	down.Host = addr
	down.User = url.UserPassword(real.User.Username(), "hunter2")

	dir := t.TempDir()
	listen := freePort(t)
	agentIP, agentPort := guesttest.Agent(t)
	conf := filepath.Join(dir, "sandfleet.yaml")
	yaml := fmt.Sprintf(`listen: %s
data_dir: %s
database: %s
fleet: { reconcile_interval: 1s }
guest: { agent_port: %d }
pools:
  - name: lab
    provider: static
    platform: windows
    machines:
      - { label: lab1, ip: %s, arch: x64 }
`, listen, dir, down.String(), agentPort, agentIP)
	if err := os.WriteFile(conf, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &daemon{api: "http://" + listen, conf: conf}
	d.proc = start(t, "serve", "--config", conf)
	alive := func() {
		select {
		case <-d.done:
			t.Fatalf("serve exited:\n%s", tail(d.output(), 20))
		default:
		}
	}

	var ready map[string]string
	readyz := func() int {
		resp, err := http.Get(d.api + "/readyz")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		ready = nil
		json.NewDecoder(resp.Body).Decode(&ready)
		return resp.StatusCode
	}
	poll.Until(t, 30*time.Second, "/readyz 503 naming the database and a failed attempt", func() bool {
		alive()
		return readyz() == 503 && ready["status"] == "database unavailable" && ready["error"] != "not open yet"
	})
	if want := "127.0.0.1:" + strings.Split(addr, ":")[1] + "/" + dbName; !strings.Contains(ready["database"], want) ||
		!strings.Contains(ready["database"], "xxxxx") || ready["error"] == "" {
		t.Errorf("/readyz while the database is down: %v, want the database %s (password masked) and the error", ready, want)
	}
	poll.Until(t, 10*time.Second, "a second attempt, after backing off", func() bool {
		alive()
		return strings.Contains(d.output(), "retry_in=2s")
	})
	out := d.output()
	if !strings.Contains(out, `level=WARN msg="database unavailable; retrying"`) || !strings.Contains(out, "retry_in=1s") {
		t.Errorf("attempts not logged at warn with their backoff:\n%s", tail(out, 20))
	}
	resp, err := http.Get(d.api + "/apiv2/machines/list/")
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Error      capeError `json:"error"`
		ErrorValue string    `json:"error_value"`
	}
	json.NewDecoder(resp.Body).Decode(&env)
	resp.Body.Close()
	if resp.StatusCode != 503 || !bool(env.Error) || !strings.Contains(env.ErrorValue, "database unavailable") {
		t.Errorf("machines/list while the database is down: %d %+v", resp.StatusCode, env)
	}
	alive()

	proxyTCP(t, addr, real.Host)
	poll.Until(t, 60*time.Second, "/readyz 200 once the database answers", func() bool {
		alive()
		return readyz() == 200
	})
	d.waitReady(t, 1, 10*time.Second)
	alive()
	out = d.output()
	if n := strings.Count(out, "sandfleet serving"); n != 1 {
		t.Errorf("serve started %d times, want once", n)
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("the database password is in the log:\n%s", out)
	}
}

// proxyTCP forwards every connection made to addr to target, until the test
// ends.
func proxyTCP(t *testing.T, addr, target string) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	var (
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
		wg     sync.WaitGroup
	)
	// keep records c to be closed at the end; false if the end has come.
	keep := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			c.Close()
			return false
		}
		conns = append(conns, c)
		return true
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			if !keep(c) || !keep(up) {
				c.Close()
				up.Close()
				continue
			}
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				io.Copy(dst, src)
				// One side gone: end the other too.
				dst.Close()
				src.Close()
			}
			wg.Add(2)
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}
