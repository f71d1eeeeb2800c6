package sched_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/resultserver"
	"github.com/sandfleet/sandfleet/internal/sched"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
)

// The scheduler's own speed, apart from guests and clouds: the guest here
// holds every analysis at its first call until the benchmark ends, so what
// is timed is the queue, the match and the lease.

// heldGuest answers the check before use and keeps every analysis waiting
// in its start until the benchmark ends.
type heldGuest struct{ release chan struct{} }

func (g heldGuest) Ping(context.Context, string) error { return nil }
func (g heldGuest) Start(ctx context.Context, _ string, _ guest.Analysis) error {
	select {
	case <-g.release:
	case <-ctx.Done():
	}
	return ctx.Err()
}
func (g heldGuest) Wait(context.Context, string) error { return nil }

// noResults stands in for the result server, which the held analyses never reach.
type noResults struct{}

func (noResults) RegisterMachine(string, int, int64, string) error { return nil }
func (noResults) UnregisterMachine(string, int, int64) resultserver.Stats {
	return resultserver.Stats{}
}

func benchStores(b *testing.B, run func(b *testing.B, url string)) {
	b.Run("sqlite", func(b *testing.B) { run(b, "sqlite://"+filepath.Join(b.TempDir(), "bench.db")) })
	b.Run("postgres", func(b *testing.B) { run(b, pgtest.NewDatabase(b)) })
}

