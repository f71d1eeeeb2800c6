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
	"started_on", "completed_on", "status", "attempt", "error", "ran_on", "node", "lease_expires_at", "hook_status",
	"hook_node", "hook_exit", "hook_output", "hook_ended_on", "version"}

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
		&t.RanOn, &t.Node, timeDest{&t.LeaseExpires}, &t.Hook.Status, &t.Hook.Node, &t.Hook.Exit, &t.Hook.Output,
		timeDest{&t.Hook.EndedOn}, &t.Version, tagsDest{&t.Tags}}
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
		where = append(where, `tk.status IN `+placeholders(1, len(f.Statuses)))
		for _, st := range f.Statuses {
			args = append(args, st)
		}
	}
	if len(f.IDs) > 0 {
		where = append(where, `tk.id IN `+placeholders(1, len(f.IDs)))
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

// CountEndedByHour counts the tasks ended since since, by UTC hour and
// status, oldest hour first.
func (s *Store) CountEndedByHour(ctx context.Context, since time.Time) ([]store.HourCount, error) {
	hour := s.d.Hour("completed_on")
	rows, err := s.read().query(ctx, `SELECT `+hour+`, status, COUNT(*) FROM tasks
		WHERE completed_on >= ? GROUP BY `+hour+`, status ORDER BY 1, 2`, s.timeArg(since))
	if err != nil {
		return nil, fmt.Errorf("count ended tasks: %w", err)
	}
	defer rows.Close()
	var out []store.HourCount
	for rows.Next() {
		var h string
		var c store.HourCount
		if err := rows.Scan(&h, &c.Status, &c.Count); err != nil {
			return nil, fmt.Errorf("count ended tasks: %w", err)
		}
		if c.Hour, err = time.Parse("2006-01-02T15", h); err != nil {
			return nil, fmt.Errorf("count ended tasks: hour %q: %w", h, err)
		}
		out = append(out, c)
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

// Lease moves a batch of tasks (pending → running) and machines (ready →
// leased) in one transaction of a few statements, whatever the batch's size:
// one compare-and-set of all the tasks, one of all the machines. A pair in
// which either row had moved makes the transaction roll back; it is dropped
// as stale, and the rest are tried again, so that no half pair is ever
// committed. Staleness is rare (another node, an operator, the reconciler
// got there first), so the common batch commits at the first try.
func (s *Store) Lease(ctx context.Context, rs []store.LeaseRequest) ([]store.LeaseResult, error) {
	out := make([]store.LeaseResult, len(rs))
	todo := make([]int, 0, len(rs)) // indexes into rs still to lease
	tasks, labels := map[int64]bool{}, map[string]bool{}
	for i, r := range rs {
		// A task or a machine twice in one batch cannot both land.
		if tasks[r.TaskID] || labels[r.Label] {
			out[i].Err = fmt.Errorf("task %d, machine %s: %w: already in this batch", r.TaskID, r.Label, store.ErrStale)
			continue
		}
		tasks[r.TaskID], labels[r.Label] = true, true
		todo = append(todo, i)
	}
	for len(todo) > 0 {
		var stale map[int]error
		err := s.write(ctx, func(c conn) error {
			var err error
			stale, err = s.leaseBatch(ctx, c, rs, todo, out)
			if err == nil && len(stale) > 0 {
				err = errRetryBatch // roll back; the stale pairs are dropped below
			}
			return err
		})
		if err == nil {
			return out, nil
		}
		if !errors.Is(err, errRetryBatch) {
			return nil, fmt.Errorf("lease %d machines: %w", len(rs), err)
		}
		next := todo[:0]
		for _, i := range todo {
			if e, bad := stale[i]; bad {
				out[i] = store.LeaseResult{Err: e}
			} else {
				next = append(next, i)
			}
		}
		todo = next
	}
	return out, nil
}

var errRetryBatch = errors.New("a pair of the batch went stale")

// leaseBatch tries the pairs todo in c. It returns the pairs that went stale;
// when there are none it has recorded the events and filled out.
func (s *Store) leaseBatch(ctx context.Context, c conn, rs []store.LeaseRequest, todo []int, out []store.LeaseResult) (map[int]error, error) {
	now, err := s.leaseNow(ctx, c)
	if err != nil {
		return nil, err
	}
	var targs, margs []any
	for _, i := range todo {
		r := rs[i]
		targs = append(targs, r.TaskID, r.Label, r.TaskVersion, r.Node, s.timeArg(now.Add(r.TTL)))
		margs = append(margs, r.Label, r.MachineVersion, r.TaskID)
	}
	landed := map[int64]bool{}
	rows, err := c.query(ctx, `WITH v (id, label, ver, node, until) AS (VALUES `+
		castRows(len(todo), "BIGINT", "TEXT", "BIGINT", "TEXT", s.d.TimeType)+`)
		UPDATE tasks SET status = ?, started_on = ?, ran_on = v.label, node = v.node, lease_expires_at = v.until,
			version = tasks.version + 1
		FROM v WHERE tasks.id = v.id AND tasks.version = v.ver AND tasks.status = ? RETURNING tasks.id`,
		append(targs, store.TaskRunning, s.timeArg(now), store.TaskPending)...)
	if err != nil {
		return nil, err
	}
	if err := scanEach(rows, func(sc func(...any) error) error {
		var id int64
		err := sc(&id)
		landed[id] = true
		return err
	}); err != nil {
		return nil, err
	}
	leased := map[string]bool{}
	rows, err = c.query(ctx, `WITH v (label, ver, task) AS (VALUES `+castRows(len(todo), "TEXT", "BIGINT", "BIGINT")+`)
		UPDATE machines SET state = ?, version = machines.version + 1, state_changed_on = ?, locked_changed_on = ?,
			task_id = v.task
		FROM v WHERE machines.label = v.label AND machines.version = v.ver AND machines.state = ? RETURNING machines.label`,
		append(margs, store.Leased, s.timeArg(now), s.timeArg(now), store.Ready)...)
	if err != nil {
		return nil, err
	}
	if err := scanEach(rows, func(sc func(...any) error) error {
		var label string
		err := sc(&label)
		leased[label] = true
		return err
	}); err != nil {
		return nil, err
	}
	stale := map[int]error{}
	for _, i := range todo {
		r := rs[i]
		switch {
		case !landed[r.TaskID]:
			stale[i] = fmt.Errorf("task %d: %w: no longer pending at version %d", r.TaskID, store.ErrStale, r.TaskVersion)
		case !leased[r.Label]:
			stale[i] = fmt.Errorf("machine %s: %w: no longer ready at version %d", r.Label, store.ErrStale, r.MachineVersion)
		}
	}
	if len(stale) > 0 {
		return stale, nil
	}
	return nil, s.leaseEvents(ctx, c, rs, todo, out, now)
}

// leaseEvents reads back the leased rows into out and records the events of
// both sides, one statement each.
func (s *Store) leaseEvents(ctx context.Context, c conn, rs []store.LeaseRequest, todo []int, out []store.LeaseResult, now time.Time) error {
	ids := make([]any, 0, len(todo)+1)
	labels := make([]any, 0, len(todo)+1)
	ids, labels = append(ids, tagSep), append(labels, tagSep)
	for _, i := range todo {
		ids, labels = append(ids, rs[i].TaskID), append(labels, rs[i].Label)
	}
	in := placeholders(1, len(todo))
	ts, err := s.tasks(ctx, c, taskQuery+` WHERE tk.id IN `+in, ids...)
	if err != nil {
		return err
	}
	ms, err := s.machines(ctx, c, machineQuery+` WHERE m.label IN `+in, labels...)
	if err != nil {
		return err
	}
	byID := make(map[int64]store.Task, len(ts))
	for _, t := range ts {
		byID[t.ID] = t
	}
	byLabel := make(map[string]store.Machine, len(ms))
	for _, m := range ms {
		byLabel[m.Label] = m
	}
	var tevents, mevents []any
	for _, i := range todo {
		t, m := byID[rs[i].TaskID], byLabel[rs[i].Label]
		out[i] = store.LeaseResult{Task: t, Machine: m}
		tevents = append(tevents, t.ID, store.TaskPending, store.TaskRunning, m.Label, t.Attempt, "leased "+m.Label, s.timeArg(now))
		mevents = append(mevents, m.ID, m.Label, store.Ready, store.Leased, fmt.Sprintf("task %d", t.ID), s.timeArg(now))
	}
	if err := c.insertValues(ctx, `INSERT INTO task_events (task_id, from_status, to_status, machine, attempt, cause, at) VALUES `, 7, tevents); err != nil {
		return err
	}
	return c.insertValues(ctx, `INSERT INTO machine_events (machine_id, label, from_state, to_state, cause, at) VALUES `, 6, mevents)
}

// castRows is the VALUES rows of a batch: rows rows of placeholders, each
// cast to its column's type so that both databases compare them with the
// table's columns.
func castRows(rows int, types ...string) string {
	cells := make([]string, len(types))
	for i, t := range types {
		cells[i] = "CAST(? AS " + t + ")"
	}
	one := "(" + strings.Join(cells, ", ") + ")"
	return strings.TrimSuffix(strings.Repeat(one+", ", rows), ", ")
}

// scanEach calls fn for each row, then closes rows.
func scanEach(rows *sql.Rows, fn func(scan func(...any) error) error) error {
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows.Scan); err != nil {
			return err
		}
	}
	return rows.Err()
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
		rows, err := c.query(ctx, `UPDATE tasks SET lease_expires_at = ? WHERE node = ? AND status = ? AND id IN `+
			placeholders(1, len(ids))+` RETURNING id`, args...)
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
			lease_expires_at = NULL, `+hookSet, e.Status, e.Error, s.timeArg(now), hookStatus(e.HookNode), e.HookNode)
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
			set = `status = ?, error = ?, completed_on = ?, node = '', lease_expires_at = NULL, ` + hookSet
			args = []any{store.TaskFailedAnalysis,
				fmt.Sprintf("%s; gave up after %d attempts", r.Cause, cur.Attempt), s.timeArg(now),
				hookStatus(r.HookNode), r.HookNode}
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

// hookSet leaves an ended analysis's hook pending on a node, or none,
// forgetting an earlier attempt's run; its arguments come from hookStatus.
const hookSet = `hook_status = ?, hook_node = ?, hook_exit = 0, hook_output = '', hook_ended_on = NULL`

func hookStatus(node string) store.HookStatus {
	if node == "" {
		return store.HookNone
	}
	return store.HookPending
}

// PendingHooks lists the tasks whose hook waits to run on node.
func (s *Store) PendingHooks(ctx context.Context, node string) ([]store.Task, error) {
	ts, err := s.tasks(ctx, s.read(), taskQuery+` WHERE tk.hook_status = ? AND tk.hook_node = ? ORDER BY tk.completed_on, tk.id`,
		tagSep, store.HookPending, node)
	if err != nil {
		return nil, fmt.Errorf("pending hooks of %s: %w", node, err)
	}
	return ts, nil
}

// RecordHook records how a pending hook ended.
func (s *Store) RecordHook(ctx context.Context, h store.HookRun) error {
	switch h.Status {
	case store.HookOK, store.HookFailed, store.HookTimeout:
	default:
		return fmt.Errorf("record hook of task %d: %q is not how a hook ends", h.TaskID, h.Status)
	}
	// A hook prints what it likes; PostgreSQL's text takes neither NUL nor
	// invalid UTF-8.
	out := strings.ToValidUTF8(strings.ReplaceAll(h.Output, "\x00", ""), "\uFFFD")
	err := s.write(ctx, func(c conn) error {
		res, err := c.exec(ctx, `UPDATE tasks SET hook_status = ?, hook_exit = ?, hook_output = ?, hook_ended_on = ?
			WHERE id = ? AND hook_status = ? AND hook_node = ?`,
			h.Status, h.Exit, out, s.timeArg(s.stamp()), h.TaskID, store.HookPending, h.Node)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return store.ErrStale
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record hook of task %d: %w", h.TaskID, err)
	}
	return nil
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
