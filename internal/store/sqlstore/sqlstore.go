// Package sqlstore is the one implementation of store.Store, written once over
// database/sql. The sqlite and postgres packages open a *sql.DB and describe
// their database with a Dialect; everything else — queries, compare-and-set,
// migrations, round-trip counting — lives here, so both databases behave alike.
package sqlstore

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sandfleet/sandfleet/internal/store"
)

//go:embed migrations
var migrations embed.FS

// Dialect is what differs between the databases sqlstore runs on.
type Dialect struct {
	// Name is what Store.Dialect reports and the migrations/<Name> directory.
	Name string
	// Numbered selects $1, $2, … placeholders (PostgreSQL) instead of ?.
	Numbered bool
	// OneWriter queues this handle's write transactions in the process. SQLite
	// admits one writer per file: queueing here keeps writers off SQLite's
	// sleep-and-retry busy handler, which then only arbitrates between processes.
	OneWriter bool
	// MigrationLock, when set, runs first in the migration transaction so that
	// two processes migrating one database take turns.
	MigrationLock string
	// UniqueViolation reports whether err is a unique-constraint violation.
	UniqueViolation func(error) bool
	// Time turns a UTC time of microsecond precision into a query argument.
	Time func(time.Time) any
	// TimeType is the SQL type of a time column, for casts.
	TimeType string
	// Hour is an SQL expression giving the UTC hour of the time column col
	// as text, "2006-01-02T15": hourly counts are grouped in the database,
	// so that they cost a row an hour, not a row a task.
	Hour func(col string) string
	// TableQuery counts the tables named by its one parameter, in the
	// schema sandfleet's tables are in.
	TableQuery string
	// ClockQuery, when set, reads the database's clock. Leases are timed by
	// it, so that nodes whose clocks disagree still agree on expiry; without
	// it (SQLite: one machine, one clock) the process clock is used.
	ClockQuery string
}

// Store implements store.Store over a *sql.DB.
type Store struct {
	db     *sql.DB
	d      Dialect
	trips  atomic.Int64
	writer chan struct{} // a one-slot semaphore when d.OneWriter
	now    func() time.Time
}

var _ store.Store = (*Store)(nil)

// New wraps db, which the Store now owns and closes.
func New(db *sql.DB, d Dialect) *Store {
	s := &Store{db: db, d: d, now: time.Now}
	if d.OneWriter {
		s.writer = make(chan struct{}, 1)
	}
	return s
}

// Dialect names the database.
func (s *Store) Dialect() string { return s.d.Name }

// Close closes the database handle.
func (s *Store) Close() error { return s.db.Close() }

// Stats reports the database round trips made so far: every statement, and
// every begin, commit and rollback.
func (s *Store) Stats() store.Stats { return store.Stats{RoundTrips: s.trips.Load()} }

// conn runs statements on the database or in a transaction, rewriting
// placeholders for the dialect and counting round trips.
type conn struct {
	s *Store
	q interface {
		ExecContext(context.Context, string, ...any) (sql.Result, error)
		QueryContext(context.Context, string, ...any) (*sql.Rows, error)
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}
}

func (c conn) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	c.s.trips.Add(1)
	return c.q.ExecContext(ctx, c.s.rebind(query), args...)
}

func (c conn) query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	c.s.trips.Add(1)
	return c.q.QueryContext(ctx, c.s.rebind(query), args...)
}

func (c conn) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	c.s.trips.Add(1)
	return c.q.QueryRowContext(ctx, c.s.rebind(query), args...)
}

// read returns a conn outside any transaction: reads are single statements.
func (s *Store) read() conn { return conn{s: s, q: s.db} }

// write runs fn in one write transaction, committed if fn returns nil.
func (s *Store) write(ctx context.Context, fn func(conn) error) error {
	if s.writer != nil {
		select {
		case s.writer <- struct{}{}:
			defer func() { <-s.writer }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.trips.Add(1)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(conn{s: s, q: tx}); err != nil {
		s.trips.Add(1)
		_ = tx.Rollback()
		return err
	}
	s.trips.Add(1)
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// rebind rewrites ? placeholders to $n for dialects that number them. No
// query here has a ? inside a string literal.
func (s *Store) rebind(query string) string {
	if !s.d.Numbered {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 16)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] != '?' {
			b.WriteByte(query[i])
			continue
		}
		n++
		b.WriteByte('$')
		b.WriteString(strconv.Itoa(n))
	}
	return b.String()
}

// placeholders returns "(?, ?), (?, ?)" for rows rows of cols values each.
func placeholders(rows, cols int) string {
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", cols), ", ") + ")"
	return strings.TrimSuffix(strings.Repeat(one+", ", rows), ", ")
}

// SetClock replaces the process clock; tests use it to play a node whose
// clock is off.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// stamp returns now as stored: UTC, microsecond precision.
func (s *Store) stamp() time.Time { return norm(s.now()) }

// norm rounds t down to what both databases store. The zero time stays zero.
func norm(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Microsecond)
}

