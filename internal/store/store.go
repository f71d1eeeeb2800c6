// Package store is sandfleet's database: one narrow Store interface, implemented
// for SQLite (store/sqlite) and PostgreSQL (store/postgres) over one SQL core
// (store/sqlstore), and one conformance suite (store/storetest) run on both.
//
// Every method is one short transaction: nothing here is ever held open across a
// cloud, hypervisor or guest call (SPEC §1.1). Every machine state change is a
// compare-and-set on (state, version) and is recorded in machine_events in the
// same transaction.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by every Store implementation.
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique key (a machine label, a pool name) already exists.
	ErrConflict = errors.New("already exists")
	// ErrStale: a compare-and-set found the row in another state or version.
	ErrStale = errors.New("stale: state or version changed")
)

// MachineState is where a machine is in its life (SPEC §4).
type MachineState string

// Machine states. The reconciler's transition table (internal/fleet) says which
// moves between them are allowed.
const (
	Provisioning MachineState = "provisioning" // instance exists, agent not yet answering
	Ready        MachineState = "ready"        // clean and free
	Leased       MachineState = "leased"       // a task holds it (CAPE locked)
	Dirty        MachineState = "dirty"        // used, awaiting reimage or revert
	Reimaging    MachineState = "reimaging"
	Deleting     MachineState = "deleting"
	Quarantined  MachineState = "quarantined" // failed a check; see QuarantineReason
	Gone         MachineState = "gone"        // absent from the provider
)

// MachineStates lists every state, in lifecycle order.
var MachineStates = []MachineState{Provisioning, Ready, Leased, Dirty, Reimaging, Deleting, Quarantined, Gone}

// Pool is a configured pool as last applied to the database.
type Pool struct {
	Name        string
	Provider    string // azure | libvirt | static
	Platform    string
	Arch        string
	Tags        []string
	Image       string
	InitialSize int
	MaxSize     int
	Reserved    bool
	UpdatedAt   time.Time
}

// Machine is one machine row: CAPE's columns plus sandfleet's.
type Machine struct {
	ID               int64
	Name             string // CAPE name; equals Label
	Label            string // unique; <vmss>_<instanceId> on Azure
	Pool             string
	InstanceID       string // provider instance id
	Arch             string
	IP               string
	Platform         string
	Interface        string
	Snapshot         string
	ResultServerIP   string
	ResultServerPort int
	Reserved         bool
	Tags             []string
	State            MachineState
	StateChangedOn   time.Time
	LockedChangedOn  time.Time // last time State entered or left Leased; zero if never
	QuarantineReason string
	// Failures counts the operations on this machine (reimages, deletes)
	// that failed in a row since the last one that succeeded. Leaving
	// quarantine clears it: an operator vouched for the machine.
	Failures int
	// TaskID is the task holding the machine while it is leased; 0 otherwise.
	TaskID    int64
	Version   int64 // bumped by every change; compare-and-set key
	CreatedAt time.Time
}

// Locked is CAPE's locked flag: true while a task holds the machine.
func (m Machine) Locked() bool { return m.State == Leased }

// MachineFilter selects machines; zero fields match everything.
type MachineFilter struct {
	Pool   string
	States []MachineState
}

// Transition is a compare-and-set on one machine: it applies only while the row
// is in state From and (when Version is non-zero) at that version. To may equal
// From to change fields without a state change; an event is recorded only when
// the state changes.
type Transition struct {
	Label   string
	From    MachineState
	Version int64
	To      MachineState
	Cause   string
	// Optional field changes applied in the same statement.
	IP               *string
	QuarantineReason *string // set on entering Quarantined; cleared on leaving it if nil
	Failures         FailureCount
	// TaskID is the task a move into Leased hands the machine to; leaving
	// Leased clears it.
	TaskID int64
}

// FailureCount is what a transition does to Machine.Failures.
type FailureCount int

// What a transition does to the failure count.
const (
	KeepFailures  FailureCount = iota // leave it
	AddFailure                        // an operation on the machine failed
	ClearFailures                     // an operation on the machine succeeded
)

// MachineEvent records one state transition.
type MachineEvent struct {
	ID        int64
	MachineID int64
	Label     string
	From      MachineState // "" for the row's creation
	To        MachineState
	Cause     string
	At        time.Time
}

// OpKind names a provider operation journaled before it is issued.
type OpKind string

