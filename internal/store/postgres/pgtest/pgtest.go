// Package pgtest gives tests a fresh PostgreSQL database of their own.
//
// The server is SANDFLEET_TEST_POSTGRES (default
// postgres://root@127.0.0.1:5432/postgres?sslmode=disable). A test that needs
// PostgreSQL fails when the server cannot be reached, so that a missing
// database never passes for a green run; SANDFLEET_TEST_POSTGRES=skip skips
// those tests instead.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// DefaultURL is the server used when SANDFLEET_TEST_POSTGRES is unset.
const DefaultURL = "postgres://root@127.0.0.1:5432/postgres?sslmode=disable"

// NewDatabase creates an empty database named sandfleet_test_<random hex>,
// drops it when the test ends, and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	base := os.Getenv("SANDFLEET_TEST_POSTGRES")
	switch base {
	case "skip":
		t.Skip("SANDFLEET_TEST_POSTGRES=skip")
	case "":
		base = DefaultURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("SANDFLEET_TEST_POSTGRES: want a postgres:// URL or skip")
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "sandfleet_test_" + hex.EncodeToString(b[:])

	admin(t, base, "CREATE DATABASE "+name)
	t.Cleanup(func() { admin(t, base, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })

	u.Path = "/" + name
	return u.String()
}

// admin runs one statement on the server's maintenance database.
func admin(t testing.TB, base, stmt string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		t.Fatalf("pgtest: %s: %v (is PostgreSQL running? SANDFLEET_TEST_POSTGRES=skip skips these tests)", stmt, err)
	}
}
