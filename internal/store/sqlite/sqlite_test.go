package sqlite_test

import (
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

func openBench(b *testing.B) store.Store { return storetest.BenchStore(b, newDB, sqlite.Open) }

func BenchmarkListMachines1000(b *testing.B) { storetest.BenchListMachines(b, openBench(b)) }

func BenchmarkTransitionMachine(b *testing.B) { storetest.BenchTransitionMachine(b, openBench(b)) }
