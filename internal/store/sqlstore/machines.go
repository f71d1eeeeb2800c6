package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/store"
)

// maxParams bounds the placeholders in one statement, under SQLite's 32766
// and PostgreSQL's 65535; longer batches are split.
const maxParams = 9000

// machineColumns are the machines table's columns, in machineDest's order.
var machineColumns = []string{"id", "name", "label", "pool", "instance_id", "arch", "ip", "platform",
	"interface", "snapshot", "resultserver_ip", "resultserver_port", "reserved", "state",
	"state_changed_on", "locked_changed_on", "quarantine_reason", "failures", "task_id", "version", "created_at"}

var (
	// machineReturning ends in a ? for tagSep.
	machineReturning = strings.Join(machineColumns, ", ") + ", " + tagsOf("machine_tags", "machine_id", "machines.id")
	machineInsert    = `INSERT INTO machines (` + strings.Join(machineColumns[1:], ", ") + `) VALUES `
	// machineQuery starts with a ? for tagSep; callers append WHERE and ORDER BY.
	machineQuery = `SELECT m.` + strings.Join(machineColumns, ", m.") + `, ` +
		tagsOf("machine_tags", "machine_id", "m.id") + ` FROM machines m`
)

func machineDest(m *store.Machine) []any {
	return []any{&m.ID, &m.Name, &m.Label, &m.Pool, &m.InstanceID, &m.Arch, &m.IP, &m.Platform,
		&m.Interface, &m.Snapshot, &m.ResultServerIP, &m.ResultServerPort, &m.Reserved, &m.State,
		timeDest{&m.StateChangedOn}, timeDest{&m.LockedChangedOn}, &m.QuarantineReason, &m.Failures, &m.TaskID, &m.Version,
		timeDest{&m.CreatedAt}, tagsDest{&m.Tags}}
}

// machineArgs are m's values for machineInsert, in machineColumns[1:]'s order.
func (s *Store) machineArgs(m *store.Machine) []any {
	return []any{m.Name, m.Label, m.Pool, m.InstanceID, m.Arch, m.IP, m.Platform, m.Interface,
		m.Snapshot, m.ResultServerIP, m.ResultServerPort, m.Reserved, m.State,
		s.timeArg(m.StateChangedOn), s.timeArg(m.LockedChangedOn), m.QuarantineReason, m.Failures, m.TaskID, m.Version,
		s.timeArg(m.CreatedAt)}
}

