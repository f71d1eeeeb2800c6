// Package postgres opens sandfleet's store on PostgreSQL through pgx's
// database/sql driver. Several sandfleet nodes may share one database: every
// state change is a compare-and-set, and migrations take an advisory lock.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver too

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/sqlstore"
)

var dialect = sqlstore.Dialect{
	TimeType: "TIMESTAMPTZ",
	Name:     "postgres",
	Numbered: true,
	// Any constant key will do, as long as it is always this one.
	MigrationLock: `SELECT pg_advisory_xact_lock(7235911801)`,
	UniqueViolation: func(err error) bool {
		var e *pgconn.PgError
		return errors.As(err, &e) && e.Code == "23505"
	},
	Time:       func(t time.Time) any { return t },
	ClockQuery: `SELECT now()`,
	Hour: func(col string) string {
		return "to_char(" + col + ` AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24')`
	},
	TableQuery: `SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?`,
}

// Open connects to the PostgreSQL database at url (postgres://… or
// postgresql://…). It does not migrate; call Migrate.
func Open(ctx context.Context, url string) (store.Store, error) {
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, parseError(err)
	}
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return sqlstore.New(db, dialect), nil
}

// OpenReadOnly connects to the PostgreSQL database at url in read-only
// transactions (default_transaction_read_only): any write fails.
func OpenReadOnly(ctx context.Context, url string) (store.Store, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, parseError(err)
	}
	cfg.RuntimeParams["default_transaction_read_only"] = "on"
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(2)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return sqlstore.New(db, dialect), nil
}

// CheckURL parses url as Open would, without connecting.
func CheckURL(url string) error {
	if _, err := pgx.ParseConfig(url); err != nil {
		return parseError(err)
	}
	return nil
}

// parseError is err, from parsing a database URL, without the URL: pgx
// quotes it with the password masked only as far as it can tell where the
// password ends, and an unescaped '@' or '/' in one defeats that.
func parseError(err error) error {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return fmt.Errorf("postgres: %w", err)
	}
	// "cannot parse `URL`: why": keep why. The last "`: " is at or after
	// the URL's end, so nothing of the URL is left.
	msg := pe.Error()
	if i := strings.LastIndex(msg, "`: "); i >= 0 {
		return fmt.Errorf("postgres: the database URL does not parse: %s", msg[i+len("`: "):])
	}
	return errors.New("postgres: the database URL does not parse")
}
