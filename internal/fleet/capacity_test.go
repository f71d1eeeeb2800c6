package fleet_test

import (
	"context"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
)

// A failed instance above max_size is deleted by the table; scale-in waits
// for that delete to land instead of also counting it as excess and deleting
// a healthy idle machine on a stale capacity read.
func TestScaleInWaitsForFailedInstanceDelete(t *testing.T) {
	st := openSQLite(t)
	c := newCloud(t, 0, 2) // initial_size = max_size = 2
	r := c.reconciler(t, st)
	stop := run(r)
	defer stop()
	poll.Until(t, 30*time.Second, "2 machines ready", func() bool { return countReady(t, st) == 2 })

	// A third instance appears behind sandfleet's back and fails provisioning.
	if _, err := c.emu.SetFaults([]byte(`{"fail_provisioning": 1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.emu.AddVM("win10x64", ""); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "the failed instance deleted", func() bool {
		return machineState(t, st, "win10x64_2") == store.Gone
	})
	// Let the passes after the delete run and any operation they began end.
	passes := r.PassStats().Passes
	poll.Until(t, 20*time.Second, "three more passes, nothing in flight", func() bool {
		ops, _ := st.ListOperations(context.Background(), store.OperationFilter{Unfinished: true})
		return r.PassStats().Passes >= passes+3 && len(ops) == 0
	})
	for _, l := range []string{"win10x64_0", "win10x64_1"} {
		if s := machineState(t, st, l); s != store.Ready {
			evs, _ := st.MachineEvents(context.Background(), l)
			for _, e := range evs {
				t.Logf("%s: %s → %s (%s)", l, e.From, e.To, e.Cause)
			}
			t.Fatalf("healthy idle %s is %s: deleted although only the failed instance was excess", l, s)
		}
	}
}
