// Package provider defines what sandfleet needs from a platform that runs
// machines — an Azure subscription, a libvirt host, a list of static machines —
// and a conformance suite (provider/providertest) every driver passes.
//
// Providers know nothing about tasks or the database. They list what exists and
// begin operations; every begun operation hands back its resume token before
// anyone waits on it, so the caller can journal it (SPEC §1.3).
package provider

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
)

// Errors drivers return (wrapped) so callers can decide without parsing text.
var (
	// ErrUnsupported: the driver cannot do this (a static pool cannot be resized).
	ErrUnsupported = errors.New("not supported by this provider")
	// ErrNotFound: the group or instance does not exist.
	ErrNotFound = errors.New("not found")
	// ErrPreconditionFailed: an If-Match ETag no longer matched; read again.
	ErrPreconditionFailed = errors.New("precondition failed: resource changed since read")
	// ErrTokenRejected: a resume token cannot be resumed (expired, malformed, or
	// the operation is unknown); re-derive from the provider's current state.
	ErrTokenRejected = errors.New("resume token rejected")
	// ErrPreempted: another operation on the same group superseded this one.
	ErrPreempted = errors.New("operation preempted")
)

// PollError says an operation's status could not be read — a 5xx, a lost
// connection, a request that timed out. It is not the operation's outcome:
// the operation was accepted and may still be running, so the caller waits
// again (after RetryAfter, when the provider named one) until the operation
// reports an end or the caller's deadline passes.
type PollError struct {
	Err error
	// RetryAfter is the provider's own hint; 0 leaves the pace to the caller.
	RetryAfter time.Duration
}

func (e *PollError) Error() string {
	return "status unreadable, operation may still run: " + e.Err.Error()
}

func (e *PollError) Unwrap() error { return e.Err }

// AsPollError returns the PollError in err's chain, if any.
func AsPollError(err error) (*PollError, bool) {
	var p *PollError
	ok := errors.As(err, &p)
	return p, ok
}

// ThrottledError says the provider refused a call for rate limiting; no call to
// it should be made before RetryAfter has passed.
type ThrottledError struct {
	RetryAfter time.Duration
	Op         string
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("%s throttled: retry after %s", e.Op, e.RetryAfter)
}

// AsThrottled returns the ThrottledError in err's chain, if any.
func AsThrottled(err error) (*ThrottledError, bool) {
	var t *ThrottledError
	ok := errors.As(err, &t)
	return t, ok
}

// InstanceState summarises an instance's provisioning and power state.
type InstanceState string

// Instance states.
const (
	InstanceCreating InstanceState = "creating" // being created or reimaged
	InstanceRunning  InstanceState = "running"  // provisioned and running
	InstanceFailed   InstanceState = "failed"   // provisioning failed; still takes capacity
	InstanceDeleting InstanceState = "deleting" // being deleted
	InstanceStopped  InstanceState = "stopped"  // deallocated, stopped, evicted
	InstanceUpdating InstanceState = "updating" // an operation is in progress on it
)

// Instance is one machine as the provider sees it.
type Instance struct {
	ID       string // provider instance id ("7" in a scale set)
	Name     string // machine label: <group>_<id> on Azure, the configured label on static
	IP       string // private IP of its primary NIC; "" if not yet known
	State    InstanceState
	Raw      string // the provider's own words (provisioningState/powerState)
	Platform string // windows | linux | darwin, when the provider knows
	Arch     string // x86 | x64, when the provider knows
	Image    string // image or snapshot id the instance runs
	Tags     []string
	// ResultServerPort is the result-server port the machine reports to
	// when it has one of its own (a libvirt guest behind a forwarded
	// address); 0: the server's.
	ResultServerPort int
}

// Group is a provider-side group of instances backing a pool (a scale set).
type Group struct {
	Name     string
	Owned    bool   // carries sandfleet's owner tag
	Capacity int    // desired instance count as the provider records it
	Image    string // image reference of the group's model
	ETag     string
	State    string // provisioning state of the group itself
}

// PoolSpec is what a driver needs to know of a pool to create its group.
type PoolSpec struct {
	Name     string
	Platform string
	Arch     string
	Image    string
	Tags     []string
	Capacity int
}

// Kind names an operation for Resume.
type Kind string

