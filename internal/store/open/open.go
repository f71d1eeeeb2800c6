// Package open turns a database URL from the configuration into a migrated
// store.Store. It sits apart from package store, which the drivers import.
package open

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/postgres"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
)

// Open opens the database at dbURL and applies its migrations:
//
//	sqlite:///abs/path.db      SQLite at an absolute path
//	sqlite://rel/path.db       SQLite relative to the working directory
//	postgres://user@host/db    PostgreSQL (also postgresql://), pgx connection URL
func Open(ctx context.Context, dbURL string) (store.Store, error) {
	var s store.Store
	scheme, rest, err := split(dbURL)
	if err != nil {
		return nil, err
	}
	if scheme == "sqlite" {
		s, err = sqlite.Open(ctx, rest)
	} else {
		s, err = postgres.Open(ctx, dbURL)
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

// OpenReadOnly opens the database at dbURL to read, and does not migrate
// it: nothing is created or written. A SQLite file that does not exist is
// an error wrapping fs.ErrNotExist.
func OpenReadOnly(ctx context.Context, dbURL string) (store.Store, error) {
	scheme, rest, err := split(dbURL)
	if err != nil {
		return nil, err
	}
	if scheme == "sqlite" {
		return sqlite.OpenReadOnly(ctx, rest)
	}
	return postgres.OpenReadOnly(ctx, dbURL)
}

// schemeRE is what a URL scheme looks like (RFC 3986).
var schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]{0,31}$`)

// split returns the URL's scheme ("sqlite" or "postgres") and what follows
// "://", or an error naming what is wrong.
func split(dbURL string) (scheme, rest string, err error) {
	scheme, rest, ok := strings.Cut(dbURL, "://")
	switch {
	case !ok:
		// Not echoed: a key=value DSN may hold a password.
		return "", "", fmt.Errorf("database URL has no scheme: want sqlite://PATH or postgres://…")
	case scheme == "sqlite":
		return scheme, rest, nil
	case scheme == "postgres" || scheme == "postgresql":
		return "postgres", rest, nil
	case !schemeRE.MatchString(scheme):
		// Not a scheme: "user:password@host://…"; not echoed either.
		return "", "", fmt.Errorf("database URL has no scheme: want sqlite://PATH or postgres://…")
	default:
		return "", "", fmt.Errorf("database URL scheme %q is not supported: want sqlite or postgres", scheme)
	}
}

// Check reports, without connecting, whether Open could use dbURL at all, so
// that serve can fail at once on a typo yet wait for a server that is down.
func Check(dbURL string) error {
	scheme, _, err := split(dbURL)
	if err != nil || scheme == "sqlite" {
		return err
	}
	return postgres.CheckURL(dbURL)
}

// IsServer reports whether dbURL names a database server (PostgreSQL), which
// may come up after sandfleet does, rather than a file (SQLite), which opens
// now or not at all.
func IsServer(dbURL string) bool {
	scheme, _, err := split(dbURL)
	return err == nil && scheme == "postgres"
}

// Redact returns dbURL fit for logs and API answers: a PostgreSQL URL's
// password, in the user info or in a password parameter, is masked.
func Redact(dbURL string) string {
	scheme, rest, ok := strings.Cut(dbURL, "://")
	if !ok || (scheme != "postgres" && scheme != "postgresql") {
		return dbURL
	}
	// The user info ends at the last '@' of the URL: a password may hold
	// '@', '/', '?' or '#' that were not escaped, and all of it is before
	// that '@'. (When a query value holds an '@', more than the password
	// is masked: safe, if less readable.)
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		if user, _, hasPassword := strings.Cut(rest[:at], ":"); hasPassword {
			rest = user + ":xxxxx" + rest[at:]
		}
	}
	rest, query, hasQuery := strings.Cut(rest, "?")
	if !hasQuery {
		return scheme + "://" + rest
	}
	vals, err := url.ParseQuery(query)
	switch {
	case err != nil:
		query = "xxxxx" // unreadable, so it cannot be shown safely
	case vals.Has("password"):
		vals.Set("password", "xxxxx")
		query = vals.Encode()
	}
	return scheme + "://" + rest + "?" + query
}