// Operation kinds.
const (
	OpCreatePool  OpKind = "create_pool"  // create a scale set
	OpDeletePool  OpKind = "delete_pool"  // delete a scale set
	OpUpdatePool  OpKind = "update_pool"  // change a scale set's model (image)
	OpSetCapacity OpKind = "set_capacity" // grow a scale set to Capacity
	OpReimage     OpKind = "reimage"      // reimage InstanceIDs
	OpDelete      OpKind = "delete"       // delete InstanceIDs
)

// OpState is an operation's progress in the journal.
type OpState string

// Operation states. Pending: intent written, not known to be issued. Running:
// issued, its resume token stored. The other three are final.
const (
	OpPending   OpState = "pending"
	OpRunning   OpState = "running"
	OpSucceeded OpState = "succeeded"
	OpFailed    OpState = "failed"
	OpAbandoned OpState = "abandoned" // resume impossible; re-derived from the cloud
)

// Final reports whether s is a terminal state.
func (s OpState) Final() bool { return s == OpSucceeded || s == OpFailed || s == OpAbandoned }

// Operation is one journaled provider operation (SPEC §1.3).
type Operation struct {
	ID          int64
	Pool        string
	Kind        OpKind
	InstanceIDs []string
	Capacity    int // for OpSetCapacity / OpCreatePool
	State       OpState
	ResumeToken string
	Attempt     int
	Deadline    time.Time
	Error       string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// OperationFilter selects operations; zero fields match everything.
type OperationFilter struct {
	Pool       string
	Unfinished bool // only Pending and Running
	Limit      int  // 0 = no limit; newest first when set
}

// Stats counts database round trips, for benchmarks.
type Stats struct {
	RoundTrips int64
}

// Schema is which migrations a database has, against those this build embeds.
type Schema struct {
	Applied []int // recorded in the database, ascending; none if never migrated
	Latest  int   // the newest this build embeds
	Pending []int // embedded and not applied, ascending
}

// Current reports whether the database has every migration this build
// embeds, and none newer.
func (s Schema) Current() bool {
	return len(s.Pending) == 0 && len(s.Applied) > 0 && s.Applied[len(s.Applied)-1] == s.Latest
}

// Store is sandfleet's database. Each method is one short transaction.
type Store interface {
	// Migrate applies the embedded migrations; idempotent.
	Migrate(ctx context.Context) error
	// Schema reads which migrations the database has, changing nothing
	// (not even creating the table that records them).
	Schema(ctx context.Context) (Schema, error)
	Close() error
	// Dialect names the database: "sqlite" or "postgres".
	Dialect() string
	Stats() Stats

	// UpsertPool inserts or updates a pool by name.
	UpsertPool(ctx context.Context, p Pool) error
	GetPool(ctx context.Context, name string) (Pool, error)
	ListPools(ctx context.Context) ([]Pool, error)

	// InsertMachines inserts new machines in one transaction, each with an event
	// ("" → State, cause). Any label that exists already fails the whole call
	// with ErrConflict. Returned machines carry their IDs and versions.
	InsertMachines(ctx context.Context, ms []Machine, cause string) ([]Machine, error)
	GetMachine(ctx context.Context, label string) (Machine, error)
	ListMachines(ctx context.Context, f MachineFilter) ([]Machine, error)
	// TransitionMachine applies one compare-and-set. ErrNotFound: no such label.
	// ErrStale: the row was not in t.From (or not at t.Version).
	TransitionMachine(ctx context.Context, t Transition) (Machine, error)
	// TransitionMachines applies many compare-and-sets in one transaction; each
	// succeeds or goes stale on its own. The result has one entry per
	// transition: the new row, or nil where it went stale or was not found.
	TransitionMachines(ctx context.Context, ts []Transition) ([]*Machine, error)
	// MachineEvents lists a machine's events, oldest first.
	MachineEvents(ctx context.Context, label string) ([]MachineEvent, error)

	// CreateOperation journals an intent (State Pending) and returns it with its ID.
	CreateOperation(ctx context.Context, op Operation) (Operation, error)
	// SetOperationToken stores a resume token and moves Pending → Running.
	SetOperationToken(ctx context.Context, id int64, token string) error
	// FinishOperation moves an unfinished operation to a final state.
	// ErrStale if it is already final.
	FinishOperation(ctx context.Context, id int64, state OpState, errMsg string) error
	GetOperation(ctx context.Context, id int64) (Operation, error)
	ListOperations(ctx context.Context, f OperationFilter) ([]Operation, error)

	// Leases elect the one node that does a job when several share a
	// database (internal/leadership). A lease is held by one holder in one
	// term, a number that only grows for its name, until an expiry set by
	// the database's clock where it has one (PostgreSQL), else the process's.
	//
	// PutSample stores a sample's record by its SHA-256 and returns it; a
	// sample already known is returned as it is.
	PutSample(ctx context.Context, smp Sample) (Sample, error)
	GetSample(ctx context.Context, id int64) (Sample, error)

	// CreateTasks inserts tasks as pending, each with its creation event, in
	// one transaction: all or none.
	CreateTasks(ctx context.Context, ts []Task, cause string) ([]Task, error)
	GetTask(ctx context.Context, id int64) (Task, error)
	ListTasks(ctx context.Context, f TaskFilter) ([]Task, error)
	// CountTasks counts tasks by status.
	CountTasks(ctx context.Context) (map[TaskStatus]int, error)
	// CountEndedByHour counts the tasks that ended (completed_on set) at or
	// after since, by status and UTC hour: one row a status an hour, so the
	// answer stays small however many tasks ended.
	CountEndedByHour(ctx context.Context, since time.Time) ([]HourCount, error)
	// TaskEvents lists a task's events, oldest first.
	TaskEvents(ctx context.Context, id int64) ([]TaskEvent, error)
	// PendingTasks lists up to limit pending tasks in dispatch order:
	// priority (highest first), then age.
	PendingTasks(ctx context.Context, limit int) ([]Task, error)
	// Lease hands machines to tasks, each pair in one compare-and-set (task
	// pending → running, machine ready → leased): both or neither, never
	// half a pair. The pairs share one short transaction; one results entry a
	// request, ErrStale for a pair whose task or machine had moved (or was
	// named by an earlier pair of the batch).
	Lease(ctx context.Context, rs []LeaseRequest) ([]LeaseResult, error)
	// RenewLeases extends node's leases on the running tasks ids by ttl; it
	// returns the ids still held.
	RenewLeases(ctx context.Context, node string, ids []int64, ttl time.Duration) ([]int64, error)
	// ExpiredLeases lists running tasks whose lease expired by the
	// database's clock.
	ExpiredLeases(ctx context.Context) ([]Task, error)
	// EndTask ends a running analysis; ErrStale if the task is not running
	// under e.Node.
	EndTask(ctx context.Context, e TaskEnd) (Task, error)
	// RequeueTask puts a running task back in the queue (or fails it past
	// its attempts); ErrStale if it is not running under r.Node.
	RequeueTask(ctx context.Context, r Requeue) (Task, error)
	// PendingHooks lists the tasks whose hooks.on_complete waits to run on
	// node, oldest end first.
	PendingHooks(ctx context.Context, node string) ([]Task, error)
	// RecordHook records how a pending hook of node ended; ErrStale if the
	// task's hook is no longer pending on that node (a later analysis of
	// the same task left a new one, or the task was deleted).
	RecordHook(ctx context.Context, h HookRun) error
	// TransitionTask applies one compare-and-set on a task's status.
	TransitionTask(ctx context.Context, t TaskTransition) (Task, error)
	// DeleteTask removes a task that is not running, with its events and
	// tags; ErrStale if it is running.
	DeleteTask(ctx context.Context, id int64) error

	// ElectLeader takes the lease called name for holder until now+ttl if it
	// is free, expired, or already holder's (a node restarted under the same
	// id takes its lease back at once), starting a new term, which it
	// returns. Of several callers racing for it, exactly one is elected.
	ElectLeader(ctx context.Context, name, holder string, ttl time.Duration) (term int64, elected bool, err error)
	// ReelectLeader extends the lease to now+ttl only if holder holds it in
	// term and it has not expired. False means the term is over: the lease
	// lapsed or another election took it.
	ReelectLeader(ctx context.Context, name, holder string, term int64, ttl time.Duration) (bool, error)
	// ResignLeader frees the lease if holder holds it in term, so that
	// another node can be elected at once; otherwise it does nothing.
	ResignLeader(ctx context.Context, name, holder string, term int64) error
}
