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

// One machine whose reset_command fails does not hold back the others: static
// machines reset one per operation, and the failing one is quarantined after
// repeated failures.
func TestFailedResetDoesNotStarveOthers(t *testing.T) {
	st := openSQLite(t)
	marker := filepath.Join(t.TempDir(), "resets")
	pool := config.Pool{
		Name: "lab", Provider: "static", Platform: "windows",
		Machines: []config.StaticMachine{
			{Label: "lab1", IP: "127.0.0.21", Arch: "x64"},
			{Label: "lab2", IP: "127.0.0.22", Arch: "x64"},
		},
		// lab1's reset is broken; lab2's works.
		ResetCommand: `[ "$SANDFLEET_MACHINE" != lab1 ] && echo "$SANDFLEET_MACHINE" >> ` + marker,
	}
	r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{pool}), Pools: []config.Pool{pool},
		Interval: 200 * time.Millisecond, OpTimeout: 10 * time.Second, Logger: testLogger()})
	stop := run(r)
	defer stop()
	ctx := context.Background()
	waitFor(t, 10*time.Second, "both ready", func() bool {
		return machineState(t, st, "lab1") == store.Ready && machineState(t, st, "lab2") == store.Ready
	})
	walk(t, st, "lab1", store.Leased, store.Dirty) // released first: oldest in a batch
	walk(t, st, "lab2", store.Leased, store.Dirty)
	r.Trigger()
	waitFor(t, 10*time.Second, "lab2 reset and ready", func() bool { return machineState(t, st, "lab2") == store.Ready })
	waitFor(t, 10*time.Second, "lab1 quarantined", func() bool { return machineState(t, st, "lab1") == store.Quarantined })
	m, err := st.GetMachine(ctx, "lab1")
	if err != nil || !strings.Contains(m.QuarantineReason, "failed 3 times") {
		t.Fatalf("lab1 quarantine reason %q (%v), want it to say the reset failed 3 times", m.QuarantineReason, err)
	}
	out, _ := os.ReadFile(marker)
	if n := strings.Count(string(out), "lab2"); n != 1 {
		t.Fatalf("lab2 reset %d times, want 1", n)
	}
}

// A label held by another pool's row (a static machine moved between pools)
// is named in the log and skipped: the other new machines still register,
// and the reconciler does not spin on the conflict.
func TestLabelConflictNeitherSpinsNorBlocks(t *testing.T) {
	st := openSQLite(t)
	a := config.Pool{Name: "lab", Provider: "static", Platform: "windows",
		Machines: []config.StaticMachine{{Label: "lab1", IP: "127.0.0.21", Arch: "x64"}}}
	r := fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{a}), Pools: []config.Pool{a},
		Interval: time.Hour, OpTimeout: 10 * time.Second, Logger: testLogger()})
	stop := run(r)
	waitFor(t, 10*time.Second, "lab1 ready", func() bool { return machineState(t, st, "lab1") == store.Ready })
	stop()

	// The operator moves lab1 into a new pool and adds lab3 to it.
	b := config.Pool{Name: "lab-b", Provider: "static", Platform: "windows",
		Machines: []config.StaticMachine{
			{Label: "lab1", IP: "127.0.0.21", Arch: "x64"},
			{Label: "lab3", IP: "127.0.0.23", Arch: "x64"},
		}}
	r = fleet.New(fleet.Options{Store: st, Provider: static.New([]config.Pool{b}), Pools: []config.Pool{b},
		Interval: time.Hour, OpTimeout: 10 * time.Second, Logger: testLogger()})
	before := st.Stats().RoundTrips
	stop = run(r)
	time.Sleep(2 * time.Second)
	stop()
	trips := st.Stats().RoundTrips - before
	m, _ := st.GetMachine(context.Background(), "lab1")
	if machineState(t, st, "lab3") == "" || trips > 200 {
		t.Fatalf("lab3 registered: %v; %d database round trips in 2s with a 1h interval (spinning); lab1 still %s in unconfigured pool %q",
			machineState(t, st, "lab3") != "", trips, m.State, m.Pool)
	}
}
