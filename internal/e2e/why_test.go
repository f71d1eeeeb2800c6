package e2e

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// Every waiting task and every machine that is not ready says why, in
// tasks/view/ and machines/view/, in `tasks show` and `machines show`, and
// on the dashboard: a task whose machine is busy, one past max_machines,
// one with a tag no pool has, all of them while the scheduler is paused; a
// machine leased, one being reimaged, one quarantined, one whose agent is
// down.
func TestWhyTasksAndMachinesWait(t *testing.T) {
	emu := startEmulator(t, t.TempDir(), "--analysis-duration", "10m")
	dir := t.TempDir()
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 5, Health: "1s",
		Extra: "scheduler: { max_machines: 2, fail_unserviceable: false }\n"})
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 5, 60*time.Second)

	type task struct {
		Status  string  `json:"status"`
		Machine *string `json:"machine"`
		Reason  *string `json:"reason"`
	}
	view := func(id int64) task {
		var x task
		if err := d.get(t, fmt.Sprintf("/apiv2/tasks/view/%d/", id), &x); err != nil {
			t.Fatal(err)
		}
		return x
	}
	running := func(id int64) string {
		var on string
		poll.Until(t, 30*time.Second, fmt.Sprintf("task %d running", id), func() bool {
			x := view(id)
			if x.Status == "running" && x.Machine != nil {
				on = *x.Machine
			}
			return on != ""
		})
		return on
	}
	// says waits until the task's reason holds every part: the reasons
	// are computed when asked, from a table the daemon is changing.
	says := func(id int64, parts ...string) string {
		t.Helper()
		reason := ""
		err := poll.UntilCtx(context.Background(), 20*time.Second, func() bool {
			x := view(id)
			if x.Reason == nil {
				return false
			}
			reason = *x.Reason
			for _, p := range parts {
				if !strings.Contains(reason, p) {
					return false
				}
			}
			return x.Status == "pending"
		})
		if err != nil {
			t.Fatalf("task %d waits because %q; want it to say %q", id, reason, parts)
		}
		return reason
	}

	first := submitWith(t, d, "first.exe", nil)
	held := running(first)
	busy := submitWith(t, d, "busy.exe", map[string]string{"machine": held})
	says(busy, fmt.Sprintf("1 machine matches (machine %s): %s leased by task %d since ", held, held, first))

	second := submitWith(t, d, "second.exe", nil)
	running(second)
	capped := submitWith(t, d, "capped.exe", nil)
	says(capped, "max_machines 2 reached: 2 analyses running", "5 machines match (any): ")

	office := submitWith(t, d, "office.exe", map[string]string{"tags": "office"})
	says(office, "no machine matches: tag office is on no pool")

	d.cmd.Process.Signal(syscall.SIGUSR1)
	for _, id := range []int64{busy, capped} {
		says(id, "scheduler paused (SIGUSR1")
	}
	code, out := runCLI(t, "tasks", "show", fmt.Sprint(capped), "--server", d.api)
	if code != 0 || !strings.Contains(out, `"reason": "scheduler paused (SIGUSR1`) {
		t.Fatalf("tasks show %d: exit %d\n%s", capped, code, out)
	}

	// Three of the free machines: one made dirty (its reimage held in
	// flight by the cloud), one quarantined, one whose agent dies.
	var free []machine
	for _, m := range d.machines(t) {
		if m.State == "ready" {
			free = append(free, m)
		}
	}
	if len(free) != 3 {
		t.Fatalf("%d free machines, want 3", len(free))
	}
	dirty, quarantined, silent := free[0], free[1], free[2]
	emu.do(t, "POST", "/_emulator/faults", map[string]any{"lro_delay_ms": 600000})
	d.releaseDirty(t, dirty.Label)
	if code := d.post(t, "/apiv2/machines/quarantine/"+quarantined.Label+"/", url.Values{"reason": {"beaconing to 203.0.113.9"}}); code != 200 {
		t.Fatalf("quarantine: HTTP %d", code)
	}
	emu.do(t, "POST", "/_emulator/scalesets/win10x64/vms/"+silent.InstanceID+"/agent", map[string]string{"state": "down"})

	machineSays := func(label string, parts ...string) {
		t.Helper()
		out := ""
		poll.Until(t, 30*time.Second, fmt.Sprintf("machines show %s saying %q", label, parts), func() bool {
			_, out = runCLI(t, "machines", "show", label, "--server", d.api)
			for _, p := range parts {
				if !strings.Contains(out, p) {
					return false
				}
			}
			return true
		})
	}
	machineSays(held, fmt.Sprintf(`"reason": "leased by task %d since `, first))
	machineSays(dirty.Label, "reimage operation ", " in flight since ")
	machineSays(quarantined.Label, `because beaconing to 203.0.113.9`)
	machineSays(silent.Label, fmt.Sprintf(`"reason": "agent at %s not answering since `, silent.IP), "connection refused")

	// The dashboard says the same.
	var dash struct {
		Machines []struct {
			Label  string  `json:"label"`
			Reason *string `json:"reason"`
		} `json:"machines"`
		Tasks []struct {
			ID     int64   `json:"id"`
			Reason *string `json:"reason"`
		} `json:"tasks"`
	}
	if err := d.get(t, "/apiv2/dashboard/", &dash); err != nil {
		t.Fatal(err)
	}
	shown := 0
	for _, m := range dash.Machines {
		if m.Label == quarantined.Label {
			shown++
			if m.Reason == nil || !strings.Contains(*m.Reason, "beaconing") {
				t.Errorf("dashboard: %s's reason %v", m.Label, m.Reason)
			}
		}
	}
	for _, x := range dash.Tasks {
		if x.ID == office {
			shown++
			if x.Reason == nil || !strings.Contains(*x.Reason, "tag office is on no pool") {
				t.Errorf("dashboard: task %d's reason %v", x.ID, x.Reason)
			}
		}
	}
	if shown != 2 {
		t.Errorf("the dashboard shows %d of the quarantined machine and the office task", shown)
	}
}
