package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/store"
)

// Task is a task as CAPE's apiv2 shows it (its to_dict: every column, the
// datetimes as "%Y-%m-%d %H:%M:%S", tags as a list, then guest, errors and
// sample), plus sandfleet's attempt and error.
type Task struct {
	ID                   int64    `json:"id"`
	Target               string   `json:"target"`
	Category             string   `json:"category"`
	Cape                 *string  `json:"cape"`
	Timeout              int      `json:"timeout"`
	Priority             int      `json:"priority"`
	Custom               *string  `json:"custom"`
	Machine              *string  `json:"machine"`
	Package              *string  `json:"package"`
	Route                *string  `json:"route"`
	TagsTasks            *string  `json:"tags_tasks"`
	Options              *string  `json:"options"`
	Platform             *string  `json:"platform"`
	Memory               bool     `json:"memory"`
	EnforceTimeout       bool     `json:"enforce_timeout"`
	Clock                *string  `json:"clock"`
	AddedOn              *string  `json:"added_on"`
	StartedOn            *string  `json:"started_on"`
	CompletedOn          *string  `json:"completed_on"`
	Status               string   `json:"status"`
	DroppedFiles         *int     `json:"dropped_files"`
	RunningProcesses     *int     `json:"running_processes"`
	APICalls             *int     `json:"api_calls"`
	Domains              *int     `json:"domains"`
	SignaturesTotal      *int     `json:"signatures_total"`
	SignaturesAlert      *int     `json:"signatures_alert"`
	FilesWritten         *int     `json:"files_written"`
	RegistryKeysModified *int     `json:"registry_keys_modified"`
	CrashIssues          *int     `json:"crash_issues"`
	AntiIssues           *int     `json:"anti_issues"`
	AnalysisStartedOn    *string  `json:"analysis_started_on"`
	AnalysisFinishedOn   *string  `json:"analysis_finished_on"`
	ProcessingStartedOn  *string  `json:"processing_started_on"`
	ProcessingFinishedOn *string  `json:"processing_finished_on"`
	SignaturesStartedOn  *string  `json:"signatures_started_on"`
	SignaturesFinishedOn *string  `json:"signatures_finished_on"`
	ReportingStartedOn   *string  `json:"reporting_started_on"`
	ReportingFinishedOn  *string  `json:"reporting_finished_on"`
	TimedOut             bool     `json:"timedout"`
	SampleID             *int64   `json:"sample_id"`
	MachineID            *int64   `json:"machine_id"`
	TLP                  *string  `json:"tlp"`
	UserID               *int     `json:"user_id"`
	Tags                 []string `json:"tags"`
	Guest                any      `json:"guest"`
	Errors               []string `json:"errors"`
	Sample               any      `json:"sample"`
	// sandfleet's own.
	Attempt int     `json:"attempt"`
	Error   *string `json:"error"`
	// Hook is the ended analysis's hooks.on_complete run; null without one.
	Hook *Hook `json:"hook"`
	// Reason, in tasks/view/ only: why a pending task still waits, or why
	// a failed one failed.
	Reason *string `json:"reason,omitempty"`
}

// Hook is how a task's hooks.on_complete run stands: pending, ok, failed or
// timeout, with its exit code and the end of its output once it ended.
type Hook struct {
	Status   string  `json:"status"`
	ExitCode int     `json:"exit_code"`
	Output   string  `json:"output"`
	EndedOn  *string `json:"ended_on"`
}

// Guest is CAPE's record of the guest an analysis ran in (its guests
// table), derived here from the task and the machine it ran on.
type Guest struct {
	ID         int64   `json:"id"`
	Status     string  `json:"status"`
	Name       string  `json:"name"`
	Label      string  `json:"label"`
	Platform   string  `json:"platform"`
	Manager    string  `json:"manager"`
	StartedOn  *string `json:"started_on"`
	ShutdownOn *string `json:"shutdown_on"`
	TaskID     int64   `json:"task_id"`
}

// managers are CAPE's names of the machinery behind each provider.
var managers = map[string]string{"azure": "Azure", "static": "Physical", "libvirt": "KVM"}

// Sample is a sample as CAPE shows it.
type Sample struct {
	ID        int64   `json:"id"`
	FileSize  int64   `json:"file_size"`
	FileType  string  `json:"file_type"`
	MD5       string  `json:"md5"`
	CRC32     string  `json:"crc32"`
	SHA1      string  `json:"sha1"`
	SHA256    string  `json:"sha256"`
	SHA512    string  `json:"sha512"`
	SSDeep    *string `json:"ssdeep"`
	SourceURL *string `json:"source_url"`
}

// taskDetails are what a task's CAPE shape needs besides its row.
type taskDetails struct {
	sample   *store.Sample
	machine  *store.Machine // the machine it ran on, if it still exists
	provider string         // that machine's pool's provider
}

