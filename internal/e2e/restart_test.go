package e2e

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store/postgres/pgtest"
)

// databases runs a scenario on SQLite and on a fresh PostgreSQL database.
func databases(t *testing.T, run func(t *testing.T, database func(dir string) string)) {
	t.Run("sqlite", func(t *testing.T) {
		run(t, func(dir string) string { return "sqlite://" + filepath.Join(dir, "sandfleet.db") })
	})
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.NewDatabase(t)
		run(t, func(string) string { return url })
	})
}

// The seed's scenario: ten scale-set instances registered, the daemon killed
// with SIGKILL and started again: the same ten machines, no duplicates, no drift.
func TestRestartKeepsMachines(t *testing.T) {
	databases(t, func(t *testing.T, database func(string) string) {
		emu := startEmulator(t, t.TempDir())
		dir := t.TempDir()
		conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Database: database(dir), Emulator: emu, Size: 10})

		d := startDaemon(t, conf, listen)
		before := d.waitReady(t, 10, 60*time.Second)
		if code, out := d.check(t); code != 0 {
			t.Fatalf("check before kill: exit %d\n%s", code, out)
		}
		d.kill()

		d = startDaemon(t, conf, listen)
		after := d.waitReady(t, 10, 60*time.Second)
		if !slices.Equal(slices.Sorted(maps.Keys(before)), slices.Sorted(maps.Keys(after))) {
			t.Fatalf("machines changed across restart:\nbefore %v\nafter  %v", slices.Sorted(maps.Keys(before)), slices.Sorted(maps.Keys(after)))
		}
		for label, m := range after {
			if b := before[label]; b.ID != m.ID || b.IP != m.IP {
				t.Errorf("%s: row changed across restart: before id %d ip %s, after id %d ip %s", label, b.ID, b.IP, m.ID, m.IP)
			}
		}
		if all := d.machines(t); len(all) != 10 {
			t.Errorf("machine table has %d rows after restart, want 10 (no duplicates, nothing gone)", len(all))
		}
		if code, out := d.check(t); code != 0 {
			t.Fatalf("check after restart: exit %d\n%s", code, out)
		}
		if n := count(emu.requests(t), "PUT", "/virtualMachineScaleSets/win10x64"); n != 1 {
			t.Errorf("scale set PUT %d times, want 1", n)
		}
	})
}

// The kill lands while the scale set's creation is in flight: after restart the
// operation is polled to completion from its stored resume token, not issued
// a second time.
func TestKillDuringCreateResumes(t *testing.T) {
	databases(t, func(t *testing.T, database func(string) string) {
		emu := startEmulator(t, t.TempDir(), "--lro-delay", "6s")
		dir := t.TempDir()
		conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Database: database(dir), Emulator: emu, Size: 10})

		d := startDaemon(t, conf, listen)
		var ops []struct {
			Kind      string `json:"kind"`
			State     string `json:"state"`
			Resumable bool   `json:"resumable"`
		}
		poll.Until(t, 30*time.Second, "create operation journaled with its resume token", func() bool {
			if d.get(t, "/apiv2/operations/list/", &ops) != nil {
				return false
			}
			return len(ops) > 0 && ops[0].Kind == "create_pool" && ops[0].State == "running" && ops[0].Resumable
		})
		d.kill()
		if n := count(emu.requests(t), "PUT", "/virtualMachineScaleSets/win10x64"); n != 1 {
			t.Fatalf("scale set PUT %d times before restart, want 1", n)
		}

		d = startDaemon(t, conf, listen)
		d.waitReady(t, 10, 90*time.Second)
		// The machines may be ready before the poll that sees the creation end.
		poll.Until(t, 30*time.Second, "create operation succeeded after restart (resumed)", func() bool {
			return d.get(t, "/apiv2/operations/list/", &ops) == nil && len(ops) > 0 &&
				ops[len(ops)-1].Kind == "create_pool" && ops[len(ops)-1].State == "succeeded"
		})
		rs := emu.requests(t)
		if n := count(rs, "PUT", "/virtualMachineScaleSets/win10x64"); n != 1 {
			t.Fatalf("scale set PUT %d times, want 1: the operation was issued again", n)
		}
		if !strings.Contains(d.output(), "operation resumed") {
			t.Errorf("daemon did not log resuming the operation")
		}
		if code, out := d.check(t); code != 0 {
			t.Fatalf("check: exit %d\n%s", code, out)
		}
	})
}

