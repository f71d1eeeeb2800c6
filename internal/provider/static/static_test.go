package static_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/providertest"
	"github.com/sandfleet/sandfleet/internal/provider/static"
)

func labPool(reset string) config.Pool {
	return config.Pool{
		Name: "lab", Provider: "static", Platform: "windows", Arch: "x64",
		Tags: []string{"lab"}, Image: "golden-2024",
		Machines: []config.StaticMachine{
			{Label: "lab1", IP: "10.0.0.21", Arch: "x64", Tags: []string{"win10"}},
			{Label: "lab2", IP: "10.0.0.22", Arch: "x86", Platform: "windows", Tags: []string{"win7", "lab"}},
			{Label: "lab3", IP: "10.0.0.23"},
		},
		ResetCommand: reset,
	}
}

func TestConformance(t *testing.T) {
	providertest.Run(t, providertest.Harness{
		Setup: func(t *testing.T) providertest.Env {
			log := filepath.Join(t.TempDir(), "resets")
			pools := []config.Pool{
				labPool(`echo "$SANDFLEET_MACHINE" >> ` + log),
				{Name: "kvm", Provider: "libvirt", Platform: "linux", Image: "snap"},
			}
			return providertest.Env{Provider: static.New(pools)}
		},
		Spec:    provider.PoolSpec{Name: "lab", Platform: "windows", Image: "golden-2024"},
		Caps:    providertest.Caps{},
		Timeout: 20 * time.Second,
	})
}

func TestListInstancesFields(t *testing.T) {
	d := static.New([]config.Pool{labPool("")})
	ins, err := d.ListInstances(context.Background(), "lab")
	if err != nil {
		t.Fatal(err)
	}
	want := []provider.Instance{
		{ID: "lab1", Name: "lab1", IP: "10.0.0.21", State: provider.InstanceRunning, Raw: "static",
			Platform: "windows", Arch: "x64", Image: "golden-2024", Tags: []string{"lab", "win10"}},
		{ID: "lab2", Name: "lab2", IP: "10.0.0.22", State: provider.InstanceRunning, Raw: "static",
			Platform: "windows", Arch: "x86", Image: "golden-2024", Tags: []string{"lab", "win7"}},
		{ID: "lab3", Name: "lab3", IP: "10.0.0.23", State: provider.InstanceRunning, Raw: "static",
			Platform: "windows", Arch: "x64", Image: "golden-2024", Tags: []string{"lab"}},
	}
	if len(ins) != len(want) {
		t.Fatalf("got %d instances, want %d", len(ins), len(want))
	}
	for i := range want {
		g, w := ins[i], want[i]
		if g.ID != w.ID || g.Name != w.Name || g.IP != w.IP || g.State != w.State || g.Raw != w.Raw ||
			g.Platform != w.Platform || g.Arch != w.Arch || g.Image != w.Image || !slices.Equal(g.Tags, w.Tags) {
			t.Errorf("instance %d = %+v, want %+v", i, g, w)
		}
	}
	groups, err := d.ListGroups(context.Background())
	if err != nil || len(groups) != 1 || groups[0].Name != "lab" || groups[0].Capacity != 3 || !groups[0].Owned {
		t.Errorf("ListGroups = %+v, %v; want one owned group lab of 3", groups, err)
	}
}

func TestReimageRunsResetCommandWithEnv(t *testing.T) {
	log := filepath.Join(t.TempDir(), "resets")
	d := static.New([]config.Pool{labPool(`echo "$SANDFLEET_MACHINE $SANDFLEET_IP" >> ` + log)})
	ctx := context.Background()
	op, err := d.Reimage(ctx, "lab", []string{"lab2", "lab1"})
	if err != nil {
		t.Fatal(err)
	}
	if op.Token() != "" {
		t.Errorf("Token = %q, want none", op.Token())
	}
	if _, err := os.Stat(log); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reset ran before Wait (stat: %v)", err)
	}
	if err := op.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := op.Wait(ctx); err != nil { // a second Wait does not run it again
		t.Fatal(err)
	}
	got, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if want := "lab2 10.0.0.22\nlab1 10.0.0.21\n"; string(got) != want {
		t.Errorf("reset log = %q, want %q", got, want)
	}
}

func TestReimageWithoutResetCommandIsDone(t *testing.T) {
	d := static.New([]config.Pool{labPool("")})
	op, err := d.Reimage(context.Background(), "lab", []string{"lab1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestReimageErrors(t *testing.T) {
	d := static.New([]config.Pool{labPool("echo disk busy >&2; exit 3")})
	ctx := context.Background()
	if _, err := d.Reimage(ctx, "lab", []string{"lab9"}); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("Reimage(unknown machine) = %v, want ErrNotFound", err)
	}
	if _, err := d.Reimage(ctx, "nolab", []string{"lab1"}); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("Reimage(unknown pool) = %v, want ErrNotFound", err)
	}
	op, err := d.Reimage(ctx, "lab", []string{"lab1"})
	if err != nil {
		t.Fatal(err)
	}
	err = op.Wait(ctx)
	if err == nil || !strings.Contains(err.Error(), "disk busy") || !strings.Contains(err.Error(), "lab1") {
		t.Errorf("Wait = %v, want the failure naming lab1 with the command's output", err)
	}
}

func TestReimageBoundedByContext(t *testing.T) {
	// The child sleeps in its own process so that killing only the shell would
	// leave it running with the output pipe open; the process group kill must
	// end it too.
	pidFile := filepath.Join(t.TempDir(), "pid")
	d := static.New([]config.Pool{labPool("sleep 30 & echo $! > " + pidFile + "; wait")})
	op, err := d.Reimage(context.Background(), "lab", []string{"lab1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = op.Wait(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Wait took %s after a 200ms deadline", took)
	}
	pid, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the script did not record its child: %v", err)
	}
	poll.Until(t, 5*time.Second, "the reset command's child "+string(pid)+" ended with its deadline", func() bool {
		return !running(strings.TrimSpace(string(pid)))
	})
}

// running reports whether process pid exists and is not a zombie.
func running(pid string) bool {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestUnsupportedWrapsContext(t *testing.T) {
	d := static.New([]config.Pool{labPool("")})
	_, err := d.SetCapacity(context.Background(), "lab", 5, "")
	if !errors.Is(err, provider.ErrUnsupported) || !strings.Contains(err.Error(), "lab") {
		t.Errorf("SetCapacity = %v, want ErrUnsupported naming the pool", err)
	}
}
