package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// A lease row names its holder, the term it holds (a count of elections that
// never goes down) and when it expires. An empty holder marks a lease given
// up: free to take, its term kept so that the next one is higher still.
//
// Time is the database's where it has a clock to read, so that nodes whose
// clocks disagree still agree on expiry.

// ElectLeader takes the lease in one statement: the upsert's WHERE lets it
// through only when the lease is free, expired or already holder's, so of
// two nodes racing exactly one gets a row back. Every election, holder's own
// included, starts a new term, which ends the old one.
func (s *Store) ElectLeader(ctx context.Context, name, holder string, ttl time.Duration) (int64, bool, error) {
	if name == "" || holder == "" {
		return 0, false, fmt.Errorf("elect leader: empty name or holder")
	}
	var term int64
	err := s.write(ctx, func(c conn) error {
		now, err := s.leaseNow(ctx, c)
		if err != nil {
			return err
		}
		err = c.queryRow(ctx, `INSERT INTO leases (name, holder, expires_at, term) VALUES (?, ?, ?, 1)
			ON CONFLICT (name) DO UPDATE
			SET holder = excluded.holder, expires_at = excluded.expires_at, term = leases.term + 1
			WHERE leases.holder IN (excluded.holder, '') OR leases.expires_at < ?
			RETURNING term`,
			name, holder, s.timeArg(now.Add(ttl)), s.timeArg(now)).Scan(&term)
		if errors.Is(err, sql.ErrNoRows) {
			return nil // another holder's lease, unexpired
		}
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("elect leader %s: %w", name, err)
	}
	return term, term != 0, nil
}

// ReelectLeader extends holder's lease only while it is still in term and
// unexpired: once expired it may have been taken, and a lapsed term is not
// revived but won anew by ElectLeader.
func (s *Store) ReelectLeader(ctx context.Context, name, holder string, term int64, ttl time.Duration) (bool, error) {
	var got bool
	err := s.write(ctx, func(c conn) error {
		now, err := s.leaseNow(ctx, c)
		if err != nil {
			return err
		}
		res, err := c.exec(ctx, `UPDATE leases SET expires_at = ?
			WHERE name = ? AND holder = ? AND term = ? AND expires_at >= ?`,
			s.timeArg(now.Add(ttl)), name, holder, term, s.timeArg(now))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		got = n == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("reelect leader %s: %w", name, err)
	}
	return got, nil
}

// ResignLeader frees the lease if holder still holds it in term. The row
// stays, keeping its term, so that terms never repeat.
func (s *Store) ResignLeader(ctx context.Context, name, holder string, term int64) error {
	err := s.write(ctx, func(c conn) error {
		_, err := c.exec(ctx, `UPDATE leases SET holder = '' WHERE name = ? AND holder = ? AND term = ?`,
			name, holder, term)
		return err
	})
	if err != nil {
		return fmt.Errorf("resign leader %s: %w", name, err)
	}
	return nil
}

// leaseNow reads the database's clock, or the process's where it has none
// (SQLite: one machine, one clock).
func (s *Store) leaseNow(ctx context.Context, c conn) (time.Time, error) {
	now := s.stamp()
	if s.d.ClockQuery != "" {
		if err := c.queryRow(ctx, s.d.ClockQuery).Scan(timeDest{&now}); err != nil {
			return time.Time{}, fmt.Errorf("read database clock: %w", err)
		}
	}
	return now, nil
}
