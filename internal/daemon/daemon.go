// Package daemon assembles sandfleet serve from a configuration: the store,
// the providers (and, with no Azure subscription configured, an in-process
// Azure emulator), one reconciler per provider, and the HTTP API. The API
// serves from the start; a database server that is down is waited for, and
// the reconcilers start once it answers.
package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/auth"
	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/hooks"
	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/azure"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt"
	"github.com/sandfleet/sandfleet/internal/provider/static"
	"github.com/sandfleet/sandfleet/internal/resultserver"
	"github.com/sandfleet/sandfleet/internal/sample"
	"github.com/sandfleet/sandfleet/internal/sched"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// Daemon is a running sandfleet serve.
type Daemon struct {
	cfg      *config.Config
	log      *slog.Logger
	database string // the database URL, password masked, for logs
	api      *api.Server
	emulator *azemu.Emulator
	driver   *azure.Driver
	libvirt  *libvirt.Driver
	listener net.Listener
	// reconcilers are the fleet's reconcilers, Store not yet set: a
	// reconciler is built on a store, and a database server may be down
	// when the daemon starts.
	reconcilers []fleet.Options
	// store is set by New for SQLite, by Run once a database server answers.
	store   store.Store
	holder  string
	samples *sample.Dir
	results *resultserver.Server
	// analyzer is the analyzer package every guest is sent.
	analyzer []byte
	metrics  *metrics.Metrics
	// sched is set once the database is open.
	sched atomic.Pointer[sched.Scheduler]
}

// New builds a daemon: it validates cfg, starts the in-process emulator when
// needed, and listens on cfg.Listen. A SQLite database is opened and
// migrated here, so that a bad path fails at once; a PostgreSQL server is
// waited for by Run. Run serves.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	dbURL := cfg.DatabaseURL()
	if err := open.Check(dbURL); err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	d := &Daemon{cfg: cfg, log: log, database: open.Redact(dbURL)}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	if !open.IsServer(dbURL) {
		st, err := d.open(ctx)
		if err != nil {
			return nil, fmt.Errorf("database: %w", err)
		}
		d.store = st
	}

	holder, err := nodeID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	d.holder = holder
	if d.samples, err = sample.Open(filepath.Join(cfg.DataDir, "samples")); err != nil {
		return nil, err
	}
	if argv := cfg.Hooks.OnComplete; len(argv) > 0 {
		if _, err := exec.LookPath(argv[0]); err != nil {
			return nil, fmt.Errorf("hooks.on_complete[0]: %w", err)
		}
	}
	if d.analyzer, err = guest.LoadAnalyzer(cfg.Guest.Analyzer); err != nil {
		return nil, fmt.Errorf("guest.analyzer: %w", err)
	}
	if cfg.Guest.Analyzer == "" {
		log.Warn("guest.analyzer is not set: guests get the built-in stand-in analyzer, which only reports what it was given; set it to CAPE's analyzer for real analyses")
	}
	d.results, err = resultserver.New(resultserver.Options{Listen: cfg.ResultServer.Listen, MachinePorts: cfg.MachinePorts(),
		MaxFile: int64(cfg.Guest.UploadMaxSize), Logger: log.With("component", "resultserver")})
	if err != nil {
		return nil, fmt.Errorf("resultserver.listen: %w", err)
	}
	byProvider := map[string][]config.Pool{}
	for _, p := range cfg.Pools {
		byProvider[p.Provider] = append(byProvider[p.Provider], p)
	}
	agent := guest.NewClient(cfg.Guest.AgentPort, 3*time.Second)
	rsHost, rsPort := cfg.ResultServerAddr()
	for _, kind := range []string{"azure", "static", "libvirt"} {
		pools := byProvider[kind]
		if len(pools) == 0 {
			continue
		}
		var (
			prov         provider.Provider
			waitForAgent bool
		)
		switch kind {
		case "azure":
			prov, err = d.azure()
			if err != nil {
				return nil, err
			}
			waitForAgent = cfg.Azure.WaitForAgentBeforeReady
		case "static":
			// A static machine is ready only while its agent answers, as any other.
			prov, waitForAgent = static.New(pools), true
		case "libvirt":
			lv, err := libvirt.New(pools, libvirt.Options{Logger: log.With("provider", kind)})
			if err != nil {
				return nil, err
			}
			d.libvirt = lv
			// A reverted domain is ready once its agent answers.
			prov, waitForAgent = lv, true
		}
		d.reconcilers = append(d.reconcilers, fleet.Options{
			Provider: prov, Pools: pools,
			Interval: cfg.Fleet.ReconcileInterval, OpTimeout: cfg.Timeouts.CloudOperation,
			WaitForAgent: waitForAgent, Agent: agent, HealthInterval: cfg.Fleet.HealthInterval,
			ReimageWindow: cfg.Azure.ReimageBatchWindow, ProvisionTimeout: cfg.Timeouts.VMState, MaxConcurrentOps: cfg.Azure.MaxConcurrentOperations,
			AdoptExisting: cfg.Azure.AdoptExisting, MultipleDeployments: cfg.Azure.MultipleDeployments,
			Orphans:       kind == "azure",
			Overprovision: cfg.Azure.Overprovision, ScaleInDelay: cfg.Azure.MonitorInterval,
			TotalMachinesLimit: cfg.Azure.TotalMachinesLimit, Spot: kind == "azure" && cfg.Azure.Spot,
			Holder: holder, LeaseTTL: cfg.Fleet.LeaseTTL,
			ResultServerIP: rsHost, ResultServerPort: rsPort,
			Logger: log.With("provider", kind),
		})
	}

	var tokens *auth.Checker
	if cfg.Auth.TokensFile != "" {
		if tokens, err = auth.Open(cfg.Auth.TokensFile, log.With("component", "auth")); err != nil {
			return nil, err
		}
		log.Info("API tokens read", "file", cfg.Auth.TokensFile, "tokens", tokens.Len())
	}
	d.metrics = metrics.New()
	d.api = api.New(api.Options{Tokens: tokens, Logger: log, Database: d.database, Samples: d.samples,
		MaxSampleSize: int64(cfg.Scheduler.MaxSampleSize), DataDir: cfg.DataDir, Metrics: d.metrics})
	d.listener, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	ok = true
	return d, nil
}