// details reads, for a few tasks, their samples, machines and the machines'
// providers: each distinct one once.
func (s *Server) details(ctx context.Context, b *backend, ts []store.Task) []taskDetails {
	out := make([]taskDetails, len(ts))
	samples := map[int64]*store.Sample{}
	machines := map[string]*store.Machine{}
	providers := map[string]string{}
	for i, t := range ts {
		if t.SampleID != 0 {
			smp, seen := samples[t.SampleID]
			if !seen {
				if got, err := b.store.GetSample(ctx, t.SampleID); err == nil {
					smp = &got
				}
				samples[t.SampleID] = smp
			}
			out[i].sample = smp
		}
		if t.RanOn == "" {
			continue
		}
		m, seen := machines[t.RanOn]
		if !seen {
			if got, err := b.store.GetMachine(ctx, t.RanOn); err == nil {
				m = &got
			}
			machines[t.RanOn] = m
		}
		out[i].machine = m
		if m == nil {
			continue
		}
		prov, seen := providers[m.Pool]
		if !seen {
			if p, err := b.store.GetPool(ctx, m.Pool); err == nil {
				prov = p.Provider
			}
			providers[m.Pool] = prov
		}
		out[i].provider = prov
	}
	return out
}

// guestOf is the guest record of a task that ran.
func guestOf(t store.Task, d taskDetails) any {
	if t.RanOn == "" || t.StartedOn.IsZero() {
		return obj{}
	}
	status := map[store.TaskStatus]string{store.TaskRunning: "running", store.TaskCompleted: "complete",
		store.TaskReported: "complete"}[t.Status]
	if status == "" {
		status = "failed"
	}
	platform := t.Platform
	if d.machine != nil {
		platform = d.machine.Platform
	}
	return Guest{ID: t.ID, Status: status, Name: t.RanOn, Label: t.RanOn, Platform: platform,
		Manager: managers[d.provider], StartedOn: capeTime(t.StartedOn), ShutdownOn: capeTime(t.CompletedOn), TaskID: t.ID}
}

// TaskJSON converts a task and its details to CAPE's shape. The machine is
// the one it ran on, once it ran, else the one it asked for.
func TaskJSON(t store.Task, d taskDetails) Task {
	smp := d.sample
	tags := t.Tags
	if tags == nil {
		tags = []string{}
	}
	clock := t.Clock
	if clock.IsZero() {
		clock = t.AddedOn
	}
	machine := t.Machine
	if t.RanOn != "" {
		machine = t.RanOn
	}
	out := Task{
		ID: t.ID, Target: t.Target, Category: t.Category, Timeout: t.Timeout, Priority: t.Priority,
		Custom: nullable(t.Custom), Machine: nullable(machine), Package: nullable(t.Package), Route: nullable(t.Route),
		Options: nullable(t.Options), Platform: nullable(t.Platform), Memory: t.Memory, EnforceTimeout: t.EnforceTimeout,
		Clock: capeTime(clock), AddedOn: capeTime(t.AddedOn), StartedOn: capeTime(t.StartedOn),
		CompletedOn: capeTime(t.CompletedOn), Status: string(t.Status),
		AnalysisStartedOn: capeTime(t.StartedOn), AnalysisFinishedOn: capeTime(t.CompletedOn),
		Tags: tags, Guest: map[string]any{}, Errors: []string{}, Sample: map[string]any{},
		Attempt: t.Attempt, Error: nullable(t.Error),
	}
	if t.Error != "" {
		out.Errors = []string{t.Error}
	}
	if h := t.Hook; h.Status != store.HookNone {
		out.Hook = &Hook{Status: string(h.Status), ExitCode: h.Exit, Output: h.Output, EndedOn: capeTime(h.EndedOn)}
	}
	if t.SampleID != 0 {
		id := t.SampleID
		out.SampleID = &id
	}
	if d.machine != nil {
		id := d.machine.ID
		out.MachineID = &id
	}
	out.Guest = guestOf(t, d)
	if smp != nil {
		out.Sample = Sample{ID: smp.ID, FileSize: smp.FileSize, FileType: smp.FileType, MD5: smp.MD5, CRC32: smp.CRC32,
			SHA1: smp.SHA1, SHA256: smp.SHA256, SHA512: smp.SHA512}
	}
	return out
}

// taskID reads the {id} path value.
func taskID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 1 || !allDigits(raw) {
		fail(w, http.StatusBadRequest, fmt.Sprintf("task id: %q is not a task id", raw))
		return 0, false
	}
	return id, true
}

