package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
func libvirtConfig(t *testing.T, dir string, guests []libvirttest.Guest) (path, listen string) {
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
azure: { reimage_batch_window: 0s }
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
// libvirt reports a revert to the snapshot between every two uses of a
// guest, and no machine ever leaves service for the lost connection.
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

	ts, err := st.ListTasks(ctx, store.TaskFilter{})
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
	checkOneTaskPerMachine(t, st, ts)
	for _, g := range guests {
		evs, err := st.MachineEvents(ctx, g.Name)
		if err != nil {
			t.Fatal(err)
		}
		uses, revertedSince := 0, true
		for _, e := range evs {
			switch e.To {
			case store.Leased:
				if !revertedSince {
					t.Errorf("%s leased again with no revert since its last use", g.Name)
				}
				uses++
				revertedSince = false
			case store.Provisioning:
				revertedSince = revertedSince || e.From == store.Reimaging
			case store.Quarantined, store.Gone:
				t.Errorf("%s went %s: %s", g.Name, e.To, e.Cause)
			}
		}
		reverts := events.count(g.Name, "Snapshot")
		t.Logf("%s: %d uses, %d reverts reported by libvirt", g.Name, uses, reverts)
		if uses > 1 && reverts < uses-1 {
			t.Errorf("%s: %d uses, but libvirt reported %d reverts to a snapshot", g.Name, uses, reverts)
		}
	}
	if out := d.output(); !strings.Contains(out, "libvirt connection back") {
		t.Errorf("the daemon never said its libvirt connection came back:\n%s", tail(out, 40))
	}
}

// libvirtEvents is what `virsh event --all --loop` printed.
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
			cmd := exec.CommandContext(ctx, "virsh", "-c", libvirttest.URI, "event", "--all", "--loop")
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

// count counts the events of domain whose line mentions what.
func (e *libvirtEvents) count(domain, what string) int {
	n := 0
	for _, l := range strings.Split(e.p.output(), "\n") {
		if strings.Contains(l, "'"+domain+"'") && strings.Contains(l, what) {
			n++
		}
	}
	return n
}