// open makes one attempt to open and migrate the database.
func (d *Daemon) open(ctx context.Context) (store.Store, error) {
	// Bounded: a migration lock held by a hung node must not hang serve.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return open.Open(ctx, d.cfg.DatabaseURL())
}

// awaitDatabase opens the database, retrying with backoff while it cannot
// be (a server down or still starting); the API answers 503 naming the
// database meanwhile. It returns nil when ctx ends first.
func (d *Daemon) awaitDatabase(ctx context.Context) store.Store {
	for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
		st, err := d.open(ctx)
		if err == nil {
			return st
		}
		if ctx.Err() != nil {
			return nil
		}
		d.api.Unavailable(err)
		d.log.Warn("database unavailable; retrying", "database", d.database, "err", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
}

// runNode waits for the database, builds the fleet and the scheduler on it,
// hands them to the API, and runs both until ctx ends. On the way out the
// scheduler drains first (scheduler.drain_timeout), while the fleet still
// runs to take back the machines the analyses release.
func (d *Daemon) runNode(ctx context.Context) error {
	if d.store == nil {
		st := d.awaitDatabase(ctx)
		if st == nil {
			return nil
		}
		d.store = st
		d.log.Info("database open", "database", d.database)
	}
	var f *fleet.Fleet
	var sch *sched.Scheduler
	recs := make([]*fleet.Reconciler, 0, len(d.reconcilers))
	for _, o := range d.reconcilers {
		o.Store = d.store
		o.OnReady = func() { sch.Trigger() }
		o.Demand = func(ctx context.Context) (map[string]int, error) { return sch.Demand(ctx) }
		o.Metrics = d.metrics
		recs = append(recs, fleet.New(o))
	}
	f = fleet.NewFleet(recs...)
	cfg := d.cfg
	var hook *hooks.Runner
	if len(cfg.Hooks.OnComplete) > 0 {
		hook = hooks.New(hooks.Options{Store: d.store, Node: d.holder, Argv: cfg.Hooks.OnComplete,
			Timeout: cfg.Hooks.Timeout, DataDir: cfg.DataDir, Metrics: d.metrics, Logger: d.log.With("component", "hooks")})
	}
	sch = sched.New(sched.Options{
		Store: d.store, Node: d.holder, Pools: cfg.Pools, Scheduler: cfg.Scheduler, Timeouts: cfg.Timeouts,
		LeaseTTL: cfg.Fleet.LeaseTTL, DataDir: cfg.DataDir, Samples: d.samples,
		Guest:   guest.NewClient(cfg.Guest.AgentPort, cfg.Timeouts.Critical),
		Results: d.results, Analyzer: d.analyzer, UploadMaxSize: int64(cfg.Guest.UploadMaxSize),
		Verify: f.Verify, Released: f.Trigger, Grow: f.Trigger, Metrics: d.metrics, Logger: d.log.With("component", "scheduler"),
		Hooks: hook != nil, Ended: func() {
			if hook != nil {
				hook.Wake()
			}
		},
	})
	d.sched.Store(sch)
	d.api.Attach(d.store, f, sch)
	d.results.Start()

	fctx, stopFleet := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFleet()
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- f.Run(fctx) }()
	schedDone := make(chan error, 1)
	sctx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSched()
	go func() { schedDone <- sch.Run(sctx) }()
	// Hooks run until the scheduler has drained: the analyses it ends
	// meanwhile hand off too; one still running then stays pending.
	hookDone := make(chan struct{})
	go func() {
		defer close(hookDone)
		if hook != nil {
			hook.Run(sctx)
		}
	}()

	var err error
	select {
	case <-ctx.Done():
	case err = <-fleetDone:
		fleetDone <- err
	}
	drain, cancel := context.WithTimeout(context.Background(), cfg.Scheduler.DrainTimeout)
	sch.Drain(drain)
	cancel()
	stopSched()
	<-schedDone
	<-hookDone
	stopFleet()
	return <-fleetDone
}

