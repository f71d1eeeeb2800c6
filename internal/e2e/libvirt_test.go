package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt/libvirttest"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// libvirtConfig writes a configuration with one libvirt pool over guests,
// each reporting to a result-server port of its own through QEMU's user
// network (10.0.2.2 is the host's loopback, seen from a guest).
func libvirtConfig(t testing.TB, dir string, guests []libvirttest.Guest) (path, listen string) {
	t.Helper()
	listen = freePort(t)
	var machines strings.Builder
	for _, g := range guests {
		_, port, _ := strings.Cut(freePort(t), ":")
		fmt.Fprintf(&machines, "      - { label: %s, ip: %s, arch: x64, tags: [tiny], resultserver_port: %s }\n", g.Name, g.IP, port)
	}
	yaml := fmt.Sprintf(`listen: %s
data_dir: %s
resultserver: { listen: "%s", advertise_ip: 10.0.2.2 }
fleet: { reconcile_interval: 1s, health_interval: 30s }
timeouts: { cloud_operation: 120s }
pools:
  - name: kvm
    provider: libvirt
    uri: %s
    platform: linux
    arch: x64
    snapshot: clean
    machines:
%s`, listen, dir, freePort(t), libvirttest.URI, machines.String())
	path = filepath.Join(dir, "sandfleet.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, listen
}

// TestLibvirtPoolTenAnalyses runs ten analyses on a pool of two real guests,
// and stops the libvirt daemon for a few seconds while reverts are due:
// every task completes, its analyzer's log reaches its own folder through
// its machine's result-server port, no machine serves two tasks at once,
// libvirt's own events show the guest started from its snapshot between
// every two uses, and no machine ever leaves service for the lost connection.
func TestLibvirtPoolTenAnalyses(t *testing.T) {
	h := libvirttest.NewHost(t)
	guests := h.Boot(2, "clean", time.Second)
	events := watchLibvirt(t)
	dir := t.TempDir()
	conf, listen := libvirtConfig(t, dir, guests)
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 2, 2*time.Minute)

	const n = 10
	var ids []int64
	for i := range n {
		ids = append(ids, d.submit(t, fmt.Sprintf("sample-%02d.bin", i), []byte(fmt.Sprintf("sample %d", i))))
	}
	ctx := context.Background()
	st, err := open.Open(ctx, "sqlite://"+filepath.Join(dir, "sandfleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ended := func() int { return countEnded(t, st) }
	poll.Until(t, 3*time.Minute, "4 tasks ended", func() bool { return ended() >= 4 })
	daemon := libvirttest.FindDaemon(t)
	daemon.Stop(t)
	stopped := time.Now()
	poll.Until(t, 30*time.Second, "a machine waiting for its revert", func() bool {
		ms, err := st.ListMachines(ctx, store.MachineFilter{States: []store.MachineState{store.Dirty, store.Reimaging}})
		return err == nil && len(ms) > 0 && time.Since(stopped) > 3*time.Second
	})
	daemon.Start(t)
	poll.Until(t, 4*time.Minute, "every task ended", func() bool { return ended() == n })

	ts := checkCompleted(t, st, dir)
	checkOneTaskPerMachine(t, st, ts)
	for _, g := range guests {
		evs := checkInService(t, st, g.Name)
		uses := events.checkRevertedBetweenUses(t, g.Name, evs)
		t.Logf("%s: %d uses, %d reverts reported by libvirt", g.Name, uses, len(events.reverts(t, g.Name)))
	}
	if out := d.output(); !strings.Contains(out, "libvirt connection back") {
		t.Errorf("the daemon never said its libvirt connection came back:\n%s", tail(out, 40))
	}
}

// libvirtEvents is what `virsh event --all --loop --timestamp` printed.
type libvirtEvents struct{ p *proc }

// watchLibvirt records libvirt's domain events until the test ends; it
// follows the daemon across a restart by running virsh again.
func watchLibvirt(t *testing.T) *libvirtEvents {
	t.Helper()
	p := &proc{done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			cmd := exec.CommandContext(ctx, "virsh", "-c", libvirttest.URI, "event", "--all", "--loop", "--timestamp")
			cmd.Stdout, cmd.Stderr = p, p
			_ = cmd.Run()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-p.done })
	return &libvirtEvents{p: p}
}

// reverts returns when libvirt reported domain started from a snapshot: a
// revert to a running snapshot is libvirt's lifecycle event "Started
// Snapshot" (after "Stopped Snapshot" for a domain that ran).
func (e *libvirtEvents) reverts(t *testing.T, domain string) []time.Time {
	t.Helper()
	var out []time.Time
	for _, l := range strings.Split(e.p.output(), "\n") {
		// 2026-12-01 02:47:14.083+0000: event 'lifecycle' for domain 'sf…-0': Started Snapshot
		stamp, rest, ok := strings.Cut(l, ": event ")
		if !ok || !strings.Contains(rest, "'"+domain+"'") || !strings.HasSuffix(rest, "Started Snapshot") {
			continue
		}
		at, err := time.Parse("2006-01-02 15:04:05.000-0700", stamp)
		if err != nil {
			t.Fatalf("libvirt event time %q: %v", stamp, err)
		}
		out = append(out, at)
	}
	return out
}

// checkRevertedBetweenUses checks, against libvirt's events, that the
// domain was started from its snapshot after each use ended and before the
// next began, and returns how many uses there were.
func (e *libvirtEvents) checkRevertedBetweenUses(t *testing.T, domain string, evs []store.MachineEvent) int {
	t.Helper()
	reverts := e.reverts(t, domain)
	// Each virsh stamp is to the millisecond, the machine events' finer:
	// allow the rounding.
	const slack = time.Millisecond
	uses := 0
	var released time.Time // when the last use ended
	for _, ev := range evs {
		switch {
		case ev.To == store.Leased:
			if uses > 0 && !slices.ContainsFunc(reverts, func(at time.Time) bool {
				return !at.Before(released.Add(-slack)) && !at.After(ev.At.Add(slack))
			}) {
				t.Errorf("%s: leased again at %s, but libvirt reported no start from a snapshot since its last use ended at %s (reverts: %v)",
					domain, ev.At.Format(time.StampMilli), released.Format(time.StampMilli), reverts)
			}
			uses++
		case ev.From == store.Leased:
			released = ev.At
		}
	}
	return uses
}

// importKVM writes CAPE's cuckoo.conf and kvm.conf for guests, each
// machine told a result-server port of its own, and returns the
// configuration `sandfleet import-cape` makes of them, with a data
// directory, an API address and a result server on loopback added.
func importKVM(t *testing.T, dir string, guests []libvirttest.Guest) (path, listen string) {
	t.Helper()
	capeDir := filepath.Join(dir, "cape")
	if err := os.Mkdir(capeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, rsPort, _ := strings.Cut(freePort(t), ":")
	kvm := "[kvm]\nmachines = "
	var sections strings.Builder
	for i, g := range guests {
		if i > 0 {
			kvm += ", "
		}
		kvm += fmt.Sprintf("cuckoo%d", i+1)
		_, port, _ := strings.Cut(freePort(t), ":")
		fmt.Fprintf(&sections, "\n[cuckoo%d]\nlabel = %s\nplatform = linux\nip = %s\narch = x64\nsnapshot = clean\nresultserver_port = %s\n",
			i+1, g.Name, g.IP, port)
	}
	kvm += "\ndsn = " + libvirttest.URI + "\n" + sections.String()
	cuckoo := "[cuckoo]\nmachinery = kvm\n[resultserver]\nip = 10.0.2.2\nport = " + rsPort + "\n"
	for name, text := range map[string]string{"cuckoo.conf": cuckoo, "kvm.conf": kvm} {
		if err := os.WriteFile(filepath.Join(capeDir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(binary, "import-cape", "--conf", capeDir).Output()
	if err != nil {
		t.Fatalf("import-cape: %v\n%s", err, out)
	}
	yml := string(out)
	for i := range guests {
		if !strings.Contains(yml, fmt.Sprintf("resultserver_port: %s", mustPort(t, kvm, i))) {
			t.Fatalf("import-cape did not give cuckoo%d its result-server port:\n%s", i+1, yml)
		}
	}
	// CAPE binds the address it tells the machines; here the guests reach
	// the host's loopback as 10.0.2.2, so the server stays on loopback.
	yml = strings.Replace(yml, "listen: 0.0.0.0:"+rsPort, "listen: 127.0.0.1:"+rsPort, 1)
	listen = freePort(t)
	yml += fmt.Sprintf("listen: %s\ndata_dir: %s\nfleet: { reconcile_interval: 1s, health_interval: 30s }\ntimeouts: { cloud_operation: 120s }\n", listen, dir)
	path = filepath.Join(dir, "sandfleet.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, listen
}

// mustPort returns the i-th machine's resultserver_port in a kvm.conf.
func mustPort(t *testing.T, kvm string, i int) string {
	t.Helper()
	_, rest, _ := strings.Cut(kvm, fmt.Sprintf("[cuckoo%d]", i+1))
	_, rest, ok := strings.Cut(rest, "resultserver_port = ")
	if !ok {
		t.Fatalf("no resultserver_port for cuckoo%d", i+1)
	}
	port, _, _ := strings.Cut(rest, "\n")
	return port
}

// TestLibvirtDeletedSnapshot runs on the configuration import-cape makes
// of CAPE's kvm.conf for two guests, and deletes one guest's snapshot
// behind sandfleet's back: that machine's reverts fail, it ends
// quarantined with a reason naming the snapshot, and the other guest
// serves every other task.
func TestLibvirtDeletedSnapshot(t *testing.T) {
	h := libvirttest.NewHost(t)
	guests := h.Boot(2, "clean", time.Second)
	broken, other := guests[0].Name, guests[1].Name
	dir := t.TempDir()
	conf, listen := importKVM(t, dir, guests)
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 2, 2*time.Minute)

	if _, err := libvirttest.Virsh("snapshot-delete", broken, "clean"); err != nil {
		t.Fatal(err)
	}
	// The first task asks for the broken machine, so that it is used and
	// must be reverted; the others take whichever machine is ready.
	ids := []int64{d.submitForm(t, "first.bin", []byte("first"), map[string]string{"timeout": "30", "machine": broken})}
	for i := range 4 {
		ids = append(ids, d.submit(t, fmt.Sprintf("then-%d.bin", i), []byte(fmt.Sprint(i))))
	}
	ctx := context.Background()
	st, err := open.Open(ctx, "sqlite://"+filepath.Join(dir, "sandfleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	poll.Until(t, 4*time.Minute, "every task ended", func() bool { return countEnded(t, st) == len(ids) })
	machineOf := func(label string) store.Machine {
		ms, err := st.ListMachines(ctx, store.MachineFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.Label == label {
				return m
			}
		}
		t.Fatalf("no machine %s", label)
		return store.Machine{}
	}
	poll.Until(t, 2*time.Minute, broken+" quarantined", func() bool { return machineOf(broken).State == store.Quarantined })
	if reason, want := machineOf(broken).QuarantineReason, `no snapshot "clean"`; !strings.Contains(reason, want) {
		t.Errorf("%s quarantined with reason %q; want it to name the snapshot (%s)", broken, reason, want)
	}
	for _, task := range checkCompleted(t, st, dir) {
		if want := map[bool]string{true: broken, false: other}[task.ID == ids[0]]; task.RanOn != want {
			t.Errorf("task %d ran on %q, want %s", task.ID, task.RanOn, want)
		}
	}
	poll.Until(t, time.Minute, other+" ready again", func() bool { return machineOf(other).State == store.Ready })
	if m := machineOf(other); m.Failures != 0 {
		t.Errorf("%s has %d failed operations; want none", other, m.Failures)
	}
}

// TestLibvirtShutOffDomainsAreReverted: after a host reboot every domain is
// shut off. A domain shut off when sandfleet starts, and one shut off while
// its machine is ready, are each reverted to their running snapshot at
// once — which starts them — and serve analyses; neither waits out
// timeouts.vm_state or ends quarantined.
func TestLibvirtShutOffDomainsAreReverted(t *testing.T) {
	h := libvirttest.NewHost(t)
	guests := h.Boot(2, "clean", time.Second)
	if _, err := libvirttest.Virsh("destroy", guests[0].Name); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf, listen := libvirtConfig(t, dir, guests)
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	// Long enough that a machine waited out would fail the test's polls.
	b = []byte(strings.Replace(string(b), "timeouts: { cloud_operation: 120s }", "timeouts: { cloud_operation: 120s, vm_state: 1h }", 1))
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 2, 2*time.Minute)

	if _, err := libvirttest.Virsh("destroy", guests[1].Name); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := open.Open(ctx, "sqlite://"+filepath.Join(dir, "sandfleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	restarted := func(label string) bool {
		evs, err := st.MachineEvents(ctx, label)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range evs {
			if e.From == store.Provisioning && e.To == store.Dirty && strings.Contains(e.Cause, "shut off") {
				return slices.ContainsFunc(evs[i:], func(e store.MachineEvent) bool { return e.To == store.Ready })
			}
		}
		return false
	}
	poll.Until(t, 2*time.Minute, guests[1].Name+" shut off while ready, reverted, ready again", func() bool { return restarted(guests[1].Name) })
	if !restarted(guests[0].Name) {
		t.Errorf("%s was shut off when sandfleet started, and is ready without a revert", guests[0].Name)
	}
	d.waitReady(t, 2, time.Minute)
	var ids []int64
	for i := range 2 {
		ids = append(ids, d.submit(t, fmt.Sprintf("after-%d.bin", i), []byte(fmt.Sprint(i))))
	}
	poll.Until(t, 2*time.Minute, "both tasks ended", func() bool { return countEnded(t, st) == len(ids) })
	checkCompleted(t, st, dir)
	for _, g := range guests {
		checkInService(t, st, g.Name)
	}
}

// checkCompleted checks that every task completed with its own analyzer's
// log in its folder (through its machine's result-server port), and returns
// the tasks.
func checkCompleted(t testing.TB, st store.Store, dir string) []store.Task {
	t.Helper()
	ts, err := st.ListTasks(context.Background(), store.TaskFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range ts {
		if task.Status != store.TaskCompleted {
			t.Errorf("task %d ended %s (%q), want completed", task.ID, task.Status, task.Error)
		}
		log, err := os.ReadFile(filepath.Join(dir, "analyses", fmt.Sprint(task.ID), "analysis.log"))
		if err != nil || !strings.Contains(string(log), fmt.Sprintf("task %d:", task.ID)) {
			t.Errorf("task %d: analysis.log %q, %v; want its own analyzer's log", task.ID, log, err)
		}
	}
	return ts
}

// checkInService checks that machine label never went quarantined or gone,
// and returns its events.
func checkInService(t *testing.T, st store.Store, label string) []store.MachineEvent {
	t.Helper()
	evs, err := st.MachineEvents(context.Background(), label)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.To == store.Quarantined || e.To == store.Gone {
			t.Errorf("%s went %s: %s", label, e.To, e.Cause)
		}
	}
	return evs
}
