package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandfleet/sandfleet/internal/auth"
)

func tokenCmd(g *globals) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke API tokens (kept hashed in auth.tokens_file)",
		Long: `API tokens, kept in auth.tokens_file as hashes: one line a token,
NAME sha256:HEX created=TIME. A running daemon reads the file again when it
changes, so a created token works, and a revoked one stops working, at once.
Clients send a token as the header: Authorization: Token <token>.`,
	}
	cmd.PersistentFlags().StringVar(&file, "tokens-file", "", "tokens file (default: auth.tokens_file of the configuration in use)")
	// path is --tokens-file, else auth.tokens_file of --config (or of
	// ./sandfleet.yaml): the file the daemon reads.
	path := func() (string, error) {
		p := file
		if p == "" {
			cfg, err := g.load()
			if err != nil {
				return "", err
			}
			p = cfg.Auth.TokensFile
		}
		if p == "" {
			return "", errors.New("no tokens file: pass --tokens-file FILE, or set auth.tokens_file in the configuration (--config)")
		}
		// Shown absolute: a relative auth.tokens_file is relative to the
		// working directory, which may not be the daemon's.
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		return p, nil
	}

	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Make a token; it is printed once, on the last line",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path()
			if err != nil {
				return err
			}
			key, err := auth.Create(p, args[0], time.Now())
			if err != nil {
				return err
			}
			// The key alone on the last line, so that `| tail -1` gives it.
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "token %q created in %s (only its hash is kept there).\n", args[0], p)
			fmt.Fprintln(out, "It is shown this once. Clients send it as the header: Authorization: Token <token>")
			fmt.Fprintln(out, key)
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens: names and creation times",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := path()
			if err != nil {
				return err
			}
			tokens, err := auth.List(p)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCREATED")
			for _, t := range tokens {
				created := "-"
				if !t.Created.IsZero() {
					created = t.Created.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\n", t.Name, created)
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Remove a token; a running daemon refuses it at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := path()
			if err != nil {
				return err
			}
			left, err := auth.Revoke(p, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "token %q revoked in %s (%d left)\n", args[0], p, left)
			if left == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "No token is left: a running daemon refuses every API request until one is created, and serve will not start.")
			}
			return nil
		},
	}
	cmd.AddCommand(create, list, revoke)
	return cmd
}
