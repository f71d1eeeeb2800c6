package fleet

import (
	"context"
	"errors"
	"sort"

	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Mismatch is one field on which the database and the provider disagree.
type Mismatch struct {
	Label    string `json:"label"`
	Field    string `json:"field"`
	DB       string `json:"db"`
	Provider string `json:"provider"`
}

// PoolReport is one pool's drift between database and provider (SPEC §4).
type PoolReport struct {
	Name              string     `json:"name"`
	DBMachines        int        `json:"db_machines"`
	ProviderInstances int        `json:"provider_instances"`
	MissingInDB       []string   `json:"missing_in_db"`
	MissingInProvider []string   `json:"missing_in_provider"`
	Mismatched        []Mismatch `json:"mismatched"`
	Unknown           bool       `json:"unknown,omitempty"`
	Reason            string     `json:"reason,omitempty"`
}

// Consistent reports whether the pool shows no drift.
func (p PoolReport) Consistent() bool {
	return !p.Unknown && len(p.MissingInDB) == 0 && len(p.MissingInProvider) == 0 && len(p.Mismatched) == 0
}

// Report is the answer of fleet/check/.
type Report struct {
	Consistent bool         `json:"consistent"`
	Pools      []PoolReport `json:"pools"`
}

// Check compares the database with a fresh provider read, pool by pool. While
// the provider is throttled it does not call it: those pools are unknown.
func (r *Reconciler) Check(ctx context.Context) ([]PoolReport, error) {
	var out []PoolReport
	for _, p := range r.o.Pools {
		rep := PoolReport{Name: p.Name, MissingInDB: []string{}, MissingInProvider: []string{}, Mismatched: []Mismatch{}}
		machines, err := r.o.Store.ListMachines(ctx, store.MachineFilter{Pool: p.Name})
		if err != nil {
			return nil, err
		}
		if t, why := r.Throttled(); t {
			rep.Unknown, rep.Reason = true, why
			rep.DBMachines = countLive(machines)
			out = append(out, rep)
			continue
		}
		insts, err := r.freshList(ctx, p.Name)
		if errors.Is(err, provider.ErrNotFound) {
			insts, err = nil, nil
		}
		if err != nil {
			r.noteThrottle(err)
			rep.Unknown, rep.Reason = true, "provider cannot be read: "+err.Error()
			rep.DBMachines = countLive(machines)
			out = append(out, rep)
			continue
		}
		out = append(out, diff(p.Name, machines, insts))
	}
	return out, nil
}

// freshLister is a provider that keeps part of what it lists from one list
// to the next (the Azure driver keeps its instances' IPs); a check must not
// compare the database with what the provider remembers.
type freshLister interface {
	ListInstancesFresh(ctx context.Context, group string) ([]provider.Instance, error)
}

// freshList lists a group's instances with nothing kept from earlier lists.
func (r *Reconciler) freshList(ctx context.Context, group string) ([]provider.Instance, error) {
	if f, ok := r.o.Provider.(freshLister); ok {
		return f.ListInstancesFresh(ctx, group)
	}
	return r.o.Provider.ListInstances(ctx, group)
}

func countLive(ms []store.Machine) int {
	n := 0
	for _, m := range ms {
		if m.State != store.Gone {
			n++
		}
	}
	return n
}

// diff compares live machine rows with provider instances.
func diff(pool string, machines []store.Machine, insts []provider.Instance) PoolReport {
	rep := PoolReport{Name: pool, ProviderInstances: len(insts),
		MissingInDB: []string{}, MissingInProvider: []string{}, Mismatched: []Mismatch{}}
	byLabel := map[string]store.Machine{}
	for _, m := range machines {
		if m.State == store.Gone {
			continue
		}
		rep.DBMachines++
		byLabel[m.Label] = m
	}
	seen := map[string]bool{}
	for _, in := range insts {
		seen[in.Name] = true
		m, ok := byLabel[in.Name]
		if !ok {
			rep.MissingInDB = append(rep.MissingInDB, in.ID)
			continue
		}
		if in.IP != "" && m.IP != in.IP {
			rep.Mismatched = append(rep.Mismatched, Mismatch{Label: m.Label, Field: "ip", DB: m.IP, Provider: in.IP})
		}
		if m.InstanceID != in.ID {
			rep.Mismatched = append(rep.Mismatched, Mismatch{Label: m.Label, Field: "instance_id", DB: m.InstanceID, Provider: in.ID})
		}
	}
	for label := range byLabel {
		if !seen[label] {
			rep.MissingInProvider = append(rep.MissingInProvider, label)
		}
	}
	sort.Strings(rep.MissingInDB)
	sort.Strings(rep.MissingInProvider)
	return rep
}

// PoolStatus is one pool as pools/list/ shows it.
type PoolStatus struct {
	Name        string         `json:"name"`
	Provider    string         `json:"provider"`
	Platform    string         `json:"platform"`
	Arch        string         `json:"arch"`
	Tags        []string       `json:"tags"`
	Image       string         `json:"image"`
	Reserved    bool           `json:"reserved"`
	InitialSize int            `json:"initial_size"`
	MaxSize     int            `json:"max_size"`
	Desired     int            `json:"desired_size"`
	Capacity    int            `json:"capacity"`    // the group's capacity at the last good read; -1 unknown
	Actual      int            `json:"actual_size"` // instances at the last good read
	Machines    map[string]int `json:"machines"`    // live machine rows by state
	Drift       int            `json:"drift"`       // instances missing in the database + rows missing in the provider + mismatches, at the last good read
	ViewAt      string         `json:"view_at,omitempty"`
	Throttled   bool           `json:"throttled"`
	Reason      string         `json:"reason,omitempty"`
	// Demand is the tasks the pool is wanted for (pending it could serve,
	// running on it); LimitedBy why it stops short of the size they want.
	Demand    int    `json:"demand"`
	LimitedBy string `json:"limited_by,omitempty"`
}

// Status describes every pool from the last good view and the database,
// without calling the provider.
func (r *Reconciler) Status(ctx context.Context) ([]PoolStatus, error) {
	var out []PoolStatus
	throttled, why := r.Throttled()
	for _, p := range r.o.Pools {
		machines, err := r.o.Store.ListMachines(ctx, store.MachineFilter{Pool: p.Name})
		if err != nil {
			return nil, err
		}
		st := PoolStatus{Name: p.Name, Provider: p.Provider, Platform: p.Platform, Arch: p.Arch, Tags: p.Tags,
			Image: p.Image, Reserved: p.Reserved, InitialSize: p.InitialSize, MaxSize: p.MaxSize,
			Desired: p.InitialSize, Capacity: -1, Machines: map[string]int{}, Throttled: throttled, Reason: why}
		if st.Tags == nil {
			st.Tags = []string{}
		}
		if !r.caps.Capacity {
			st.Desired = len(p.Machines) // the configuration's list is the pool
		}
		if demand, want, limited, ok := r.Sizing(p.Name); ok {
			st.Desired, st.Demand, st.LimitedBy = want, demand, limited
		}
		for _, m := range machines {
			if m.State != store.Gone {
				st.Machines[string(m.State)]++
			}
		}
		if v, ok := r.LastView(p.Name); ok {
			st.Actual = len(v.Instances)
			if v.Group != nil {
				st.Capacity = v.Group.Capacity
			}
			st.ViewAt = v.At.UTC().Format("2006-01-02 15:04:05")
			d := diff(p.Name, machines, v.Instances)
			st.Drift = len(d.MissingInDB) + len(d.MissingInProvider) + len(d.Mismatched)
		}
		out = append(out, st)
	}
	return out, nil
}
