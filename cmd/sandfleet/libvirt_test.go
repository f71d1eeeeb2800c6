package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt/libvirttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	libvirttest.RemoveImage()
	os.Exit(code)
}

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := rootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// TestLibvirtSnapshot turns a running guest with no snapshot into a pool
// machine with `sandfleet libvirt snapshot`, as the README tells an
// operator to: the snapshot is the running guest (a revert to it runs the
// guest again and forgets what was written since), a second one of the same
// name is refused unless --replace, a guest whose agent does not answer or
// that is not running is refused with the reason, and a pool that names no
// snapshot reverts the domain to its current one.
func TestLibvirtSnapshot(t *testing.T) {
	h := libvirttest.NewHost(t)
	g := h.Boot(1, "", time.Second)[0]
	dir := t.TempDir()
	write := func(file, snapshotKey string) string {
		path := filepath.Join(dir, file)
		yml := fmt.Sprintf("data_dir: %s\npools:\n  - name: kvm\n    provider: libvirt\n    uri: %s\n    platform: linux\n%s    machines:\n      - {label: %s, ip: %s, arch: x64}\n",
			dir, libvirttest.URI, snapshotKey, g.Name, g.IP)
		if err := os.WriteFile(path, []byte(yml), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	conf := write("golden.yaml", "    snapshot: golden\n")

	if out, err := runCmd(t, "--config", conf, "libvirt", "snapshot", "nosuch"); err == nil || !strings.Contains(err.Error(), g.Name) {
		t.Errorf("unknown label: %v\n%s; want an error listing %s", err, out, g.Name)
	}
	out, err := runCmd(t, "--config", conf, "libvirt", "snapshot", g.Name)
	if err != nil {
		t.Fatalf("libvirt snapshot: %v\n%s", err, out)
	}
	if !strings.Contains(out, `took running snapshot "golden" of domain `+g.Name) || !strings.Contains(out, "agent of "+g.Name) {
		t.Errorf("output:\n%s", out)
	}
	state, err := libvirttest.Virsh("snapshot-info", g.Name, "golden")
	if err != nil || !strings.Contains(state, "running") {
		t.Fatalf("snapshot-info: %v\n%s; want a snapshot of the running domain", err, state)
	}
	if out, err := runCmd(t, "--config", conf, "libvirt", "snapshot", g.Name); err == nil || !strings.Contains(err.Error(), "--replace") {
		t.Errorf("a second snapshot of the same name: %v\n%s; want a refusal naming --replace", err, out)
	}

	// What is written after the snapshot is forgotten by a revert to it.
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	drv, err := libvirt.New(cfg.Pools, libvirt.Options{CallTimeout: 20 * time.Second, RunningWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	revert := func(d *libvirt.Driver) {
		t.Helper()
		mark := libvirttest.Mark(t, g.IP)
		op, err := d.Reimage(ctx, "kvm", []string{g.Name})
		if err != nil {
			t.Fatal(err)
		}
		if err := op.Wait(ctx); err != nil {
			t.Fatalf("revert: %v", err)
		}
		if err := libvirttest.WaitAgent(g.IP, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if libvirttest.Marked(t, g.IP, mark) {
			t.Error("the guest still holds a file written after the snapshot: the revert did not restore it")
		}
	}
	revert(drv)

	// --replace takes it again; a pool naming no snapshot reverts to the
	// current one, which the command's snapshot now is.
	out, err = runCmd(t, "--config", conf, "libvirt", "snapshot", "--replace", g.Name)
	if err != nil || !strings.Contains(out, `replaced running snapshot "golden"`) {
		t.Fatalf("--replace: %v\n%s", err, out)
	}
	current := write("current.yaml", "")
	cfg, err = config.Load(current)
	if err != nil {
		t.Fatal(err)
	}
	drvCurrent, err := libvirt.New(cfg.Pools, libvirt.Options{CallTimeout: 20 * time.Second, RunningWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer drvCurrent.Close()
	tgt, err := drvCurrent.Find(g.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := drvCurrent.HasSnapshot(ctx, tgt); err != nil {
		t.Errorf("HasSnapshot (current) = %v", err)
	}
	revert(drvCurrent)

	// No such snapshot: HasSnapshot names it.
	if _, err := libvirttest.Virsh("snapshot-delete", g.Name, "golden"); err != nil {
		t.Fatal(err)
	}
	tgt, _ = drv.Find(g.Name)
	if err := drv.HasSnapshot(ctx, tgt); err == nil || !strings.Contains(err.Error(), `snapshot "golden"`) {
		t.Errorf("HasSnapshot after the snapshot was deleted = %v, want it named", err)
	}

	// A guest that is not running is refused, its state named.
	if _, err := libvirttest.Virsh("destroy", g.Name); err != nil {
		t.Fatal(err)
	}
	if out, err := runCmd(t, "--config", conf, "libvirt", "snapshot", "--skip-agent-check", g.Name); err == nil || !strings.Contains(err.Error(), "shut off") {
		t.Errorf("snapshot of a stopped domain: %v\n%s; want a refusal saying it is shut off", err, out)
	}
	// Its agent does not answer either: refused before libvirt is asked.
	if out, err := runCmd(t, "--config", conf, "libvirt", "snapshot", g.Name); err == nil || !strings.Contains(err.Error(), "agent") {
		t.Errorf("snapshot with the agent silent: %v\n%s; want a refusal naming the agent", err, out)
	}
}
