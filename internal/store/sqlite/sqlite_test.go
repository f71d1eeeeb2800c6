package sqlite_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
	"github.com/sandfleet/sandfleet/internal/store/storetest"
)

func newDB(t testing.TB) string { return filepath.Join(t.TempDir(), "sandfleet.db") }

func TestStore(t *testing.T) {
	storetest.Run(t, storetest.PerTest(newDB, sqlite.Open))
}

func openBench(b *testing.B) store.Store { return storetest.BenchStore(b, newDB, sqlite.Open) }

func BenchmarkListMachines1000(b *testing.B) { storetest.BenchListMachines(b, openBench(b)) }

func BenchmarkTransitionMachine(b *testing.B) { storetest.BenchTransitionMachine(b, openBench(b)) }

// Only data_dir is made on demand (by the daemon); a database elsewhere must be
// put where a directory already is.
func TestOpenWantsAnExistingDirectory(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(root, "missing", "deeper")
	for path, want := range map[string]string{
		filepath.Join(missing, "x.db"): "directory " + missing + " does not exist",
		filepath.Join(file, "x.db"):    file + " is not a directory",
	} {
		s, err := sqlite.Open(context.Background(), path)
		if err == nil {
			s.Close()
			t.Errorf("Open(%s) succeeded", path)
		} else if !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%s) = %v, want it to say %q", path, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "missing")); err == nil {
		t.Error("Open created the missing directory")
	}
}

// OpenReadOnly creates no database where there is none, and writes nothing
// where there is one.
func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	path := newDB(t)
	if s, err := sqlite.OpenReadOnly(ctx, path); !errors.Is(err, fs.ErrNotExist) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("OpenReadOnly of a missing file = %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenReadOnly created %s", path)
	}
	storetest.ReadOnly(t, path, sqlite.Open, sqlite.OpenReadOnly)
}
