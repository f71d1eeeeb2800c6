package fleet

import (
	"fmt"
	"slices"
	"time"

	"github.com/sandfleet/sandfleet/internal/store"
)

// Live is what this node knows of a machine beyond its row: what its agent
// last said, whether its provider asked us to wait. Another node's machines
// have none of it; their last event's cause stands in.
type Live struct {
	// AgentErr is the last failed probe of the machine's agent since its
	// row last changed, first failing at AgentSince.
	AgentErr   string
	AgentSince time.Time
	// Throttled names the provider's throttle window in force.
	Throttled string
	// LastCause is the cause of the machine's last state change.
	LastCause string
}

// Explain says what a machine that is not ready waits on, and since when;
// "" for a ready one. ops are the unfinished operations (any pool).
func Explain(m store.Machine, ops []store.Operation, live Live, now time.Time) string {
	since := Clock(m.StateChangedOn, now)
	op, hasOp := opOn(m, ops)
	throttled := ""
	if live.Throttled != "" {
		throttled = "; " + live.Throttled
	}
	switch m.State {
	case store.Ready:
		return ""
	case store.Leased:
		return fmt.Sprintf("leased by task %d since %s", m.TaskID, Clock(m.LockedChangedOn, now))
	case store.Dirty:
		switch {
		case hasOp:
			return fmt.Sprintf("dirty: %s%s", describeOp(op, now), throttled)
		case live.Throttled != "":
			return fmt.Sprintf("dirty since %s, its reimage waits: %s", since, live.Throttled)
		case m.Failures > 0:
			return fmt.Sprintf("dirty since %s, waiting for a reimage; the last %d failed: %s", since, m.Failures, live.LastCause)
		}
		return fmt.Sprintf("dirty since %s, waiting for its reimage", since)
	case store.Reimaging:
		if hasOp {
			return describeOp(op, now) + throttled
		}
		return fmt.Sprintf("reimaging since %s%s", since, throttled)
	case store.Provisioning:
		switch {
		case hasOp:
			return describeOp(op, now) + throttled
		case live.AgentErr != "":
			return fmt.Sprintf("agent at %s not answering since %s: %s", m.IP, Clock(live.AgentSince, now), live.AgentErr)
		case m.IP == "":
			return fmt.Sprintf("provisioning since %s: no IP address yet%s", since, throttled)
		case live.LastCause != "":
			return fmt.Sprintf("provisioning since %s (%s): waiting for its agent at %s to answer", since, live.LastCause, m.IP)
		}
		return fmt.Sprintf("provisioning since %s: waiting for its agent at %s to answer", since, m.IP)
	case store.Deleting:
		if hasOp {
			return describeOp(op, now) + throttled
		}
		return fmt.Sprintf("being deleted since %s%s", since, throttled)
	case store.Quarantined:
		return fmt.Sprintf("quarantined since %s because %s (machines/release/ puts it back)", since, m.QuarantineReason)
	case store.Gone:
		if live.LastCause != "" {
			return fmt.Sprintf("gone since %s: %s", since, live.LastCause)
		}
		return "gone since " + since
	}
	return fmt.Sprintf("%s since %s", m.State, since)
}

// opOn finds the unfinished operation on m's instance, or the one creating
// it.
func opOn(m store.Machine, ops []store.Operation) (store.Operation, bool) {
	for _, op := range ops {
		if op.Pool == m.Pool && slices.Contains(op.InstanceIDs, m.InstanceID) {
			return op, true
		}
	}
	if m.State == store.Provisioning {
		for _, op := range ops {
			if op.Pool == m.Pool && (op.Kind == store.OpSetCapacity || op.Kind == store.OpCreatePool) {
				return op, true
			}
		}
	}
	return store.Operation{}, false
}

func describeOp(op store.Operation, now time.Time) string {
	what := string(op.Kind)
	switch op.Kind {
	case store.OpReimage:
		what = "reimage"
	case store.OpDelete:
		what = "delete"
	case store.OpSetCapacity, store.OpCreatePool:
		what = fmt.Sprintf("scale to %d", op.Capacity)
	}
	s := fmt.Sprintf("%s operation %d in flight since %s", what, op.ID, Clock(op.CreatedAt, now))
	if op.Attempt > 1 {
		s += fmt.Sprintf(" (attempt %d)", op.Attempt)
	}
	return s
}

// Growing says how a pool is being grown, or "" when it is not: the
// unfinished operation that raises its capacity above the machines it has.
func Growing(pool string, machines int, ops []store.Operation, now time.Time) string {
	for _, op := range ops {
		if op.Pool == pool && (op.Kind == store.OpSetCapacity || op.Kind == store.OpCreatePool) && op.Capacity > machines {
			return fmt.Sprintf("pool %s growing: +%d requested %s (operation %d)", pool, op.Capacity-machines,
				Clock(op.CreatedAt, now), op.ID)
		}
	}
	return ""
}

// Clock renders t for a reason: the time of day (UTC) when it is today,
// with the date otherwise.
func Clock(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "an unknown time"
	}
	t, now = t.UTC(), now.UTC()
	if t.YearDay() == now.YearDay() && t.Year() == now.Year() {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04:05")
}

// Why explains machine m as this node sees it: Explain with what its
// reconciler knows live, and cause, the cause of its last state change.
func (f *Fleet) Why(m store.Machine, ops []store.Operation, cause string) string {
	live := Live{LastCause: cause}
	for _, r := range f.recs {
		if _, mine := r.pools[m.Pool]; !mine {
			continue
		}
		if throttled, why := r.Throttled(); throttled {
			live.Throttled = why
		}
		if v, ok := r.probes.get(m.Label); ok && v.version == m.Version {
			live.AgentErr, live.AgentSince = v.err, v.at
		}
		if v, ok := r.agents.get(m.Label); ok && v.version == m.Version && m.State == store.Ready {
			live.AgentErr, live.AgentSince = v.err, v.at
		}
	}
	why := Explain(m, ops, live, time.Now())
	if why == "" && live.AgentErr != "" {
		// Ready in the table, but its agent just stopped answering: the
		// next pass takes it out of service.
		why = fmt.Sprintf("agent at %s not answering since %s: %s; being taken out of service", m.IP,
			Clock(live.AgentSince, time.Now()), live.AgentErr)
	}
	return why
}
