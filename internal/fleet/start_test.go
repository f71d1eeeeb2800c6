package fleet_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/provider/static"
	"github.com/sandfleet/sandfleet/internal/store"
)

// flakyStore fails UpsertPool the first time, as a database blip at start would.
type flakyStore struct {
	store.Store
	failed *atomic.Bool
}

func (f flakyStore) UpsertPool(ctx context.Context, p store.Pool) error {
	if f.failed.CompareAndSwap(false, true) {
		return errors.New("connection reset by peer")
	}
	return f.Store.UpsertPool(ctx, p)
}

// A reconciler whose start fails on a database blip retries it, and the fleet
// becomes ready, rather than serving on with that provider never reconciled.
func TestStartRetriedAfterDatabaseBlip(t *testing.T) {
	st := openSQLite(t)
	mk := func(name string, s store.Store) *fleet.Reconciler {
		p := config.Pool{Name: name, Provider: "static", Platform: "windows",
			Machines: []config.StaticMachine{{Label: name + "1", IP: "127.0.0.21", Arch: "x64"}}}
		return fleet.New(fleet.Options{Store: s, Provider: static.New([]config.Pool{p}), Pools: []config.Pool{p},
			Interval: time.Hour, OpTimeout: 10 * time.Second, Logger: testLogger()})
	}
	f := fleet.NewFleet(mk("good", st), mk("bad", flakyStore{st, new(atomic.Bool)}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case err := <-done:
		t.Fatalf("Fleet.Run returned %v", err)
	case <-f.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("fleet not ready 10 s after a one-off start failure")
	}
	if machineState(t, st, "bad1") != store.Ready {
		t.Fatal("the reconciler that failed to start never registered its machine")
	}
}

// A pass skipped because the provider throttles us does not count as the
// first reconcile: /readyz stays unready until the provider has been read.
func TestNotReadyUntilProviderRead(t *testing.T) {
	st := openSQLite(t)
	c := newCloud(t, 0, 1)
	if _, err := c.emu.SetFaults([]byte(`{"throttle": {"match": "", "retry_after_s": 120}}`)); err != nil {
		t.Fatal(err)
	}
	r := c.reconciler(t, st)
	f := fleet.NewFleet(r)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	select {
	case <-f.Ready():
		if _, ok := r.LastView(c.pool.Name); !ok {
			t.Fatal("fleet ready, but the provider was never read (every request throttled)")
		}
	case <-time.After(3 * time.Second):
	}
}
