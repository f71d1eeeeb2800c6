package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/postgres"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
	"github.com/sandfleet/sandfleet/internal/store/storetest"
)

func TestStore(t *testing.T) {
	storetest.Run(t, storetest.PerTest(pgtest.NewDatabase, postgres.Open))
}

func openBench(b *testing.B) store.Store {
	return storetest.BenchStore(b, pgtest.NewDatabase, postgres.Open)
}

func BenchmarkListMachines1000(b *testing.B) { storetest.BenchListMachines(b, openBench(b)) }

func BenchmarkTransitionMachine(b *testing.B) { storetest.BenchTransitionMachine(b, openBench(b)) }

// Two nodes whose clocks disagree by an hour still agree on a lease: its
// expiry is read from the database's clock, not the node's.
func TestLeaseUsesTheDatabaseClock(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	node := func() store.Store {
		s, err := postgres.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := node(), node()
	b.(interface{ SetClock(func() time.Time) }).SetClock(func() time.Time { return time.Now().Add(time.Hour) })
	term, ok, err := a.ElectLeader(ctx, "reconciler/azure", "node-a", time.Minute)
	if err != nil || !ok {
		t.Fatalf("node a: %v, %v", ok, err)
	}
	if _, ok, err := b.ElectLeader(ctx, "reconciler/azure", "node-b", time.Minute); err != nil || ok {
		t.Fatalf("node b, an hour ahead, took a lease a minute old: %v, %v", ok, err)
	}
	a.(interface{ SetClock(func() time.Time) }).SetClock(func() time.Time { return time.Now().Add(-time.Hour) })
	if ok, err := a.ReelectLeader(ctx, "reconciler/azure", "node-a", term, time.Minute); err != nil || !ok {
		t.Fatalf("node a, now an hour behind, could not extend its lease: %v, %v", ok, err)
	}
	if _, ok, err := b.ElectLeader(ctx, "reconciler/azure", "node-b", time.Minute); err != nil || ok {
		t.Fatalf("node b took a lease that node a, an hour behind, had just extended: %v, %v", ok, err)
	}
}

// A read-only handle cannot migrate, and reads what another wrote without
// writing.
func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	ro, err := postgres.OpenReadOnly(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Migrate(ctx); err == nil {
		t.Fatal("a read-only handle migrated")
	}
	if sc, err := ro.Schema(ctx); err != nil || len(sc.Applied) != 0 {
		t.Fatalf("Schema read-only before migrating = %+v, %v", sc, err)
	}
	storetest.ReadOnly(t, url, postgres.Open, postgres.OpenReadOnly)
}