// Instances added and removed behind sandfleet's back are registered and
// marked gone within a reconcile interval; check reports the drift meanwhile.
func TestDriftBehindOurBack(t *testing.T) {
	emu := startEmulator(t, t.TempDir())
	dir := t.TempDir()
	// Room to grow: an instance an operator adds stays until the pool
	// shrinks (azure.monitor_interval, 300 s).
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 3, MaxSize: 20, Interval: "3s"})
	d := startDaemon(t, conf, listen)
	ready := d.waitReady(t, 3, 60*time.Second)

	victim := slices.Sorted(maps.Keys(ready))[0]
	id := ready[victim].InstanceID
	emu.do(t, "DELETE", fmt.Sprintf("/_emulator/scalesets/win10x64/vms/%s", id), nil)
	// Unless a pass beat us to it (then the drift is already resolved),
	// check reports the removed instance's row as missing in the provider.
	if code, out := d.check(t); code != 1 || !strings.Contains(out, victim) {
		var m machine
		if d.get(t, "/apiv2/machines/view/"+victim+"/", &m) != nil || m.State != "gone" {
			t.Errorf("check right after removal: exit %d, want 1 naming %s\n%s", code, victim, out)
		}
	}
	poll.Until(t, 10*time.Second, victim+" marked gone", func() bool {
		var m machine
		return d.get(t, "/apiv2/machines/view/"+victim+"/", &m) == nil && m.State == "gone"
	})
	// The pool is brought back to its size with a new instance.
	d.waitReady(t, 3, 30*time.Second)
	poll.Until(t, 10*time.Second, "check consistent after removal", func() bool { code, _ := d.check(t); return code == 0 })

	emu.do(t, "POST", "/_emulator/scalesets/win10x64/vms", map[string]any{})
	d.waitReady(t, 4, 15*time.Second)
	if code, out := d.check(t); code != 0 {
		t.Fatalf("check after addition: exit %d\n%s", code, out)
	}
}

// With list calls throttled for longer than any SDK retry, the daemon keeps
// serving its last view, writes nothing to the cloud, logs the throttle once
// per window, and converges once it ends.
func TestThrottleKeepsLastView(t *testing.T) {
	emu := startEmulator(t, t.TempDir())
	dir := t.TempDir()
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 3})
	d := startDaemon(t, conf, listen)
	ready := d.waitReady(t, 3, 60*time.Second)

	emu.do(t, "POST", "/_emulator/faults", map[string]any{
		"throttle": map[string]any{"match": "virtualMachineScaleSets", "retry_after_s": 8},
	})
	throttledAt := len(emu.requests(t))
	// Lose an instance while throttled: capacity drops below the pool's size.
	victim := slices.Sorted(maps.Keys(ready))[0]
	emu.do(t, "DELETE", "/_emulator/scalesets/win10x64/vms/"+ready[victim].InstanceID, nil)
	poll.Until(t, 10*time.Second, "throttle noticed", func() bool { return strings.Contains(d.output(), "provider throttled") })
	// An unread pool may hide drift or none: check cannot tell, which is not
	// the drift answer (1).
	if code, out := d.check(t); code != 2 || !strings.Contains(out, "win10x64: unknown") || !strings.Contains(out, "cannot tell") {
		t.Errorf("check while throttled: exit %d, want 2 reporting the pool unknown\n%s", code, out)
	}
	// The last view stands: three ready machines, the lost one not yet gone.
	if got := live(d.machines(t)); len(got) != 3 || got[victim].State != "ready" {
		t.Errorf("while throttled the machine table changed: %v", got)
	}
	// Let the daemon's own timers fire inside the window: two more passes
	// that found the provider throttled.
	skipped := func() float64 {
		return d.metric(t, "sandfleet_reconcile_passes_total", "provider", "azure", "outcome", "throttled")
	}
	before := skipped()
	poll.Until(t, 10*time.Second, "two more throttled passes", func() bool { return skipped() >= before+2 })
	for _, r := range emu.requests(t)[throttledAt:] {
		if r.Method != "GET" {
			t.Errorf("write sent while throttled: %s %s", r.Method, r.Path)
		}
	}
	emu.do(t, "POST", "/_emulator/faults", map[string]any{"clear": true})
	poll.Until(t, 30*time.Second, victim+" gone after the throttle", func() bool {
		var m machine
		return d.get(t, "/apiv2/machines/view/"+victim+"/", &m) == nil && m.State == "gone"
	})
	d.waitReady(t, 3, 30*time.Second)
	poll.Until(t, 10*time.Second, "check consistent", func() bool { code, _ := d.check(t); return code == 0 })
	if n := strings.Count(d.output(), "provider throttled"); n != 1 {
		t.Errorf("throttle logged %d times in one window, want 1", n)
	}
}

