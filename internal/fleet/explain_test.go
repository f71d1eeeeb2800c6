package fleet_test

import (
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Every state but ready says what the machine waits on and since when.
func TestExplain(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	at := now.Add(-time.Minute)
	m := func(state store.MachineState, edit ...func(*store.Machine)) store.Machine {
		x := store.Machine{Label: "w_1", Pool: "w", InstanceID: "1", IP: "127.0.0.9", State: state, StateChangedOn: at,
			LockedChangedOn: at}
		for _, e := range edit {
			e(&x)
		}
		return x
	}
	reimage := store.Operation{ID: 17, Pool: "w", Kind: store.OpReimage, InstanceIDs: []string{"0", "1"}, CreatedAt: at, Attempt: 2}
	grow := store.Operation{ID: 18, Pool: "w", Kind: store.OpSetCapacity, Capacity: 4, CreatedAt: at}
	other := store.Operation{ID: 19, Pool: "x", Kind: store.OpReimage, InstanceIDs: []string{"1"}, CreatedAt: at}
	for _, tt := range []struct {
		name string
		m    store.Machine
		ops  []store.Operation
		live fleet.Live
		want string
	}{
		{"ready", m(store.Ready), nil, fleet.Live{}, ""},
		{"leased", m(store.Leased, func(x *store.Machine) { x.TaskID = 41 }), nil, fleet.Live{}, "leased by task 41 since 11:59:00"},
		{"dirty, waiting", m(store.Dirty), []store.Operation{other}, fleet.Live{}, "dirty since 11:59:00, waiting for its reimage"},
		{"dirty, reimage in flight", m(store.Dirty), []store.Operation{reimage}, fleet.Live{},
			"dirty: reimage operation 17 in flight since 11:59:00 (attempt 2)"},
		{"dirty, throttled", m(store.Dirty), nil, fleet.Live{Throttled: "provider throttled (reimage) until 12:02:00"},
			"dirty since 11:59:00, its reimage waits: provider throttled (reimage) until 12:02:00"},
		{"dirty, failing", m(store.Dirty, func(x *store.Machine) { x.Failures = 2 }), nil, fleet.Live{LastCause: "reset_command: exit status 1"},
			"the last 2 failed: reset_command: exit status 1"},
		{"reimaging", m(store.Reimaging), []store.Operation{reimage}, fleet.Live{}, "reimage operation 17 in flight since 11:59:00"},
		{"created", m(store.Provisioning), []store.Operation{grow}, fleet.Live{}, "scale to 4 operation 18 in flight"},
		{"agent silent", m(store.Provisioning), nil, fleet.Live{AgentErr: "connection refused", AgentSince: at.Add(10 * time.Second)},
			"agent at 127.0.0.9 not answering since 11:59:10: connection refused"},
		{"no IP yet", m(store.Provisioning, func(x *store.Machine) { x.IP = "" }), nil, fleet.Live{}, "provisioning since 11:59:00: no IP address yet"},
		{"another node's", m(store.Provisioning), nil, fleet.Live{LastCause: "agent stopped answering: timeout"},
			"(agent stopped answering: timeout): waiting for its agent at 127.0.0.9 to answer"},
		{"quarantined", m(store.Quarantined, func(x *store.Machine) { x.QuarantineReason = "reimage failed 3 times in a row" }), nil, fleet.Live{},
			"quarantined since 11:59:00 because reimage failed 3 times in a row"},
		{"gone", m(store.Gone), nil, fleet.Live{LastCause: "absent from the provider"}, "gone since 11:59:00: absent from the provider"},
		{"yesterday", m(store.Dirty, func(x *store.Machine) { x.StateChangedOn = now.Add(-24 * time.Hour) }), nil, fleet.Live{},
			"dirty since 2026-11-29 12:00:00"},
	} {
		got := fleet.Explain(tt.m, tt.ops, tt.live, now)
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
	if g := fleet.Growing("w", 2, []store.Operation{reimage, grow}, now); g != "pool w growing: +2 requested 11:59:00 (operation 18)" {
		t.Errorf("growing: %q", g)
	}
	if g := fleet.Growing("w", 4, []store.Operation{grow}, now); g != "" {
		t.Errorf("a pool at its capacity is growing: %q", g)
	}
}
