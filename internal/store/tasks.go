package store

import (
	"slices"
	"time"
)

// TaskStatus is where a task is in its life: CAPE's statuses (reference
// cape.md §3).
type TaskStatus string

// Task statuses. sandfleet moves tasks through pending → running →
// completed or failed_analysis; the others are CAPE's, for its processing
// and distribution to use.
const (
	TaskPending              TaskStatus = "pending"
	TaskRunning              TaskStatus = "running"
	TaskCompleted            TaskStatus = "completed"
	TaskRecovered            TaskStatus = "recovered"
	TaskReported             TaskStatus = "reported"
	TaskBanned               TaskStatus = "banned"
	TaskFailedAnalysis       TaskStatus = "failed_analysis"
	TaskFailedProcessing     TaskStatus = "failed_processing"
	TaskFailedReporting      TaskStatus = "failed_reporting"
	TaskDistributed          TaskStatus = "distributed"
	TaskDistributedCompleted TaskStatus = "distributed_completed"
)

// TaskStatuses lists every status, in CAPE's order.
var TaskStatuses = []TaskStatus{TaskBanned, TaskPending, TaskRunning, TaskDistributed, TaskCompleted, TaskRecovered,
	TaskReported, TaskFailedAnalysis, TaskFailedProcessing, TaskFailedReporting, TaskDistributedCompleted}

// Valid reports whether s is a known status.
func (s TaskStatus) Valid() bool { return slices.Contains(TaskStatuses, s) }

// Sample is a submitted file, stored once by its SHA-256.
type Sample struct {
	ID        int64
	SHA256    string
	SHA1      string
	MD5       string
	SHA512    string
	CRC32     string
	FileSize  int64
	FileType  string
	CreatedAt time.Time
}

// Task is one analysis request: CAPE's columns plus sandfleet's.
type Task struct {
	ID       int64
	Target   string // the URL, or the sample's original file name
	Category string // file | url
	SampleID int64  // 0 for url tasks
	// FileName is the name the sample was uploaded under, kept as data only:
	// nothing is ever stored under it.
	FileName       string
	Timeout        int // seconds; 0 takes timeouts.default
	Priority       int
	Custom         string
	Machine        string // the machine label asked for at submit; "" = any
	Package        string
	Route          string
	Options        string
	Platform       string
	Memory         bool
	EnforceTimeout bool
	Clock          time.Time
	Tags           []string
	AddedOn        time.Time
	StartedOn      time.Time
	CompletedOn    time.Time
	Status         TaskStatus
	// Attempt counts the analyses tried for this task: one lost to a crash,
	// a lost machine or a dead node is tried again under the same id.
	Attempt int
	Error   string // why it failed; empty otherwise
	// RanOn is the machine label of the current (or last) analysis.
	RanOn string
	// Node holds the analysis lease while running, until LeaseExpires.
	Node         string
	LeaseExpires time.Time
	// Hook is the hand-off of the ended analysis to hooks.on_complete.
	Hook    Hook
	Version int64
}

// HookStatus is where a task's hooks.on_complete run stands.
type HookStatus string

// Hook statuses. HookNone: no hook configured when the analysis ended.
const (
	HookNone    HookStatus = ""
	HookPending HookStatus = "pending" // to run on Hook.Node
	HookOK      HookStatus = "ok"      // exited 0
	HookFailed  HookStatus = "failed"  // exited non-zero, or could not start
	HookTimeout HookStatus = "timeout" // killed at hooks.timeout
)

// Hook is one task's hooks.on_complete run: the node that runs it, and how
// it ended (its exit code, the tail of its output, when).
type Hook struct {
	Status  HookStatus
	Node    string
	Exit    int
	Output  string
	EndedOn time.Time
}

// HookRun records how a pending hook ended; Status is ok, failed or timeout.
type HookRun struct {
	TaskID int64
	Node   string
	Status HookStatus
	Exit   int
	Output string
}

// TaskFilter selects tasks; zero fields match everything.
type TaskFilter struct {
	Statuses       []TaskStatus
	Category       string
	OptionLike     string // a substring of options
	CompletedAfter time.Time
	IDs            []int64
	SampleID       int64
	Node           string
	// Newest orders by completed_on then id, newest first (CAPE's
	// tasks/list/); else by id.
	Newest bool
	Limit  int
	Offset int
}

// HourCount is how many tasks ended in one status within one UTC hour.
type HourCount struct {
	Hour   time.Time // the hour's start, UTC
	Status TaskStatus
	Count  int
}

// TaskEvent records one status change of a task.
type TaskEvent struct {
	ID      int64
	TaskID  int64
	From    TaskStatus // "" for the task's creation
	To      TaskStatus
	Machine string
	Attempt int
	Cause   string
	At      time.Time
}

// LeaseRequest hands machine Label (ready, at MachineVersion) to pending task
// TaskID (at TaskVersion) for Node, until TTL from now by the database's
// clock.
type LeaseRequest struct {
	TaskID         int64
	TaskVersion    int64
	Label          string
	MachineVersion int64
	Node           string
	TTL            time.Duration
}

// LeaseResult is one LeaseRequest's outcome: both rows, or Err (ErrStale when
// either row had moved; neither was changed).
type LeaseResult struct {
	Task    Task
	Machine Machine
	Err     error
}

// TaskEnd ends a running analysis of TaskID held by Node: the task to
// Status (completed, failed_analysis) with Error, and its machine, if still
// leased to it, released dirty — in one transaction.
type TaskEnd struct {
	TaskID int64
	Node   string
	Status TaskStatus
	Error  string
	Cause  string
	// HookNode, when set, leaves the task's hooks.on_complete pending on
	// that node, in the same transaction.
	HookNode string
}

// Requeue puts a running task of Node back in the queue (pending), in one
// transaction with its machine:
//
//   - Lost: the analysis was lost (its machine vanished, its node died): the
//     attempt counts, and past MaxAttempts the task fails with Cause.
//   - otherwise the analysis never started (the machine failed its check):
//     the task keeps its attempt and its place in the queue.
//
// The machine, if still leased to the task, goes to MachineTo (dirty unless
// told otherwise) with MachineCause, and QuarantineReason when MachineTo is
// quarantined. Node "" matches any holder (the rescuer's expired leases).
type Requeue struct {
	TaskID       int64
	Node         string
	Lost         bool
	MaxAttempts  int
	Cause        string
	MachineTo    MachineState
	MachineCause string
	// HookNode, when set and the task fails past its attempts, leaves its
	// hooks.on_complete pending on that node.
	HookNode string
}

// TaskTransition is a compare-and-set on a task outside the analysis flow:
// From → To (failing a pending task, marking one recovered), with Error.
type TaskTransition struct {
	TaskID int64
	From   TaskStatus
	To     TaskStatus
	Error  string
	Cause  string
}
