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
)

// A machine that ran a sample, then vanished from the provider (marked gone)
// and came back, is reset before it is ready again: what it did meanwhile is
// unknown (SPEC §6).
func TestRevivedMachineIsResetBeforeUse(t *testing.T) {
	st := openSQLite(t)
	marker := filepath.Join(t.TempDir(), "resets")
	full := config.Pool{
		Name: "lab", Provider: "static", Platform: "windows",
		Machines: []config.StaticMachine{
			{Label: "lab1", IP: "127.0.0.21", Arch: "x64"},
			{Label: "lab2", IP: "127.0.0.22", Arch: "x64"},
		},
		ResetCommand: `echo "$SANDFLEET_MACHINE" >> ` + marker,
	}
	without := full
	without.Machines = full.Machines[1:] // operator takes lab1 out of the config for a while

	// The interval stands in for the daemon's 30s safety-net pass.
	runWith := func(p config.Pool) func() {
		r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{p}), Pools: []config.Pool{p},
			Interval: 300 * time.Millisecond, OpTimeout: 10 * time.Second, Logger: testLogger()})
		return run(r)
	}
	ctx := context.Background()

	stop := runWith(full)
	waitFor(t, 10*time.Second, "lab1 ready", func() bool { return machineState(t, st, "lab1") == store.Ready })
	stop()
	// A task takes lab1 and runs a sample on it.
	if _, err := st.TransitionMachine(ctx, store.Transition{Label: "lab1", From: store.Ready, To: store.Leased, Cause: "task 1"}); err != nil {
		t.Fatal(err)
	}

	// Restart without lab1: it is marked gone while leased.
	stop = runWith(without)
	waitFor(t, 10*time.Second, "lab1 gone", func() bool { return machineState(t, st, "lab1") == store.Gone })
	stop()
	// The task's release (leased → dirty) now goes stale: the row is gone.
	if _, err := st.TransitionMachine(ctx, store.Transition{Label: "lab1", From: store.Leased, To: store.Dirty, Cause: "task 1 done"}); err == nil {
		t.Fatal("setup: release should be stale")
	}

	// lab1 is put back in the config.
	stop = runWith(full)
	defer stop()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if machineState(t, st, "lab1") == store.Ready {
			out, _ := os.ReadFile(marker)
			if !strings.Contains(string(out), "lab1") {
				t.Fatalf("lab1 ran task 1's sample and is ready again without reset_command having run (resets: %q)", out)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("lab1 ended %s", machineState(t, st, "lab1"))
}
