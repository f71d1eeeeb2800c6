package fleet

import (
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
)

// Every (state, condition, provider view) cell is written out: none is left
// to a default, and the table holds no row for a state that does not exist.
func TestTableIsTotal(t *testing.T) {
	rows := 0
	for _, st := range tableStates {
		for c := range nCond {
			cells, ok := table[row{st, c}]
			if !ok {
				t.Errorf("no row for state %q × %s", st, c)
				continue
			}
			rows++
			for s := range nSeen {
				if cells[s] == "" {
					t.Errorf("no action for state %q × %s × %s", st, c, s)
				}
			}
		}
	}
	if len(table) != rows {
		t.Errorf("table has %d rows, %d of them for known states and conditions", len(table), rows)
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		seen  Seen
		state store.MachineState
		cond  Cond
		want  Action
	}{
		// New instances are registered, failed ones deleted.
		{Running, none, Quiet, Register},
		{Creating, none, Quiet, Register},
		{Failed, none, Quiet, Delete},
		// A vanished instance marks its machine gone, whatever it was doing.
		{Absent, store.Ready, Quiet, MarkGone},
		{Absent, store.Leased, Quiet, MarkGone},
		{Absent, store.Provisioning, Quiet, MarkGone},
		{Absent, store.Quarantined, Quiet, MarkGone},
		{Absent, store.Gone, Quiet, Keep},
		// ... unless a delete in flight made it vanish: the operation finishes the move.
		{Absent, store.Deleting, InFlight, Keep},
		{Absent, store.Deleting, Quiet, MarkGone},
		// Readiness only through the agent.
		{Running, store.Provisioning, Quiet, Probe},
		{Creating, store.Provisioning, Quiet, Keep},
		{Creating, store.Ready, Quiet, Unready},
		{Busy, store.Ready, Quiet, Unready},
		{Running, store.Ready, Quiet, Refresh},
		{Running, store.Leased, Quiet, Refresh},
		// A ready machine whose agent went silent leaves ready.
		{Running, store.Ready, AgentOverdue, Unready},
		// A leased machine is the scheduler's, even if the instance misbehaves.
		{Busy, store.Leased, Quiet, Keep},
		{Failed, store.Leased, Quiet, Keep},
		// Dirty machines are reimaged; operations own their machines.
		{Running, store.Dirty, Quiet, Reimage},
		{Running, store.Dirty, InFlight, Keep},
		{Running, store.Reimaging, InFlight, Keep},
		// A reimage lost in a crash is done again (reimage is idempotent); a
		// machine is never handed out before it was reimaged.
		{Running, store.Reimaging, Quiet, Redo},
		{Busy, store.Reimaging, Quiet, Keep},
		{Running, store.Deleting, Quiet, Delete},
		// An instance we had given up on came back: reimaged before use.
		{Running, store.Gone, Quiet, Revive},
		{Failed, store.Gone, Quiet, Delete},
		// Quarantine holds until an operator releases it.
		{Running, store.Quarantined, Quiet, Keep},
		{Failed, store.Quarantined, Quiet, Keep},
		// Someone else deleting an instance: never registered, never revived;
		// our own delete runs its course.
		{Deleting, none, Quiet, Keep},
		{Deleting, store.Gone, Quiet, Keep},
		{Deleting, store.Ready, Quiet, MarkGone},
		{Deleting, store.Deleting, Quiet, Keep},
		// A machine whose agent never answered is replaced.
		{Running, store.Provisioning, AgentOverdue, Replace},
		{Stopped, store.Provisioning, AgentOverdue, Replace},
		{Running, store.Provisioning, InFlight, Keep},
		// Pairs that cannot happen are anomalies, not silently kept.
		{Running, store.Leased, AgentOverdue, Anomaly},
		{Running, none, InFlight, Anomaly},
	}
	for _, tt := range tests {
		if got := decide(tt.seen, tt.state, tt.cond); got != tt.want {
			t.Errorf("decide(%s, %q, %s) = %s, want %s", tt.seen, tt.state, tt.cond, got, tt.want)
		}
	}
}

func TestCondPrecedence(t *testing.T) {
	if c := condOf(true, true); c != InFlight {
		t.Errorf("in flight and overdue = %s, want in-flight: the operation owns the machine", c)
	}
	if c := condOf(false, true); c != AgentOverdue {
		t.Errorf("overdue = %s", c)
	}
	if c := condOf(false, false); c != Quiet {
		t.Errorf("nothing = %s", c)
	}
}

// A machine that ran a sample (dirty, reimaging) or whose history is unknown
// (gone) is never made ready or kept in service without a reimage.
func TestTableNeverSkipsReimage(t *testing.T) {
	for r, cells := range table {
		if r.state != store.Dirty && r.state != store.Reimaging && r.state != store.Gone {
			continue
		}
		for s, a := range cells {
			if a == Probe || a == Refresh || a == Register {
				t.Errorf("%s × %s × %s → %s would hand out a used machine", r.state, r.cond, Seen(s), a)
			}
		}
	}
}

// Only provisioning and ready machines have agents the reconciler waits on;
// for every other state the condition cannot arise and the row says so.
func TestAgentOverdueOnlyWhereAgentsAreWatched(t *testing.T) {
	for _, st := range tableStates {
		if st == store.Provisioning || st == store.Ready {
			continue
		}
		for s, a := range table[row{st, AgentOverdue}] {
			if a != Anomaly {
				t.Errorf("%q × agent-overdue × %s = %s, want anomaly", st, Seen(s), a)
			}
		}
	}
}
