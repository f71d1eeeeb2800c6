package open_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
)

// opened checks that url opens a migrated store of the given dialect.
func opened(t *testing.T, url, dialect string) {
	t.Helper()
	ctx := context.Background()
	s, err := open.Open(ctx, url)
	if err != nil {
		t.Fatalf("Open(%s): %v", url, err)
	}
	defer s.Close()
	if s.Dialect() != dialect {
		t.Errorf("Open(%s) is %s, want %s", url, s.Dialect(), dialect)
	}
	if _, err := s.InsertMachines(ctx, []store.Machine{{Label: "m", State: store.Ready}}, "test"); err != nil {
		t.Errorf("Open(%s) did not leave a migrated database: %v", url, err)
	}
}

func TestOpenSQLite(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.MkdirAll(filepath.Join("rel", "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	opened(t, "sqlite://rel/dir/a.db", "sqlite")
	if _, err := os.Stat(filepath.Join(dir, "rel", "dir", "a.db")); err != nil {
		t.Errorf("relative path: %v", err)
	}
	abs := filepath.Join(t.TempDir(), "b.db")
	opened(t, "sqlite://"+abs, "sqlite")
	if _, err := os.Stat(abs); err != nil {
		t.Errorf("absolute path: %v", err)
	}
}

func TestOpenPostgres(t *testing.T) {
	opened(t, pgtest.NewDatabase(t), "postgres")
	opened(t, "postgresql"+strings.TrimPrefix(pgtest.NewDatabase(t), "postgres"), "postgres")
}

func TestOpenBadURL(t *testing.T) {
	for url, want := range map[string]string{
		"mysql://root@host/db":             `"mysql"`,
		"host=db user=x password=secret":   "no scheme",
		"sqlite://":                        "empty",
		"sqlite://:memory:":                "file path",
		"sqlite:///nonexistent-dir/x.db":   "directory /nonexistent-dir does not exist",
		"postgres://root@127.0.0.1:1/none": "127.0.0.1:1",
	} {
		_, err := open.Open(context.Background(), url)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("Open(%q) = %v, want an error naming %s", url, err, want)
		}
	}
}

func TestRedact(t *testing.T) {
	for url, want := range map[string]string{
		"postgres://root@127.0.0.1:5433/x?sslmode=disable":               "postgres://root@127.0.0.1:5433/x?sslmode=disable",
		"postgres://root:s3cret@db:5432/sf":                              "postgres://root:xxxxx@db:5432/sf",
		"postgresql://u:p@ss/w0rd@db/sf?sslmode=disable":                 "postgresql://u:xxxxx@db/sf?sslmode=disable",
		"postgres://u@db/sf?password=s3cret&sslmode=disable":             "postgres://u@db/sf?password=xxxxx&sslmode=disable",
		"postgres://u:s3cret@h1:5432,h2:5432/sf?target_session_attrs=rw": "postgres://u:xxxxx@h1:5432,h2:5432/sf?target_session_attrs=rw",
		"postgres://u@db/sf?password=s3cret%zz":                          "postgres://u@db/sf?xxxxx",
		"postgres://db/sf":                                               "postgres://db/sf",
		"postgres://u:s3c?ret@db/sf":                                     "postgres://u:xxxxx@db/sf",
		"postgres://u:s3c?r@et@db/sf?sslmode=disable":                    "postgres://u:xxxxx@db/sf?sslmode=disable",
		"postgres://u:s3c#ret@db/sf":                                     "postgres://u:xxxxx@db/sf",
		"sqlite:///var/lib/sandfleet/sandfleet.db":                       "sqlite:///var/lib/sandfleet/sandfleet.db",
	} {
		if got := open.Redact(url); got != want {
			t.Errorf("Redact(%q) = %q, want %q", url, got, want)
		}
	}
}

// Check catches what no waiting would fix, without connecting: port 1 on
// loopback has no server, and Check does not care.
func TestCheck(t *testing.T) {
	for url, want := range map[string]string{
		"sqlite:///tmp/x.db":                           "",
		"postgres://root@127.0.0.1:1/none":             "",
		"postgres://root:s3cret@127.0.0.1:99999999/db": "invalid port",
		"postgres://root@127.0.0.1/db?sslmode=maybe":   "sslmode",
		"mysql://root@host/db":                         `"mysql"`,
		"root:s3cret@host://db":                        "has no scheme",
		"postgres://u:x@s3cret@h/db?connect_timeout=x": "connect_timeout",
		"postgres://u:x/s3cret@h/db?sslmode=x":         "does not parse",
	} {
		err := open.Check(url)
		switch {
		case want == "" && err != nil:
			t.Errorf("Check(%q) = %v, want nil", url, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("Check(%q) = %v, want an error naming %s", url, err, want)
		case err != nil && strings.Contains(err.Error(), "s3cret"):
			t.Errorf("Check(%q) = %v: the password is shown", url, err)
		}
	}
	if open.IsServer("sqlite:///tmp/x.db") || !open.IsServer("postgresql://db/x") || open.IsServer("mysql://db/x") {
		t.Error("IsServer: sqlite is a file, postgres a server, mysql neither")
	}
}
