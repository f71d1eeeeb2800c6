package libvirt_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt/libvirttest"
	"github.com/sandfleet/sandfleet/internal/provider/providertest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	libvirttest.RemoveImage()
	os.Exit(code)
}

const snapshot = "clean"

// pool is a libvirt pool over guests; each guest is given its own
// result-server port.
func pool(guests []libvirttest.Guest) config.Pool {
	p := config.Pool{Name: "kvm", Provider: "libvirt", URI: libvirttest.URI, Platform: "linux", Arch: "x64",
		Tags: []string{"kvm"}, Snapshot: snapshot}
	for i, g := range guests {
		p.Machines = append(p.Machines, config.StaticMachine{Label: g.Name, IP: g.IP, Tags: []string{"tiny"}, ResultServerPort: 2100 + i})
	}
	return p
}

func newDriver(t *testing.T, pools ...config.Pool) *libvirt.Driver {
	t.Helper()
	d, err := libvirt.New(pools, libvirt.Options{CallTimeout: 10 * time.Second, RunningWait: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// TestConformance runs the provider suite on two real guests. The suite
// removes a domain behind the provider's back; Setup boots it again.
func TestConformance(t *testing.T) {
	h := libvirttest.NewHost(t)
	guests := h.Boot(2, snapshot, time.Second)
	p := pool(guests)
	providertest.Run(t, providertest.Harness{
		Setup: func(t *testing.T) providertest.Env {
			for _, g := range guests {
				if _, err := libvirttest.Virsh("domstate", g.Name); err != nil {
					h.Reboot(g, snapshot, time.Second)
				}
			}
			return providertest.Env{
				Provider: newDriver(t, p, config.Pool{Name: "lab", Provider: "static", Platform: "windows"}),
				RemoveInstance: func(ctx context.Context, group, id string) error {
					h.Remove(id)
					return nil
				},
				StopInstance: func(ctx context.Context, group, id string) error {
					_, err := libvirttest.Virsh("destroy", id)
					return err
				},
			}
		},
		Spec:    provider.PoolSpec{Name: "kvm", Platform: "linux", Image: snapshot},
		Caps:    providertest.Caps{ReimageStarts: true},
		Timeout: 2 * time.Minute,
	})
}

// TestRevertRestoresTheSnapshot checks that a reimage is a revert: what an
// analysis left in the guest's memory is gone after it, and the domain runs
// with its agent answering at once.
func TestRevertRestoresTheSnapshot(t *testing.T) {
	h := libvirttest.NewHost(t)
	guests := h.Boot(1, snapshot, time.Second)
	g := guests[0]
	d := newDriver(t, pool(guests))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	before := libvirttest.Mark(t, g.IP) // a file only this boot's memory holds
	if !libvirttest.Marked(t, g.IP, before) {
		t.Fatal("the mark is not in the guest")
	}
	op, err := d.Reimage(ctx, "kvm", []string{g.Name})
	if err != nil {
		t.Fatal(err)
	}
	reverted := make(chan error, 1)
	go func() { reverted <- op.Wait(ctx) }()
	// While it reverts, the domain is listed as reverting, not asked:
	// libvirt holds it for most of a revert, and a list would wait.
	var seen provider.Instance
	poll.Until(t, time.Minute, "the domain listed as reverting", func() bool {
		ins, err := d.ListInstances(ctx, "kvm")
		if err != nil || len(ins) != 1 {
			t.Fatalf("ListInstances during the revert = %+v, %v", ins, err)
		}
		seen = ins[0]
		return strings.Contains(seen.Raw, "reverting")
	})
	if seen.State != provider.InstanceUpdating || seen.Raw != `reverting to its snapshot "clean"` {
		t.Errorf("during the revert: %+v; want updating, reverting to its snapshot", seen)
	}
	if err := <-reverted; err != nil {
		t.Fatalf("revert: %v", err)
	}
	in, err := d.GetInstance(ctx, "kvm", g.Name)
	if err != nil || in.State != provider.InstanceRunning {
		t.Fatalf("after revert: %+v, %v; want running", in, err)
	}
	if err := libvirttest.WaitAgent(g.IP, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if libvirttest.Marked(t, g.IP, before) {
		t.Error("the file stored before the revert is still in the guest: it was not reverted")
	}
}

// TestRevertFailures: a domain without the snapshot fails its revert with a
// reason naming the snapshot; a vanished domain is not found, and no longer
// listed.
func TestRevertFailures(t *testing.T) {
	h := libvirttest.NewHost(t)
	guests := h.Boot(2, snapshot, time.Second)
	d := newDriver(t, pool(guests))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	if _, err := libvirttest.Virsh("snapshot-delete", guests[0].Name, snapshot); err != nil {
		t.Fatal(err)
	}
	op, err := d.Reimage(ctx, "kvm", []string{guests[0].Name})
	if err != nil {
		t.Fatal(err)
	}
	err = op.Wait(ctx)
	if err == nil || !strings.Contains(err.Error(), `snapshot "clean"`) || !strings.Contains(err.Error(), guests[0].Name) {
		t.Errorf("revert without the snapshot = %v, want a failure naming the domain and snapshot %q", err, snapshot)
	}
	if _, throttled := provider.AsThrottled(err); throttled {
		t.Errorf("a missing snapshot is the revert's failure, not a transient one: %v", err)
	}

	h.Remove(guests[1].Name)
	op, err = d.Reimage(ctx, "kvm", []string{guests[1].Name})
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Wait(ctx); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("revert of a vanished domain = %v, want ErrNotFound", err)
	}
	ins, err := d.ListInstances(ctx, "kvm")
	if err != nil || len(ins) != 1 || ins[0].ID != guests[0].Name {
		t.Errorf("ListInstances = %+v, %v; want only %s", ins, err, guests[0].Name)
	}
	if ins[0].ResultServerPort != 2100 || ins[0].Image != snapshot || ins[0].IP != guests[0].IP {
		t.Errorf("instance %+v: want result-server port 2100, snapshot %s, ip %s", ins[0], snapshot, guests[0].IP)
	}
}

// TestDaemonRestartDuringRevert stops the libvirt daemon while a revert is
// under way and starts it again: the revert's Wait reports the lost
// connection as transient (a throttle), never as the domain's failure, and
// the next Wait, once the daemon is back, completes the revert on a new
// connection.
func TestDaemonRestartDuringRevert(t *testing.T) {
	h := libvirttest.NewHost(t)
	guests := h.Boot(1, snapshot, time.Second)
	g := guests[0]
	d := newDriver(t, pool(guests))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := d.ListInstances(ctx, "kvm"); err != nil {
		t.Fatal(err) // connected before the daemon goes
	}
	mark := libvirttest.Mark(t, g.IP)

	daemon := libvirttest.FindDaemon(t)
	op, err := d.Reimage(ctx, "kvm", []string{g.Name})
	if err != nil {
		t.Fatal(err)
	}
	daemon.Stop(t)
	restarted := false
	defer func() {
		if !restarted {
			daemon.Start(t)
		}
	}()
	err = op.Wait(ctx)
	tr, throttled := provider.AsThrottled(err)
	if !throttled || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("Wait with the daemon down = %v, want a throttle saying libvirt is unreachable", err)
	}
	if tr.RetryAfter <= 0 {
		t.Errorf("RetryAfter = %s, want the reconnect backoff", tr.RetryAfter)
	}
	if _, err := d.ListInstances(ctx, "kvm"); err == nil {
		t.Errorf("ListInstances with the daemon down succeeded; want an error, never an empty list")
	} else if _, throttled := provider.AsThrottled(err); !throttled {
		t.Errorf("ListInstances with the daemon down = %v, want a throttle", err)
	}
	daemon.Start(t)
	restarted = true

	deadline := time.Now().Add(time.Minute)
	for {
		err = op.Wait(ctx)
		if _, throttled := provider.AsThrottled(err); !throttled || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("Wait once the daemon is back = %v, want the revert done", err)
	}
	if err := libvirttest.WaitAgent(g.IP, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if libvirttest.Marked(t, g.IP, mark) {
		t.Error("the guest still holds what it held before the revert")
	}
	ins, err := d.ListInstances(ctx, "kvm")
	if err != nil || len(ins) != 1 || ins[0].State != provider.InstanceRunning {
		t.Errorf("ListInstances after the restart = %+v, %v; want %s running", ins, err, g.Name)
	}
}
