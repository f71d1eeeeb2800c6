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

// PutSample inserts a sample unless its SHA-256 is known, and returns the
// stored row either way.
func (s *Store) PutSample(ctx context.Context, smp store.Sample) (store.Sample, error) {
	if len(smp.SHA256) != 64 {
		return store.Sample{}, fmt.Errorf("put sample: sha256 %q is not 64 hex digits", smp.SHA256)
	}
	var out store.Sample
	err := s.write(ctx, func(c conn) error {
		if _, err := c.exec(ctx, `INSERT INTO samples (sha256, sha1, md5, sha512, crc32, file_size, file_type, created_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING`,
			smp.SHA256, smp.SHA1, smp.MD5, smp.SHA512, smp.CRC32, smp.FileSize, smp.FileType,
			s.timeArg(s.stamp())); err != nil {
			return err
		}
		return c.queryRow(ctx, `SELECT `+sampleColumns+` FROM samples WHERE sha256 = ?`, smp.SHA256).Scan(sampleDest(&out)...)
	})
	if err != nil {
		return store.Sample{}, fmt.Errorf("put sample %s: %w", smp.SHA256, err)
	}
	return out, nil
}

const sampleColumns = `id, sha256, sha1, md5, sha512, crc32, file_size, file_type, created_at`

func sampleDest(x *store.Sample) []any {
	return []any{&x.ID, &x.SHA256, &x.SHA1, &x.MD5, &x.SHA512, &x.CRC32, &x.FileSize, &x.FileType, timeDest{&x.CreatedAt}}
}

// GetSample reads one sample.
func (s *Store) GetSample(ctx context.Context, id int64) (store.Sample, error) {
	var out store.Sample
	err := s.read().queryRow(ctx, `SELECT `+sampleColumns+` FROM samples WHERE id = ?`, id).Scan(sampleDest(&out)...)
	if err != nil {
		return store.Sample{}, fmt.Errorf("get sample %d: %w", id, notFound(err))
	}
	return out, nil
}

// taskColumns are the tasks table's columns, in taskDest's order.
var taskColumns = []string{"id", "target", "category", "sample_id", "file_name", "timeout", "priority", "custom",
	"machine", "package", "route", "options", "platform", "memory", "enforce_timeout", "clock", "added_on",
	"started_on", "completed_on", "status", "attempt", "error", "ran_on", "node", "lease_expires_at", "version"}

var (
	// taskQuery starts with a ? for tagSep; callers append WHERE and ORDER BY.
	taskQuery = `SELECT tk.` + strings.Join(taskColumns, ", tk.") + `, ` +
		tagsOf("task_tags", "task_id", "tk.id") + ` FROM tasks tk`
	// taskReturning ends in a ? for tagSep.
	taskReturning = strings.Join(taskColumns, ", ") + ", " + tagsOf("task_tags", "task_id", "tasks.id")
)

// nullID scans a nullable id column as 0.
type nullID struct{ v *int64 }

func (d nullID) Scan(v any) error {
	var n sql.NullInt64
	if err := n.Scan(v); err != nil {
		return err
	}
	*d.v = n.Int64
	return nil
}

func taskDest(t *store.Task) []any {
	return []any{&t.ID, &t.Target, &t.Category, nullID{&t.SampleID}, &t.FileName, &t.Timeout, &t.Priority, &t.Custom,
		&t.Machine, &t.Package, &t.Route, &t.Options, &t.Platform, &t.Memory, &t.EnforceTimeout, timeDest{&t.Clock},
		timeDest{&t.AddedOn}, timeDest{&t.StartedOn}, timeDest{&t.CompletedOn}, &t.Status, &t.Attempt, &t.Error,
		&t.RanOn, &t.Node, timeDest{&t.LeaseExpires}, &t.Version, tagsDest{&t.Tags}}
}