// Pause stops dispatching tasks (SIGUSR1); Resume starts again (SIGUSR2).
// Before the database is open there is nothing to pause.
func (d *Daemon) Pause() {
	if s := d.sched.Load(); s != nil {
		s.Pause()
	}
}

// Resume dispatches tasks again.
func (d *Daemon) Resume() {
	if s := d.sched.Load(); s != nil {
		s.Resume()
	}
}

// azure builds the Azure driver, starting the in-process emulator when no
// subscription is configured.
func (d *Daemon) azure() (provider.Provider, error) {
	ac := d.cfg.Azure
	opts := azure.Options{Logger: d.log, PollInterval: 2 * time.Second, MaxWait: d.cfg.Timeouts.CloudOperation}
	if ac.Emulated() {
		emu, err := azemu.New(azemu.Options{
			Listen:           "127.0.0.1:0",
			StateDir:         d.cfg.EmulatorDir(),
			LRODelay:         ac.Emulator.LRODelay,
			AgentPort:        d.cfg.Guest.AgentPort,
			AnalysisDuration: ac.Emulator.AnalysisDuration,
			GalleryImages:    ac.Emulator.GalleryImages,
			Location:         ac.Region,
			Logger:           d.log,
		})
		if err != nil {
			return nil, fmt.Errorf("azure emulator: %w", err)
		}
		if err := emu.Start(); err != nil {
			return nil, fmt.Errorf("azure emulator: %w", err)
		}
		d.emulator = emu
		d.log.Info("in-process Azure emulator started (no azure.subscription_id configured)", "url", emu.URL())
		ac.Endpoint = emu.URL()
		ac.Credential = "emulator"
		ac.CAFile = ""
		opts.CertPool = emu.CertPool()
	}
	if ac.Credential == "emulator" {
		opts.PollInterval = 200 * time.Millisecond
	}
	drv, err := azure.New(ac, opts)
	if err != nil {
		return nil, err
	}
	d.driver = drv
	return drv, nil
}

// nodeID names this node in leases: kept in the data directory, so that a
// restarted daemon takes its own lease back at once, while another node (with
// its own data directory) waits for it to lapse.
func nodeID(dataDir string) (string, error) {
	path := filepath.Join(dataDir, "node-id")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	host, _ := os.Hostname()
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	id := fmt.Sprintf("%s-%x", host, r)
	if err := os.WriteFile(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("data_dir: %w", err)
	}
	return id, nil
}

// Addr is the API's listening address.
func (d *Daemon) Addr() string { return d.listener.Addr().String() }

// Run serves until ctx ends, then shuts down gracefully. The API answers
// from the start; the reconcilers start once the database is open.
func (d *Daemon) Run(ctx context.Context) error {
	// fleet/check/ may take up to a minute; nothing else comes near.
	srv := &http.Server{Handler: d.api, ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: time.Minute, WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 2)
	go func() {
		if err := srv.Serve(d.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- d.runNode(fctx) }()
	d.log.Info("sandfleet serving", "listen", d.Addr(), "database", d.database)
	var err error
	nodeDone := false
	select {
	case <-ctx.Done():
	case err = <-errc:
	case err = <-done:
		nodeDone = true
	}
	// The API answers while the analyses drain; it stops last.
	stop()
	if !nodeDone {
		if nerr := <-done; err == nil {
			err = nerr
		}
	}
	shut, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shut)
	return err
}

// Close releases the database and the emulator; after Run has returned, if
// Run was called.
func (d *Daemon) Close() {
	if d.listener != nil {
		d.listener.Close()
	}
	if d.driver != nil {
		d.driver.Close() // before the emulator: its idle connections would hold it
	}
	if d.emulator != nil {
		d.emulator.Close()
	}
	if d.libvirt != nil {
		d.libvirt.Close()
	}
	if d.results != nil {
		d.results.Close()
	}
	if d.store != nil {
		d.store.Close()
	}
}