// task reads the task the path names; on failure it has answered.
func (s *Server) task(w http.ResponseWriter, r *http.Request, b *backend) (store.Task, bool) {
	id, ok := taskID(w, r)
	if !ok {
		return store.Task{}, false
	}
	t, err := b.store.GetTask(r.Context(), id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		fail(w, http.StatusNotFound, "Task not found in database")
		return t, false
	case err != nil:
		s.internal(w, r, err)
		return t, false
	}
	return t, true
}

// GET tasks/view/<id>/: the task, its target cut to the file name for files.
func (s *Server) tasksView(w http.ResponseWriter, r *http.Request, b *backend) {
	t, ok := s.task(w, r, b)
	if !ok {
		return
	}
	out := TaskJSON(t, s.details(r.Context(), b, []store.Task{t})[0])
	if t.Category != "url" {
		out.Target = filepath.Base(strings.ReplaceAll(out.Target, `\`, "/"))
	}
	switch t.Status {
	case store.TaskPending:
		why, err := b.sched.Why(r.Context(), []store.Task{t})
		if err != nil {
			s.internal(w, r, err)
			return
		}
		out.Reason = nullable(why[t.ID])
	case store.TaskFailedAnalysis:
		out.Reason = nullable(t.Error)
	}
	reply(w, out)
}

// GET tasks/status/<id>/.
func (s *Server) tasksStatus(w http.ResponseWriter, r *http.Request, b *backend) {
	id, ok := taskID(w, r)
	if !ok {
		return
	}
	t, err := b.store.GetTask(r.Context(), id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		fail(w, http.StatusNotFound, "Task does not exist")
	case err != nil:
		s.internal(w, r, err)
	default:
		reply(w, t.Status)
	}
}

// CAPE's tasks/list/ limits.
const (
	listDefaultLimit = 10
	listMaxLimit     = 50
)

// GET tasks/list/[limit/[offset/[window/]]]: the newest tasks first, with
// CAPE's queries: status (a|b), completed_after (epoch seconds), ids (only
// the ids, as dist.py asks), option (a substring), category.
func (s *Server) tasksList(w http.ResponseWriter, r *http.Request, b *backend) {
	f := store.TaskFilter{Newest: true, Limit: listDefaultLimit}
	var resp obj
	num := func(key string) (int, bool) {
		raw := r.PathValue(key)
		if raw == "" {
			return 0, true
		}
		n, err := strconv.Atoi(raw)
		if err != nil || n < 0 || !allDigits(raw) {
			fail(w, http.StatusBadRequest, fmt.Sprintf("%s: %q is not a number >= 0", key, raw))
			return 0, false
		}
		return n, true
	}
	limit, ok := num("limit")
	if !ok {
		return
	}
	offset, ok := num("offset")
	if !ok {
		return
	}
	window, ok := num("window")
	if !ok {
		return
	}
	if limit > 0 {
		f.Limit = limit
	}
	if f.Limit > listMaxLimit {
		resp = append(resp, field{"warning", "Task limit exceeds API configured limit."})
		f.Limit = listMaxLimit
	}
	f.Offset = offset
	q := r.URL.Query()
	if raw := q.Get("status"); raw != "" {
		for _, st := range strings.Split(raw, "|") {
			if !store.TaskStatus(st).Valid() {
				fail(w, http.StatusBadRequest, fmt.Sprintf("status: %q is not a task status", st))
				return
			}
			f.Statuses = append(f.Statuses, store.TaskStatus(st))
		}
	}
	if raw := q.Get("completed_after"); raw != "" {
		sec, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			fail(w, http.StatusBadRequest, fmt.Sprintf("completed_after: %q is not epoch seconds", raw))
			return
		}
		f.CompletedAfter = time.Unix(sec, 0)
	} else if window > 0 {
		f.CompletedAfter = time.Now().Add(-time.Duration(window) * time.Minute)
	}
	if c := q.Get("category"); c != "" {
		f.Category = c
	}
	f.OptionLike = q.Get("option")
	ts, err := b.store.ListTasks(r.Context(), f)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	data := []any{}
	buf := 0
	if q.Get("ids") != "" {
		for _, t := range ts {
			data = append(data, obj{{"id", t.ID}})
		}
	} else {
		ds := s.details(r.Context(), b, ts)
		for i, t := range ts {
			buf++
			data = append(data, TaskJSON(t, ds[i]))
		}
	}
	resp = append(resp, field{"data", data},
		field{"config", fmt.Sprintf("Limit: %d, Offset: %s", f.Limit, pyOptional(r.PathValue("offset")))},
		field{"buf", buf})
	write(w, http.StatusOK, resp)
}

// pyOptional renders an optional path number as CAPE's format string does:
// None when absent.
func pyOptional(raw string) string {
	if raw == "" {
		return "None"
	}
	return raw
}

// GET tasks/reschedule/<id>/: a new task with the same request, as CAPE
// does; the original is kept.
func (s *Server) tasksReschedule(w http.ResponseWriter, r *http.Request, b *backend) {
	t, ok := s.task(w, r, b)
	if !ok {
		return
	}
	if t.Status == store.TaskPending || t.Status == store.TaskRunning {
		fail(w, http.StatusConflict, fmt.Sprintf("task %d is %s: only a finished task can be rescheduled", t.ID, t.Status))
		return
	}
	again := store.Task{Target: t.Target, Category: t.Category, SampleID: t.SampleID, FileName: t.FileName,
		Timeout: t.Timeout, Priority: t.Priority, Custom: t.Custom, Machine: t.Machine, Package: t.Package,
		Route: t.Route, Options: t.Options, Platform: t.Platform, Memory: t.Memory, EnforceTimeout: t.EnforceTimeout,
		Clock: t.Clock, Tags: t.Tags}
	ts, err := b.store.CreateTasks(r.Context(), []store.Task{again}, fmt.Sprintf("rescheduled from task %d", t.ID))
	if err != nil {
		s.internal(w, r, err)
		return
	}
	b.sched.Trigger()
	reply(w, obj{{"new_task_id", ts[0].ID}, {"message", fmt.Sprintf("Task ID %d has been rescheduled", t.ID)}})
}

// GET tasks/delete/<ids>/: tasks (1, 1,2,3 or 1-4 as CAPE takes them),
// their history and their analysis folders. A running task is not deleted:
// it is named among those that failed to go.
func (s *Server) tasksDelete(w http.ResponseWriter, r *http.Request, b *backend) {
	ids, err := parseTaskIDs(r.PathValue("id"))
	if err != nil {
		fail(w, http.StatusBadRequest, "task id: "+err.Error())
		return
	}
	var deleted, failed []string
	for _, id := range ids {
		err := b.store.DeleteTask(r.Context(), id)
		switch {
		case errors.Is(err, store.ErrStale), errors.Is(err, store.ErrNotFound):
			failed = append(failed, strconv.FormatInt(id, 10))
			continue
		case err != nil:
			s.internal(w, r, err)
			return
		}
		deleted = append(deleted, strconv.FormatInt(id, 10))
		if s.dataDir != "" {
			if err := os.RemoveAll(filepath.Join(s.dataDir, "analyses", strconv.FormatInt(id, 10))); err != nil {
				s.log.Warn("remove analysis folder", "task_id", id, "err", err)
			}
		}
	}
	resp := obj{{"error", []string{}}}
	if len(deleted) > 0 {
		resp = append(resp, field{"data", fmt.Sprintf("Task(s) ID(s) %s has been deleted", strings.Join(deleted, ","))})
	}
	if len(failed) > 0 {
		resp[0].value = true
		resp = append(resp, field{"failed", fmt.Sprintf("Task(s) ID(s) %s failed to remove (running, or unknown)", strings.Join(failed, ","))})
		code := http.StatusConflict
		if len(deleted) == 0 && len(ids) == 1 {
			if _, err := b.store.GetTask(r.Context(), ids[0]); errors.Is(err, store.ErrNotFound) {
				code = http.StatusNotFound
			}
		}
		if len(deleted) > 0 {
			code = http.StatusOK
		}
		write(w, code, resp)
		return
	}
	write(w, http.StatusOK, resp)
}

// maxDeleteRange bounds one delete: a range is not a way to loop forever.
const maxDeleteRange = 10000

// parseTaskIDs reads CAPE's forms of task ids: 7, 1,2,3 or 1-4.
func parseTaskIDs(raw string) ([]int64, error) {
	one := func(tok string) (int64, error) {
		id, err := strconv.ParseInt(tok, 10, 64)
		if err != nil || id < 1 || id > 2147483647 || !allDigits(tok) {
			return 0, fmt.Errorf("%q is not a task id", tok)
		}
		return id, nil
	}
	if lo, hi, ok := strings.Cut(raw, "-"); ok {
		a, err := one(lo)
		if err != nil {
			return nil, err
		}
		z, err := one(hi)
		if err != nil {
			return nil, err
		}
		if a > z {
			return nil, fmt.Errorf("%q: the start is after the end", raw)
		}
		if z-a >= maxDeleteRange {
			return nil, fmt.Errorf("%q: more than %d tasks", raw, maxDeleteRange)
		}
		var ids []int64
		for id := a; id <= z; id++ {
			ids = append(ids, id)
		}
		return ids, nil
	}
	var ids []int64
	for _, tok := range strings.Split(raw, ",") {
		id, err := one(tok)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if len(ids) > maxDeleteRange {
		return nil, fmt.Errorf("more than %d tasks", maxDeleteRange)
	}
	return ids, nil
}

// allDigits reports whether s is ASCII digits only, as CAPE's routes (\d+)
// take an id: no sign, no spaces.
func allDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}
