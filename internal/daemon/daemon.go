// Package daemon assembles sandfleet serve from a configuration: the store,
// the providers (and, with no Azure subscription configured, an in-process
// Azure emulator), one reconciler per provider, and the HTTP API.
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
	"path/filepath"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/azure"
	"github.com/sandfleet/sandfleet/internal/provider/static"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// Daemon is a running sandfleet serve.
type Daemon struct {
	cfg      *config.Config
	log      *slog.Logger
	Store    store.Store
	Fleet    *fleet.Fleet
	API      *api.Server
	emulator *azemu.Emulator
	driver   *azure.Driver
	listener net.Listener
}

// New builds a daemon: it validates cfg, opens and migrates the database,
// starts the in-process emulator when needed, and builds the reconcilers. It
// listens on cfg.Listen; Run serves.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	d := &Daemon{cfg: cfg, log: log}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	// Bounded: a migration lock held by a hung node must not hang serve.
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	st, err := open.Open(octx, cfg.DatabaseURL())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	d.Store = st

	holder, err := nodeID(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	byProvider := map[string][]config.Pool{}
	for _, p := range cfg.Pools {
		byProvider[p.Provider] = append(byProvider[p.Provider], p)
	}
	var recs []*fleet.Reconciler
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
		default:
			return nil, fmt.Errorf("pools: provider %s is not available in this build", kind)
		}
		recs = append(recs, fleet.New(fleet.Options{
			Store: st, Provider: prov, Pools: pools,
			Interval: cfg.Fleet.ReconcileInterval, OpTimeout: cfg.Timeouts.CloudOperation,
			WaitForAgent: waitForAgent, Agent: agent, HealthInterval: cfg.Fleet.HealthInterval,
			ReimageWindow: cfg.Azure.ReimageBatchWindow, ProvisionTimeout: cfg.Timeouts.VMState, MaxConcurrentOps: cfg.Azure.MaxConcurrentOperations,
			AdoptExisting: cfg.Azure.AdoptExisting, MultipleDeployments: cfg.Azure.MultipleDeployments,
			Orphans: kind == "azure",
			Holder:  holder, LeaseTTL: cfg.Fleet.LeaseTTL,
			ResultServerIP: rsHost, ResultServerPort: rsPort,
			Logger: log.With("provider", kind),
		}))
	}
	d.Fleet = fleet.NewFleet(recs...)

	var tokens map[string]bool
	if cfg.Auth.TokensFile != "" {
		if tokens, err = api.LoadTokens(cfg.Auth.TokensFile); err != nil {
			return nil, err
		}
	}
	d.API = api.New(api.Options{Store: st, Fleet: d.Fleet, Tokens: tokens, Logger: log})
	d.listener, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	ok = true
	return d, nil
}

// azure builds the Azure driver, starting the in-process emulator when no
// subscription is configured.
func (d *Daemon) azure() (provider.Provider, error) {
	ac := d.cfg.Azure
	opts := azure.Options{Logger: d.log, PollInterval: 2 * time.Second, MaxWait: d.cfg.Timeouts.CloudOperation}
	if ac.Emulated() {
		emu, err := azemu.New(azemu.Options{
			Listen:           "127.0.0.1:0",
			StateDir:         filepath.Join(d.cfg.DataDir, "emulator"),
			LRODelay:         ac.Emulator.LRODelay,
			AgentPort:        d.cfg.Guest.AgentPort,
			AnalysisDuration: ac.Emulator.AnalysisDuration,
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

// Run serves until ctx ends, then shuts down gracefully.
func (d *Daemon) Run(ctx context.Context) error {
	// fleet/check/ may take up to a minute; nothing else comes near.
	srv := &http.Server{Handler: d.API, ReadHeaderTimeout: 10 * time.Second,
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
	go func() { done <- d.Fleet.Run(fctx) }()
	d.log.Info("sandfleet serving", "listen", d.Addr(), "database", d.Store.Dialect())
	var err error
	fleetDone := false
	select {
	case <-ctx.Done():
	case err = <-errc:
	case err = <-done:
		fleetDone = true
	}
	shut, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(shut)
	stop()
	if !fleetDone {
		<-done
	}
	return err
}

// Close releases the database and the emulator.
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
	if d.Store != nil {
		d.Store.Close()
	}
}
