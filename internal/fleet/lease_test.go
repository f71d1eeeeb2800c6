package fleet_test

import (
	"context"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
)

// Two nodes on one PostgreSQL: one reconciles, the other stands by (ready,
// issuing nothing) and takes over when the first stops.
func TestOneLeaderPerProvider(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	node := func() store.Store {
		st, err := open.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	stA, stB := node(), node()
	c := newCloud(t, 0, 2)
	mk := func(st store.Store, holder string) *fleet.Reconciler {
		return c.reconcilerWith(st, c.driver(t), func(o *fleet.Options) { o.Holder, o.LeaseTTL = holder, 600*time.Millisecond })
	}
	a, b := mk(stA, "node-a"), mk(stB, "node-b")
	stopA := run(a)
	poll.Until(t, 30*time.Second, "2 machines ready", func() bool { return countReady(t, stA) == 2 })
	fb := fleet.NewFleet(b)
	ctxB, cancelB := context.WithCancel(ctx)
	doneB := make(chan struct{})
	go func() { fb.Run(ctxB); close(doneB) }()
	defer func() { cancelB(); <-doneB }()
	select {
	case <-fb.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("the second node is not ready as a follower")
	}
	if n := b.PassStats().Passes; n != 0 {
		t.Fatalf("the follower ran %d passes", n)
	}
	stopA() // releases the lease
	walk(t, stA, "win10x64_0", store.Leased, store.Dirty)
	poll.Until(t, 20*time.Second, "the second node reimages the released machine", func() bool {
		return machineState(t, stB, "win10x64_0") == store.Ready && b.PassStats().Passes > 0
	})
	if n := c.count("PUT", "/virtualMachineScaleSets/win10x64"); n != 1 {
		t.Fatalf("scale set PUT %d times, want 1", n)
	}
	if n := c.count("POST", "/virtualMachineScaleSets/win10x64/reimage"); n != 1 {
		t.Fatalf("reimage POSTed %d times, want 1", n)
	}
}
