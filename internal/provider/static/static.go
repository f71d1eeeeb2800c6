// Package static is the provider for machines that exist on their own: bare
// metal, or virtual machines made by hand. sandfleet never creates, resizes or
// deletes them; it lists what the configuration names and, after each use, runs
// the pool's reset_command (a FOG re-image, a snapshot revert script) if one is
// set.
package static

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
)

// Driver serves the static pools of a configuration. It holds no mutable state
// and is safe for concurrent use.
type Driver struct {
	provider.Fixed
}

var _ provider.Provider = (*Driver)(nil)

// Capabilities: static machines are only listed and reset, each on its own.
func (d *Driver) Capabilities() provider.Capabilities { return provider.Capabilities{} }

// New returns a driver for the pools whose provider is "static"; other pools
// are ignored.
func New(pools []config.Pool) *Driver {
	return &Driver{Fixed: provider.NewFixed("static", pools, nil, func(p config.Pool) string { return p.Image })}
}

// ListInstances returns the pool's configured machines, all running: sandfleet
// has no way to know otherwise, and the guest-agent check catches dead ones.
func (d *Driver) ListInstances(ctx context.Context, name string) ([]provider.Instance, error) {
	p, err := d.Pool(name)
	if err != nil {
		return nil, err
	}
	out := make([]provider.Instance, 0, len(p.Machines))
	for _, m := range p.Machines {
		out = append(out, Instance(p, m))
	}
	return out, nil
}

// GetInstance returns one configured machine, running as far as sandfleet
// can tell; ErrNotFound if the configuration does not list it.
func (d *Driver) GetInstance(ctx context.Context, name, id string) (provider.Instance, error) {
	p, err := d.Pool(name)
	if err != nil {
		return provider.Instance{}, err
	}
	for _, m := range p.Machines {
		if m.Label == id {
			return Instance(p, m), nil
		}
	}
	return provider.Instance{}, fmt.Errorf("static pool %q: machine %q: %w", name, id, provider.ErrNotFound)
}

// Instance is a listed machine as an instance: running as far as sandfleet
// can tell, with its own platform, arch and tags over the pool's.
func Instance(p config.Pool, m config.StaticMachine) provider.Instance {
	in := provider.Instance{
		ID:       m.Label,
		Name:     m.Label,
		IP:       m.IP,
		State:    provider.InstanceRunning,
		Raw:      "static",
		Platform: firstOf(m.Platform, p.Platform),
		Arch:     firstOf(m.Arch, p.Arch),
		Image:    p.Image,
	}
	seen := map[string]bool{}
	for _, t := range append(append([]string{}, p.Tags...), m.Tags...) {
		if t != "" && !seen[t] {
			seen[t] = true
			in.Tags = append(in.Tags, t)
		}
	}
	return in
}

func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Reimage runs the pool's reset_command once per machine, within the returned
// Op's Wait; without a reset_command the machines are reused as they are and the
// Op is already done. Unknown ids are ErrNotFound.
func (d *Driver) Reimage(ctx context.Context, name string, ids []string) (provider.Op, error) {
	p, err := d.Pool(name)
	if err != nil {
		return nil, err
	}
	byLabel := map[string]config.StaticMachine{}
	for _, m := range p.Machines {
		byLabel[m.Label] = m
	}
	var machines []config.StaticMachine
	for _, id := range ids {
		m, ok := byLabel[id]
		if !ok {
			return nil, fmt.Errorf("static pool %q: machine %q: %w", name, id, provider.ErrNotFound)
		}
		machines = append(machines, m)
	}
	if strings.TrimSpace(p.ResetCommand) == "" {
		return provider.Done{}, nil
	}
	return &resetOp{pool: p.Name, command: p.ResetCommand, machines: machines}, nil
}

// resetOp runs the reset command for each machine, in order, on its first
// Wait; later Waits return that Wait's result. A reset that failed or was cut
// short is never taken for done: the caller reimages again or quarantines.
type resetOp struct {
	pool     string
	command  string
	machines []config.StaticMachine

	mu   sync.Mutex
	done bool
	err  error
}

func (o *resetOp) Token() string { return "" }

func (o *resetOp) Wait(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.done {
		o.err, o.done = o.run(ctx), true
	}
	return o.err
}

func (o *resetOp) run(ctx context.Context) error {
	for _, m := range o.machines {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("static pool %q: reset %s: %w", o.pool, m.Label, err)
		}
		if err := runReset(ctx, o.command, m); err != nil {
			return fmt.Errorf("static pool %q: reset %s: %w", o.pool, m.Label, err)
		}
	}
	return nil
}

// maxOutput bounds how much of a failing command's output ends up in an error.
const maxOutput = 2048

func runReset(ctx context.Context, command string, m config.StaticMachine) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Env = append(os.Environ(), "SANDFLEET_MACHINE="+m.Label, "SANDFLEET_IP="+m.IP)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	setProcessGroup(cmd)
	// A grandchild holding the output pipe must not keep Wait past ctx.
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("reset_command: %w", ctxErr)
	}
	msg := strings.TrimSpace(out.String())
	if len(msg) > maxOutput {
		msg = msg[len(msg)-maxOutput:]
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && msg != "" {
		return fmt.Errorf("reset_command: %w: %s", err, msg)
	}
	return fmt.Errorf("reset_command: %w", err)
}
