package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// An empty pool (initial_size 0, max_size 5) has no machine rows at rest;
// three tasks grow it, complete, and once the queue has been empty for
// azure.monitor_interval it is empty again. Then, with the cloud's core
// quota room for four machines only, ten tasks grow it to four and
// `pools list` says why.
func TestPoolFollowsTheQueue(t *testing.T) {
	emu := startEmulator(t, t.TempDir(), "--analysis-duration", "2s")
	dir := t.TempDir()
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 0, MaxSize: 5,
		Azure: []string{"monitor_interval: 3s", "quota_machine_exclusion: 0"}})
	d := startDaemon(t, conf, listen)
	poll.Until(t, 30*time.Second, "the first reconcile", func() bool { return d.answers("/readyz") })
	if ms := live(d.machines(t)); len(ms) != 0 {
		t.Fatalf("%d machine rows in an empty pool at rest", len(ms))
	}
	var ids []int64
	for i := range 3 {
		ids = append(ids, d.submit(t, fmt.Sprintf("s%d.exe", i), []byte("MZ sample")))
	}
	most := 0
	for _, id := range ids {
		poll.Until(t, 90*time.Second, fmt.Sprintf("task %d completed", id), func() bool {
			ms := d.machines(t)
			most = max(most, len(live(ms)))
			for _, m := range ms {
				if strings.Contains(m.Label, "placeholder") {
					t.Fatalf("a placeholder row: %s", m.Label)
				}
			}
			var x struct{ Status string }
			return d.get(t, fmt.Sprintf("/apiv2/tasks/view/%d/", id), &x) == nil && x.Status == "completed"
		})
	}
	if most == 0 || most > 5 {
		t.Errorf("the pool had %d machines for 3 tasks, max_size 5", most)
	}
	poll.Until(t, 60*time.Second, "the pool empty again", func() bool { return len(live(d.machines(t))) == 0 })

	// Standard_D2s_v5 has 2 vCPUs: 8 cores leave room for 4 machines.
	emu.do(t, "POST", "/_emulator/faults", map[string]any{"quota": map[string]int{"cores": 8, "low_priority_cores": 8}})
	for i := range 10 {
		d.submit(t, fmt.Sprintf("q%d.exe", i), []byte("MZ sample"))
	}
	out := ""
	poll.Until(t, 60*time.Second, "pools list naming the quota", func() bool {
		_, out = runCLI(t, "pools", "list", "--server", d.api)
		return strings.Contains(out, "core quota")
	})
	poll.Until(t, 60*time.Second, "four machines", func() bool { return len(live(d.machines(t))) == 4 })
	if n := len(live(d.machines(t))); n > 4 {
		t.Fatalf("%d machines with room for 4\n%s", n, out)
	}
	t.Logf("pools list:\n%s", out)
}
