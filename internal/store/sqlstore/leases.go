package sqlstore

import (
	"context"
	"fmt"
	"time"
)

// TryLease takes or renews a lease in one statement: the upsert's WHERE lets
// it through only for the same holder or an expired lease, so of two nodes
// racing exactly one gets a row. Time is the database's where it has a clock
// to read, so nodes with skewed clocks agree on expiry.
func (s *Store) TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	if name == "" || holder == "" {
		return false, fmt.Errorf("lease: empty name or holder")
	}
	var got bool
	err := s.write(ctx, func(c conn) error {
		now := s.stamp()
		if s.d.ClockQuery != "" {
			if err := c.queryRow(ctx, s.d.ClockQuery).Scan(timeDest{&now}); err != nil {
				return fmt.Errorf("read database clock: %w", err)
			}
		}
		res, err := c.exec(ctx, `INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
			WHERE leases.holder = excluded.holder OR leases.expires_at < ?`,
			name, holder, s.timeArg(now.Add(ttl)), s.timeArg(now))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		got = n == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", name, err)
	}
	return got, nil
}

// ReleaseLease deletes holder's lease.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	err := s.write(ctx, func(c conn) error {
		_, err := c.exec(ctx, `DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("release lease %s: %w", name, err)
	}
	return nil
}
