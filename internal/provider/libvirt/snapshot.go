package libvirt

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
)

// DefaultSnapshot is the name `sandfleet libvirt snapshot` gives a snapshot
// when neither its flag nor the configuration names one.
const DefaultSnapshot = "clean"

// Target is a configured libvirt machine: its pool and itself.
type Target struct {
	Pool    config.Pool
	Machine config.StaticMachine
}

// Find returns the libvirt machine labelled label; ErrNotFound naming the
// labels there are otherwise.
func (d *Driver) Find(label string) (Target, error) {
	var labels []string
	for _, p := range d.Pools() {
		for _, m := range p.Machines {
			if m.Label == label {
				return Target{Pool: p, Machine: m}, nil
			}
			labels = append(labels, m.Label)
		}
	}
	if len(labels) == 0 {
		return Target{}, fmt.Errorf("no libvirt pool in the configuration: list the domain %q as a machine of a provider: libvirt pool first: %w", label, provider.ErrNotFound)
	}
	return Target{}, fmt.Errorf("no libvirt machine %q in the configuration (its libvirt machines: %s): %w", label, strings.Join(labels, ", "), provider.ErrNotFound)
}

// Taken is a snapshot TakeSnapshot took.
type Taken struct {
	Target
	Snapshot string
	Replaced bool          // a snapshot of that name was deleted first
	Took     time.Duration // the create call alone
}

// TakeSnapshot takes a running-state snapshot (disk and memory, atomically)
// of t's domain, named name: what the pool reverts t to after each use. The
// domain must be running. A snapshot of that name already there is an
// error, unless replace, which deletes it first.
func (d *Driver) TakeSnapshot(ctx context.Context, t Target, name string, replace bool) (Taken, error) {
	taken := Taken{Target: t, Snapshot: name}
	label := t.Machine.Label
	doc, err := xml.Marshal(struct {
		XMLName     xml.Name `xml:"domainsnapshot"`
		Name        string   `xml:"name"`
		Description string   `xml:"description"`
	}{Name: name, Description: "running-state snapshot taken by sandfleet libvirt snapshot; its pool reverts the domain to it after each use"})
	if err != nil {
		return taken, err
	}
	errNotRunning := errors.New("not running")
	var state golibvirt.DomainState
	err = d.call(ctx, t.Pool, func(lv *golibvirt.Libvirt) error {
		dom, err := lv.DomainLookupByName(label)
		if err != nil {
			return err
		}
		st, _, err := lv.DomainGetState(dom, 0)
		if err != nil {
			return err
		}
		if state = golibvirt.DomainState(st); state != golibvirt.DomainRunning {
			return answer{errNotRunning}
		}
		old, err := lv.DomainSnapshotLookupByName(dom, name, 0)
		switch {
		case err == nil && !replace:
			return answer{fmt.Errorf("domain %q already has a snapshot %q: pass --replace to take it again", label, name)}
		case err == nil:
			if err := lv.DomainSnapshotDelete(old, 0); err != nil {
				return fmt.Errorf("delete the old snapshot %q: %w", name, err)
			}
			taken.Replaced = true
		case !isNoSnapshot(err):
			return err
		}
		start := time.Now()
		_, err = lv.DomainSnapshotCreateXML(dom, string(doc), uint32(golibvirt.DomainSnapshotCreateAtomic))
		taken.Took = time.Since(start)
		return err
	})
	switch {
	case golibvirt.IsNotFound(err):
		return taken, fmt.Errorf("libvirt %s has no domain %q: %w", t.Pool.URI, label, provider.ErrNotFound)
	case isUnreachable(err):
		return taken, fmt.Errorf("libvirt at %s cannot be reached (%v): is libvirtd (or virtqemud) running there, and pools[].uri right?", t.Pool.URI, cause(err))
	case errors.Is(err, errNotRunning):
		return taken, fmt.Errorf("domain %q is %s: a pool's snapshot holds the running guest; start it (virsh start %s), wait for its agent, then take the snapshot",
			label, stateName(state), label)
	case err != nil:
		return taken, fmt.Errorf("snapshot %q of domain %q: %w", name, label, err)
	}
	return taken, nil
}

// HasSnapshot checks that t's domain has the snapshot its pool reverts it
// to (its current one when none is named).
func (d *Driver) HasSnapshot(ctx context.Context, t Target) error {
	snap := t.Pool.SnapshotOf(t.Machine)
	err := d.call(ctx, t.Pool, func(lv *golibvirt.Libvirt) error {
		dom, err := lv.DomainLookupByName(t.Machine.Label)
		if err != nil {
			return err
		}
		if snap == "" {
			_, err = lv.DomainSnapshotCurrent(dom, 0)
		} else {
			_, err = lv.DomainSnapshotLookupByName(dom, snap, 0)
		}
		return err
	})
	switch {
	case golibvirt.IsNotFound(err):
		return fmt.Errorf("no domain %q: %w", t.Machine.Label, provider.ErrNotFound)
	case isNoSnapshot(err):
		return fmt.Errorf("domain %q has no %s", t.Machine.Label, snapshotName(snap))
	}
	return err
}

func stateName(s golibvirt.DomainState) string {
	if st, ok := states[s]; ok {
		return st.raw
	}
	return fmt.Sprintf("in state %d", s)
}
