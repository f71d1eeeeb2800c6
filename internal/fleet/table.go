package fleet

import (
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Seen is what the provider's latest list says of one instance.
type Seen string

// What the provider can say of an instance.
const (
	SeenAbsent   Seen = "absent"   // not in the list
	SeenCreating Seen = "creating" // being created
	SeenRunning  Seen = "running"  // provisioned and running
	SeenBusy     Seen = "busy"     // an operation is in progress on it (update, reimage)
	SeenDeleting Seen = "deleting" // being deleted: as good as absent, but not gone yet
	SeenFailed   Seen = "failed"   // provisioning failed: delete it
	SeenStopped  Seen = "stopped"  // deallocated, stopped or evicted
)

// seen maps a provider instance state to a Seen.
func seen(s provider.InstanceState) Seen {
	switch s {
	case provider.InstanceCreating:
		return SeenCreating
	case provider.InstanceRunning:
		return SeenRunning
	case provider.InstanceFailed:
		return SeenFailed
	case provider.InstanceStopped:
		return SeenStopped
	case provider.InstanceDeleting:
		return SeenDeleting
	default:
		return SeenBusy
	}
}

// Action is what the reconciler does about one (instance, machine) pair.
type Action string

// Actions. Each is idempotent: run twice, or after a crash halfway, it ends in
// the same place.
const (
	Keep       Action = "keep"      // nothing to do (or an operation in flight owns it)
	Register   Action = "register"  // insert the machine as provisioning
	Revive     Action = "revive"    // gone → provisioning: the instance is back
	Probe      Action = "probe"     // ask the agent; provisioning → ready when it answers
	Unready    Action = "unready"   // ready → provisioning: the instance is not running
	Refresh    Action = "refresh"   // update a changed IP
	MarkGone   Action = "mark-gone" // the instance vanished
	Reimage    Action = "reimage"   // dirty → reimaging, batched
	Redo       Action = "redo"      // its operation was lost: reimaging → dirty
	DeleteInst Action = "delete"    // → deleting, and delete the instance
)

// none stands for "no machine row" in the table.
const none store.MachineState = ""

type cell struct {
	seen  Seen
	state store.MachineState
}

// table is the whole per-machine policy: provider view × database state →
// action. A pair missing from the table is Keep. Machines whose operation is in
// flight are not looked up at all (they are Keep) — see decide.
var table = map[cell]Action{
	// The instance is gone from the provider: whatever the row said, it is gone.
	{SeenAbsent, store.Provisioning}: MarkGone,
	{SeenAbsent, store.Ready}:        MarkGone,
	{SeenAbsent, store.Leased}:       MarkGone,
	{SeenAbsent, store.Dirty}:        MarkGone,
	{SeenAbsent, store.Reimaging}:    MarkGone,
	{SeenAbsent, store.Deleting}:     MarkGone,
	{SeenAbsent, store.Quarantined}:  MarkGone,

	// New instances are registered, never usable before their agent answers.
	{SeenCreating, none}: Register,
	{SeenRunning, none}:  Register,
	{SeenBusy, none}:     Register,
	{SeenStopped, none}:  Register,
	{SeenFailed, none}:   DeleteInst,

	// An instance we had marked gone came back (same label): after a bad read,
	// or a static machine put back in the configuration. What it did meanwhile
	// is unknown, so it is reimaged before use.
	{SeenCreating, store.Gone}: Revive,
	{SeenRunning, store.Gone}:  Revive,
	{SeenBusy, store.Gone}:     Revive,
	{SeenStopped, store.Gone}:  Revive,
	{SeenFailed, store.Gone}:   DeleteInst,

	{SeenRunning, store.Provisioning}: Probe,
	{SeenFailed, store.Provisioning}:  DeleteInst,

	// Someone else is deleting it: as good as gone, unless it is our delete.
	{SeenDeleting, store.Provisioning}: MarkGone,
	{SeenDeleting, store.Ready}:        MarkGone,
	{SeenDeleting, store.Leased}:       MarkGone,
	{SeenDeleting, store.Dirty}:        MarkGone,
	{SeenDeleting, store.Reimaging}:    MarkGone,
	{SeenDeleting, store.Quarantined}:  MarkGone,

	{SeenRunning, store.Ready}:  Refresh,
	{SeenCreating, store.Ready}: Unready,
	{SeenBusy, store.Ready}:     Unready,
	{SeenStopped, store.Ready}:  Unready,
	{SeenFailed, store.Ready}:   DeleteInst,

	{SeenRunning, store.Leased}: Refresh,

	{SeenRunning, store.Dirty}: Reimage,
	{SeenStopped, store.Dirty}: Reimage,
	{SeenFailed, store.Dirty}:  DeleteInst,

	// No operation in flight for these (decide checks): it was lost in a crash
	// or abandoned. Reimage is idempotent, so do it again; delete likewise.
	{SeenRunning, store.Reimaging}:  Redo,
	{SeenStopped, store.Reimaging}:  Redo,
	{SeenCreating, store.Reimaging}: Redo,
	{SeenFailed, store.Reimaging}:   DeleteInst,
	{SeenRunning, store.Deleting}:   DeleteInst,
	{SeenStopped, store.Deleting}:   DeleteInst,
	{SeenFailed, store.Deleting}:    DeleteInst,
	{SeenCreating, store.Deleting}:  DeleteInst,

	{SeenFailed, store.Quarantined}: DeleteInst,
}

// decide returns the action for one pair. inFlight says an operation this
// process is waiting on owns the instance: it will move the machine itself.
// overdue says a provisioning machine has waited longer than its deadline for
// its agent: the instance is replaced.
func decide(s Seen, state store.MachineState, inFlight, overdue bool) Action {
	if inFlight && s != SeenAbsent {
		return Keep
	}
	if overdue && state == store.Provisioning && s != SeenAbsent && s != SeenDeleting {
		return DeleteInst
	}
	if inFlight && s == SeenAbsent && (state == store.Deleting || state == store.Reimaging) {
		// A delete in flight makes the instance vanish before the operation
		// reports; let the operation finish the move.
		return Keep
	}
	if a, ok := table[cell{s, state}]; ok {
		return a
	}
	return Keep
}
