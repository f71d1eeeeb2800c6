package fleet

import (
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
)

func TestDecide(t *testing.T) {
	tests := []struct {
		seen     Seen
		state    store.MachineState
		inFlight bool
		want     Action
		overdue  bool
	}{
		// New instances are registered, failed ones deleted.
		{SeenRunning, none, false, Register, false},
		{SeenCreating, none, false, Register, false},
		{SeenFailed, none, false, DeleteInst, false},
		// A vanished instance marks its machine gone, whatever it was doing.
		{SeenAbsent, store.Ready, false, MarkGone, false},
		{SeenAbsent, store.Leased, false, MarkGone, false},
		{SeenAbsent, store.Provisioning, false, MarkGone, false},
		{SeenAbsent, store.Quarantined, false, MarkGone, false},
		{SeenAbsent, store.Gone, false, Keep, false},
		// ... unless a delete in flight made it vanish: the operation finishes the move.
		{SeenAbsent, store.Deleting, true, Keep, false},
		{SeenAbsent, store.Deleting, false, MarkGone, false},
		// Readiness only through the agent.
		{SeenRunning, store.Provisioning, false, Probe, false},
		{SeenCreating, store.Provisioning, false, Keep, false},
		{SeenCreating, store.Ready, false, Unready, false},
		{SeenBusy, store.Ready, false, Unready, false},
		{SeenRunning, store.Ready, false, Refresh, false},
		{SeenRunning, store.Leased, false, Refresh, false},
		// A leased machine is the scheduler's, even if the instance misbehaves.
		{SeenBusy, store.Leased, false, Keep, false},
		{SeenFailed, store.Leased, false, Keep, false},
		// Dirty machines are reimaged; operations own their machines.
		{SeenRunning, store.Dirty, false, Reimage, false},
		{SeenRunning, store.Dirty, true, Keep, false},
		{SeenRunning, store.Reimaging, true, Keep, false},
		// A reimage lost in a crash is done again (reimage is idempotent); a
		// machine is never handed out before it was reimaged.
		{SeenRunning, store.Reimaging, false, Redo, false},
		{SeenBusy, store.Reimaging, false, Keep, false},
		{SeenRunning, store.Deleting, false, DeleteInst, false},
		// An instance we had given up on came back: reimaged before use.
		{SeenRunning, store.Gone, false, Revive, false},
		{SeenFailed, store.Gone, false, DeleteInst, false},
		// Quarantine holds until an operator releases it.
		{SeenRunning, store.Quarantined, false, Keep, false},
		{SeenFailed, store.Quarantined, false, DeleteInst, false},
		// Someone else deleting an instance: never registered, never revived;
		// our own delete runs its course.
		{SeenDeleting, none, false, Keep, false},
		{SeenDeleting, store.Gone, false, Keep, false},
		{SeenDeleting, store.Ready, false, MarkGone, false},
		{SeenDeleting, store.Deleting, false, Keep, false},
		// A machine whose agent never answered is replaced.
		{SeenRunning, store.Provisioning, false, DeleteInst, true},
		{SeenStopped, store.Provisioning, false, DeleteInst, true},
		{SeenRunning, store.Provisioning, true, Keep, true},
		{SeenRunning, store.Ready, false, Refresh, true},
	}
	for _, tt := range tests {
		if got := decide(tt.seen, tt.state, tt.inFlight, tt.overdue); got != tt.want {
			t.Errorf("decide(%s, %q, inFlight=%v, overdue=%v) = %s, want %s", tt.seen, tt.state, tt.inFlight, tt.overdue, got, tt.want)
		}
	}
}

// Every action a table cell names must be handled by apply; a Ready machine
// must never be reached from Dirty or Reimaging without an operation.
func TestTableNeverSkipsReimage(t *testing.T) {
	for c, a := range table {
		if (c.state == store.Dirty || c.state == store.Reimaging) && (a == Probe || a == Refresh) {
			t.Errorf("%v → %s would hand out a used machine", c, a)
		}
	}
}
