package api

import (
	"cmp"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/web"
)

// The dashboard's reply is bounded whatever the size of the history: the
// page polls it every second or two, so it must cost a few short queries,
// never a scan of every task.
const (
	dashboardTasks = 50  // latest tasks shown
	dashboardOps   = 100 // unfinished operations shown
	dashboardHours = 12  // hours of analyses per hour
)

// Dashboard is everything the operator's dashboard shows, in one reply, so
// that the page is one consistent picture per poll. Times are RFC 3339 in
// UTC: the page computes ages from them in the browser.
type Dashboard struct {
	Now       string             `json:"now"`
	Version   string             `json:"version"`
	Ready     bool               `json:"ready"`  // the first reconcile is done
	Paused    bool               `json:"paused"` // dispatch paused (SIGUSR1)
	Pools     []fleet.PoolStatus `json:"pools"`
	Throttled []DashThrottle     `json:"throttled"`
	Machines  []DashMachine      `json:"machines"`
	// Queue counts tasks by status: pending, running, completed and
	// failed_analysis always, CAPE's other statuses when they have any.
	Queue      []DashCount     `json:"queue"`
	Tasks      []DashTask      `json:"tasks"`
	Operations []DashOperation `json:"operations"`
	Hourly     []DashHour      `json:"hourly"`
}

// DashThrottle is a pool whose provider asked sandfleet to wait.
type DashThrottle struct {
	Pool   string `json:"pool"`
	Reason string `json:"reason"`
}

// DashMachine is a live machine (gone ones are left out: they only pile up).
type DashMachine struct {
	Label            string  `json:"label"`
	Pool             string  `json:"pool"`
	State            string  `json:"state"`
	StateChangedOn   *string `json:"state_changed_on"`
	TaskID           *int64  `json:"task_id"`
	QuarantineReason *string `json:"quarantine_reason"`
	IP               string  `json:"ip"`
	InstanceID       string  `json:"instance_id"`
	Failures         int     `json:"failures"`
	// Reason says what a machine that is not ready waits on.
	Reason *string `json:"reason"`
}

// DashCount is the number of tasks in one status.
type DashCount struct {
	Status string `json:"status"`
	Count  int    `json:"count"`
}

// DashTask is a task as the dashboard lists it.
type DashTask struct {
	ID          int64   `json:"id"`
	Target      string  `json:"target"`
	Category    string  `json:"category"`
	Status      string  `json:"status"`
	Machine     *string `json:"machine"`
	Attempt     int     `json:"attempt"`
	Priority    int     `json:"priority"`
	Error       *string `json:"error"`
	AddedOn     *string `json:"added_on"`
	StartedOn   *string `json:"started_on"`
	CompletedOn *string `json:"completed_on"`
	// Reason says why a pending task still waits.
	Reason *string `json:"reason"`
}

// DashOperation is an unfinished cloud operation.
type DashOperation struct {
	ID          int64    `json:"id"`
	Pool        string   `json:"pool"`
	Kind        string   `json:"kind"`
	State       string   `json:"state"`
	InstanceIDs []string `json:"instance_ids"`
	Capacity    int      `json:"capacity,omitempty"`
	Attempt     int      `json:"attempt"`
	Resumable   bool     `json:"resumable"`
	CreatedAt   *string  `json:"created_at"`
	Deadline    *string  `json:"deadline"`
}

// DashHour is the analyses that ended in one hour.
type DashHour struct {
	Hour      string `json:"hour"`
	Completed int    `json:"completed"`
	Failed    int    `json:"failed"`
}

// registerDashboard serves the page and its assets without auth — they hold
// no data, and the page must load to ask for a token — and its data, as
// every sandfleet route, with it.
func (s *Server) registerDashboard() {
	page := web.Handler()
	s.route(http.MethodGet, "/{$}", page.ServeHTTP)
	s.route(http.MethodGet, "/static/", page.ServeHTTP)
	s.handle(http.MethodGet, "/apiv2/dashboard/", s.dashboard)
}

func rfc3339(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339)
	return &s
}

