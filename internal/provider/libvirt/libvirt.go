// Package libvirt is the provider for guests under a libvirt daemon (KVM,
// QEMU): a pool is a set of domains on one host, listed in the configuration
// as CAPE's kvm.conf lists them — label (the domain's name), ip, arch, tags,
// snapshot — and each is reverted to its snapshot after every use.
//
// sandfleet never creates, resizes or deletes domains. It lists the ones the
// configuration names (a domain libvirt no longer has is absent, and its
// machine goes gone) and reverts them: a reimage is a revert to the running
// snapshot, then a check that the domain runs. The revert happens when a
// machine is released dirty, not when the next analysis starts, so a ready
// machine is already clean and dispatch waits for nothing.
//
// It talks to libvirtd (or virtqemud) over libvirt's RPC protocol in pure Go
// (github.com/digitalocean/go-libvirt). The connection heals: when the
// daemon restarts, calls fail as a throttle would, the reconciler keeps its
// last view, and the connection is dialled again with backoff; no machine is
// ever marked gone for a lost connection. Every call is bounded by its
// context.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/static"
)

// Options configure a Driver.
type Options struct {
	// CallTimeout bounds each libvirt call whose context has no sooner
	// deadline (default 30 s): a hung daemon costs one call, not a pass.
	CallTimeout time.Duration
	// RunningWait bounds how long a revert waits for its domain to report
	// running (default 60 s).
	RunningWait time.Duration
	Logger      *slog.Logger
}

// Driver serves the libvirt pools of a configuration. It is safe for
// concurrent use.
type Driver struct {
	provider.Fixed
	o     Options
	conns map[string]*conn // by URI: pools on one host share a connection

	mu        sync.Mutex
	reverting map[string]bool // domains whose revert is under way, by URI and name
}

var _ provider.Provider = (*Driver)(nil)

