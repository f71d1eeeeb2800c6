//go:build linux

package fleet_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider/azure"
	"github.com/sandfleet/sandfleet/internal/store"
)

// The Remote benchmarks run the emulator as operators do, in its own process
// (`sandfleet emulator`), so that what this process spends is the daemon's
// side alone: the reconciler, the Azure driver and the database. Each reports
// this process's CPU time (user + system, from getrusage) per pass, and the
// ARM requests a pass made.

// BenchmarkRemoteNoop1000: a pass over one 1,000-instance pool in which
// nothing changed.
func BenchmarkRemoteNoop1000(b *testing.B) { benchRemotePasses(b, 1, 1000) }

// BenchmarkRemoteRound10000: a pass over 50 pools of 200 instances each in
// which nothing changed.
func BenchmarkRemoteRound10000(b *testing.B) { benchRemotePasses(b, 50, 200) }

// BenchmarkRemoteStartup10000: a reconciler starting on an empty database and
// an empty resource group, until all 10,000 machines of 50 pools are usable
// (50 scale sets created, every VM registered, every guest agent answered).
func BenchmarkRemoteStartup10000(b *testing.B) {
	var cpu time.Duration
	for range b.N {
		b.StopTimer()
		emu := startRemote(b)
		st := &readyCounter{Store: benchStore(b)}
		r := emu.reconciler(b, st, remotePools(50, 200))
		start := cpuTime()
		b.StartTimer()
		stop := run(r)
		st.wait(b, 10000)
		b.StopTimer()
		cpu += cpuTime() - start
		stop()
		emu.stop() // 10,000 guest agents: not one more iteration's
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}

// benchRemotePasses measures no-op passes over sets pools of size machines,
// all ready.
func benchRemotePasses(b *testing.B, sets, size int) {
	ctx := context.Background()
	emu := startRemote(b)
	st := &readyCounter{Store: benchStore(b)}
	r := emu.reconciler(b, st, remotePools(sets, size))
	stop := run(r)
	st.wait(b, sets*size)
	stop()
	if err := r.Pass(ctx); err != nil { // settle
		b.Fatal(err)
	}
	emu.clearRequests(b)
	passes := 0
	cpu := cpuTime()
	for b.Loop() {
		if err := r.Pass(ctx); err != nil {
			b.Fatal(err)
		}
		passes++
	}
	spent := cpuTime() - cpu
	b.ReportMetric(float64(spent.Milliseconds())/float64(passes), "cpu-ms/pass")
	var arm, nics int
	for _, q := range emu.requests(b) {
		arm++
		if strings.HasSuffix(strings.ToLower(q.Path), "/networkinterfaces") {
			nics++
		}
	}
	b.ReportMetric(float64(arm)/float64(passes), "arm-requests/pass")
	b.ReportMetric(float64(nics)/float64(passes), "nic-requests/pass")
	if countReady(b, st) != sets*size {
		b.Fatal("a no-op pass changed machines")
	}
}

// remotePools are sets pools of size machines each, named pool00, pool01, ….
func remotePools(sets, size int) []config.Pool {
	pools := make([]config.Pool, sets)
	for i := range pools {
		pools[i] = config.Pool{Name: fmt.Sprintf("pool%02d", i), Provider: "azure", Platform: "windows", Arch: "x64",
			Tags: []string{"win10"}, Image: "win10-gallery-image", InitialSize: size, MaxSize: size}
	}
	return pools
}

// readyCounter counts the machines moved to ready, so that a benchmark waits
// for them without reading the machine table: reading 10,000 rows every few
// milliseconds would cost more than what is measured.
type readyCounter struct {
	store.Store
	n atomic.Int64
}

func (c *readyCounter) TransitionMachines(ctx context.Context, ts []store.Transition) ([]*store.Machine, error) {
	res, err := c.Store.TransitionMachines(ctx, ts)
	for i, m := range res {
		if m != nil && ts[i].To == store.Ready && ts[i].From != store.Ready {
			c.n.Add(1)
		}
	}
	return res, err
}

// wait waits for n machines moved to ready, then checks that n are.
func (c *readyCounter) wait(b *testing.B, n int) {
	b.Helper()
	poll.Until(b, 10*time.Minute, fmt.Sprintf("%d machines ready", n), func() bool { return c.n.Load() >= int64(n) })
	if got := countReady(b, c.Store); got != n {
		b.Fatalf("%d machines ready, want %d", got, n)
	}
}

// cpuTime is the CPU time this process has used, in user and system mode.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// remote is a `sandfleet emulator` process.
type remote struct {
	url    string
	roots  *x509.CertPool
	client *http.Client
	cmd    *exec.Cmd
}

// startRemote builds the binary and starts its emulator on a free port, with
// VM addresses from a /16 of its own (10,000 VMs outgrow the default /19).
func startRemote(b *testing.B) *remote {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "sandfleet")
	build := exec.Command("go", "build", "-o", bin, "github.com/sandfleet/sandfleet/cmd/sandfleet")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build sandfleet: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	state := filepath.Join(dir, "emulator")
	block := fmt.Sprintf("127.%d.0.0/16", 16+rand.IntN(235))
	// A /16 subnet and 100,000 cores: the default /22 holds 1,019 VMs and
	// the default quota 2,500 of two vCPUs, and the emulator refuses more,
	// as Azure does (SubnetIsFull, OperationNotAllowed).
	cmd := exec.Command(bin, "emulator", "--listen", addr, "--state", state, "--ip-block", block, "--subnet-prefix", "10.0.0.0/16",
		"--faults", `{"quota": {"cores": 100000, "low_priority_cores": 100000}}`)
	if testing.Verbose() {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	// It goes with this process, however this process ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	e := &remote{url: "https://" + addr, cmd: cmd}
	b.Cleanup(e.stop)
	poll.Until(b, 30*time.Second, "emulator up", func() bool {
		pem, err := os.ReadFile(filepath.Join(state, "ca.pem"))
		if err != nil {
			return false
		}
		e.roots = x509.NewCertPool()
		if !e.roots.AppendCertsFromPEM(pem) {
			return false
		}
		e.client = &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.roots}}}
		resp, err := e.client.Get(e.url + "/_emulator/faults")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return e
}

