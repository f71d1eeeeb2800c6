package sched_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider/azure"
	"github.com/sandfleet/sandfleet/internal/resultserver"
	"github.com/sandfleet/sandfleet/internal/sample"
	"github.com/sandfleet/sandfleet/internal/sched"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
)

// A lab is a whole node in one process, of real parts: the Azure emulator
// and its CAPE-speaking guests, the driver, a reconciler, the result server,
// a SQLite store, and the scheduler under test.
type lab struct {
	t       testing.TB
	st      store.Store
	emu     *azemu.Emulator
	fleet   *fleet.Fleet
	rec     *fleet.Reconciler
	sched   *sched.Scheduler
	opts    sched.Options
	rs      *resultserver.Server
	samples *sample.Dir
	metrics *metrics.Metrics
	dir     string
	stop    func()
}

type labConfig struct {
	pools    []config.Pool
	analysis string // how long emulated analyzers run
	edit     func(*sched.Options)
	node     string
	database string // a store URL; "" is SQLite in the lab's folder
	// demand sizes pools by the scheduler's demand, shrinking after
	// scaleIn, with overprovision percent more machines.
	demand        bool
	scaleIn       time.Duration
	overprovision int
	azure         func(*config.Azure)
}

func logger() *slog.Logger {
	if testing.Verbose() {
		return slog.Default()
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func pool(name string, size int, tags ...string) config.Pool {
	return config.Pool{Name: name, Provider: "azure", Platform: "windows", Arch: "x64", Tags: tags,
		Image: "win10-gallery-image", InitialSize: size, MaxSize: size}
}

func openStore(t testing.TB, path string) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newLab(t testing.TB, c labConfig) *lab {
	t.Helper()
	if c.analysis == "" {
		c.analysis = "300ms"
	}
	if c.node == "" {
		c.node = "node-a"
	}
	l := &lab{t: t, dir: t.TempDir(), metrics: metrics.New()}
	if c.database == "" {
		l.st = openStore(t, filepath.Join(l.dir, "sandfleet.db"))
	} else {
		st, err := open.Open(context.Background(), c.database)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		l.st = st
	}
	var err error
	l.emu, err = azemu.New(azemu.Options{Listen: "127.0.0.1:0", StateDir: t.TempDir(), AnalysisDuration: c.analysis, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.emu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.emu.Close() })
	l.rs, err = resultserver.New(resultserver.Options{Listen: "127.0.0.1:0", Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	l.rs.Start()
	t.Cleanup(func() { l.rs.Close() })
	ac := config.Default().Azure
	ac.SubscriptionID, ac.Endpoint, ac.Credential = "11111111-0000-4000-8000-000000000002", l.emu.URL(), "emulator"
	if c.azure != nil {
		c.azure(&ac)
	}
	drv, err := azure.New(ac, azure.Options{CertPool: l.emu.CertPool(), PollInterval: 50 * time.Millisecond,
		RetryDelay: 20 * time.Millisecond, Logger: logger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drv.Close() })
	if l.samples, err = sample.Open(filepath.Join(l.dir, "samples")); err != nil {
		t.Fatal(err)
	}
	analyzer, err := guest.LoadAnalyzer("")
	if err != nil {
		t.Fatal(err)
	}
	rsAddr := l.rs.Addr()
	fo := fleet.Options{Store: l.st, Provider: drv, Pools: c.pools, Interval: 300 * time.Millisecond,
		OpTimeout: time.Minute, WaitForAgent: true, Agent: guest.NewClient(l.emu.AgentPort(), 2*time.Second),
		HealthInterval: time.Hour, ProvisionTimeout: time.Minute, AdoptExisting: true,
		ResultServerIP: rsAddr.IP.String(), ResultServerPort: rsAddr.Port,
		OnReady: func() { l.sched.Trigger() }, Spot: ac.Spot, Metrics: l.metrics, Logger: logger()}
	if c.demand {
		fo.Demand = func(ctx context.Context) (map[string]int, error) { return l.sched.Demand(ctx) }
		fo.ScaleInDelay, fo.Overprovision, fo.TotalMachinesLimit = c.scaleIn, c.overprovision, ac.TotalMachinesLimit
	}
	l.rec = fleet.New(fo)
	l.fleet = fleet.NewFleet(l.rec)
	def := config.Default()
	timeouts := def.Timeouts
	timeouts.Critical, timeouts.VMState = 5*time.Second, 10*time.Second
	l.opts = sched.Options{Store: l.st, Node: c.node, Pools: c.pools, Scheduler: def.Scheduler, Timeouts: timeouts,
		LeaseTTL: 2 * time.Second, DataDir: l.dir, Samples: l.samples,
		Guest: guest.NewClient(l.emu.AgentPort(), 3*time.Second), Results: l.rs,
		Analyzer: analyzer, Verify: l.fleet.Verify, Released: l.fleet.Trigger, Logger: logger()}
	if c.demand {
		l.opts.Grow = l.fleet.Trigger
	}
	if c.edit != nil {
		c.edit(&l.opts)
	}
	l.sched = sched.New(l.opts)
	ctx, cancel := context.WithCancel(context.Background())
	fdone, sdone := make(chan struct{}), make(chan struct{})
	go func() { l.fleet.Run(ctx); close(fdone) }()
	go func() { l.sched.Run(ctx); close(sdone) }()
	l.stop = func() {
		cancel()
		<-sdone
		<-fdone
	}
	t.Cleanup(func() {
		select {
		case <-ctx.Done():
		default:
			l.stop()
		}
	})
	n := 0
	for _, p := range c.pools {
		n += p.InitialSize
	}
	poll.Until(t, 60*time.Second, fmt.Sprintf("%d machines ready", n), func() bool { return l.count(store.Ready) == n })
	return l
}

// count counts machines in state.
func (l *lab) count(state store.MachineState) int {
	ms, err := l.st.ListMachines(context.Background(), store.MachineFilter{States: []store.MachineState{state}})
	if err != nil {
		l.t.Fatal(err)
	}
	return len(ms)
}

// submit queues file tasks whose sample is body, with tags, as the API does.
func (l *lab) submit(n int, timeout int, tags ...string) []store.Task {
	l.t.Helper()
	ctx := context.Background()
	smp, err := l.samples.Put(strings.NewReader("MZ sample for the lab"), 1<<20)
	if err != nil {
		l.t.Fatal(err)
	}
	if smp, err = l.st.PutSample(ctx, smp); err != nil {
		l.t.Fatal(err)
	}
	var ts []store.Task
	for i := range n {
		ts = append(ts, store.Task{Target: fmt.Sprintf("sample-%d.exe", i), Category: "file", SampleID: smp.ID,
			Timeout: timeout, Priority: 1, Tags: tags})
	}
	out, err := l.st.CreateTasks(ctx, ts, "test")
	if err != nil {
		l.t.Fatal(err)
	}
	l.sched.Trigger()
	return out
}

func (l *lab) task(id int64) store.Task {
	l.t.Helper()
	t, err := l.st.GetTask(context.Background(), id)
	if err != nil {
		l.t.Fatal(err)
	}
	return t
}

// waitEnded waits for tasks to end and returns them.
func (l *lab) waitEnded(within time.Duration, ts ...store.Task) []store.Task {
	l.t.Helper()
	out := make([]store.Task, len(ts))
	poll.Until(l.t, within, fmt.Sprintf("%d tasks ended", len(ts)), func() bool {
		for i, t := range ts {
			out[i] = l.task(t.ID)
			if out[i].Status == store.TaskPending || out[i].Status == store.TaskRunning {
				return false
			}
		}
		return true
	})
	return out
}

// waitRunning waits for a task to run and returns it.
func (l *lab) waitRunning(t store.Task) store.Task {
	l.t.Helper()
	var got store.Task
	poll.Until(l.t, 30*time.Second, fmt.Sprintf("task %d running", t.ID), func() bool {
		got = l.task(t.ID)
		return got.Status == store.TaskRunning
	})
	return got
}

// instanceOf is the instance id of a label <pool>_<id>.
func instanceOf(label string) string { return label[strings.LastIndex(label, "_")+1:] }

// analysisDir is a task's analysis folder.
func (l *lab) analysisDir(id int64) string {
	return filepath.Join(l.dir, "analyses", strconv.FormatInt(id, 10))
}
