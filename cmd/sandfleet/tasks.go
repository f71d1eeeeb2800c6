package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sandfleet/sandfleet/internal/api"
)

// taskForm are the submission flags, as CAPE's form fields.
type taskForm struct {
	tags, platform, machine, pkg, options string
	priority, timeout                     int
}

func (f taskForm) fields() map[string]string {
	out := map[string]string{}
	for k, v := range map[string]string{"tags": f.tags, "platform": f.platform, "machine": f.machine,
		"package": f.pkg, "options": f.options} {
		if v != "" {
			out[k] = v
		}
	}
	if f.priority != 0 {
		out["priority"] = strconv.Itoa(f.priority)
	}
	if f.timeout != 0 {
		out["timeout"] = strconv.Itoa(f.timeout)
	}
	return out
}

type created struct {
	TaskIDs []int64 `json:"task_ids"`
	Message string  `json:"message"`
}

func submitCmd(g *globals) *cobra.Command {
	var (
		form  taskForm
		urlTo string
		wait  bool
	)
	cmd := &cobra.Command{
		Use:   "submit FILE… | submit --url URL",
		Short: "Queue tasks through the API (tasks/create/file/, tasks/create/url/)",
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case urlTo == "" && len(args) == 0:
				return errors.New("submit: name a FILE, or --url URL")
			case urlTo != "" && len(args) > 0:
				return errors.New("submit: files or --url, not both")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			out := cmd.OutOrStdout()
			var ids []int64
			if urlTo != "" {
				vals := url.Values{"url": {urlTo}}
				for k, v := range form.fields() {
					vals.Set(k, v)
				}
				var c created
				if err := g.do(ctx, http.MethodPost, "/apiv2/tasks/create/url/", "application/x-www-form-urlencoded",
					strings.NewReader(vals.Encode()), &c); err != nil {
					return err
				}
				ids = c.TaskIDs
				fmt.Fprintln(out, c.Message)
			}
			for _, path := range args {
				c, err := submitFile(ctx, g, path, form.fields())
				if err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
				ids = append(ids, c.TaskIDs...)
				fmt.Fprintf(out, "%s: %s\n", path, c.Message)
			}
			if !wait {
				return nil
			}
			return waitTasks(ctx, g, out, ids)
		},
	}
	f := cmd.Flags()
	f.StringVar(&urlTo, "url", "", "analyse a URL instead of files")
	f.StringVar(&form.tags, "tags", "", "machine tags the task needs, comma-separated (x86, x64, win10, …)")
	f.StringVar(&form.platform, "platform", "", "windows, linux or darwin")
	f.StringVar(&form.machine, "machine", "", "run on this machine (label), or all")
	f.StringVar(&form.pkg, "package", "", "analysis package (exe, dll, doc, …)")
	f.StringVar(&form.options, "options", "", "analysis options, k=v,…")
	f.IntVar(&form.priority, "priority", 0, "priority (1 low … 3 high; default 1)")
	f.IntVar(&form.timeout, "timeout", 0, "analysis time in seconds (default: timeouts.default)")
	f.BoolVar(&wait, "wait", false, "wait for the tasks to end, showing their progress; exit 1 if one failed")
	return cmd
}

// submitFile streams one file to tasks/create/file/ as a multipart form.
func submitFile(ctx context.Context, g *globals, path string, fields map[string]string) (created, error) {
	f, err := os.Open(path)
	if err != nil {
		return created{}, err
	}
	defer f.Close()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			for k, v := range fields {
				if err := mw.WriteField(k, v); err != nil {
					return err
				}
			}
			part, err := mw.CreateFormFile("file", filepath.Base(path))
			if err != nil {
				return err
			}
			if _, err := io.Copy(part, f); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	var c created
	err = g.do(ctx, http.MethodPost, "/apiv2/tasks/create/file/", mw.FormDataContentType(), pr, &c)
	pr.Close()
	return c, err
}

// ended reports whether a task status is an end of its analysis.
func ended(status string) bool {
	return status != "pending" && status != "running"
}

