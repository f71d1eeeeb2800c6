package postgres_test

import (
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
	return storetest.BenchStore(b, pgtest.NewDatabase, postgres.Open)
}

func BenchmarkListMachines1000(b *testing.B) { storetest.BenchListMachines(b, openBench(b)) }

func BenchmarkTransitionMachine(b *testing.B) { storetest.BenchTransitionMachine(b, openBench(b)) }