// The README's run command: no configuration at all serves the embedded
// default — SQLite in ./sandfleet-data, the in-process emulator — and its
// machines become ready with IPs, with no drift.
func TestEmbeddedDefault(t *testing.T) {
	dir := t.TempDir()
	listen := freePort(t)
	p := startIn(t, dir, "serve", "--listen", listen)
	d := &daemon{proc: p, api: "http://" + listen}
	ms := d.waitReady(t, 3, 60*time.Second)
	for _, m := range ms {
		if m.Pool != "win10x64" || !strings.HasPrefix(m.IP, "127.") {
			t.Errorf("machine %+v", m)
		}
	}
	if code, out := d.check(t); code != 0 {
		t.Fatalf("check: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "sandfleet-data", "sandfleet.db")); err != nil {
		t.Fatalf("default database not under ./sandfleet-data: %v", err)
	}
	// The README's first analysis: submit --wait ends completed, and the
	// guest's report is in the analysis folder.
	sampleFile := filepath.Join(dir, "sample.exe")
	if err := os.WriteFile(sampleFile, []byte("MZ a sample"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := runCLI(t, "submit", "--wait", "--server", d.api, sampleFile)
	if code != 0 || !strings.Contains(out, "task 1: completed") {
		t.Fatalf("submit --wait: exit %d\n%s", code, out)
	}
	log, err := os.ReadFile(filepath.Join(dir, "sandfleet-data", "analyses", "1", "analysis.log"))
	if err != nil || !strings.Contains(string(log), "task 1: category file, target sample.exe") {
		t.Fatalf("analysis.log: %v\n%s", err, log)
	}
}

// Two daemons on one PostgreSQL share the fleet: one reconciles, the other
// serves the same machine table; when the first is killed with SIGKILL the
// second takes over once its lease lapses, and keeps the table true.
func TestSecondNodeTakesOver(t *testing.T) {
	url := pgtest.NewDatabase(t)
	emu := startEmulator(t, t.TempDir())
	dirA, dirB := t.TempDir(), t.TempDir()
	confA, listenA := writeConfig(t, daemonConfig{DataDir: dirA, Database: url, Emulator: emu, Size: 3, LeaseTTL: "2s"})
	confB, listenB := writeConfig(t, daemonConfig{DataDir: dirB, Database: url, Emulator: emu, Size: 3, LeaseTTL: "2s"})
	a := startDaemon(t, confA, listenA)
	ready := a.waitReady(t, 3, 60*time.Second)
	b := startDaemon(t, confB, listenB)
	poll.Until(t, 10*time.Second, "second node ready as a follower", func() bool { return b.answers("/readyz") })
	if got := live(b.machines(t)); len(got) != 3 {
		t.Fatalf("the second node serves %d machines, want the same 3", len(got))
	}
	a.kill()

	victim := slices.Sorted(maps.Keys(ready))[0]
	emu.do(t, "DELETE", "/_emulator/scalesets/win10x64/vms/"+ready[victim].InstanceID, nil)
	poll.Until(t, 30*time.Second, victim+" marked gone by the second node", func() bool {
		var m machine
		return b.get(t, "/apiv2/machines/view/"+victim+"/", &m) == nil && m.State == "gone"
	})
	b.waitReady(t, 3, 30*time.Second)
	if code, out := b.check(t); code != 0 {
		t.Fatalf("check on the second node: exit %d\n%s", code, out)
	}
	if n := count(emu.requests(t), "PUT", "/virtualMachineScaleSets/win10x64"); n != 1 {
		t.Errorf("scale set PUT %d times, want 1", n)
	}
	if !strings.Contains(b.output(), "standing by") || !strings.Contains(b.output(), "elected leader") {
		t.Errorf("the second node did not stand by, then take over:\n%s", tail(b.output(), 30))
	}
}