// InsertMachines inserts new machines and their creation events in one
// transaction; any existing label fails the whole call with store.ErrConflict.
func (s *Store) InsertMachines(ctx context.Context, ms []store.Machine, cause string) ([]store.Machine, error) {
	if len(ms) == 0 {
		return nil, nil
	}
	now := s.stamp()
	out := make([]store.Machine, len(ms))
	seen := make(map[string]bool, len(ms))
	for i, m := range ms {
		switch {
		case m.Label == "":
			return nil, fmt.Errorf("insert machines: machine %d has no label", i)
		case m.State == "":
			return nil, fmt.Errorf("insert machines: %q has no state", m.Label)
		case seen[m.Label]:
			return nil, fmt.Errorf("insert machines: %q twice: %w", m.Label, store.ErrConflict)
		}
		seen[m.Label] = true
		if m.Name == "" {
			m.Name = m.Label
		}
		var err error
		if m.Tags, err = cleanTags(m.Tags); err != nil {
			return nil, fmt.Errorf("insert machines: %q: %w", m.Label, err)
		}
		m.ID, m.Version = 0, 1
		if m.CreatedAt = norm(m.CreatedAt); m.CreatedAt.IsZero() {
			m.CreatedAt = now
		}
		m.StateChangedOn = norm(m.StateChangedOn)
		if m.StateChangedOn.IsZero() {
			m.StateChangedOn = now
		}
		m.LockedChangedOn = norm(m.LockedChangedOn)
		if m.LockedChangedOn.IsZero() && m.State == store.Leased {
			m.LockedChangedOn = now
		}
		out[i] = m
	}
	err := s.write(ctx, func(c conn) error {
		per := maxParams / (len(machineColumns) - 1)
		for lo := 0; lo < len(out); lo += per {
			if err := s.insertMachines(ctx, c, out[lo:min(lo+per, len(out))], cause, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if s.d.UniqueViolation(err) {
			err = fmt.Errorf("%w: %v", store.ErrConflict, err)
		}
		return nil, fmt.Errorf("insert machines: %w", err)
	}
	return out, nil
}

// insertMachines inserts one batch, sets its IDs, and adds events and tags.
func (s *Store) insertMachines(ctx context.Context, c conn, ms []store.Machine, cause string, now time.Time) error {
	args := make([]any, 0, len(ms)*(len(machineColumns)-1))
	for i := range ms {
		args = append(args, s.machineArgs(&ms[i])...)
	}
	rows, err := c.query(ctx, machineInsert+placeholders(len(ms), len(machineColumns)-1)+` RETURNING id, label`, args...)
	if err != nil {
		return err
	}
	ids := make(map[string]int64, len(ms))
	for rows.Next() {
		var id int64
		var label string
		if err := rows.Scan(&id, &label); err != nil {
			rows.Close()
			return err
		}
		ids[label] = id
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var events, tags []any
	for i := range ms {
		m := &ms[i]
		m.ID = ids[m.Label]
		if m.ID == 0 {
			return fmt.Errorf("no id returned for %q", m.Label)
		}
		events = append(events, m.ID, m.Label, "", m.State, cause, s.timeArg(now))
		for pos, tag := range m.Tags {
			tags = append(tags, m.ID, pos, tag)
		}
	}
	if err := c.insertValues(ctx, `INSERT INTO machine_events (machine_id, label, from_state, to_state, cause, at) VALUES `, 6, events); err != nil {
		return err
	}
	return c.insertValues(ctx, `INSERT INTO machine_tags (machine_id, pos, tag) VALUES `, 3, tags)
}

// insertValues runs prefix with as many rows of cols values as args holds, in
// statements of at most maxParams placeholders.
func (c conn) insertValues(ctx context.Context, prefix string, cols int, args []any) error {
	per := maxParams / cols * cols
	for lo := 0; lo < len(args); lo += per {
		chunk := args[lo:min(lo+per, len(args))]
		if _, err := c.exec(ctx, prefix+placeholders(len(chunk)/cols, cols), chunk...); err != nil {
			return err
		}
	}
	return nil
}

// GetMachine reads one machine by label.
func (s *Store) GetMachine(ctx context.Context, label string) (store.Machine, error) {
	ms, err := s.machines(ctx, s.read(), machineQuery+` WHERE m.label = ?`, tagSep, label)
	if err == nil && len(ms) == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Machine{}, fmt.Errorf("get machine %q: %w", label, err)
	}
	return ms[0], nil
}

// ListMachines lists the machines f selects, by id, in one round trip.
func (s *Store) ListMachines(ctx context.Context, f store.MachineFilter) ([]store.Machine, error) {
	var where []string
	args := []any{tagSep}
	if f.Pool != "" {
		where = append(where, `m.pool = ?`)
		args = append(args, f.Pool)
	}
	if len(f.States) > 0 {
		where = append(where, `m.state IN `+placeholders(1, len(f.States)))
		for _, st := range f.States {
			args = append(args, st)
		}
	}
	q := machineQuery
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	ms, err := s.machines(ctx, s.read(), q+` ORDER BY m.id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list machines: %w", err)
	}
	return ms, nil
}

// machines runs a machineQuery.
func (s *Store) machines(ctx context.Context, c conn, query string, args ...any) ([]store.Machine, error) {
	rows, err := c.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ms []store.Machine
	for rows.Next() {
		var m store.Machine
		if err := rows.Scan(machineDest(&m)...); err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	return ms, rows.Err()
}

func checkTransition(t store.Transition) error {
	if t.Label == "" || t.From == "" || t.To == "" {
		return fmt.Errorf("transition %q %q→%q: label, from and to are required", t.Label, t.From, t.To)
	}
	return nil
}

// TransitionMachine applies one compare-and-set and records its event.
func (s *Store) TransitionMachine(ctx context.Context, t store.Transition) (store.Machine, error) {
	if err := checkTransition(t); err != nil {
		return store.Machine{}, err
	}
	var m *store.Machine
	err := s.write(ctx, func(c conn) error {
		var err error
		if m, err = s.transition(ctx, c, t, s.stamp()); err != nil {
			return err
		}
		if m == nil {
			return s.whyNot(ctx, c, t)
		}
		return nil
	})
	if err != nil {
		return store.Machine{}, fmt.Errorf("transition %s %s→%s: %w", t.Label, t.From, t.To, err)
	}
	return *m, nil
}

// TransitionMachines applies many compare-and-sets in one transaction; each
// one that finds its row elsewhere leaves a nil in the result.
func (s *Store) TransitionMachines(ctx context.Context, ts []store.Transition) ([]*store.Machine, error) {
	for _, t := range ts {
		if err := checkTransition(t); err != nil {
			return nil, err
		}
	}
	out := make([]*store.Machine, len(ts))
	if len(ts) == 0 {
		return out, nil
	}
	err := s.write(ctx, func(c conn) error {
		now := s.stamp()
		for i, t := range ts {
			m, err := s.transition(ctx, c, t, now)
			if err != nil {
				return fmt.Errorf("%s %s→%s: %w", t.Label, t.From, t.To, err)
			}
			out[i] = m
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("transition machines: %w", err)
	}
	return out, nil
}

// transition runs t's compare-and-set in c and records its event. It returns
// the new row, or nil when no row was in t.From (at t.Version).
func (s *Store) transition(ctx context.Context, c conn, t store.Transition, now time.Time) (*store.Machine, error) {
	set := []string{`state = ?`, `version = version + 1`}
	args := []any{t.To}
	if t.To != t.From {
		set = append(set, `state_changed_on = ?`)
		args = append(args, s.timeArg(now))
	}
	if (t.From == store.Leased) != (t.To == store.Leased) {
		set = append(set, `locked_changed_on = ?`)
		args = append(args, s.timeArg(now))
	}
	switch {
	case t.To == store.Leased && t.TaskID != 0:
		set = append(set, `task_id = ?`)
		args = append(args, t.TaskID)
	case t.To != store.Leased:
		set = append(set, `task_id = 0`) // only a lease holds a task
	}
	if t.IP != nil {
		set = append(set, `ip = ?`)
		args = append(args, *t.IP)
	}
	leavesQuarantine := t.From == store.Quarantined && t.To != store.Quarantined
	switch {
	case t.QuarantineReason != nil:
		set = append(set, `quarantine_reason = ?`)
		args = append(args, *t.QuarantineReason)
	case leavesQuarantine:
		set = append(set, `quarantine_reason = ''`)
	}
	switch {
	case t.Failures == store.AddFailure:
		set = append(set, `failures = failures + 1`)
	case t.Failures == store.ClearFailures || leavesQuarantine:
		set = append(set, `failures = 0`)
	}
	q := `UPDATE machines SET ` + strings.Join(set, `, `) + ` WHERE label = ? AND state = ?`
	args = append(args, t.Label, t.From)
	if t.Version != 0 {
		q += ` AND version = ?`
		args = append(args, t.Version)
	}
	var m store.Machine
	err := c.queryRow(ctx, q+` RETURNING `+machineReturning, append(args, tagSep)...).Scan(machineDest(&m)...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if t.To != t.From {
		if _, err := c.exec(ctx, `INSERT INTO machine_events (machine_id, label, from_state, to_state, cause, at)
			VALUES (?, ?, ?, ?, ?, ?)`, m.ID, m.Label, t.From, t.To, t.Cause, s.timeArg(now)); err != nil {
			return nil, err
		}
	}
	return &m, nil
}

// whyNot explains a compare-and-set that matched no row.
func (s *Store) whyNot(ctx context.Context, c conn, t store.Transition) error {
	var state store.MachineState
	var version int64
	err := c.queryRow(ctx, `SELECT state, version FROM machines WHERE label = ?`, t.Label).Scan(&state, &version)
	if err != nil {
		return notFound(err)
	}
	return fmt.Errorf("%w: it is %s at version %d", store.ErrStale, state, version)
}

// MachineEvents lists a machine's events, oldest first.
func (s *Store) MachineEvents(ctx context.Context, label string) ([]store.MachineEvent, error) {
	es, err := s.events(ctx, label)
	if err == nil && len(es) == 0 {
		// Every machine has its creation event: no events, no machine.
		err = store.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("machine events %q: %w", label, err)
	}
	return es, nil
}

func (s *Store) events(ctx context.Context, label string) ([]store.MachineEvent, error) {
	rows, err := s.read().query(ctx, `SELECT e.id, e.machine_id, e.label, e.from_state, e.to_state, e.cause, e.at
		FROM machine_events e JOIN machines m ON m.id = e.machine_id WHERE m.label = ? ORDER BY e.id`, label)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var es []store.MachineEvent
	for rows.Next() {
		var e store.MachineEvent
		if err := rows.Scan(&e.ID, &e.MachineID, &e.Label, &e.From, &e.To, &e.Cause, timeDest{&e.At}); err != nil {
			return nil, err
		}
		es = append(es, e)
	}
	return es, rows.Err()
}
