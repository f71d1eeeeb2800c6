package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandfleet/sandfleet/internal/doctor"
)

func doctorCmd(g *globals) *cobra.Command {
	var (
		asJSON  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the setup end to end before the first analysis; exit 0 if every check passes, 1 if not",
		Long: `Check, in order: the configuration; the database (reachable and migrated,
read only); each provider (Azure: credentials, each pool's gallery image, the
core quota and the subnet for every pool at max_size; static: the machines);
the result server (listening, and told to machines at an address of this
host); the analyzer package; the agent of every ready machine; the daemon at
--server. One line a check, ✓ or ✗, and for ✗ what to change.

Nothing is written, migrated or started. Each check is bounded by --timeout.

Exit status:
  0  every check passed
  1  a check failed
  2  doctor could not run (a bad flag)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o := doctor.Options{ConfigFile: g.configPath(), Token: g.apiToken(), Timeout: timeout}
			o.Config, o.ConfigErr = g.load()
			// A configuration that does not load is reported as such; the
			// daemon is then not looked for.
			if server, err := g.target(); err == nil {
				o.Server = server
			}
			checks := doctor.Run(ctx, o)
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(checks); err != nil {
					return err
				}
			} else {
				for _, c := range checks {
					if c.OK {
						fmt.Fprintf(out, "✓ %s: %s\n", c.Check, c.Detail)
					} else {
						fmt.Fprintf(out, "✗ %s: %s — %s\n", c.Check, c.Detail, c.Fix)
					}
				}
			}
			if !doctor.OK(checks) {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, `print the checks as a JSON array of {"check", "ok", "detail", "fix"}`)
	cmd.Flags().DurationVar(&timeout, "timeout", doctor.DefaultTimeout, "bound of each check")
	return cmd
}
