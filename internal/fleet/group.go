package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// pass reconciles every pool: the provider's groups first, then each pool's
// machines, then groups no pool names any more.
func (r *Reconciler) pass(ctx context.Context) error {
	r.readDemand(ctx)
	groups, err := r.o.Provider.ListGroups(ctx)
	if err != nil {
		if r.noteThrottle(err) {
			return nil
		}
		return fmt.Errorf("list groups: %w", err)
	}
	byName := map[string]provider.Group{}
	for _, g := range groups {
		byName[g.Name] = g
	}
	var errs []error
	for _, p := range r.o.Pools {
		if t, _ := r.Throttled(); t {
			return nil // a call in this pass was throttled: stop calling
		}
		var gp *provider.Group
		if g, ok := byName[p.Name]; ok {
			gp = &g
		}
		if err := r.reconcilePool(ctx, p, gp); err != nil {
			if r.noteThrottle(err) {
				return nil
			}
			errs = append(errs, fmt.Errorf("pool %s: %w", p.Name, err))
		}
	}
	if r.caps.DeleteGroup && !r.o.MultipleDeployments {
		for _, g := range groups {
			if _, configured := r.pools[g.Name]; configured || !g.Owned {
				continue
			}
			// Owned by sandfleet but no longer configured: remove it.
			r.startGroupOp(ctx, g.Name, store.OpDeletePool, func(ctx context.Context) (provider.Op, error) {
				return r.o.Provider.DeleteGroup(ctx, g.Name)
			})
		}
	}
	if err := r.retirePools(ctx, byName); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// retirePools marks gone the machines of pools this provider once served but
// no longer configures, once their group is gone too: the scheduler must not
// lease a machine nothing manages.
// The candidates are found once, at Start; a retired pool leaves the list.
func (r *Reconciler) retirePools(ctx context.Context, groups map[string]provider.Group) error {
	r.mu.Lock()
	retiring := slices.Clone(r.retiring)
	r.mu.Unlock()
	for _, name := range retiring {
		if _, exists := groups[name]; exists || r.ops.owned(name, "") {
			continue
		}
		ms, err := r.o.Store.ListMachines(ctx, store.MachineFilter{Pool: name})
		if err != nil {
			return fmt.Errorf("pool %s: list machines: %w", name, err)
		}
		var ts []store.Transition
		for _, m := range ms {
			if m.State != store.Gone {
				ts = append(ts, store.Transition{Label: m.Label, From: m.State, Version: m.Version, To: store.Gone,
					Cause: "pool no longer configured and its group is gone"})
			}
		}
		if err := r.move(ctx, name, ts); err != nil {
			return err
		}
		r.mu.Lock()
		r.retiring = slices.DeleteFunc(r.retiring, func(n string) bool { return n == name })
		r.mu.Unlock()
	}
	return nil
}

// reconcilePool handles one pool: its group, then each machine, then the
// group's capacity.
func (r *Reconciler) reconcilePool(ctx context.Context, p config.Pool, g *provider.Group) error {
	if r.caps.CreateGroup {
		switch {
		case g == nil:
			r.startGroupOp(ctx, p.Name, store.OpCreatePool, func(ctx context.Context) (provider.Op, error) {
				return r.o.Provider.CreateGroup(ctx, r.spec(p))
			})
		case !g.Owned && !r.o.AdoptExisting && r.caps.DeleteGroup:
			r.log.Warn("scale set exists without the owner tag and adopt_existing is off; deleting it", "pool", p.Name)
			r.startGroupOp(ctx, p.Name, store.OpDeletePool, func(ctx context.Context) (provider.Op, error) {
				return r.o.Provider.DeleteGroup(ctx, p.Name)
			})
			return nil
		case r.caps.UpdateImage && g.Image != "" && !imageMatches(g.Image, p.Image):
			r.startGroupOp(ctx, p.Name, store.OpUpdatePool, func(ctx context.Context) (provider.Op, error) {
				return r.o.Provider.UpdateGroupImage(ctx, r.spec(p))
			})
		}
	}
	var insts []provider.Instance
	if g != nil {
		var err error
		// ErrNotFound here is a read that disagrees with the group list just
		// made; it is an error, not "no instances" (which would mark every
		// machine gone).
		insts, err = r.o.Provider.ListInstances(ctx, p.Name)
		if err != nil {
			return fmt.Errorf("list instances: %w", err)
		}
	} else if r.ops.owned(p.Name, "") {
		// Being created: nothing to list yet, and nothing to mark gone.
		return nil
	}
	r.mu.Lock()
	r.views[p.Name] = View{At: time.Now(), Group: g, Instances: insts}
	r.mu.Unlock()

	machines, err := r.o.Store.ListMachines(ctx, store.MachineFilter{Pool: p.Name})
	if err != nil {
		return fmt.Errorf("list machines: %w", err)
	}
	plan := r.plan(p, insts, machines)
	sized := r.caps.Capacity && g != nil && !r.ops.owned(p.Name, "")
	var size sizing
	if sized {
		size = r.size(ctx, p, g.Capacity, plan)
	}
	shrink := 0
	if r.caps.Delete {
		shrink = size.excess
	}
	deleted, err := r.apply(ctx, p, plan, shrink)
	if err != nil {
		return err
	}
	if sized {
		size.excess -= deleted
		r.capacity(ctx, p, g, plan, size)
	}
	return nil
}

func (r *Reconciler) spec(p config.Pool) provider.PoolSpec {
	return provider.PoolSpec{Name: p.Name, Platform: p.Platform, Arch: p.Arch, Image: p.Image,
		Tags: p.Tags, Capacity: p.InitialSize}
}

// imageMatches compares a group's image reference with a configured image
// name; a reference is a full resource id ending in /images/<name>.
func imageMatches(ref, image string) bool {
	if ref == image {
		return true
	}
	suffix := "/images/" + image
	return len(ref) >= len(suffix) && strings.EqualFold(ref[len(ref)-len(suffix):], suffix)
}

// capacity brings a group to its wanted size: up with a capacity write,
// down by deleting idle instances. It never writes a capacity computed from
// a stale read: it reads the group fresh and sends its ETag.
func (r *Reconciler) capacity(ctx context.Context, p config.Pool, g *provider.Group, plan []pair, size sizing) {
	switch {
	case size.want > g.Capacity:
		want := size.want
		r.startGroupOp(ctx, p.Name, store.OpSetCapacity, func(ctx context.Context) (provider.Op, error) {
			fresh, err := r.o.Provider.GetGroup(ctx, p.Name)
			if err != nil {
				return nil, err
			}
			if fresh.Capacity >= want {
				return provider.Done{}, nil
			}
			return r.o.Provider.SetCapacity(ctx, p.Name, want, fresh.ETag)
		}, withCapacity(want))
	case size.excess > 0 && r.caps.Delete:
		r.scaleIn(ctx, p, size.excess, size.want, plan)
	}
}

// scaleIn deletes up to excess idle instances, newest first. Deletes under
// way change the count the capacity shows, so it waits for them to land
// rather than count them as excess too.
func (r *Reconciler) scaleIn(ctx context.Context, p config.Pool, excess, want int, plan []pair) {
	var idle []*store.Machine
	for _, x := range plan {
		if x.action == Delete || x.action == Replace || (x.machine != nil && x.machine.State == store.Deleting) ||
			(x.inst != nil && (x.inst.State == provider.InstanceFailed || x.inst.State == provider.InstanceDeleting ||
				r.ops.owned(p.Name, x.inst.ID))) {
			return
		}
		if x.machine != nil && x.inst != nil && (x.machine.State == store.Ready || x.machine.State == store.Provisioning) {
			idle = append(idle, x.machine)
		}
	}
	sort.Slice(idle, func(i, j int) bool { return instanceOrder(idle[i].InstanceID) > instanceOrder(idle[j].InstanceID) })
	if len(idle) > excess {
		idle = idle[:excess]
	}
	if len(idle) == 0 {
		return
	}
	ids := make([]string, len(idle))
	pre := make([]store.Transition, len(idle))
	for i, m := range idle {
		ids[i] = m.InstanceID
		pre[i] = store.Transition{Label: m.Label, From: m.State, Version: m.Version, To: store.Deleting,
			Cause: shrinkCause(p, want)}
	}
	r.startInstanceOp(ctx, p.Name, store.OpDelete, ids, pre,
		func(ctx context.Context) (provider.Op, error) { return r.o.Provider.Delete(ctx, p.Name, ids) })
}

func instanceOrder(id string) int {
	n, err := strconv.Atoi(id)
	if err != nil {
		return -1
	}
	return n
}

// shrinkCause says why a machine is deleted to shrink its pool.
func shrinkCause(p config.Pool, want int) string {
	if p.MaxSize > 0 && want == p.MaxSize {
		return fmt.Sprintf("pool above max_size %d", p.MaxSize)
	}
	return fmt.Sprintf("pool shrinking to %d: demand is lower", want)
}