// Operation kinds a driver can resume.
const (
	KindCreateGroup Kind = "create_pool"
	KindDeleteGroup Kind = "delete_pool"
	KindUpdateGroup Kind = "update_pool"
	KindCapacity    Kind = "set_capacity"
	KindReimage     Kind = "reimage"
	KindDelete      Kind = "delete"
)

// Op is a begun operation. Token is known before Wait is called.
type Op interface {
	// Token is the resume token; "" for operations that finished at once.
	Token() string
	// Wait blocks until the operation ends or ctx is done (callers always pass a
	// deadline). It returns nil on success, the operation's failure when it
	// reports one, and a *PollError or *ThrottledError when its status could
	// not be read: then Wait may be called again.
	Wait(ctx context.Context) error
}

// Capabilities say what a driver can do; the reconciler asks them instead of
// knowing drivers by name. What a driver cannot do fails with ErrUnsupported.
type Capabilities struct {
	// CreateGroup: a pool's absent group is created (a scale set); without
	// it groups exist on their own (a static pool).
	CreateGroup bool
	// DeleteGroup: a group no pool names any more is deleted.
	DeleteGroup bool
	// UpdateImage: a group's model follows the pool's image.
	UpdateImage bool
	// Capacity: SetCapacity resizes a group.
	Capacity bool
	// Delete: instances are deleted by id. A machine that must be replaced
	// is deleted, and capacity brings a new one; without it the machine is
	// quarantined with the reason for an operator.
	Delete bool
	// BatchReimage: one Reimage call carries many instances. Without it
	// each machine is reimaged on its own, so one failing does not hold
	// back the others.
	BatchReimage bool
	// Tokens: begun operations carry resume tokens that Resume accepts.
	Tokens bool
	// ReimageStarts: a reimage brings a stopped instance back running (a
	// libvirt revert to a running snapshot). A machine whose instance
	// stopped — its host rebooted, its guest shut down or crashed while
	// idle — is then reimaged at once, not waited for.
	ReimageStarts bool
}

// Room is implemented by a provider whose pools share bounds beyond their
// max_size: a regional core quota, a subnet's addresses.
type Room interface {
	// Room says how many more machines could be made now, and what bounds
	// that number. inUse is how many instances the provider's pools hold.
	Room(ctx context.Context, inUse int) (machines int, why string, err error)
}

// Provider is a platform driver. All methods are safe for concurrent use.
type Provider interface {
	// Capabilities says what this driver can do.
	Capabilities() Capabilities
	// ListGroups lists the groups in the provider's scope (the sandbox resource
	// group), owned or not.
	ListGroups(ctx context.Context) ([]Group, error)
	// GetGroup reads one group fresh. ErrNotFound if absent.
	GetGroup(ctx context.Context, name string) (Group, error)
	// CreateGroup begins creating a pool's group with spec.Capacity instances,
	// tagged as owned.
	CreateGroup(ctx context.Context, spec PoolSpec) (Op, error)
	// DeleteGroup begins deleting a group.
	DeleteGroup(ctx context.Context, name string) (Op, error)
	// UpdateGroupImage begins pointing a group's model at spec.Image.
	UpdateGroupImage(ctx context.Context, spec PoolSpec) (Op, error)
	// ListInstances lists a group's instances with their IPs, all pages.
	ListInstances(ctx context.Context, group string) ([]Instance, error)
	// GetInstance reads one instance fresh — its state, not necessarily its
	// IP. ErrNotFound if it (or its group) does not exist.
	GetInstance(ctx context.Context, group, id string) (Instance, error)
	// SetCapacity begins setting a group's capacity, conditional on etag (the
	// ETag of a read made just before): ErrPreconditionFailed if it changed.
	SetCapacity(ctx context.Context, group string, capacity int, etag string) (Op, error)
	// Reimage begins reimaging instances; instance ids survive it.
	Reimage(ctx context.Context, group string, ids []string) (Op, error)
	// Delete begins deleting instances by id (capacity shrinks with them).
	Delete(ctx context.Context, group string, ids []string) (Op, error)
	// Resume re-attaches to an operation from its token. ErrTokenRejected if it
	// cannot.
	Resume(ctx context.Context, kind Kind, token string) (Op, error)
}

// Done is an Op that already finished with err.
type Done struct{ Err error }

// Token returns "".
func (Done) Token() string { return "" }

// Wait returns the stored error.
func (d Done) Wait(context.Context) error { return d.Err }

