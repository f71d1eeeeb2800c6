package e2e

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/poll"
)

// post sends a form to the daemon's API and returns the status.
func (d *daemon) post(t *testing.T, path string, form url.Values) int {
	t.Helper()
	resp, err := http.PostForm(d.api+path, form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// acceptedReimages counts, per instance, the reimages the cloud accepted.
func acceptedReimages(rs []request) map[string]int {
	return azemu.AcceptedPerInstance(rs, "POST", "/reimage")
}

// releaseDirty takes ready machines out of service and puts them back, as an
// operator does: released machines are dirty and get reimaged before use.
func (d *daemon) releaseDirty(t *testing.T, labels ...string) {
	t.Helper()
	for _, l := range labels {
		if code := d.post(t, "/apiv2/machines/quarantine/"+l+"/", url.Values{"reason": {"test"}}); code != 200 {
			t.Fatalf("quarantine %s: HTTP %d", l, code)
		}
	}
	for _, l := range labels {
		if code := d.post(t, "/apiv2/machines/release/"+l+"/", nil); code != 200 {
			t.Fatalf("release %s: HTTP %d", l, code)
		}
	}
}

// A cloud that fails 70 % of its requests while four reimages run does not
// make sandfleet issue them twice, nor quarantine machines whose reimage
// succeeded: failed polls are polled again until the reimages report their
// end.
func TestFlakyCloudDuringReimages(t *testing.T) {
	emu := startEmulator(t, t.TempDir(), "--lro-delay", "3s")
	dir := t.TempDir()
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 4})
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 4, 60*time.Second)

	labels := []string{"win10x64_0", "win10x64_1", "win10x64_2", "win10x64_3"}
	d.releaseDirty(t, labels...)
	poll.Until(t, 30*time.Second, "every reimage accepted", func() bool {
		return len(acceptedReimages(emu.requests(t))) == 4
	})
	// While they run, the cloud fails 70 % of requests, for at most 150 s:
	// failed polls back off up to 10 s, so an operation sees its end after a
	// run of failures that long only once in thousands.
	emu.do(t, "POST", "/_emulator/faults", map[string]any{"error_rate": 0.7})
	poll.Until(t, 150*time.Second, "the reimages seen to end through the failures", func() bool {
		for _, m := range d.machines(t) {
			if m.State == "dirty" || m.State == "reimaging" {
				return false
			}
		}
		return true
	})
	failed := 0
	for _, r := range emu.requests(t) {
		if r.Status >= 500 && strings.Contains(r.Path, "/operations/") {
			failed++
		}
	}
	emu.do(t, "POST", "/_emulator/faults", map[string]any{"clear": true})
	if failed == 0 {
		t.Fatal("no poll of a reimage failed: the test proved nothing")
	}
	ready := d.waitReady(t, 4, 60*time.Second)
	for _, l := range labels {
		if ready[l].State != "ready" {
			t.Errorf("%s is %s, want ready", l, ready[l].State)
		}
	}
	for id, n := range acceptedReimages(emu.requests(t)) {
		if n != 1 {
			t.Errorf("instance %s: reimage accepted %d times, want once", id, n)
		}
	}
	poll.Until(t, 10*time.Second, "check consistent", func() bool { code, _ := d.check(t); return code == 0 })
	if strings.Contains(d.output(), "times in a row") {
		t.Errorf("a machine was quarantined for failures:\n%s", tail(d.output(), 30))
	}
}

// The emulator is killed while a reimage runs and comes back 12 s later on
// the same state: the reimage is polled to its success, issued once, and
// nothing is blamed on the machine.
func TestCloudKilledDuringReimage(t *testing.T) {
	state := t.TempDir()
	emu := startEmulator(t, state, "--lro-delay", "6s")
	dir := t.TempDir()
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 2})
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 2, 60*time.Second)

	d.releaseDirty(t, "win10x64_1")
	var ops []struct {
		ID        int64  `json:"id"`
		Kind      string `json:"kind"`
		State     string `json:"state"`
		Resumable bool   `json:"resumable"`
		Error     string `json:"error"`
	}
	poll.Until(t, 30*time.Second, "reimage issued with its token stored", func() bool {
		return d.get(t, "/apiv2/operations/list/?unfinished=true", &ops) == nil &&
			len(ops) == 1 && ops[0].Kind == "reimage" && ops[0].Resumable
	})
	reimage := ops[0].ID
	if n := count(emu.requests(t), "POST", "/reimage"); n != 1 {
		t.Fatalf("reimage POSTed %d times before the outage", n)
	}
	addr := strings.TrimPrefix(emu.url, "https://")
	emu.kill()
	// The outage lasts 12 s: a length of the scenario, not a condition.
	<-time.After(12 * time.Second)
	emu = startEmulatorOn(t, addr, state)
	ready := d.waitReady(t, 2, 90*time.Second)
	if ready["win10x64_1"].State != "ready" {
		t.Fatalf("win10x64_1 is %s", ready["win10x64_1"].State)
	}
	if n := count(emu.requests(t), "POST", "/reimage"); n != 0 {
		t.Errorf("reimage POSTed %d more times after the outage, want 0", n)
	}
	poll.Until(t, 10*time.Second, "the reimage recorded succeeded", func() bool {
		if d.get(t, "/apiv2/operations/list/", &ops) != nil {
			return false
		}
		for _, op := range ops {
			if op.ID == reimage {
				return op.State == "succeeded"
			}
		}
		return false
	})
	if strings.Contains(d.output(), "times in a row") {
		t.Errorf("a machine was quarantined for failures:\n%s", tail(d.output(), 30))
	}
}

// A ready machine whose agent goes down leaves ready within two health
// intervals and is ready again once the agent is back.
func TestAgentDownLeavesReady(t *testing.T) {
	emu := startEmulator(t, t.TempDir())
	dir := t.TempDir()
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 3, Health: "2s", Interval: "30s"})
	d := startDaemon(t, conf, listen)
	ms := d.waitReady(t, 3, 60*time.Second)
	victim := ms["win10x64_2"]

	emu.do(t, "POST", "/_emulator/scalesets/win10x64/vms/"+victim.InstanceID+"/agent", map[string]string{"state": "down"})
	down := time.Now()
	var m machine
	poll.Until(t, 30*time.Second, "win10x64_2 out of ready", func() bool {
		return d.get(t, "/apiv2/machines/view/win10x64_2/", &m) == nil && m.State != "ready"
	})
	if took := time.Since(down); took > 4*time.Second+2*time.Second {
		t.Errorf("left ready after %s, want within two health intervals (4s) and the confirming probe", took)
	}
	if m.State != "provisioning" {
		t.Errorf("win10x64_2 is %s, want provisioning", m.State)
	}
	emu.do(t, "POST", "/_emulator/scalesets/win10x64/vms/"+victim.InstanceID+"/agent", map[string]string{"state": "up"})
	d.waitReady(t, 3, 30*time.Second)
	if !strings.Contains(d.output(), fmt.Sprintf("label=%s", victim.Label)) ||
		!strings.Contains(d.output(), "agent stopped answering") {
		t.Errorf("the daemon did not say why win10x64_2 left ready:\n%s", tail(d.output(), 30))
	}
}
