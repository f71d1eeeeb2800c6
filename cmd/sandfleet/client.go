package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/fleet"
)

// call GETs an API path and decodes the envelope's data into out.
func (g *globals) call(ctx context.Context, path string, out any) error {
	return g.do(ctx, http.MethodGet, path, "", nil, out)
}

// do sends a request to the daemon and decodes the envelope's data into out
// (a *json.RawMessage takes it as it is).
func (g *globals) do(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	server, err := g.target()
	if err != nil {
		return err
	}
	if _, err := url.Parse(server); err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	u := strings.TrimRight(server, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if tok := g.apiToken(); tok != "" {
		req.Header.Set("Authorization", "Token "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("daemon at %s: %w", server, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	var env struct {
		Error      any             `json:"error"`
		ErrorValue string          `json:"error_value"`
		Data       json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return fmt.Errorf("daemon answered %s with non-JSON", resp.Status)
	}
	if failed, _ := env.Error.(bool); failed || resp.StatusCode >= 400 {
		if env.ErrorValue == "" {
			env.ErrorValue = resp.Status
		}
		return fmt.Errorf("daemon: %s", env.ErrorValue)
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = env.Data
		return nil
	}
	return json.Unmarshal(env.Data, out)
}

func clientCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 90*time.Second)
}

func printJSON(w io.Writer, raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func machinesCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "machines", Short: "Read machines"}
	var asJSON bool
	var pool, state string
	list := &cobra.Command{
		Use: "list", Short: "List machines", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := clientCtx()
			defer cancel()
			q := url.Values{}
			if pool != "" {
				q.Set("pool", pool)
			}
			if state != "" {
				q.Set("state", state)
			}
			path := "/apiv2/machines/list/"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			var raw json.RawMessage
			if err := g.call(ctx, path, &raw); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var ms []api.Machine
			if err := json.Unmarshal(raw, &ms); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LABEL\tPOOL\tSTATE\tIP\tPLATFORM\tARCH\tTAGS")
			for _, m := range ms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Label, m.Pool, m.State, m.IP, m.Platform, m.Arch, strings.Join(m.Tags, ","))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print the API's data as JSON")
	list.Flags().StringVar(&pool, "pool", "", "only this pool")
	list.Flags().StringVar(&state, "state", "", "only this state")
	show := &cobra.Command{
		Use: "show LABEL", Short: "Show one machine", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := clientCtx()
			defer cancel()
			var raw json.RawMessage
			if err := g.call(ctx, "/apiv2/machines/view/"+url.PathEscape(args[0])+"/", &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	}
	cmd.AddCommand(list, show)
	return cmd
}

func poolsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pools", Short: "Read pools"}
	var asJSON bool
	list := &cobra.Command{
		Use: "list", Short: "List pools with desired and actual size and drift", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := clientCtx()
			defer cancel()
			var raw json.RawMessage
			if err := g.call(ctx, "/apiv2/pools/list/", &raw); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var ps []fleet.PoolStatus
			if err := json.Unmarshal(raw, &ps); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "POOL\tPROVIDER\tPLATFORM\tDESIRED\tACTUAL\tREADY\tLEASED\tDRIFT\tNOTE")
			for _, p := range ps {
				note := p.LimitedBy
				if p.Throttled {
					note = p.Reason
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", p.Name, p.Provider, p.Platform, p.Desired, p.Actual,
					p.Machines["ready"], p.Machines["leased"], p.Drift, note)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print the API's data as JSON")
	cmd.AddCommand(list)
	return cmd
}

func checkCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Compare database and providers now; exit 0 consistent, 1 drift, 2 cannot tell",
		Long: `Ask the daemon to compare the database with a fresh read of every provider.

Exit status:
  0  consistent: every pool read, no drift
  1  drift: every pool read, and some disagree with the database
  2  cannot tell: a pool's provider could not be read (throttled, down), or
     the check itself failed (daemon unreachable, an error answer)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := clientCtx()
			defer cancel()
			var raw json.RawMessage
			if err := g.call(ctx, "/apiv2/fleet/check/", &raw); err != nil {
				return &exitError{code: 2, err: err}
			}
			var rep fleet.Report
			if err := json.Unmarshal(raw, &rep); err != nil {
				return &exitError{code: 2, err: err}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if err := printJSON(out, raw); err != nil {
					return &exitError{code: 2, err: err}
				}
			} else {
				for _, p := range rep.Pools {
					switch {
					case p.Unknown:
						fmt.Fprintf(out, "%s: unknown: %s\n", p.Name, p.Reason)
					case p.Consistent():
						fmt.Fprintf(out, "%s: consistent (%d machines, %d instances)\n", p.Name, p.DBMachines, p.ProviderInstances)
					default:
						fmt.Fprintf(out, "%s: DRIFT: missing in db %v, missing in provider %v, mismatched %d\n",
							p.Name, p.MissingInDB, p.MissingInProvider, len(p.Mismatched))
						for _, m := range p.Mismatched {
							fmt.Fprintf(out, "  %s %s: db %q, provider %q\n", m.Label, m.Field, m.DB, m.Provider)
						}
					}
				}
			}
			// A pool that could not be read may hide drift or hide none: that
			// is not an answer, whatever the other pools say.
			var unknown []string
			for _, p := range rep.Pools {
				if p.Unknown {
					unknown = append(unknown, p.Name)
				}
			}
			switch {
			case len(unknown) > 0:
				return &exitError{code: 2, err: fmt.Errorf("cannot tell: pools not read: %s", strings.Join(unknown, ", "))}
			case !rep.Consistent:
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's data as JSON")
	return cmd
}