// GET dashboard/: pools, machines, the queue, the latest tasks, operations
// in flight, throttling and the analyses of the last hours.
func (s *Server) dashboard(w http.ResponseWriter, r *http.Request, b *backend) {
	ctx := r.Context()
	now := time.Now()
	out := Dashboard{Now: *rfc3339(now), Version: Version, Paused: b.sched.Paused(),
		Throttled: []DashThrottle{}, Machines: []DashMachine{}, Queue: []DashCount{}, Tasks: []DashTask{},
		Operations: []DashOperation{}, Hourly: []DashHour{}}
	select {
	case <-b.fleet.Ready():
		out.Ready = true
	default:
	}

	pools, err := b.fleet.Status(ctx)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	out.Pools = pools
	for _, p := range pools {
		if p.Throttled {
			out.Throttled = append(out.Throttled, DashThrottle{Pool: p.Name, Reason: p.Reason})
		}
	}

	ops, err := b.store.ListOperations(ctx, store.OperationFilter{Unfinished: true, Limit: dashboardOps})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	ms, err := b.store.ListMachines(ctx, store.MachineFilter{})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	for _, m := range ms {
		if m.State == store.Gone {
			continue
		}
		dm := DashMachine{Label: m.Label, Pool: m.Pool, State: string(m.State), StateChangedOn: rfc3339(m.StateChangedOn),
			QuarantineReason: nullable(m.QuarantineReason), IP: m.IP, InstanceID: m.InstanceID, Failures: m.Failures,
			Reason: nullable(b.fleet.Why(m, ops, ""))}
		if m.TaskID != 0 {
			id := m.TaskID
			dm.TaskID = &id
		}
		out.Machines = append(out.Machines, dm)
	}
	slices.SortFunc(out.Machines, func(a, b DashMachine) int {
		return cmp.Or(cmp.Compare(a.Pool, b.Pool), naturalCompare(a.Label, b.Label))
	})

	counts, err := b.store.CountTasks(ctx)
	if err != nil {
		s.internal(w, r, err)
		return
	}
	for _, st := range []store.TaskStatus{store.TaskPending, store.TaskRunning, store.TaskCompleted, store.TaskFailedAnalysis} {
		out.Queue = append(out.Queue, DashCount{Status: string(st), Count: counts[st]})
		delete(counts, st)
	}
	for _, st := range store.TaskStatuses {
		if counts[st] > 0 {
			out.Queue = append(out.Queue, DashCount{Status: string(st), Count: counts[st]})
		}
	}

	if out.Tasks, err = s.dashboardTasks(r, b); err != nil {
		s.internal(w, r, err)
		return
	}

	for _, op := range ops {
		ids := op.InstanceIDs
		if ids == nil {
			ids = []string{}
		}
		out.Operations = append(out.Operations, DashOperation{ID: op.ID, Pool: op.Pool, Kind: string(op.Kind),
			State: string(op.State), InstanceIDs: ids, Capacity: op.Capacity, Attempt: op.Attempt,
			Resumable: op.ResumeToken != "", CreatedAt: rfc3339(op.CreatedAt), Deadline: rfc3339(op.Deadline)})
	}

	if out.Hourly, err = s.dashboardHours(r, b, now); err != nil {
		s.internal(w, r, err)
		return
	}
	reply(w, out)
}

// dashboardTasks lists the running tasks first — an operator must see what
// holds the machines even behind a deep queue — then the newest others
// (pending, then the latest to end), at most dashboardTasks in all, newest
// id first.
func (s *Server) dashboardTasks(r *http.Request, b *backend) ([]DashTask, error) {
	running, err := b.store.ListTasks(r.Context(), store.TaskFilter{Statuses: []store.TaskStatus{store.TaskRunning},
		Newest: true, Limit: dashboardTasks})
	if err != nil {
		return nil, err
	}
	newest, err := b.store.ListTasks(r.Context(), store.TaskFilter{Newest: true, Limit: dashboardTasks})
	if err != nil {
		return nil, err
	}
	seen := map[int64]bool{}
	var ts []store.Task
	for _, t := range slices.Concat(running, newest) {
		if !seen[t.ID] && len(ts) < dashboardTasks {
			seen[t.ID] = true
			ts = append(ts, t)
		}
	}
	slices.SortFunc(ts, func(a, b store.Task) int { return cmp.Compare(b.ID, a.ID) })
	why, err := b.sched.Why(r.Context(), ts)
	if err != nil {
		return nil, err
	}
	out := make([]DashTask, 0, len(ts))
	for _, t := range ts {
		target := t.Target
		if t.Category != "url" {
			// The name it was uploaded under, as tasks/view/ shows it.
			target = filepath.Base(strings.ReplaceAll(target, `\`, "/"))
		}
		machine := t.Machine
		if t.RanOn != "" {
			machine = t.RanOn
		}
		out = append(out, DashTask{ID: t.ID, Target: target, Category: t.Category, Status: string(t.Status),
			Machine: nullable(machine), Attempt: t.Attempt, Priority: t.Priority, Error: nullable(t.Error),
			AddedOn: rfc3339(t.AddedOn), StartedOn: rfc3339(t.StartedOn), CompletedOn: rfc3339(t.CompletedOn),
			Reason: nullable(why[t.ID])})
	}
	return out, nil
}

// dashboardHours counts the analyses that ended in each of the last
// dashboardHours hours (the current one included), oldest first. Every
// hour is there, zero or not, so the page draws a steady axis.
func (s *Server) dashboardHours(r *http.Request, b *backend, now time.Time) ([]DashHour, error) {
	first := now.UTC().Truncate(time.Hour).Add(-(dashboardHours - 1) * time.Hour)
	counts, err := b.store.CountEndedByHour(r.Context(), first)
	if err != nil {
		return nil, err
	}
	out := make([]DashHour, dashboardHours)
	for i := range out {
		out[i].Hour = first.Add(time.Duration(i) * time.Hour).Format(time.RFC3339)
	}
	for _, c := range counts {
		i := int(c.Hour.Sub(first) / time.Hour)
		if i < 0 || i >= len(out) {
			continue
		}
		switch c.Status {
		case store.TaskCompleted, store.TaskReported, store.TaskDistributedCompleted:
			// Reported is completed and then processed by CAPE.
			out[i].Completed += c.Count
		case store.TaskFailedAnalysis, store.TaskFailedProcessing, store.TaskFailedReporting:
			out[i].Failed += c.Count
		}
	}
	return out, nil
}

// naturalCompare orders labels as people count: win10x64_2 before
// win10x64_10. Labels equal but for leading zeros are ordered as text.
func naturalCompare(a, b string) int {
	return cmp.Or(natural(a, b), strings.Compare(a, b))
}

func natural(a, b string) int {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Or(cmp.Compare(len(na), len(nb)), strings.Compare(na, nb)); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

// digits is the length of s's leading run of ASCII digits.
func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}
