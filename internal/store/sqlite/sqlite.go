// Package sqlite opens sandfleet's store on a SQLite file (modernc.org/sqlite,
// no cgo): WAL, foreign keys, a 10 s busy timeout, and write transactions that
// begin IMMEDIATE so that two writers queue instead of deadlocking on a lock
// upgrade.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/sqlstore"
)

// timeFormat sorts as text and is what SQLite's own date functions read.
const timeFormat = "2006-01-02T15:04:05.000000Z"

var dialect = sqlstore.Dialect{
	TimeType:  "TEXT",
	Name:      "sqlite",
	OneWriter: true,
	UniqueViolation: func(err error) bool {
		var e *sqlite.Error
		return errors.As(err, &e) &&
			(e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)
	},
	Time: func(t time.Time) any { return t.Format(timeFormat) },
	// timeFormat starts with the hour, in UTC.
	Hour:       func(col string) string { return "substr(" + col + ", 1, 13)" },
	TableQuery: `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?`,
}

// Open opens the SQLite database at path, creating the file but not its
// directory: a directory that does not exist is more likely a mistyped path
// than a wish for a new tree, and SQLite alone would say only "unable to open
// database file". It does not migrate; call Migrate.
func Open(ctx context.Context, path string) (store.Store, error) {
	switch {
	case path == "":
		return nil, errors.New("sqlite: empty database path")
	case path == ":memory:" || strings.HasPrefix(path, "file:"):
		// Each pooled connection would see its own in-memory database.
		return nil, fmt.Errorf("sqlite %s: want a file path", path)
	case strings.ContainsAny(path, "?#"):
		return nil, fmt.Errorf("sqlite %s: the path may not hold ? or #", path)
	}
	dir := filepath.Dir(path)
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("sqlite %s: directory %s does not exist", path, dir)
	case err != nil:
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("sqlite %s: %s is not a directory", path, dir)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)") // applied first, before anything can be busy
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	// Writers queue on one slot anyway; a few connections let reads run beside them.
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(8)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	return sqlstore.New(db, dialect), nil
}

// OpenReadOnly opens the SQLite database at path to read: it creates no
// file, and any write fails. A database that does not exist is an error
// wrapping fs.ErrNotExist.
func OpenReadOnly(ctx context.Context, path string) (store.Store, error) {
	if path == "" {
		return nil, errors.New("sqlite: empty database path")
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("sqlite %s: a directory, not a database file", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	// A URI, so that SQLite itself opens the file read-only (mode=ro).
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs)}
	q := url.Values{}
	q.Set("mode", "ro")
	q.Add("_pragma", "busy_timeout(10000)")
	db, err := sql.Open("sqlite", "file:"+u.EscapedPath()+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	db.SetMaxOpenConns(2)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlite %s: %w", path, err)
	}
	return sqlstore.New(db, dialect), nil
}
