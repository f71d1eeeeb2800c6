package leadership_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/leadership"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/postgres"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
)

var _ leadership.Store = store.Store(nil)

// Two electors on the real store, each with its own handle on one database:
// one leads, the other stands by; the leader stops and the other takes over.
// Real time here; the timing itself is tested in virtual time.
func TestElectorOnStore(t *testing.T) {
	for _, db := range []struct {
		name  string
		newDB func(t testing.TB) string
		open  func(ctx context.Context, where string) (store.Store, error)
	}{
		{"sqlite", func(t testing.TB) string { return filepath.Join(t.TempDir(), "sandfleet.db") }, sqlite.Open},
		{"postgres", pgtest.NewDatabase, postgres.Open},
	} {
		t.Run(db.name, func(t *testing.T) {
			t.Parallel()
			where := db.newDB(t)
			var leading atomic.Int32
			start := func(holder string) (leads, follows chan struct{}, stop func()) {
				st, err := db.open(t.Context(), where)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				if err := st.Migrate(t.Context()); err != nil {
					t.Fatal(err)
				}
				e, err := leadership.New(st, leadership.Config{
					Name: "reconciler/test", Holder: holder, TTL: 2 * time.Second,
					Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
				})
				if err != nil {
					t.Fatal(err)
				}
				leads, follows = make(chan struct{}), make(chan struct{})
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() {
					defer close(done)
					e.Run(ctx, func(ctx context.Context) {
						if n := leading.Add(1); n != 1 {
							t.Errorf("%s leads beside another", holder)
						}
						close(leads)
						<-ctx.Done()
						leading.Add(-1)
					}, func() { close(follows) })
				}()
				stop = func() { cancel(); <-done }
				t.Cleanup(stop)
				return leads, follows, stop
			}

			aLeads, _, stopA := start("node-a")
			waitFor(t, aLeads, "node-a to lead")
			bLeads, bFollows, _ := start("node-b")
			waitFor(t, bFollows, "node-b to stand by")
			select {
			case <-bLeads:
				t.Fatal("node-b leads beside node-a")
			default:
			}
			stopA()
			stopped := time.Now()
			waitFor(t, bLeads, "node-b to take over")
			t.Logf("node-b took over %v after node-a stopped", time.Since(stopped))
		})
	}
}

func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}