// stop kills the emulator and waits for it to be gone; again is a no-op.
func (e *remote) stop() {
	if e.cmd.ProcessState != nil {
		return
	}
	_ = e.cmd.Process.Kill()
	_ = e.cmd.Wait()
	if e.client != nil {
		e.client.CloseIdleConnections()
	}
}

// reconciler builds a reconciler of pools as the daemon does on the emulator.
func (e *remote) reconciler(b *testing.B, st store.Store, pools []config.Pool) *fleet.Reconciler {
	b.Helper()
	ac := config.Default().Azure
	ac.SubscriptionID = "11111111-0000-4000-8000-000000000001"
	ac.Endpoint = e.url
	ac.Credential = "emulator"
	drv, err := azure.New(ac, azure.Options{CertPool: e.roots, PollInterval: 200 * time.Millisecond, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { drv.Close() })
	return fleet.New(fleet.Options{Store: st, Provider: drv, Pools: pools,
		Interval: 500 * time.Millisecond, OpTimeout: time.Minute, WaitForAgent: true,
		Agent: guest.NewClient(azemu.DefaultAgentPort, 2*time.Second), AdoptExisting: true,
		Orphans: true, Logger: testLogger()})
}

func (e *remote) requests(b *testing.B) []azemu.RequestRecord {
	b.Helper()
	resp, err := e.client.Get(e.url + "/_emulator/requests")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var rs []azemu.RequestRecord
	if err := json.NewDecoder(resp.Body).Decode(&rs); err != nil {
		b.Fatal(err)
	}
	return rs
}

func (e *remote) clearRequests(b *testing.B) {
	b.Helper()
	req, _ := http.NewRequest(http.MethodDelete, e.url+"/_emulator/requests", nil)
	resp, err := e.client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
}
