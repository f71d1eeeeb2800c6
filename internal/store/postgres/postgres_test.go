package postgres_test

import (
	"context"
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/postgres"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
	"github.com/sandfleet/sandfleet/internal/store/storetest"
)

func TestStore(t *testing.T) {
	storetest.Run(t, storetest.PerTest(pgtest.NewDatabase, postgres.Open))
}

func openBench(b *testing.B) store.Store {
	s, err := postgres.Open(context.Background(), pgtest.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if err := s.Migrate(context.Background()); err != nil {
		b.Fatal(err)
	}
	return s
}

func BenchmarkListMachines1000(b *testing.B) { storetest.BenchListMachines(b, openBench(b)) }

func BenchmarkTransitionMachine(b *testing.B) { storetest.BenchTransitionMachine(b, openBench(b)) }