// CreateTasks inserts tasks as pending, with their tags and creation events,
// in one transaction.
func (s *Store) CreateTasks(ctx context.Context, ts []store.Task, cause string) ([]store.Task, error) {
	out := make([]store.Task, len(ts))
	now := s.stamp()
	for i, t := range ts {
		switch {
		case t.Category == "":
			return nil, fmt.Errorf("create tasks: task %d has no category", i)
		case t.Target == "":
			return nil, fmt.Errorf("create tasks: task %d has no target", i)
		}
		var err error
		if t.Tags, err = cleanTags(t.Tags); err != nil {
			return nil, fmt.Errorf("create tasks: task %d: %w", i, err)
		}
		t.Status, t.Attempt, t.Version, t.AddedOn = store.TaskPending, 1, 1, now
		t.Clock = norm(t.Clock)
		out[i] = t
	}
	err := s.write(ctx, func(c conn) error {
		for i := range out {
			t := &out[i]
			var sample any
			if t.SampleID != 0 {
				sample = t.SampleID
			}
			err := c.queryRow(ctx, `INSERT INTO tasks (target, category, sample_id, file_name, timeout, priority, custom,
				machine, package, route, options, platform, memory, enforce_timeout, clock, added_on, status, attempt)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
				t.Target, t.Category, sample, t.FileName, t.Timeout, t.Priority, t.Custom, t.Machine, t.Package,
				t.Route, t.Options, t.Platform, t.Memory, t.EnforceTimeout, s.timeArg(t.Clock), s.timeArg(now),
				t.Status, t.Attempt).Scan(&t.ID)
			if err != nil {
				return err
			}
			if len(t.Tags) > 0 {
				args := make([]any, 0, 3*len(t.Tags))
				for pos, tag := range t.Tags {
					args = append(args, t.ID, pos, tag)
				}
				if err := c.insertValues(ctx, `INSERT INTO task_tags (task_id, pos, tag) VALUES `, 3, args); err != nil {
					return err
				}
			}
			if err := s.taskEvent(ctx, c, *t, "", cause, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("create %d tasks: %w", len(ts), err)
	}
	return out, nil
}

// taskEvent records t's move from status from to t.Status.
func (s *Store) taskEvent(ctx context.Context, c conn, t store.Task, from store.TaskStatus, cause string, now time.Time) error {
	_, err := c.exec(ctx, `INSERT INTO task_events (task_id, from_status, to_status, machine, attempt, cause, at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, t.ID, from, t.Status, t.RanOn, t.Attempt, cause, s.timeArg(now))
	return err
}

// GetTask reads one task.
func (s *Store) GetTask(ctx context.Context, id int64) (store.Task, error) {
	ts, err := s.tasks(ctx, s.read(), taskQuery+` WHERE tk.id = ?`, tagSep, id)
	if err == nil && len(ts) == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Task{}, fmt.Errorf("get task %d: %w", id, err)
	}
	return ts[0], nil
}

// ListTasks lists the tasks f selects.
func (s *Store) ListTasks(ctx context.Context, f store.TaskFilter) ([]store.Task, error) {
	var where []string
	args := []any{tagSep}
	if len(f.Statuses) > 0 {
		where = append(where, `tk.status IN (`+strings.TrimSuffix(strings.Repeat("?, ", len(f.Statuses)), ", ")+`)`)
		for _, st := range f.Statuses {
			args = append(args, st)
		}
	}
	if len(f.IDs) > 0 {
		where = append(where, `tk.id IN (`+strings.TrimSuffix(strings.Repeat("?, ", len(f.IDs)), ", ")+`)`)
		for _, id := range f.IDs {
			args = append(args, id)
		}
	}
	if f.Category != "" {
		where = append(where, `tk.category = ?`)
		args = append(args, f.Category)
	}
	if f.OptionLike != "" {
		where = append(where, `tk.options LIKE ? ESCAPE '\'`)
		args = append(args, "%"+likeEscape(f.OptionLike)+"%")
	}
	if !f.CompletedAfter.IsZero() {
		where = append(where, `tk.completed_on > ?`)
		args = append(args, s.timeArg(f.CompletedAfter))
	}
	if f.Node != "" {
		where = append(where, `tk.node = ?`)
		args = append(args, f.Node)
	}
	if f.SampleID != 0 {
		where = append(where, `tk.sample_id = ?`)
		args = append(args, f.SampleID)
	}
	q := taskQuery
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, ` AND `)
	}
	if f.Newest {
		// Unfinished tasks (no completed_on) first, as the newest.
		q += ` ORDER BY (tk.completed_on IS NULL) DESC, tk.completed_on DESC, tk.id DESC`
	} else {
		q += ` ORDER BY tk.id`
	}
	if f.Limit > 0 || f.Offset > 0 {
		limit := f.Limit
		if limit <= 0 {
			limit = 1 << 31 // an offset alone: every row after it
		}
		q += ` LIMIT ? OFFSET ?`
		args = append(args, limit, max(f.Offset, 0))
	}
	ts, err := s.tasks(ctx, s.read(), q, args...)
	if err != nil {
		return nil, fmt.Errorf("list tasks: %w", err)
	}
	return ts, nil
}

// likeEscape escapes LIKE's wildcards so s matches literally.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

func (s *Store) tasks(ctx context.Context, c conn, query string, args ...any) ([]store.Task, error) {
	rows, err := c.query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ts []store.Task
	for rows.Next() {
		var t store.Task
		if err := rows.Scan(taskDest(&t)...); err != nil {
			return nil, err
		}
		ts = append(ts, t)
	}
	return ts, rows.Err()
}

// CountTasks counts tasks by status.
func (s *Store) CountTasks(ctx context.Context) (map[store.TaskStatus]int, error) {
	rows, err := s.read().query(ctx, `SELECT status, COUNT(*) FROM tasks GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("count tasks: %w", err)
	}
	defer rows.Close()
	out := map[store.TaskStatus]int{}
	for rows.Next() {
		var st store.TaskStatus
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, fmt.Errorf("count tasks: %w", err)
		}
		out[st] = n
	}
	return out, rows.Err()
}

// TaskEvents lists a task's events, oldest first.
func (s *Store) TaskEvents(ctx context.Context, id int64) ([]store.TaskEvent, error) {
	rows, err := s.read().query(ctx, `SELECT id, task_id, from_status, to_status, machine, attempt, cause, at
		FROM task_events WHERE task_id = ? ORDER BY id`, id)
	if err != nil {
		return nil, fmt.Errorf("task %d events: %w", id, err)
	}
	defer rows.Close()
	var es []store.TaskEvent
	for rows.Next() {
		var e store.TaskEvent
		if err := rows.Scan(&e.ID, &e.TaskID, &e.From, &e.To, &e.Machine, &e.Attempt, &e.Cause, timeDest{&e.At}); err != nil {
			return nil, fmt.Errorf("task %d events: %w", id, err)
		}
		es = append(es, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("task %d events: %w", id, err)
	}
	if len(es) == 0 {
		return nil, fmt.Errorf("task %d events: %w", id, store.ErrNotFound)
	}
	return es, nil
}

// PendingTasks lists pending tasks in dispatch order.
func (s *Store) PendingTasks(ctx context.Context, limit int) ([]store.Task, error) {
	if limit <= 0 {
		limit = 1000
	}
	ts, err := s.tasks(ctx, s.read(), taskQuery+` WHERE tk.status = ? ORDER BY tk.priority DESC, tk.added_on, tk.id LIMIT ?`,
		tagSep, store.TaskPending, limit)
	if err != nil {
		return nil, fmt.Errorf("pending tasks: %w", err)
	}
	return ts, nil
}

// Lease applies each request as its own all-or-nothing pair of
// compare-and-sets, inside one transaction: a savepoint per pair lets one
// pair go stale without undoing the others or leaving half a pair behind.
func (s *Store) Lease(ctx context.Context, rs []store.LeaseRequest) ([]store.LeaseResult, error) {
	out := make([]store.LeaseResult, len(rs))
	if len(rs) == 0 {
		return out, nil
	}
	err := s.write(ctx, func(c conn) error {
		now, err := s.leaseNow(ctx, c)
		if err != nil {
			return err
		}
		for i, r := range rs {
			if _, err := c.exec(ctx, `SAVEPOINT lease`); err != nil {
				return err
			}
			res, err := s.leaseOne(ctx, c, r, now)
			if err != nil {
				return err
			}
			out[i] = res
			stmt := `RELEASE SAVEPOINT lease`
			if res.Err != nil {
				stmt = `ROLLBACK TO SAVEPOINT lease`
			}
			if _, err := c.exec(ctx, stmt); err != nil {
				return err
			}
			if res.Err != nil {
				if _, err := c.exec(ctx, `RELEASE SAVEPOINT lease`); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lease %d machines: %w", len(rs), err)
	}
	return out, nil
}

// leaseOne moves one task and one machine; a stale row is a result, not an
// error, and the caller rolls the pair back.
func (s *Store) leaseOne(ctx context.Context, c conn, r store.LeaseRequest, now time.Time) (store.LeaseResult, error) {
	var res store.LeaseResult
	ts, err := s.tasks(ctx, c, `UPDATE tasks SET status = ?, started_on = ?, ran_on = ?, node = ?,
		lease_expires_at = ?, version = version + 1
		WHERE id = ? AND status = ? AND version = ? RETURNING `+taskReturning,
		store.TaskRunning, s.timeArg(now), r.Label, r.Node, s.timeArg(now.Add(r.TTL)),
		r.TaskID, store.TaskPending, r.TaskVersion, tagSep)
	if err != nil {
		return res, err
	}
	if len(ts) == 0 {
		res.Err = fmt.Errorf("task %d: %w: no longer pending at version %d", r.TaskID, store.ErrStale, r.TaskVersion)
		return res, nil
	}
	res.Task = ts[0]
	m, err := s.transition(ctx, c, store.Transition{Label: r.Label, From: store.Ready, Version: r.MachineVersion,
		To: store.Leased, TaskID: r.TaskID, Cause: fmt.Sprintf("task %d", r.TaskID)}, now)
	if err != nil {
		return res, err
	}
	if m == nil {
		res.Err = fmt.Errorf("machine %s: %w: no longer ready at version %d", r.Label, store.ErrStale, r.MachineVersion)
		return res, nil
	}
	res.Machine = *m
	return res, s.taskEvent(ctx, c, res.Task, store.TaskPending, "leased "+r.Label, now)
}

// RenewLeases extends node's leases on the running tasks ids.
func (s *Store) RenewLeases(ctx context.Context, node string, ids []int64, ttl time.Duration) ([]int64, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	var held []int64
	err := s.write(ctx, func(c conn) error {
		now, err := s.leaseNow(ctx, c)
		if err != nil {
			return err
		}
		args := []any{s.timeArg(now.Add(ttl)), node, store.TaskRunning}
		for _, id := range ids {
			args = append(args, id)
		}
		rows, err := c.query(ctx, `UPDATE tasks SET lease_expires_at = ? WHERE node = ? AND status = ? AND id IN (`+
			strings.TrimSuffix(strings.Repeat("?, ", len(ids)), ", ")+`) RETURNING id`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			held = append(held, id)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("renew %d leases of %s: %w", len(ids), node, err)
	}
	return held, nil
}

// ExpiredLeases lists running tasks whose lease expired.
func (s *Store) ExpiredLeases(ctx context.Context) ([]store.Task, error) {
	var ts []store.Task
	err := s.write(ctx, func(c conn) error {
		now, err := s.leaseNow(ctx, c)
		if err != nil {
			return err
		}
		ts, err = s.tasks(ctx, c, taskQuery+` WHERE tk.status = ? AND tk.lease_expires_at < ? ORDER BY tk.id`,
			tagSep, store.TaskRunning, s.timeArg(now))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("expired leases: %w", err)
	}
	return ts, nil
}

// EndTask ends a running analysis and releases its machine dirty.
func (s *Store) EndTask(ctx context.Context, e store.TaskEnd) (store.Task, error) {
	if e.Status != store.TaskCompleted && e.Status != store.TaskFailedAnalysis {
		return store.Task{}, fmt.Errorf("end task %d: %q is not an end of an analysis", e.TaskID, e.Status)
	}
	var out store.Task
	err := s.write(ctx, func(c conn) error {
		now := s.stamp()
		t, err := s.moveRunning(ctx, c, e.TaskID, e.Node, `status = ?, error = ?, completed_on = ?, node = '',
			lease_expires_at = NULL`, e.Status, e.Error, s.timeArg(now))
		if err != nil {
			return err
		}
		out = t
		if err := s.taskEvent(ctx, c, t, store.TaskRunning, firstNonEmpty(e.Cause, e.Error), now); err != nil {
			return err
		}
		return s.releaseMachine(ctx, c, t, store.Dirty, fmt.Sprintf("task %d %s", t.ID, t.Status), now)
	})
	if err != nil {
		return store.Task{}, fmt.Errorf("end task %d: %w", e.TaskID, err)
	}
	return out, nil
}

// RequeueTask puts a running task back in the queue, or fails it past its
// attempts, and moves its machine.
func (s *Store) RequeueTask(ctx context.Context, r store.Requeue) (store.Task, error) {
	var out store.Task
	err := s.write(ctx, func(c conn) error {
		now := s.stamp()
		cur, err := s.runningTask(ctx, c, r.TaskID, r.Node)
		if err != nil {
			return err
		}
		set := `status = ?, node = '', lease_expires_at = NULL, started_on = NULL`
		args := []any{store.TaskPending}
		switch {
		case r.Lost && r.MaxAttempts > 0 && cur.Attempt >= r.MaxAttempts:
			set = `status = ?, error = ?, completed_on = ?, node = '', lease_expires_at = NULL`
			args = []any{store.TaskFailedAnalysis,
				fmt.Sprintf("%s; gave up after %d attempts", r.Cause, cur.Attempt), s.timeArg(now)}
		case r.Lost:
			set += `, attempt = attempt + 1`
		}
		t, err := s.moveRunning(ctx, c, r.TaskID, r.Node, set, args...)
		if err != nil {
			return err
		}
		t.RanOn = cur.RanOn // the event names the machine the attempt ran on
		out = t
		if err := s.taskEvent(ctx, c, t, store.TaskRunning, r.Cause, now); err != nil {
			return err
		}
		to := r.MachineTo
		if to == "" {
			to = store.Dirty
		}
		return s.releaseMachine(ctx, c, cur, to, firstNonEmpty(r.MachineCause, r.Cause), now)
	})
	if err != nil {
		return store.Task{}, fmt.Errorf("requeue task %d: %w", r.TaskID, err)
	}
	return out, nil
}

// runningTask reads task id if it is running under node ("" = any node).
func (s *Store) runningTask(ctx context.Context, c conn, id int64, node string) (store.Task, error) {
	ts, err := s.tasks(ctx, c, taskQuery+` WHERE tk.id = ?`, tagSep, id)
	if err != nil {
		return store.Task{}, err
	}
	if len(ts) == 0 {
		return store.Task{}, store.ErrNotFound
	}
	t := ts[0]
	if t.Status != store.TaskRunning || (node != "" && t.Node != node) {
		return store.Task{}, fmt.Errorf("%w: it is %s under %q", store.ErrStale, t.Status, t.Node)
	}
	return t, nil
}

// moveRunning updates a task that is running under node ("" = any) with
// set, bumping its version, and returns the new row; ErrStale otherwise.
func (s *Store) moveRunning(ctx context.Context, c conn, id int64, node, set string, args ...any) (store.Task, error) {
	q := `UPDATE tasks SET ` + set + `, version = version + 1 WHERE id = ? AND status = ?`
	args = append(args, id, store.TaskRunning)
	if node != "" {
		q += ` AND node = ?`
		args = append(args, node)
	}
	ts, err := s.tasks(ctx, c, q+` RETURNING `+taskReturning, append(args, tagSep)...)
	if err != nil {
		return store.Task{}, err
	}
	if len(ts) == 0 {
		if _, err := s.runningTask(ctx, c, id, node); err != nil {
			return store.Task{}, err
		}
		return store.Task{}, store.ErrStale
	}
	return ts[0], nil
}

// releaseMachine moves the machine t ran on to state to, if it is still
// leased to t; a machine marked gone (or moved by an operator) meanwhile is
// left where it is.
func (s *Store) releaseMachine(ctx context.Context, c conn, t store.Task, to store.MachineState, cause string, now time.Time) error {
	if t.RanOn == "" {
		return nil
	}
	var version, taskID int64
	var state store.MachineState
	err := c.queryRow(ctx, `SELECT state, version, task_id FROM machines WHERE label = ?`, t.RanOn).Scan(&state, &version, &taskID)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && (state != store.Leased || taskID != t.ID)) {
		return nil
	}
	if err != nil {
		return err
	}
	tr := store.Transition{Label: t.RanOn, From: store.Leased, Version: version, To: to, Cause: cause}
	if to == store.Quarantined {
		tr.QuarantineReason = &cause
	}
	_, err = s.transition(ctx, c, tr, now)
	return err
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TransitionTask applies one compare-and-set on a task's status.
func (s *Store) TransitionTask(ctx context.Context, tr store.TaskTransition) (store.Task, error) {
	if !tr.To.Valid() || !tr.From.Valid() || tr.From == store.TaskRunning {
		return store.Task{}, fmt.Errorf("transition task %d %s→%s: not a move this allows", tr.TaskID, tr.From, tr.To)
	}
	var out store.Task
	err := s.write(ctx, func(c conn) error {
		now := s.stamp()
		set := `status = ?, error = ?, version = version + 1`
		args := []any{tr.To, tr.Error}
		if tr.To != store.TaskPending {
			set += `, completed_on = COALESCE(completed_on, ?)`
			args = append(args, s.timeArg(now))
		}
		ts, err := s.tasks(ctx, c, `UPDATE tasks SET `+set+` WHERE id = ? AND status = ? RETURNING `+taskReturning,
			append(args, tr.TaskID, tr.From, tagSep)...)
		if err != nil {
			return err
		}
		if len(ts) == 0 {
			var st store.TaskStatus
			if err := c.queryRow(ctx, `SELECT status FROM tasks WHERE id = ?`, tr.TaskID).Scan(&st); err != nil {
				return notFound(err)
			}
			return fmt.Errorf("%w: it is %s", store.ErrStale, st)
		}
		out = ts[0]
		return s.taskEvent(ctx, c, out, tr.From, firstNonEmpty(tr.Cause, tr.Error), now)
	})
	if err != nil {
		return store.Task{}, fmt.Errorf("transition task %d %s→%s: %w", tr.TaskID, tr.From, tr.To, err)
	}
	return out, nil
}

// DeleteTask removes a task that is not running.
func (s *Store) DeleteTask(ctx context.Context, id int64) error {
	err := s.write(ctx, func(c conn) error {
		res, err := c.exec(ctx, `DELETE FROM tasks WHERE id = ? AND status <> ?`, id, store.TaskRunning)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var st store.TaskStatus
		if err := c.queryRow(ctx, `SELECT status FROM tasks WHERE id = ?`, id).Scan(&st); err != nil {
			return notFound(err)
		}
		return fmt.Errorf("%w: it is %s", store.ErrStale, st)
	})
	if err != nil {
		return fmt.Errorf("delete task %d: %w", id, err)
	}
	return nil
}
