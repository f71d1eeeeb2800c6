package sched_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
)

// live counts the machine rows of pool that are not gone.
func (l *lab) live(pool string) int {
	l.t.Helper()
	ms, err := l.st.ListMachines(context.Background(), store.MachineFilter{Pool: pool})
	if err != nil {
		l.t.Fatal(err)
	}
	n := 0
	for _, m := range ms {
		if m.State != store.Gone {
			n++
		}
		if strings.Contains(m.Label, "placeholder") {
			l.t.Fatalf("a placeholder row: %s", m.Label)
		}
	}
	return n
}

// capacity reads the pool's scale-set capacity as the reconciler last saw it.
func (l *lab) capacity(pool string) int {
	v, ok := l.rec.LastView(pool)
	if !ok || v.Group == nil {
		return 0
	}
	return v.Group.Capacity
}

// A pool of initial_size 0 has no machine rows at rest; three tasks grow it,
// run, and once the queue has stayed empty for the delay it is back to 0.
func TestEmptyPoolGrowsForTasksAndShrinksBack(t *testing.T) {
	p := pool("win10x64", 0)
	p.MaxSize = 5
	l := newLab(t, labConfig{pools: []config.Pool{p}, analysis: "1s", demand: true, scaleIn: 2 * time.Second})
	poll.Until(t, 10*time.Second, "the empty scale set read", func() bool { _, ok := l.rec.LastView("win10x64"); return ok })
	if n := l.live("win10x64"); n != 0 {
		t.Fatalf("%d machine rows at rest in an empty pool", n)
	}
	submitted := time.Now()
	ts := l.submit(3, 10)
	most := 0
	for _, got := range l.waitEnded(90*time.Second, ts...) {
		most = max(most, l.live("win10x64"))
		if got.Status != store.TaskCompleted {
			t.Errorf("task %d: %s (%s)", got.ID, got.Status, got.Error)
		}
		t.Logf("task %d: submitted → leased in %s", got.ID, got.StartedOn.Sub(submitted).Round(time.Millisecond))
	}
	poll.Until(t, 60*time.Second, "the pool back to 0", func() bool {
		return l.live("win10x64") == 0 && l.capacity("win10x64") == 0
	})
	if most > 5 {
		t.Errorf("%d machines, max_size 5", most)
	}
}

// A burst of 20 tasks on a pool of 2 (max 6, no overprovision) grows it to
// 6 at once and never past 6; no leased machine is ever deleted.
func TestBurstGrowsToMaxWithoutDeletingLeased(t *testing.T) {
	p := pool("win10x64", 2)
	p.MaxSize = 6
	l := newLab(t, labConfig{pools: []config.Pool{p}, analysis: "2s", demand: true, scaleIn: time.Second})
	var (
		mu   sync.Mutex
		most int
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			mu.Lock()
			most = max(most, l.capacity("win10x64"), l.live("win10x64"))
			mu.Unlock()
		}
	}()
	burst := time.Now()
	ts := l.submit(20, 10)
	poll.Until(t, 30*time.Second, "capacity 6", func() bool { return l.capacity("win10x64") == 6 })
	t.Logf("capacity 6 %s after the burst", time.Since(burst).Round(time.Millisecond))
	for _, got := range l.waitEnded(120*time.Second, ts...) {
		if got.Status != store.TaskCompleted {
			t.Errorf("task %d: %s (%s)", got.ID, got.Status, got.Error)
		}
	}
	poll.Until(t, 60*time.Second, "the pool back to 2", func() bool { return l.capacity("win10x64") == 2 && l.live("win10x64") == 2 })
	close(stop)
	<-done
	if most > 6 {
		t.Errorf("the pool reached %d machines, max_size 6", most)
	}
	ms, _ := l.st.ListMachines(context.Background(), store.MachineFilter{Pool: "win10x64"})
	for _, m := range ms {
		evs, _ := l.st.MachineEvents(context.Background(), m.Label)
		for _, e := range evs {
			if e.From == store.Leased && (e.To == store.Deleting || e.To == store.Gone) {
				t.Errorf("%s deleted while leased: %s → %s (%s)", m.Label, e.From, e.To, e.Cause)
			}
		}
	}
}

// With the core quota set so that only 4 more VMs fit, the pool stops at
// what fits and says why.
func TestQuotaBoundsGrowth(t *testing.T) {
	p := pool("win10x64", 1)
	p.MaxSize = 10
	l := newLab(t, labConfig{pools: []config.Pool{p}, analysis: "30s", demand: true, scaleIn: time.Hour,
		azure: func(a *config.Azure) { a.QuotaMachineExclusion = 1 }})
	// Standard_D2s_v5: 2 vCPUs. One VM runs; one more is kept free by
	// quota_machine_exclusion; 4 more fit.
	quota, _ := json.Marshal(map[string]any{"quota": map[string]int{"cores": 2 * (1 + 1 + 4), "low_priority_cores": 100}})
	if _, err := l.emu.SetFaults(quota); err != nil {
		t.Fatal(err)
	}
	l.submit(10, 60)
	poll.Until(t, 30*time.Second, "the pool at 5", func() bool { return l.capacity("win10x64") == 5 })
	var why string
	poll.Until(t, 10*time.Second, "the pool saying why", func() bool {
		ps, err := l.fleet.Status(context.Background())
		if err != nil || len(ps) != 1 {
			return false
		}
		why = ps[0].LimitedBy
		return strings.Contains(why, "core quota")
	})
	t.Logf("limited by: %s", why)
	// Five more passes, with the queue still asking for 10: still 5.
	passes := l.rec.PassStats().Passes
	poll.Until(t, 30*time.Second, "five more passes", func() bool {
		l.rec.Trigger()
		return l.rec.PassStats().Passes >= passes+5
	})
	if c := l.capacity("win10x64"); c != 5 {
		t.Fatalf("the pool at %d with room for 5", c)
	}
}

// A Spot instance evicted mid-analysis sends its task back to the queue,
// attempt 2 — never a failure — and it completes on another machine; the
// eviction is counted for the pool.
func TestSpotEvictionRetriesTheTask(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 2)}, analysis: "3s",
		azure: func(a *config.Azure) { a.Spot = true }})
	task := l.submit(1, 30)[0]
	running := l.waitRunning(task)
	// Mid-analysis: the analyzer has started (evicted before, during the
	// check before use, the task would go back with its attempt kept).
	poll.Until(t, 10*time.Second, "analyzer started", func() bool {
		_, err := os.Stat(filepath.Join(l.analysisDir(task.ID), "analysis.log"))
		return err == nil
	})
	if _, err := l.emu.EvictVM("win10x64", "", instanceOf(running.RanOn)); err != nil {
		t.Fatal(err)
	}
	got := l.waitEnded(90*time.Second, task)[0]
	if got.Status != store.TaskCompleted || got.Attempt != 2 || got.RanOn == running.RanOn {
		t.Fatalf("task %s, attempt %d on %s (%s); want completed, attempt 2, not on %s", got.Status, got.Attempt,
			got.RanOn, got.Error, running.RanOn)
	}
	rec := httptest.NewRecorder()
	l.metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	fams, err := metrics.Parse(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := fams.Value("sandfleet_evictions_total", "pool", "win10x64"); n != 1 {
		t.Fatalf("evictions of win10x64 = %v, want 1", n)
	}
}
