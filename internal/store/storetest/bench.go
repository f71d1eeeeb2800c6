package storetest

import (
	"context"
	"fmt"
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
)

// BenchListMachines lists 1,000 machines with two tags each from s, a
// migrated, empty store, and reports round trips per list.
func BenchListMachines(b *testing.B, s store.Store) {
	ctx := context.Background()
	ms := make([]store.Machine, 1000)
	for i := range ms {
		ms[i] = machine(fmt.Sprintf("m%04d", i), "p", store.Ready, "win10", "x64")
	}
	if _, err := s.InsertMachines(ctx, ms, "bench"); err != nil {
		b.Fatal(err)
	}
	before := s.Stats().RoundTrips
	b.ReportAllocs()
	for b.Loop() {
		got, err := s.ListMachines(ctx, store.MachineFilter{})
		if err != nil || len(got) != len(ms) {
			b.Fatalf("ListMachines: %d machines, %v", len(got), err)
		}
	}
	b.ReportMetric(float64(s.Stats().RoundTrips-before)/float64(b.N), "roundtrips/op")
}

// BenchTransitionMachine moves one machine of s, a migrated, empty store,
// between ready and leased, and reports round trips per transition.
func BenchTransitionMachine(b *testing.B, s store.Store) {
	ctx := context.Background()
	if _, err := s.InsertMachines(ctx, []store.Machine{machine("m", "p", store.Ready, "win10")}, "bench"); err != nil {
		b.Fatal(err)
	}
	from, to := store.Ready, store.Leased
	before := s.Stats().RoundTrips
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.TransitionMachine(ctx, store.Transition{Label: "m", From: from, To: to, Cause: "bench"}); err != nil {
			b.Fatal(err)
		}
		from, to = to, from
	}
	b.ReportMetric(float64(s.Stats().RoundTrips-before)/float64(b.N), "roundtrips/op")
}

// BenchStore opens a migrated store on a fresh database for a benchmark,
// closed when it ends.
func BenchStore(b *testing.B, newDB func(testing.TB) string, openAt func(context.Context, string) (store.Store, error)) store.Store {
	s, err := openAt(context.Background(), newDB(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	if err := s.Migrate(context.Background()); err != nil {
		b.Fatal(err)
	}
	return s
}
