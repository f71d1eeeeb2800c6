package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt"
)

func libvirtCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "libvirt",
		Short: "Work on the domains of libvirt pools",
	}
	cmd.AddCommand(libvirtSnapshotCmd(g))
	return cmd
}

func libvirtSnapshotCmd(g *globals) *cobra.Command {
	var (
		name           string
		replace        bool
		skipAgentCheck bool
		timeout        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "snapshot LABEL",
		Short: "Take the running-state snapshot a libvirt pool reverts machine LABEL to after each use",
		Long: `Take a running-state snapshot (disk and memory, atomically) of the domain
of libvirt machine LABEL, as the configuration lists it: the snapshot its pool
reverts it to after each use (pools[].machines[].snapshot, else
pools[].snapshot, else "` + libvirt.DefaultSnapshot + `", which becomes the domain's current
snapshot).

The guest must be running, clean, with its agent started: the agent is asked
first at the machine's ip and guest.agent_port, and a guest whose agent does
not answer is refused (--skip-agent-check skips the question). A snapshot of
that name already there is refused unless --replace.

Take it on the golden guest before its pool serves analyses, or while
sandfleet serve is stopped: a snapshot of a guest in use would hold the
analysis.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			drv, err := libvirt.New(cfg.Pools, libvirt.Options{CallTimeout: timeout})
			if err != nil {
				return err
			}
			defer drv.Close()
			t, err := drv.Find(args[0])
			if err != nil {
				return err
			}
			configured := t.Pool.SnapshotOf(t.Machine)
			if name == "" {
				name = configured
			}
			if name == "" {
				name = libvirt.DefaultSnapshot
			}
			out := cmd.OutOrStdout()
			if !skipAgentCheck {
				c := guest.NewClient(cfg.Guest.AgentPort, 10*time.Second)
				info, err := c.Hello(ctx, t.Machine.IP)
				if err != nil {
					return fmt.Errorf("the agent of %s does not answer (%w): a snapshot without a running agent makes a machine that never becomes ready; "+
						"start the agent in the guest (or check pools[].machines[].ip and guest.agent_port), or pass --skip-agent-check",
						t.Machine.Label, err)
				}
				fmt.Fprintf(out, "agent of %s at %s:%d answers (version %s)\n", t.Machine.Label, t.Machine.IP, cfg.Guest.AgentPort, orNone(info.Version))
			}
			taken, err := drv.TakeSnapshot(ctx, t, name, replace)
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					return fmt.Errorf("snapshot of %s: no answer from libvirt at %s within --timeout %s", t.Machine.Label, t.Pool.URI, timeout)
				}
				return err
			}
			verb := "took"
			if taken.Replaced {
				verb = "replaced"
			}
			fmt.Fprintf(out, "%s running snapshot %q of domain %s at %s in %s\n", verb, taken.Snapshot, t.Machine.Label, t.Pool.URI,
				taken.Took.Round(time.Millisecond))
			switch {
			case configured == "":
				fmt.Fprintf(out, "pool %s names no snapshot: %s is reverted to its current one, now %q\n", t.Pool.Name, t.Machine.Label, taken.Snapshot)
			case configured != taken.Snapshot:
				fmt.Fprintf(out, "note: pool %s reverts %s to %q, not %q: set its snapshot to use this one\n", t.Pool.Name, t.Machine.Label, configured, taken.Snapshot)
			default:
				fmt.Fprintf(out, "pool %s reverts %s to it after each use\n", t.Pool.Name, t.Machine.Label)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "the snapshot's name (default: the one the configuration gives the machine)")
	f.BoolVar(&replace, "replace", false, "delete a snapshot of that name first")
	f.BoolVar(&skipAgentCheck, "skip-agent-check", false, "take the snapshot without asking the guest's agent first")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "bound on the whole command (a large guest's memory takes a while to save)")
	return cmd
}

func orNone(s string) string {
	if s == "" {
		return "not given"
	}
	return s
}