// timeArg is a query argument for t; the zero time is NULL.
func (s *Store) timeArg(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return s.d.Time(norm(t))
}

// timeDest scans a time column, whatever form the driver hands it in.
type timeDest struct{ t *time.Time }

func (d timeDest) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*d.t = time.Time{}
	case time.Time:
		*d.t = norm(v)
	case string:
		return d.parse(v)
	case []byte:
		return d.parse(string(v))
	default:
		return fmt.Errorf("scan time: unexpected %T", v)
	}
	return nil
}

func (d timeDest) parse(v string) error {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return fmt.Errorf("scan time: %w", err)
	}
	*d.t = norm(t)
	return nil
}

// tagSep joins a row's tags into one column, so that a list of rows with
// their tags is one query and one row per item. No tag may contain it.
const tagSep = "\x1f"

// tagsOf is a scalar subquery aggregating, in order, the tags in table whose
// key column equals ref. Its one placeholder takes tagSep.
func tagsOf(table, key, ref string) string {
	return `(SELECT string_agg(t.tag, ? ORDER BY t.pos) FROM ` + table + ` t WHERE t.` + key + ` = ` + ref + `)`
}

// tagsDest scans a tagsOf column.
type tagsDest struct{ tags *[]string }

func (d tagsDest) Scan(v any) error {
	switch v := v.(type) {
	case nil:
		*d.tags = nil
	case string:
		*d.tags = strings.Split(v, tagSep)
	case []byte:
		*d.tags = strings.Split(string(v), tagSep)
	default:
		return fmt.Errorf("scan tags: unexpected %T", v)
	}
	return nil
}

// cleanTags drops empty and repeated tags, keeping first occurrences in order.
func cleanTags(in []string) ([]string, error) {
	var out []string
	seen := make(map[string]bool, len(in))
	for _, tag := range in {
		if strings.Contains(tag, tagSep) {
			return nil, fmt.Errorf("tag %q holds a control character", tag)
		}
		if tag != "" && !seen[tag] {
			seen[tag] = true
			out = append(out, tag)
		}
	}
	return out, nil
}

// migration is one numbered file of the embedded migrations.
type migration struct {
	version int
	name    string
	sql     string
}

func (s *Store) migrations() ([]migration, error) {
	dir := path.Join("migrations", s.d.Name)
	entries, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return nil, fmt.Errorf("migrations for %s: %w", s.d.Name, err)
	}
	var ms []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("migration %s/%s: want NNNN_name.sql", dir, e.Name())
		}
		body, err := fs.ReadFile(migrations, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: e.Name(), sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// Migrate applies, in one transaction, the embedded migrations not yet
// recorded in schema_migrations.
func (s *Store) Migrate(ctx context.Context) error {
	ms, err := s.migrations()
	if err != nil {
		return err
	}
	err = s.write(ctx, func(c conn) error {
		if s.d.MigrationLock != "" {
			if _, err := c.exec(ctx, s.d.MigrationLock); err != nil {
				return err
			}
		}
		if _, err := c.exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`); err != nil {
			return err
		}
		rows, err := c.query(ctx, `SELECT version FROM schema_migrations`)
		if err != nil {
			return err
		}
		applied := map[int]bool{}
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				return err
			}
			applied[v] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, m := range ms {
			if applied[m.version] {
				continue
			}
			if _, err := c.exec(ctx, m.sql); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			if _, err := c.exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, s.stamp().Format(time.RFC3339Nano)); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrate %s: %w", s.d.Name, err)
	}
	return nil
}

// Schema reads schema_migrations, if the database has it, against the
// embedded migrations. It only reads.
func (s *Store) Schema(ctx context.Context) (store.Schema, error) {
	ms, err := s.migrations()
	if err != nil {
		return store.Schema{}, err
	}
	var out store.Schema
	if len(ms) > 0 {
		out.Latest = ms[len(ms)-1].version
	}
	c := s.read()
	var tables int
	if err := c.queryRow(ctx, s.d.TableQuery, "schema_migrations").Scan(&tables); err != nil {
		return store.Schema{}, fmt.Errorf("schema %s: %w", s.d.Name, err)
	}
	applied := map[int]bool{}
	if tables > 0 {
		rows, err := c.query(ctx, `SELECT version FROM schema_migrations ORDER BY version`)
		if err != nil {
			return store.Schema{}, fmt.Errorf("schema %s: %w", s.d.Name, err)
		}
		defer rows.Close()
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				return store.Schema{}, fmt.Errorf("schema %s: %w", s.d.Name, err)
			}
			out.Applied = append(out.Applied, v)
			applied[v] = true
		}
		if err := rows.Err(); err != nil {
			return store.Schema{}, fmt.Errorf("schema %s: %w", s.d.Name, err)
		}
	}
	for _, m := range ms {
		if !applied[m.version] {
			out.Pending = append(out.Pending, m.version)
		}
	}
	return out, nil
}

// notFound wraps store.ErrNotFound when err is sql.ErrNoRows.
func notFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return store.ErrNotFound
	}
	return err
}
