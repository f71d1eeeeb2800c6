package fleet

import (
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Seen is what the provider's latest list says of one instance.
type Seen int

// What the provider can say of an instance: the table's columns.
const (
	Absent   Seen = iota // not in the list
	Creating             // being created
	Running              // provisioned and running
	Busy                 // an operation is in progress on it (update, reimage)
	Deleting             // being deleted: as good as absent, but not gone yet
	Failed               // provisioning failed: it still takes capacity
	Stopped              // deallocated, stopped or evicted
	nSeen
)

var seenNames = [nSeen]string{"absent", "creating", "running", "busy", "deleting", "failed", "stopped"}

func (s Seen) String() string {
	if s < 0 || s >= nSeen {
		return "seen?"
	}
	return seenNames[s]
}

// seen maps a provider instance state to a Seen.
func seen(s provider.InstanceState) Seen {
	switch s {
	case provider.InstanceCreating:
		return Creating
	case provider.InstanceRunning:
		return Running
	case provider.InstanceFailed:
		return Failed
	case provider.InstanceStopped:
		return Stopped
	case provider.InstanceDeleting:
		return Deleting
	default:
		return Busy
	}
}

// Cond is what else the reconciler knows of a machine, besides the
// provider's view and the machine's state.
type Cond int

// Conditions. When several hold, the first listed wins: an operation in
// flight owns its machines whatever their agents do.
const (
	Quiet    Cond = iota // nothing else
	InFlight             // an operation this node awaits owns the instance; it moves the machine when it ends
	// AgentOverdue: the machine's guest agent does not answer when it
	// should — a provisioning machine's for longer than timeouts.vm_state,
	// a ready machine's to its health probes. Other states never have it.
	AgentOverdue
	nCond
)

var condNames = [nCond]string{"quiet", "in-flight", "agent-overdue"}

func (c Cond) String() string {
	if c < 0 || c >= nCond {
		return "cond?"
	}
	return condNames[c]
}

// condOf derives a machine's Cond from what the reconciler knows.
func condOf(inFlight, agentOverdue bool) Cond {
	switch {
	case inFlight:
		return InFlight
	case agentOverdue:
		return AgentOverdue
	}
	return Quiet
}

// Action is what the reconciler does about one (instance, machine) pair.
type Action string

// Actions. Each is idempotent: run twice, or after a crash halfway, it ends in
// the same place.
const (
	Keep     Action = "keep"      // nothing to do (or an operation in flight owns it)
	Register Action = "register"  // insert the machine as provisioning
	Revive   Action = "revive"    // gone → dirty: the instance is back, its history unknown
	Probe    Action = "probe"     // ask the agent; provisioning → ready when it answers
	Unready  Action = "unready"   // ready → provisioning: the instance is not running, or its agent went silent
	Refresh  Action = "refresh"   // update a changed IP
	MarkGone Action = "mark-gone" // the instance vanished
	Reimage  Action = "reimage"   // dirty → reimaging, batched
	Redo     Action = "redo"      // its reimage was lost: reimaging → dirty, to be reimaged again
	Restart  Action = "restart"   // provisioning → dirty: the instance stopped, and a reimage starts it (see restartStopped)
	Delete   Action = "delete"    // → deleting, and delete the instance (it failed, or our delete was lost)
	// Replace: the machine's agent never answered. A provider that deletes
	// instances deletes it (capacity brings a new one); otherwise it is
	// quarantined with the reason, for an operator.
	Replace Action = "replace"
	// Anomaly: a pair that should never happen. Logged once, left alone.
	Anomaly Action = "anomaly"
)

// none stands for "no machine row" in the table.
const none store.MachineState = ""

// tableStates are the table's machine states, "no row" first.
var tableStates = append([]store.MachineState{none}, store.MachineStates...)

type row struct {
	state store.MachineState
	cond  Cond
}

// table is the whole per-machine policy: machine state × condition ×
// provider view → action. Every cell is written out; table_test.go fails on
// a missing one.
var table = map[row][nSeen]Action{
	// No row yet: a new instance is registered, never usable before its agent
	// answers; one someone is deleting is never registered; a failed one is
	// deleted. An operation never owns an instance without a row.
	{none, Quiet}:        {Absent: Anomaly, Creating: Register, Running: Register, Busy: Register, Deleting: Keep, Failed: Delete, Stopped: Register},
	{none, InFlight}:     {Absent: Anomaly, Creating: Anomaly, Running: Anomaly, Busy: Anomaly, Deleting: Anomaly, Failed: Anomaly, Stopped: Anomaly},
	{none, AgentOverdue}: {Absent: Anomaly, Creating: Anomaly, Running: Anomaly, Busy: Anomaly, Deleting: Anomaly, Failed: Anomaly, Stopped: Anomaly},

	// Readiness comes only from the agent; one that never answers is replaced.
	{store.Provisioning, Quiet}:        {Absent: MarkGone, Creating: Keep, Running: Probe, Busy: Keep, Deleting: MarkGone, Failed: Delete, Stopped: Keep},
	{store.Provisioning, InFlight}:     {Absent: MarkGone, Creating: Keep, Running: Keep, Busy: Keep, Deleting: Keep, Failed: Keep, Stopped: Keep},
	{store.Provisioning, AgentOverdue}: {Absent: MarkGone, Creating: Replace, Running: Replace, Busy: Replace, Deleting: MarkGone, Failed: Delete, Stopped: Replace},

	// Ready means running with an answering agent, and nothing less.
	{store.Ready, Quiet}:        {Absent: MarkGone, Creating: Unready, Running: Refresh, Busy: Unready, Deleting: MarkGone, Failed: Delete, Stopped: Unready},
	{store.Ready, InFlight}:     {Absent: MarkGone, Creating: Keep, Running: Keep, Busy: Keep, Deleting: Keep, Failed: Keep, Stopped: Keep},
	{store.Ready, AgentOverdue}: {Absent: MarkGone, Creating: Unready, Running: Unready, Busy: Unready, Deleting: MarkGone, Failed: Delete, Stopped: Unready},

	// A leased machine is its task's, even if the instance misbehaves: the
	// analysis finds out and releases it. Only its disappearance is ours.
	{store.Leased, Quiet}:        {Absent: MarkGone, Creating: Keep, Running: Refresh, Busy: Keep, Deleting: MarkGone, Failed: Keep, Stopped: Keep},
	{store.Leased, InFlight}:     {Absent: MarkGone, Creating: Keep, Running: Keep, Busy: Keep, Deleting: Keep, Failed: Keep, Stopped: Keep},
	{store.Leased, AgentOverdue}: {Absent: Anomaly, Creating: Anomaly, Running: Anomaly, Busy: Anomaly, Deleting: Anomaly, Failed: Anomaly, Stopped: Anomaly},

	// A used machine is reimaged before anyone gets it again.
	{store.Dirty, Quiet}:        {Absent: MarkGone, Creating: Keep, Running: Reimage, Busy: Keep, Deleting: MarkGone, Failed: Delete, Stopped: Reimage},
	{store.Dirty, InFlight}:     {Absent: MarkGone, Creating: Keep, Running: Keep, Busy: Keep, Deleting: Keep, Failed: Keep, Stopped: Keep},
	{store.Dirty, AgentOverdue}: {Absent: Anomaly, Creating: Anomaly, Running: Anomaly, Busy: Anomaly, Deleting: Anomaly, Failed: Anomaly, Stopped: Anomaly},

	// Reimaging with no operation in flight: it was lost in a crash or
	// abandoned. Reimage is idempotent, so it is done again — unless the
	// cloud is still busy with it. In flight, the operation finishes the move.
	{store.Reimaging, Quiet}:        {Absent: MarkGone, Creating: Redo, Running: Redo, Busy: Keep, Deleting: MarkGone, Failed: Delete, Stopped: Redo},
	{store.Reimaging, InFlight}:     {Absent: Keep, Creating: Keep, Running: Keep, Busy: Keep, Deleting: Keep, Failed: Keep, Stopped: Keep},
	{store.Reimaging, AgentOverdue}: {Absent: Anomaly, Creating: Anomaly, Running: Anomaly, Busy: Anomaly, Deleting: Anomaly, Failed: Anomaly, Stopped: Anomaly},

	// Deleting with no operation in flight: the delete was lost; delete again.
	{store.Deleting, Quiet}:        {Absent: MarkGone, Creating: Delete, Running: Delete, Busy: Keep, Deleting: Keep, Failed: Delete, Stopped: Delete},
	{store.Deleting, InFlight}:     {Absent: Keep, Creating: Keep, Running: Keep, Busy: Keep, Deleting: Keep, Failed: Keep, Stopped: Keep},
	{store.Deleting, AgentOverdue}: {Absent: Anomaly, Creating: Anomaly, Running: Anomaly, Busy: Anomaly, Deleting: Anomaly, Failed: Anomaly, Stopped: Anomaly},

	// Quarantine holds, whatever the instance does, until an operator
	// releases the machine (→ dirty) or the instance vanishes.
	{store.Quarantined, Quiet}:        {Absent: MarkGone, Creating: Keep, Running: Keep, Busy: Keep, Deleting: MarkGone, Failed: Keep, Stopped: Keep},
	{store.Quarantined, InFlight}:     {Absent: MarkGone, Creating: Keep, Running: Keep, Busy: Keep, Deleting: Keep, Failed: Keep, Stopped: Keep},
	{store.Quarantined, AgentOverdue}: {Absent: Anomaly, Creating: Anomaly, Running: Anomaly, Busy: Anomaly, Deleting: Anomaly, Failed: Anomaly, Stopped: Anomaly},

	// An instance we had marked gone came back (same label): after a bad
	// read, or a static machine put back in the configuration. What it did
	// meanwhile is unknown, so it is reimaged before use.
	{store.Gone, Quiet}:        {Absent: Keep, Creating: Revive, Running: Revive, Busy: Revive, Deleting: Keep, Failed: Delete, Stopped: Revive},
	{store.Gone, InFlight}:     {Absent: Keep, Creating: Keep, Running: Keep, Busy: Keep, Deleting: Keep, Failed: Keep, Stopped: Keep},
	{store.Gone, AgentOverdue}: {Absent: Anomaly, Creating: Anomaly, Running: Anomaly, Busy: Anomaly, Deleting: Anomaly, Failed: Anomaly, Stopped: Anomaly},
}

// decide looks up the action for one pair. A cell missing from the table
// (table_test.go makes sure there is none) is an anomaly, never a default.
// restartStopped is the one departure from the table, for a provider whose
// reimage starts a stopped instance (Capabilities.ReimageStarts: libvirt): a
// provisioning machine whose instance is stopped is sent to be reimaged at
// once (Restart), where the table waits for the instance to run (a cloud VM
// someone deallocated) and, after timeouts.vm_state, replaces or
// quarantines it. A ready machine whose instance stopped is first unready,
// as in the table, then restarted. After a host reboot every domain is shut
// off: CAPE reverts each at its next analysis; sandfleet at once.
func restartStopped(caps provider.Capabilities, s Seen, state store.MachineState, c Cond, a Action) Action {
	if caps.ReimageStarts && s == Stopped && state == store.Provisioning && c != InFlight {
		return Restart
	}
	return a
}

func decide(s Seen, state store.MachineState, c Cond) Action {
	cells, ok := table[row{state, c}]
	if !ok || s < 0 || s >= nSeen || cells[s] == "" {
		return Anomaly
	}
	return cells[s]
}