// Fixed is embedded by drivers of machines that exist on their own (static
// machines, libvirt domains): their groups are the configuration's, never
// created, resized, re-imaged to another image or deleted, their instances
// never deleted, and nothing they begin is resumable. Each of those calls
// fails, naming the pool, with ErrUnsupported (Resume: ErrTokenRejected, so
// the caller re-derives from the instance list).
//
// It also holds the configured pools of its kind, which are its groups: one
// owned group per pool, in configuration order, its capacity the machines
// the pool lists.
type Fixed struct {
	// Kind names the driver in errors: "static", "libvirt".
	Kind  string
	pools map[string]config.Pool
	order []string
	image func(config.Pool) string
}

// NewFixed keeps the pools of kind (a name given twice: its last), each
// changed by edit if not nil; image says what a pool's group reports as
// its image.
func NewFixed(kind string, pools []config.Pool, edit func(*config.Pool), image func(config.Pool) string) Fixed {
	f := Fixed{Kind: kind, pools: map[string]config.Pool{}, image: image}
	for _, p := range pools {
		if p.Provider != kind {
			continue
		}
		if edit != nil {
			edit(&p)
		}
		if _, dup := f.pools[p.Name]; !dup {
			f.order = append(f.order, p.Name)
		}
		f.pools[p.Name] = p
	}
	return f
}

// Pool returns a configured pool; ErrNotFound naming it otherwise.
func (f Fixed) Pool(name string) (config.Pool, error) {
	p, ok := f.pools[name]
	if !ok {
		return config.Pool{}, fmt.Errorf("%s pool %q: %w", f.Kind, name, ErrNotFound)
	}
	return p, nil
}

// Pools returns the configured pools, in configuration order.
func (f Fixed) Pools() []config.Pool {
	out := make([]config.Pool, 0, len(f.order))
	for _, name := range f.order {
		out = append(out, f.pools[name])
	}
	return out
}

func (f Fixed) group(p config.Pool) Group {
	return Group{Name: p.Name, Owned: true, Capacity: len(p.Machines), Image: f.image(p), State: "Succeeded"}
}

// ListGroups returns one owned group per pool, in configuration order: the
// configuration is the group.
func (f Fixed) ListGroups(ctx context.Context) ([]Group, error) {
	out := make([]Group, 0, len(f.order))
	for _, p := range f.Pools() {
		out = append(out, f.group(p))
	}
	return out, nil
}

// GetGroup returns the pool's group; ErrNotFound if it is not configured.
func (f Fixed) GetGroup(ctx context.Context, name string) (Group, error) {
	p, err := f.Pool(name)
	if err != nil {
		return Group{}, err
	}
	return f.group(p), nil
}

func (f Fixed) unsupported(what, pool string) (Op, error) {
	return nil, fmt.Errorf("%s pool %q: %s: %w", f.Kind, pool, what, ErrUnsupported)
}

// CreateGroup is unsupported: the machines exist on their own.
func (f Fixed) CreateGroup(ctx context.Context, spec PoolSpec) (Op, error) {
	return f.unsupported("create", spec.Name)
}

// DeleteGroup is unsupported.
func (f Fixed) DeleteGroup(ctx context.Context, name string) (Op, error) {
	return f.unsupported("delete", name)
}

// UpdateGroupImage is unsupported: the machines' images are not sandfleet's.
func (f Fixed) UpdateGroupImage(ctx context.Context, spec PoolSpec) (Op, error) {
	return f.unsupported("update image", spec.Name)
}

// SetCapacity is unsupported: the machine list is the capacity.
func (f Fixed) SetCapacity(ctx context.Context, name string, capacity int, etag string) (Op, error) {
	return f.unsupported("set capacity", name)
}

// Delete is unsupported: sandfleet does not destroy machines it did not make.
func (f Fixed) Delete(ctx context.Context, name string, ids []string) (Op, error) {
	return f.unsupported("delete instances", name)
}

// Resume rejects every token: these operations finish within Wait and have
// nothing to re-attach to; the caller re-derives from ListInstances (a lost
// reset or revert is done again).
func (f Fixed) Resume(ctx context.Context, kind Kind, token string) (Op, error) {
	return nil, fmt.Errorf("%s: resume %s: %w", f.Kind, kind, ErrTokenRejected)
}