// New returns a driver for the pools whose provider is "libvirt"; other
// pools are ignored. It dials nothing: the first call does.
func New(pools []config.Pool, o Options) (*Driver, error) {
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	if o.RunningWait <= 0 {
		o.RunningWait = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	defaultURI := func(p *config.Pool) {
		if p.URI == "" {
			p.URI = config.DefaultLibvirtURI
		}
	}
	d := &Driver{Fixed: provider.NewFixed("libvirt", pools, defaultURI, func(p config.Pool) string { return p.Snapshot }),
		o: o, conns: map[string]*conn{}, reverting: map[string]bool{}}
	for _, p := range d.Pools() {
		if d.conns[p.URI] == nil {
			c, err := newConn(p.URI, o.Logger)
			if err != nil {
				d.Close()
				return nil, fmt.Errorf("libvirt pool %q: %w", p.Name, err)
			}
			d.conns[p.URI] = c
		}
	}
	return d, nil
}

// Close drops every connection.
func (d *Driver) Close() {
	for _, c := range d.conns {
		c.close()
	}
}

// Capabilities: domains are listed and reverted, each on its own; they are
// never created, resized or deleted by sandfleet, and a revert has nothing
// to resume (a lost one is reverted again). A revert to a running snapshot
// starts a domain that is shut off, paused or crashed.
func (d *Driver) Capabilities() provider.Capabilities {
	return provider.Capabilities{ReimageStarts: true}
}

func (d *Driver) machine(p config.Pool, label string) (config.StaticMachine, error) {
	for _, m := range p.Machines {
		if m.Label == label {
			return m, nil
		}
	}
	return config.StaticMachine{}, fmt.Errorf("libvirt pool %q: machine %q: %w", p.Name, label, provider.ErrNotFound)
}

// call runs fn on the pool's connection, bounded by ctx and CallTimeout.
func (d *Driver) call(ctx context.Context, p config.Pool, fn func(*golibvirt.Libvirt) error) error {
	ctx, cancel := context.WithTimeout(ctx, d.o.CallTimeout)
	defer cancel()
	return d.conns[p.URI].do(ctx, fn)
}

// domain is what one read of a domain says.
type domain struct {
	state     golibvirt.DomainState
	reason    int32
	reverting bool // not read: this driver is reverting it
}

// ListInstances returns the pool's configured machines whose domain libvirt
// has, with their state. A domain libvirt does not have is left out (its
// machine goes gone); a connection that cannot be had is an error, never an
// empty list. A domain this driver is reverting is not asked: libvirt holds
// it for most of a revert, and any call touching it — listing all domains
// too — would wait that long; it is reported updating.
func (d *Driver) ListInstances(ctx context.Context, name string) ([]provider.Instance, error) {
	p, err := d.Pool(name)
	if err != nil {
		return nil, err
	}
	var doms map[string]domain
	err = d.call(ctx, p, func(lv *golibvirt.Libvirt) error {
		doms = map[string]domain{}
		for _, m := range p.Machines {
			if d.isReverting(p, m.Label) {
				doms[m.Label] = domain{state: golibvirt.DomainNostate, reverting: true}
				continue
			}
			ref, err := lv.DomainLookupByName(m.Label)
			if golibvirt.IsNotFound(err) {
				continue
			}
			if err != nil {
				return err
			}
			st, reason, err := lv.DomainGetState(ref, 0)
			if golibvirt.IsNotFound(err) {
				continue // undefined since it was looked up
			}
			if err != nil {
				return err
			}
			doms[m.Label] = domain{state: golibvirt.DomainState(st), reason: reason}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt pool %q: list domains: %w", name, err)
	}
	out := make([]provider.Instance, 0, len(p.Machines))
	for _, m := range p.Machines {
		if dom, ok := doms[m.Label]; ok {
			out = append(out, instance(p, m, dom))
		}
	}
	return out, nil
}

func (d *Driver) isReverting(p config.Pool, label string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reverting[p.URI+" "+label]
}

func (d *Driver) setReverting(p config.Pool, label string, on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if on {
		d.reverting[p.URI+" "+label] = true
	} else {
		delete(d.reverting, p.URI+" "+label)
	}
}

// GetInstance reads one domain fresh; ErrNotFound if the configuration does
// not list it or libvirt does not have it.
func (d *Driver) GetInstance(ctx context.Context, name, id string) (provider.Instance, error) {
	p, err := d.Pool(name)
	if err != nil {
		return provider.Instance{}, err
	}
	m, err := d.machine(p, id)
	if err != nil {
		return provider.Instance{}, err
	}
	dom, err := d.state(ctx, p, m.Label)
	if err != nil {
		return provider.Instance{}, err
	}
	return instance(p, m, dom), nil
}

// state reads a domain's state; ErrNotFound when libvirt has no such domain.
func (d *Driver) state(ctx context.Context, p config.Pool, label string) (domain, error) {
	var dom domain
	err := d.call(ctx, p, func(lv *golibvirt.Libvirt) error {
		ref, err := lv.DomainLookupByName(label)
		if err != nil {
			return err
		}
		st, reason, err := lv.DomainGetState(ref, 0)
		dom = domain{state: golibvirt.DomainState(st), reason: reason}
		return err
	})
	if golibvirt.IsNotFound(err) {
		return domain{}, fmt.Errorf("libvirt pool %q: domain %q: %w", p.Name, label, provider.ErrNotFound)
	}
	if err != nil {
		return domain{}, fmt.Errorf("libvirt pool %q: domain %q: %w", p.Name, label, err)
	}
	return dom, nil
}

// states maps libvirt's domain states to the provider's.
var states = map[golibvirt.DomainState]struct {
	state provider.InstanceState
	raw   string
}{
	golibvirt.DomainNostate:     {provider.InstanceUpdating, "nostate"},
	golibvirt.DomainRunning:     {provider.InstanceRunning, "running"},
	golibvirt.DomainBlocked:     {provider.InstanceRunning, "blocked"},
	golibvirt.DomainPaused:      {provider.InstanceStopped, "paused"},
	golibvirt.DomainShutdown:    {provider.InstanceStopped, "shutting down"},
	golibvirt.DomainShutoff:     {provider.InstanceStopped, "shut off"},
	golibvirt.DomainCrashed:     {provider.InstanceStopped, "crashed"},
	golibvirt.DomainPmsuspended: {provider.InstanceStopped, "suspended"},
}

func instance(p config.Pool, m config.StaticMachine, dom domain) provider.Instance {
	s, ok := states[dom.state]
	if !ok {
		s.state, s.raw = provider.InstanceUpdating, fmt.Sprintf("state %d", dom.state)
	}
	if dom.reverting {
		s.state, s.raw = provider.InstanceUpdating, "reverting to its "+snapshotName(p.SnapshotOf(m))
	}
	in := static.Instance(p, m)
	in.State, in.Raw = s.state, s.raw
	in.Image, in.ResultServerPort = p.SnapshotOf(m), m.ResultServerPort
	return in
}

// Reimage reverts each domain to its snapshot, within the returned Op's
// Wait. Unknown ids are ErrNotFound at once; libvirt is not called until
// Wait, so a daemon that is down delays the revert and does not refuse it.
func (d *Driver) Reimage(ctx context.Context, name string, ids []string) (provider.Op, error) {
	p, err := d.Pool(name)
	if err != nil {
		return nil, err
	}
	var machines []config.StaticMachine
	for _, id := range ids {
		m, err := d.machine(p, id)
		if err != nil {
			return nil, err
		}
		machines = append(machines, m)
	}
	return &revertOp{d: d, pool: p, machines: machines, done: map[string]bool{}}, nil
}

// revertOp reverts its domains in order. A Wait that the connection cut
// short returns the throttle, and the next Wait reverts again the domains
// not yet confirmed running — reverting twice to the same snapshot is the
// same as reverting once. A domain that is gone, has no such snapshot, or
// that libvirt fails to revert ends the Wait with that failure.
type revertOp struct {
	d        *Driver
	pool     config.Pool
	machines []config.StaticMachine

	mu   sync.Mutex
	done map[string]bool // reverted and running
}

func (o *revertOp) Token() string { return "" }

func (o *revertOp) Wait(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, m := range o.machines {
		if o.done[m.Label] {
			continue
		}
		if err := o.d.revert(ctx, o.pool, m); err != nil {
			return fmt.Errorf("libvirt pool %q: revert %s: %w", o.pool.Name, m.Label, err)
		}
		o.done[m.Label] = true
	}
	return nil
}

// revert reverts one domain to its snapshot (its current one when none is
// named, as CAPE's kvm machinery takes it), running, and waits until it
// reports running.
func (d *Driver) revert(ctx context.Context, p config.Pool, m config.StaticMachine) error {
	d.setReverting(p, m.Label, true)
	defer d.setReverting(p, m.Label, false)
	snap := p.SnapshotOf(m)
	err := d.call(ctx, p, func(lv *golibvirt.Libvirt) error {
		dom, err := lv.DomainLookupByName(m.Label)
		if err != nil {
			return err
		}
		var s golibvirt.DomainSnapshot
		if snap == "" {
			s, err = lv.DomainSnapshotCurrent(dom, 0)
		} else {
			s, err = lv.DomainSnapshotLookupByName(dom, snap, 0)
		}
		if err != nil {
			return err
		}
		return lv.DomainRevertToSnapshot(s, uint32(golibvirt.DomainSnapshotRevertRunning|golibvirt.DomainSnapshotRevertForce))
	})
	switch {
	case golibvirt.IsNotFound(err):
		return fmt.Errorf("domain %q: %w", m.Label, provider.ErrNotFound)
	case isNoSnapshot(err):
		return fmt.Errorf("domain %q has no %s (take it while the guest runs clean: sandfleet libvirt snapshot %s): %w",
			m.Label, snapshotName(snap), m.Label, err)
	case err != nil:
		if _, throttled := provider.AsThrottled(err); throttled {
			return err
		}
		return fmt.Errorf("to %s: %w", snapshotName(snap), err)
	}
	wait, cancel := context.WithTimeout(ctx, d.o.RunningWait)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		dom, err := d.state(wait, p, m.Label)
		if err != nil {
			return err
		}
		if dom.state == golibvirt.DomainRunning {
			return nil
		}
		select {
		case <-wait.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("reverted to %s, but the domain is %s after %s, not running",
				snapshotName(snap), states[dom.state].raw, d.o.RunningWait)
		case <-tick.C:
		}
	}
}

// snapshotName names a snapshot in a message; an unnamed one is the
// domain's current snapshot.
func snapshotName(snap string) string {
	if snap == "" {
		return "current snapshot"
	}
	return fmt.Sprintf("snapshot %q", snap)
}

func isNoSnapshot(err error) bool {
	var e golibvirt.Error
	return errors.As(err, &e) && golibvirt.ErrorNumber(e.Code) == golibvirt.ErrNoDomainSnapshot
}