// idleMachines opens a store holding n ready machines of a static pool.
func idleMachines(b *testing.B, url string, n int) (store.Store, []config.Pool) {
	b.Helper()
	st, err := open.Open(context.Background(), url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	p := config.Pool{Name: "lab", Provider: "static", Platform: "windows", Arch: "x64"}
	ms := make([]store.Machine, n)
	for i := range ms {
		label := fmt.Sprintf("lab%04d", i)
		p.Machines = append(p.Machines, config.StaticMachine{Label: label, IP: "127.0.0.1"})
		ms[i] = store.Machine{Label: label, Pool: "lab", InstanceID: label, Arch: "x64", Platform: "windows",
			IP: "127.0.0.1", State: store.Ready}
	}
	if _, err := st.InsertMachines(context.Background(), ms, "bench"); err != nil {
		b.Fatal(err)
	}
	return st, []config.Pool{p}
}

func startHeld(b *testing.B, st store.Store, pools []config.Pool) *sched.Scheduler {
	b.Helper()
	g := heldGuest{release: make(chan struct{})}
	def := config.Default()
	timeouts := def.Timeouts
	timeouts.Critical = time.Hour // the hold must outlast the benchmark
	s := sched.New(sched.Options{Store: st, Node: "bench", Pools: pools, Scheduler: def.Scheduler, Timeouts: timeouts,
		LeaseTTL: time.Minute, DataDir: b.TempDir(), Guest: g, Results: noResults{}, Logger: logger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	b.Cleanup(func() {
		close(g.release)
		cancel()
		<-done
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		s.Drain(dctx)
		dcancel()
	})
	return s
}

// BenchmarkSubmitToLease: one task at a time into a queue with idle
// machines, timed from before its commit to its lease (the task's
// started_on), and reported as p50 and p99.
func BenchmarkSubmitToLease(b *testing.B) {
	benchStores(b, func(b *testing.B, url string) {
		st, pools := idleMachines(b, url, max(b.N, 1))
		s := startHeld(b, st, pools)
		ctx := context.Background()
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			ts, err := st.CreateTasks(ctx, []store.Task{{Target: fmt.Sprint("t", i), Category: "url", Priority: 1}}, "bench")
			if err != nil {
				b.Fatal(err)
			}
			s.Trigger()
			var got store.Task
			poll.Until(b, time.Minute, "leased", func() bool {
				got, err = st.GetTask(ctx, ts[0].ID)
				return err == nil && got.Status == store.TaskRunning
			})
			lat = append(lat, got.StartedOn.Sub(t0))
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	})
}

// BenchmarkLeases1000: a thousand tasks queued at once onto a thousand idle
// static machines; leases per second until every task runs.
func BenchmarkLeases1000(b *testing.B) {
	const n = 1000
	benchStores(b, func(b *testing.B, url string) {
		var total time.Duration
		for range b.N {
			b.StopTimer()
			st, pools := idleMachines(b, url+"", n)
			ts := make([]store.Task, n)
			for i := range ts {
				ts[i] = store.Task{Target: fmt.Sprint("t", i), Category: "url", Priority: 1}
			}
			if _, err := st.CreateTasks(context.Background(), ts, "bench"); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			t0 := time.Now()
			startHeld(b, st, pools)
			poll.Until(b, 5*time.Minute, "every task leased", func() bool {
				c, err := st.CountTasks(context.Background())
				return err == nil && c[store.TaskRunning] == n
			})
			total += time.Since(t0)
			b.StopTimer()
			url = freshURL(b, url)
		}
		b.ReportMetric(float64(n*b.N)/total.Seconds(), "leases/s")
	})
}

// freshURL gives the next round of a benchmark an empty database of the
// same kind.
func freshURL(b *testing.B, url string) string {
	if len(url) > 9 && url[:9] == "sqlite://" {
		return "sqlite://" + filepath.Join(b.TempDir(), "bench.db")
	}
	return pgtest.NewDatabase(b)
}

// timedGuest is the guest client, timing the calls made to it: the guest's
// time, which the scheduler's own time excludes.
type timedGuest struct {
	sched.Guest
	mu    sync.Mutex
	spent map[string]time.Duration // by guest IP: one analysis at a time a machine
}

func (g *timedGuest) add(ip string, d time.Duration) {
	g.mu.Lock()
	g.spent[ip] += d
	g.mu.Unlock()
}

func (g *timedGuest) take(ip string) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	d := g.spent[ip]
	delete(g.spent, ip)
	return d
}

func (g *timedGuest) Ping(ctx context.Context, ip string) error {
	t0 := time.Now()
	defer func() { g.add(ip, time.Since(t0)) }()
	return g.Guest.Ping(ctx, ip)
}

func (g *timedGuest) Start(ctx context.Context, ip string, a guest.Analysis) error {
	t0 := time.Now()
	defer func() { g.add(ip, time.Since(t0)) }()
	return g.Guest.Start(ctx, ip, a)
}

func (g *timedGuest) Wait(ctx context.Context, ip string) error {
	t0 := time.Now()
	defer func() { g.add(ip, time.Since(t0)) }()
	return g.Guest.Wait(ctx, ip)
}

// BenchmarkOwnTimePerAnalysis: whole analyses on the emulator's guests,
// one at a time, timed from the task's commit to its end minus the time
// spent in guest calls and in the provider check: sandfleet's own time
// (queue, match, lease, folders, result-server registration, the end's
// transaction), p50 and p99.
func BenchmarkOwnTimePerAnalysis(b *testing.B) {
	benchStores(b, func(b *testing.B, url string) {
		tg := &timedGuest{spent: map[string]time.Duration{}}
		var mu sync.Mutex
		verified := map[string]time.Duration{}
		l := newLab(b, labConfig{pools: []config.Pool{pool("win10x64", 1)}, analysis: "10ms", database: url,
			edit: func(o *sched.Options) {
				tg.Guest, o.Guest = o.Guest, tg
				verify := o.Verify
				o.Verify = func(ctx context.Context, m store.Machine) error {
					t0 := time.Now()
					defer func() { mu.Lock(); verified[m.Label] += time.Since(t0); mu.Unlock() }()
					return verify(ctx, m)
				}
			}})
		ctx := context.Background()
		own := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			task := l.submit(1, 10)[0]
			var got store.Task
			poll.Until(b, time.Minute, "analysis ended", func() bool {
				var err error
				got, err = l.st.GetTask(ctx, task.ID)
				return err == nil && got.Status != store.TaskPending && got.Status != store.TaskRunning
			})
			if got.Status != store.TaskCompleted {
				b.Fatalf("task %d %s: %s", got.ID, got.Status, got.Error)
			}
			m, _ := l.st.GetMachine(ctx, got.RanOn)
			mu.Lock()
			v := verified[got.RanOn]
			delete(verified, got.RanOn)
			mu.Unlock()
			own = append(own, got.CompletedOn.Sub(t0)-tg.take(m.IP)-v)
			b.StopTimer()
			poll.Until(b, time.Minute, "the machine ready again", func() bool { return l.count(store.Ready) == 1 })
			b.StartTimer()
		}
		b.StopTimer()
		slices.Sort(own)
		b.ReportMetric(float64(own[len(own)/2].Microseconds())/1000, "own-p50-ms")
		b.ReportMetric(float64(own[len(own)*99/100].Microseconds())/1000, "own-p99-ms")
	})
}
