package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
	"github.com/sandfleet/sandfleet/internal/store/storetest"
)

func newDB(t testing.TB) string { return filepath.Join(t.TempDir(), "data", "sandfleet.db") }

func TestStore(t *testing.T) {
	storetest.Run(t, storetest.PerTest(newDB, sqlite.Open))
}

func openBench(b *testing.B) store.Store {
	s, err := sqlite.Open(context.Background(), newDB(b))
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
