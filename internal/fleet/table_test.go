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
	}{
		// New instances are registered, failed ones deleted.
		{SeenRunning, none, false, Register},
		{SeenCreating, none, false, Register},
		{SeenFailed, none, false, DeleteInst},
		// A vanished instance marks its machine gone, whatever it was doing.
		{SeenAbsent, store.Ready, false, MarkGone},
		{SeenAbsent, store.Leased, false, MarkGone},
		{SeenAbsent, store.Provisioning, false, MarkGone},
		{SeenAbsent, store.Quarantined, false, MarkGone},
		{SeenAbsent, store.Gone, false, Keep},
		// ... unless a delete in flight made it vanish: the operation finishes the move.
		{SeenAbsent, store.Deleting, true, Keep},
		{SeenAbsent, store.Deleting, false, MarkGone},
		// Readiness only through the agent.
		{SeenRunning, store.Provisioning, false, Probe},
		{SeenCreating, store.Provisioning, false, Keep},
		{SeenCreating, store.Ready, false, Unready},
		{SeenBusy, store.Ready, false, Unready},
		{SeenRunning, store.Ready, false, Refresh},
		{SeenRunning, store.Leased, false, Refresh},
		// A leased machine is the scheduler's, even if the instance misbehaves.
		{SeenBusy, store.Leased, false, Keep},
		{SeenFailed, store.Leased, false, Keep},
		// Dirty machines are reimaged; operations own their machines.
		{SeenRunning, store.Dirty, false, Reimage},
		{SeenRunning, store.Dirty, true, Keep},
		{SeenRunning, store.Reimaging, true, Keep},
		// A reimage lost in a crash is done again (reimage is idempotent); a
		// machine is never handed out before it was reimaged.
		{SeenRunning, store.Reimaging, false, Redo},
		{SeenBusy, store.Reimaging, false, Keep},
		{SeenRunning, store.Deleting, false, DeleteInst},
		// An instance we had given up on came back.
		{SeenRunning, store.Gone, false, Revive},
		{SeenFailed, store.Gone, false, DeleteInst},
		// Quarantine holds until an operator releases it.
		{SeenRunning, store.Quarantined, false, Keep},
		{SeenFailed, store.Quarantined, false, DeleteInst},
	}
	for _, tt := range tests {
		if got := decide(tt.seen, tt.state, tt.inFlight); got != tt.want {
			t.Errorf("decide(%s, %q, inFlight=%v) = %s, want %s", tt.seen, tt.state, tt.inFlight, got, tt.want)
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
