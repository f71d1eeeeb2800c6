package fleet_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/provider/static"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
)

func openSQLite(t testing.TB) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func machineState(t testing.TB, st store.Store, label string) store.MachineState {
	t.Helper()
	m, err := st.GetMachine(context.Background(), label)
	if err != nil {
		return ""
	}
	return m.State
}

// A static machine released dirty is reset by reset_command — once — and only
// then is it ready again; every step is in machine_events and the journal.
func TestStaticDirtyMachineIsResetBeforeReuse(t *testing.T) {
	st := openSQLite(t)
	marker := filepath.Join(t.TempDir(), "resets")
	pool := config.Pool{
		Name: "lab", Provider: "static", Platform: "windows",
		Machines: []config.StaticMachine{
			{Label: "lab1", IP: "127.0.0.21", Arch: "x64", Tags: []string{"win10"}},
			{Label: "lab2", IP: "127.0.0.22", Arch: "x64"},
		},
		ResetCommand: `echo "$SANDFLEET_MACHINE" >> ` + marker,
	}
	r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{pool}), Pools: []config.Pool{pool},
		Interval: time.Hour, OpTimeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	waitFor(t, 10*time.Second, "both machines ready", func() bool {
		return machineState(t, st, "lab1") == store.Ready && machineState(t, st, "lab2") == store.Ready
	})
	m, _ := st.GetMachine(ctx, "lab1")
	if m.IP != "127.0.0.21" || m.Pool != "lab" || m.Arch != "x64" || !strings.Contains(strings.Join(m.Tags, ","), "win10") {
		t.Fatalf("lab1 registered as %+v", m)
	}
	// A task used lab1 and released it.
	walk(t, st, "lab1", store.Leased, store.Dirty)
	r.Trigger()
	waitFor(t, 10*time.Second, "lab1 ready again", func() bool { return machineState(t, st, "lab1") == store.Ready })

	out, err := os.ReadFile(marker)
	if err != nil || strings.TrimSpace(string(out)) != "lab1" {
		t.Fatalf("reset_command ran %q (err %v), want once for lab1", out, err)
	}
	evs, err := st.MachineEvents(ctx, "lab1")
	if err != nil {
		t.Fatal(err)
	}
	var path []string
	for _, e := range evs {
		path = append(path, string(e.To))
	}
	want := "ready leased dirty reimaging provisioning ready"
	if got := strings.Join(path, " "); !strings.HasSuffix(got, want) {
		t.Fatalf("lab1 went through %q, want it to end with %q", got, want)
	}
	ops, err := st.ListOperations(ctx, store.OperationFilter{Pool: "lab"})
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0].Kind != store.OpReimage || ops[0].State != store.OpSucceeded || ops[0].InstanceIDs[0] != "lab1" {
		t.Fatalf("journal: %+v, want one succeeded reimage of lab1", ops)
	}
	if machineState(t, st, "lab2") != store.Ready {
		t.Fatalf("lab2 was disturbed")
	}
}

// walk moves a machine through states, as a task would, by compare-and-set.
func walk(t testing.TB, st store.Store, label string, states ...store.MachineState) {
	t.Helper()
	ctx := context.Background()
	m, err := st.GetMachine(ctx, label)
	if err != nil {
		t.Fatal(err)
	}
	for _, to := range states {
		if m, err = st.TransitionMachine(ctx, store.Transition{Label: label, From: m.State, To: to, Cause: "test"}); err != nil {
			t.Fatalf("%s → %s: %v", label, to, err)
		}
	}
}
