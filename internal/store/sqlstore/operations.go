package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/sandfleet/sandfleet/internal/store"
)

const opColumns = `id, pool, kind, instance_ids, capacity, state, resume_token, attempt, deadline, error,
	created_at, updated_at`

// unfinished matches operations that are neither succeeded, failed nor abandoned.
const unfinished = `state IN ('pending', 'running')`

// CreateOperation journals an intent as Pending.
func (s *Store) CreateOperation(ctx context.Context, op store.Operation) (store.Operation, error) {
	if op.Pool == "" || op.Kind == "" {
		return store.Operation{}, fmt.Errorf("create operation: pool and kind are required")
	}
	ids := []byte("[]")
	if len(op.InstanceIDs) > 0 {
		ids, _ = json.Marshal(op.InstanceIDs) // a []string always marshals
	} else {
		op.InstanceIDs = nil
	}
	now := s.stamp()
	op.State, op.CreatedAt, op.UpdatedAt, op.Deadline = store.OpPending, now, now, norm(op.Deadline)
	err := s.write(ctx, func(c conn) error {
		return c.queryRow(ctx, `INSERT INTO operations
			(pool, kind, instance_ids, capacity, state, resume_token, attempt, deadline, error, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
			op.Pool, op.Kind, string(ids), op.Capacity, op.State, op.ResumeToken, op.Attempt,
			s.timeArg(op.Deadline), op.Error, s.timeArg(now), s.timeArg(now)).Scan(&op.ID)
	})
	if err != nil {
		return store.Operation{}, fmt.Errorf("create operation %s %s: %w", op.Kind, op.Pool, err)
	}
	return op, nil
}

// SetOperationToken stores a resume token and moves Pending to Running; a
// Running operation may have its token replaced.
func (s *Store) SetOperationToken(ctx context.Context, id int64, token string) error {
	err := s.updateOperation(ctx, id, `state = ?, resume_token = ?`, store.OpRunning, token)
	if err != nil {
		return fmt.Errorf("set token of operation %d: %w", id, err)
	}
	return nil
}

// FinishOperation moves an unfinished operation to a final state.
func (s *Store) FinishOperation(ctx context.Context, id int64, state store.OpState, errMsg string) error {
	if !state.Final() {
		return fmt.Errorf("finish operation %d: %q is not a final state", id, state)
	}
	if err := s.updateOperation(ctx, id, `state = ?, error = ?`, state, errMsg); err != nil {
		return fmt.Errorf("finish operation %d as %s: %w", id, state, err)
	}
	return nil
}

// updateOperation sets fields of an unfinished operation: ErrNotFound if there
// is no such operation, ErrStale if it is final.
func (s *Store) updateOperation(ctx context.Context, id int64, set string, args ...any) error {
	return s.write(ctx, func(c conn) error {
		res, err := c.exec(ctx, `UPDATE operations SET `+set+`, updated_at = ? WHERE id = ? AND `+unfinished,
			append(args, s.timeArg(s.stamp()), id)...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var state store.OpState
		if err := c.queryRow(ctx, `SELECT state FROM operations WHERE id = ?`, id).Scan(&state); err != nil {
			return notFound(err)
		}
		return fmt.Errorf("%w: it is %s", store.ErrStale, state)
	})
}

// GetOperation reads one operation.
func (s *Store) GetOperation(ctx context.Context, id int64) (store.Operation, error) {
	ops, err := s.operations(ctx, `SELECT `+opColumns+` FROM operations WHERE id = ?`, id)
	if err == nil && len(ops) == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Operation{}, fmt.Errorf("get operation %d: %w", id, err)
	}
	return ops[0], nil
}

// ListOperations lists the operations f selects: oldest first, or the newest
// f.Limit, newest first.
func (s *Store) ListOperations(ctx context.Context, f store.OperationFilter) ([]store.Operation, error) {
	q := `SELECT ` + opColumns + ` FROM operations WHERE 1 = 1`
	var args []any
	if f.Pool != "" {
		q += ` AND pool = ?`
		args = append(args, f.Pool)
	}
	if f.Unfinished {
		q += ` AND ` + unfinished
	}
	if f.Limit > 0 {
		q += ` ORDER BY id DESC LIMIT ?`
		args = append(args, f.Limit)
	} else {
		q += ` ORDER BY id`
	}
	ops, err := s.operations(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list operations: %w", err)
	}
	return ops, nil
}

func (s *Store) operations(ctx context.Context, query string, args ...any) ([]store.Operation, error) {
	rows, err := s.read().query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ops []store.Operation
	for rows.Next() {
		var op store.Operation
		var ids string
		if err := rows.Scan(&op.ID, &op.Pool, &op.Kind, &ids, &op.Capacity, &op.State, &op.ResumeToken,
			&op.Attempt, timeDest{&op.Deadline}, &op.Error, timeDest{&op.CreatedAt},
			timeDest{&op.UpdatedAt}); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(ids), &op.InstanceIDs); err != nil {
			return nil, fmt.Errorf("operation %d instance_ids: %w", op.ID, err)
		}
		if len(op.InstanceIDs) == 0 {
			op.InstanceIDs = nil
		}
		ops = append(ops, op)
	}
	return ops, rows.Err()
}
