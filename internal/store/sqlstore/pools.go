package sqlstore

import (
	"context"
	"fmt"

	"github.com/sandfleet/sandfleet/internal/store"
)

// UpsertPool inserts or updates a pool by name and replaces its tags.
func (s *Store) UpsertPool(ctx context.Context, p store.Pool) error {
	if p.Name == "" {
		return fmt.Errorf("upsert pool: empty name")
	}
	tags, err := cleanTags(p.Tags)
	if err != nil {
		return fmt.Errorf("upsert pool %q: %w", p.Name, err)
	}
	err = s.write(ctx, func(c conn) error {
		_, err := c.exec(ctx, `INSERT INTO pools
			(name, provider, platform, arch, image, initial_size, max_size, reserved, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET provider = excluded.provider, platform = excluded.platform,
				arch = excluded.arch, image = excluded.image, initial_size = excluded.initial_size,
				max_size = excluded.max_size, reserved = excluded.reserved, updated_at = excluded.updated_at`,
			p.Name, p.Provider, p.Platform, p.Arch, p.Image, p.InitialSize, p.MaxSize, p.Reserved,
			s.timeArg(s.stamp()))
		if err != nil {
			return err
		}
		if _, err := c.exec(ctx, `DELETE FROM pool_tags WHERE pool = ?`, p.Name); err != nil {
			return err
		}
		if len(tags) == 0 {
			return nil
		}
		args := make([]any, 0, 3*len(tags))
		for i, tag := range tags {
			args = append(args, p.Name, i, tag)
		}
		_, err = c.exec(ctx, `INSERT INTO pool_tags (pool, pos, tag) VALUES `+placeholders(len(tags), 3), args...)
		return err
	})
	if err != nil {
		return fmt.Errorf("upsert pool %q: %w", p.Name, err)
	}
	return nil
}

// poolQuery starts with a ? for tagSep; callers append WHERE and ORDER BY.
var poolQuery = `SELECT p.name, p.provider, p.platform, p.arch, p.image, p.initial_size, p.max_size,
	p.reserved, p.updated_at, ` + tagsOf("pool_tags", "pool", "p.name") + ` FROM pools p`

// GetPool reads one pool.
func (s *Store) GetPool(ctx context.Context, name string) (store.Pool, error) {
	ps, err := s.pools(ctx, poolQuery+` WHERE p.name = ?`, tagSep, name)
	if err == nil && len(ps) == 0 {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Pool{}, fmt.Errorf("get pool %q: %w", name, err)
	}
	return ps[0], nil
}

// ListPools lists every pool by name.
func (s *Store) ListPools(ctx context.Context) ([]store.Pool, error) {
	ps, err := s.pools(ctx, poolQuery+` ORDER BY p.name`, tagSep)
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	return ps, nil
}

func (s *Store) pools(ctx context.Context, query string, args ...any) ([]store.Pool, error) {
	rows, err := s.read().query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ps []store.Pool
	for rows.Next() {
		var p store.Pool
		if err := rows.Scan(&p.Name, &p.Provider, &p.Platform, &p.Arch, &p.Image, &p.InitialSize,
			&p.MaxSize, &p.Reserved, timeDest{&p.UpdatedAt}, tagsDest{&p.Tags}); err != nil {
			return nil, err
		}
		ps = append(ps, p)
	}
	return ps, rows.Err()
}