// waitTasks shows each task's progress until all ended: queued, on which
// machine, for how long, the outcome. It fails if one did not complete.
func waitTasks(ctx context.Context, g *globals, out io.Writer, ids []int64) error {
	type seen struct {
		line string
		at   time.Time
	}
	last := map[int64]seen{}
	failed := 0
	left := len(ids)
	done := map[int64]bool{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for left > 0 {
		for _, id := range ids {
			if done[id] {
				continue
			}
			var t api.Task
			if err := g.call(ctx, fmt.Sprintf("/apiv2/tasks/view/%d/", id), &t); err != nil {
				return err
			}
			line := progress(t)
			prev, ok := last[id]
			if !ok || prev.line != line || time.Since(prev.at) >= 15*time.Second {
				fmt.Fprintf(out, "task %d: %s\n", id, line)
				last[id] = seen{line, time.Now()}
			}
			if ended(t.Status) {
				done[id] = true
				left--
				if t.Status != "completed" && t.Status != "reported" {
					failed++
				}
			}
		}
		if left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	if failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d of %d tasks did not complete", failed, len(ids))}
	}
	return nil
}

// progress says where a task is, in one line.
func progress(t api.Task) string {
	since := func(s *string) string {
		if s == nil {
			return ""
		}
		at, err := time.ParseInLocation("2006-01-02 15:04:05", *s, time.UTC)
		if err != nil {
			return ""
		}
		return " for " + time.Since(at).Round(time.Second).String()
	}
	attempt := ""
	if t.Attempt > 1 {
		attempt = fmt.Sprintf(" (attempt %d)", t.Attempt)
	}
	machine := ""
	if t.Machine != nil {
		machine = *t.Machine
	}
	switch t.Status {
	case "pending":
		return "queued" + since(t.AddedOn) + attempt
	case "running":
		return "running on " + machine + since(t.StartedOn) + attempt
	}
	took := ""
	if t.StartedOn != nil && t.CompletedOn != nil {
		a, err1 := time.ParseInLocation("2006-01-02 15:04:05", *t.StartedOn, time.UTC)
		b, err2 := time.ParseInLocation("2006-01-02 15:04:05", *t.CompletedOn, time.UTC)
		if err1 == nil && err2 == nil {
			took = " after " + b.Sub(a).String()
		}
	}
	line := t.Status + took
	if machine != "" && t.StartedOn != nil {
		line += " on " + machine
	}
	if t.Error != nil {
		line += ": " + *t.Error
	}
	if h := t.Hook; h != nil {
		line += "; hook " + h.Status
		if h.Status == "failed" {
			line += fmt.Sprintf(" (exit %d)", h.ExitCode)
		}
	}
	return line + attempt
}

func tasksCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "tasks", Short: "Read tasks"}
	var (
		asJSON bool
		status string
		limit  int
	)
	list := &cobra.Command{
		Use: "list", Short: "List the newest tasks", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := clientCtx()
			defer cancel()
			path := fmt.Sprintf("/apiv2/tasks/list/%d/", limit)
			if status != "" {
				path += "?status=" + url.QueryEscape(status)
			}
			server, err := g.target()
			if err != nil {
				return err
			}
			// tasks/list/ answers without CAPE's usual envelope: read it whole.
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(server, "/")+path, nil)
			if err != nil {
				return err
			}
			if tok := g.apiToken(); tok != "" {
				req.Header.Set("Authorization", "Token "+tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("daemon at %s: %w", server, err)
			}
			defer resp.Body.Close()
			var body struct {
				Data       []api.Task `json:"data"`
				Error      any        `json:"error"`
				ErrorValue string     `json:"error_value"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				return fmt.Errorf("daemon answered %s with non-JSON", resp.Status)
			}
			if resp.StatusCode >= 400 {
				return fmt.Errorf("daemon: %s", body.ErrorValue)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(body.Data)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tCATEGORY\tTARGET\tMACHINE\tATTEMPT\tADDED\tERROR")
			for _, t := range body.Data {
				machine, added, errMsg := "", "", ""
				if t.Machine != nil {
					machine = *t.Machine
				}
				if t.AddedOn != nil {
					added = *t.AddedOn
				}
				if t.Error != nil {
					errMsg = *t.Error
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.ID, t.Status, t.Category, t.Target, machine,
					t.Attempt, added, errMsg)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print the tasks as JSON")
	list.Flags().StringVar(&status, "status", "", "only these statuses, e.g. pending|running")
	list.Flags().IntVar(&limit, "limit", 50, "how many (at most 50)")
	show := &cobra.Command{
		Use: "show ID", Short: "Show one task", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := strconv.ParseInt(args[0], 10, 64); err != nil {
				return fmt.Errorf("task id %q is not a number", args[0])
			}
			ctx, cancel := clientCtx()
			defer cancel()
			var raw json.RawMessage
			if err := g.call(ctx, "/apiv2/tasks/view/"+args[0]+"/", &raw); err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), raw)
		},
	}
	waitc := &cobra.Command{
		Use: "wait ID…", Short: "Show tasks' progress until they end; exit 1 if one did not complete", Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ids []int64
			for _, a := range args {
				id, err := strconv.ParseInt(a, 10, 64)
				if err != nil {
					return fmt.Errorf("task id %q is not a number", a)
				}
				ids = append(ids, id)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
			defer cancel()
			return waitTasks(ctx, g, cmd.OutOrStdout(), ids)
		},
	}
	cmd.AddCommand(list, show, waitc)
	return cmd
}
