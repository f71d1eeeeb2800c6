package fleet_test

import (
	"context"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

const benchInstances = 1000

// BenchmarkReconcileNoop1000: one pass over a 1,000-instance pool in which
// nothing changed — list the scale sets, the VMs and NICs (all pages), the
// machine rows, and decide. Reports database round trips per pass.
func BenchmarkReconcileNoop1000(b *testing.B) {
	ctx := context.Background()
	st := benchStore(b)
	c := newCloud(b, 0, benchInstances)
	r := c.reconciler(b, st)
	stop := run(r)
	poll.Until(b, 5*time.Minute, "1,000 machines ready", func() bool { return countReady(b, st) == benchInstances })
	stop()
	if err := r.Pass(ctx); err != nil { // settle
		b.Fatal(err)
	}
	trips := st.Stats().RoundTrips
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := r.Pass(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(st.Stats().RoundTrips-trips)/float64(b.N), "db-roundtrips/op")
	if countReady(b, st) != benchInstances {
		b.Fatal("a no-op pass changed machines")
	}
}

// BenchmarkStartup1000: a daemon's reconciler starting on an empty database
// and an empty resource group, until all 1,000 machines are usable (scale set
// created, every VM registered, every guest agent answered).
func BenchmarkStartup1000(b *testing.B) {
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		st := benchStore(b)
		c := newCloud(b, 0, benchInstances)
		r := c.reconciler(b, st)
		b.StartTimer()
		stop := run(r)
		poll.Until(b, 5*time.Minute, "1,000 machines ready", func() bool { return countReady(b, st) == benchInstances })
		b.StopTimer()
		stop()
	}
}

func benchStore(b *testing.B) store.Store {
	st, err := open.Open(context.Background(), "sqlite://"+b.TempDir()+"/bench.db")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}
