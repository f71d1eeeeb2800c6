// Package open turns a database URL from the configuration into a migrated
// store.Store. It sits apart from package store, which the drivers import.
package open

import (
	"context"
	"fmt"
	"strings"

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/postgres"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
)

// Open opens the database at url and applies its migrations:
//
//	sqlite:///abs/path.db      SQLite at an absolute path
//	sqlite://rel/path.db       SQLite relative to the working directory
//	postgres://user@host/db    PostgreSQL (also postgresql://), pgx connection URL
func Open(ctx context.Context, url string) (store.Store, error) {
	var s store.Store
	var err error
	scheme, rest, ok := strings.Cut(url, "://")
	switch {
	case !ok:
		// Not echoed: a key=value DSN may hold a password.
		return nil, fmt.Errorf("database URL has no scheme: want sqlite://PATH or postgres://…")
	case scheme == "sqlite":
		s, err = sqlite.Open(ctx, rest)
	case scheme == "postgres" || scheme == "postgresql":
		s, err = postgres.Open(ctx, url)
	default:
		return nil, fmt.Errorf("database URL scheme %q is not supported: want sqlite or postgres", scheme)
	}
	if err != nil {
		return nil, err
	}
	if err := s.Migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}
