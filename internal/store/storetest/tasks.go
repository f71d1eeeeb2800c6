package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
)

// The task half of the suite: the queue, the lease of a task and a machine as
// one compare-and-set, and the ways an analysis ends.

func task(target string, tags ...string) store.Task {
	return store.Task{Target: target, Category: "file", Priority: 1, Timeout: 60, Package: "exe", Tags: tags}
}

func createTasks(t *testing.T, s store.Store, ts ...store.Task) []store.Task {
	t.Helper()
	out, err := s.CreateTasks(context.Background(), ts, "submitted")
	if err != nil {
		t.Fatalf("CreateTasks: %v", err)
	}
	return out
}

func getTask(t *testing.T, s store.Store, id int64) store.Task {
	t.Helper()
	got, err := s.GetTask(context.Background(), id)
	if err != nil {
		t.Fatalf("GetTask(%d): %v", id, err)
	}
	return got
}

// leaseOne leases machine m to task tk for node, failing the test unless it lands.
func leaseOne(t *testing.T, s store.Store, tk store.Task, m store.Machine, node string) store.LeaseResult {
	t.Helper()
	res, err := s.Lease(context.Background(), []store.LeaseRequest{{TaskID: tk.ID, TaskVersion: tk.Version,
		Label: m.Label, MachineVersion: m.Version, Node: node, TTL: time.Minute}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("Lease(task %d, %s): %v %v", tk.ID, m.Label, err, res)
	}
	return res[0]
}

func testSamplesAndTasks(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	smp := store.Sample{SHA256: strings.Repeat("a", 64), SHA1: strings.Repeat("b", 40), MD5: strings.Repeat("c", 32),
		SHA512: strings.Repeat("d", 128), CRC32: "01234567", FileSize: 42, FileType: "PE32 executable"}
	first, err := s.PutSample(ctx, smp)
	if err != nil || first.ID == 0 {
		t.Fatalf("PutSample: %+v %v", first, err)
	}
	again, err := s.PutSample(ctx, smp)
	if err != nil || again.ID != first.ID {
		t.Fatalf("PutSample twice: id %d then %d (%v), want the same row", first.ID, again.ID, err)
	}
	if _, err := s.PutSample(ctx, store.Sample{SHA256: "short"}); err == nil {
		t.Error("PutSample accepted a bad sha256")
	}

	a := task("a.exe", "win10", "x64")
	a.SampleID, a.FileName, a.Options, a.Clock = first.ID, "../../a.exe", "free=yes,procmemdump=1", now()
	b := store.Task{Target: "http://example.com/", Category: "url", Priority: 3, Tags: []string{"x86", "x64"}}
	ts := createTasks(t, s, a, b)
	if ts[0].ID == 0 || ts[1].ID <= ts[0].ID || ts[0].Status != store.TaskPending || ts[0].Attempt != 1 {
		t.Fatalf("created %+v", ts)
	}
	got := getTask(t, s, ts[0].ID)
	if got.Target != "a.exe" || got.FileName != "../../a.exe" || got.SampleID != first.ID ||
		strings.Join(got.Tags, ",") != "win10,x64" || !got.Clock.Equal(a.Clock) || got.AddedOn.IsZero() {
		t.Errorf("read back %+v", got)
	}
	if u := getTask(t, s, ts[1].ID); u.SampleID != 0 || u.Category != "url" {
		t.Errorf("url task %+v", u)
	}
	if _, err := s.GetTask(ctx, 9999); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTask(missing) = %v, want ErrNotFound", err)
	}
	// Dispatch order: priority first, then age.
	pending, err := s.PendingTasks(ctx, 10)
	if err != nil || len(pending) != 2 || pending[0].ID != ts[1].ID {
		t.Fatalf("PendingTasks = %v (%v), want the priority-3 url task first", pending, err)
	}
	for _, f := range []struct {
		name string
		f    store.TaskFilter
		want int
	}{
		{"all", store.TaskFilter{}, 2},
		{"category", store.TaskFilter{Category: "url"}, 1},
		{"option", store.TaskFilter{OptionLike: "procmemdump"}, 1},
		{"option wildcard is literal", store.TaskFilter{OptionLike: "%"}, 0},
		{"status", store.TaskFilter{Statuses: []store.TaskStatus{store.TaskCompleted}}, 0},
		{"ids", store.TaskFilter{IDs: []int64{ts[1].ID}}, 1},
		{"limit", store.TaskFilter{Limit: 1}, 1},
		{"offset", store.TaskFilter{Offset: 1}, 1},
	} {
		got, err := s.ListTasks(ctx, f.f)
		if err != nil || len(got) != f.want {
			t.Errorf("ListTasks(%s) = %d tasks (%v), want %d", f.name, len(got), err, f.want)
		}
	}
	counts, err := s.CountTasks(ctx)
	if err != nil || counts[store.TaskPending] != 2 {
		t.Errorf("CountTasks = %v (%v)", counts, err)
	}
	if es, err := s.TaskEvents(ctx, ts[0].ID); err != nil || len(es) != 1 || es[0].To != store.TaskPending || es[0].Cause != "submitted" {
		t.Errorf("TaskEvents = %+v (%v)", es, err)
	}
	// Failing a pending task is a compare-and-set with its reason.
	failed, err := s.TransitionTask(ctx, store.TaskTransition{TaskID: ts[1].ID, From: store.TaskPending,
		To: store.TaskFailedAnalysis, Error: "no machine has tag office"})
	if err != nil || failed.Status != store.TaskFailedAnalysis || failed.Error != "no machine has tag office" || failed.CompletedOn.IsZero() {
		t.Fatalf("TransitionTask = %+v (%v)", failed, err)
	}
	if _, err := s.TransitionTask(ctx, store.TaskTransition{TaskID: ts[1].ID, From: store.TaskPending,
		To: store.TaskFailedAnalysis}); !errors.Is(err, store.ErrStale) {
		t.Errorf("second TransitionTask = %v, want ErrStale", err)
	}
	if err := s.DeleteTask(ctx, ts[1].ID); err != nil {
		t.Fatalf("DeleteTask: %v", err)
	}
	if _, err := s.GetTask(ctx, ts[1].ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted task still there: %v", err)
	}
	// A failed batch writes nothing.
	if _, err := s.CreateTasks(ctx, []store.Task{task("ok.exe"), {Category: "file"}}, "x"); err == nil {
		t.Fatal("CreateTasks accepted a task without a target")
	}
	if all, _ := s.ListTasks(ctx, store.TaskFilter{}); len(all) != 1 {
		t.Errorf("%d tasks after a failed batch, want 1", len(all))
	}
}

func testTaskLease(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	ms := insert(t, s, machine("m1", "p", store.Ready), machine("m2", "p", store.Ready), machine("m3", "p", store.Ready))
	ts := createTasks(t, s, task("a"), task("b"), task("c"))

	res := leaseOne(t, s, ts[0], ms[0], "node-a")
	if res.Task.Status != store.TaskRunning || res.Task.RanOn != "m1" || res.Task.Node != "node-a" ||
		res.Task.StartedOn.IsZero() || res.Task.LeaseExpires.IsZero() {
		t.Errorf("leased task %+v", res.Task)
	}
	if res.Machine.State != store.Leased || res.Machine.TaskID != ts[0].ID || !res.Machine.Locked() {
		t.Errorf("leased machine %+v", res.Machine)
	}
	// A stale pair — the task moved, or the machine — changes neither row,
	// and does not stop the other pairs of the batch. A machine (or a task)
	// named twice in one batch goes to the first pair only.
	out, err := s.Lease(ctx, []store.LeaseRequest{
		{TaskID: ts[1].ID, TaskVersion: ts[1].Version, Label: "m1", MachineVersion: ms[0].Version, Node: "n", TTL: time.Minute},
		{TaskID: ts[0].ID, TaskVersion: ts[0].Version, Label: "m3", MachineVersion: ms[2].Version, Node: "n", TTL: time.Minute},
		{TaskID: ts[2].ID, TaskVersion: ts[2].Version, Label: "m2", MachineVersion: ms[1].Version, Node: "n", TTL: time.Minute},
		{TaskID: ts[1].ID, TaskVersion: ts[1].Version, Label: "m2", MachineVersion: ms[1].Version, Node: "n", TTL: time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(out[0].Err, store.ErrStale) || !errors.Is(out[1].Err, store.ErrStale) || out[2].Err != nil || !errors.Is(out[3].Err, store.ErrStale) {
		t.Fatalf("batch results %v / %v / %v / %v, want stale, stale, leased, stale", out[0].Err, out[1].Err, out[2].Err, out[3].Err)
	}
	if out[2].Task.Status != store.TaskRunning || out[2].Machine.State != store.Leased || out[2].Machine.TaskID != ts[2].ID {
		t.Errorf("the pair that landed: %+v / %+v", out[2].Task, out[2].Machine)
	}
	if b := getTask(t, s, ts[1].ID); b.Status != store.TaskPending || b.Version != ts[1].Version {
		t.Errorf("task b after its stale pair: %+v", b)
	}
	if m := get(t, s, "m3"); m.State != store.Ready || m.Version != ms[2].Version {
		t.Errorf("m3, whose task was stale, changed: %+v", m)
	}
	if m := get(t, s, "m2"); m.TaskID != ts[2].ID {
		t.Errorf("m2 leased to task %d, want %d", m.TaskID, ts[2].ID)
	}
	if es := events(t, s, "m2"); es[len(es)-1].To != store.Leased || es[len(es)-1].Cause != fmt.Sprintf("task %d", ts[2].ID) {
		t.Errorf("m2's lease event %+v", es[len(es)-1])
	}

	held, err := s.RenewLeases(ctx, "node-a", []int64{ts[0].ID, ts[2].ID}, time.Minute)
	if err != nil || len(held) != 1 || held[0] != ts[0].ID {
		t.Errorf("RenewLeases = %v (%v), want only node-a's task", held, err)
	}

	// The analysis ends: the task completes and the machine is released dirty.
	end, err := s.EndTask(ctx, store.TaskEnd{TaskID: ts[0].ID, Node: "node-a", Status: store.TaskCompleted})
	if err != nil || end.Status != store.TaskCompleted || end.CompletedOn.IsZero() || end.Node != "" {
		t.Fatalf("EndTask = %+v (%v)", end, err)
	}
	if m := get(t, s, "m1"); m.State != store.Dirty || m.TaskID != 0 {
		t.Errorf("m1 after its analysis: %s task %d, want dirty", m.State, m.TaskID)
	}
	if _, err := s.EndTask(ctx, store.TaskEnd{TaskID: ts[0].ID, Node: "node-a", Status: store.TaskCompleted}); !errors.Is(err, store.ErrStale) {
		t.Errorf("ending twice = %v, want ErrStale", err)
	}
	// Another node cannot end it.
	if _, err := s.EndTask(ctx, store.TaskEnd{TaskID: ts[2].ID, Node: "node-b", Status: store.TaskCompleted}); !errors.Is(err, store.ErrStale) {
		t.Errorf("EndTask by another node = %v, want ErrStale", err)
	}
	es, _ := s.TaskEvents(ctx, ts[0].ID)
	var path []string
	for _, e := range es {
		path = append(path, string(e.To))
	}
	if got := strings.Join(path, " "); got != "pending running completed" {
		t.Errorf("task events %q", got)
	}
}

func testTaskRequeue(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	ms := insert(t, s, machine("m1", "p", store.Ready), machine("m2", "p", store.Ready))
	ts := createTasks(t, s, task("a"), task("b"))

	// The machine failed its check before the analysis began: the task keeps
	// its attempt and place; the machine goes where it is told.
	leaseOne(t, s, ts[0], ms[0], "n")
	back, err := s.RequeueTask(ctx, store.Requeue{TaskID: ts[0].ID, Node: "n", Cause: "agent did not answer",
		MachineTo: store.Provisioning})
	if err != nil || back.Status != store.TaskPending || back.Attempt != 1 || back.Node != "" || !back.AddedOn.Equal(ts[0].AddedOn) {
		t.Fatalf("requeue before start = %+v (%v)", back, err)
	}
	if m := get(t, s, "m1"); m.State != store.Provisioning {
		t.Errorf("m1 is %s, want provisioning", m.State)
	}

	// Lost twice with two attempts allowed: pending with attempt 2, then failed.
	leaseOne(t, s, back, get(t, s, "m2"), "n")
	lost, err := s.RequeueTask(ctx, store.Requeue{TaskID: ts[0].ID, Node: "n", Lost: true, MaxAttempts: 2, Cause: "machine vanished"})
	if err != nil || lost.Status != store.TaskPending || lost.Attempt != 2 {
		t.Fatalf("first loss = %+v (%v), want pending, attempt 2", lost, err)
	}
	if m := get(t, s, "m2"); m.State != store.Dirty {
		t.Errorf("m2 after a lost analysis is %s, want dirty", m.State)
	}
	walkTo(t, s, "m1", store.Ready)
	leaseOne(t, s, lost, get(t, s, "m1"), "n")
	final, err := s.RequeueTask(ctx, store.Requeue{TaskID: ts[0].ID, Node: "n", Lost: true, MaxAttempts: 2, Cause: "machine vanished"})
	if err != nil || final.Status != store.TaskFailedAnalysis || !strings.Contains(final.Error, "after 2 attempts") {
		t.Fatalf("second loss = %+v (%v), want failed after 2 attempts", final, err)
	}

	// A machine marked gone meanwhile is left gone.
	walkTo(t, s, "m1", store.Ready)
	leaseOne(t, s, ts[1], get(t, s, "m1"), "n")
	walkTo(t, s, "m1", store.Gone)
	if _, err := s.RequeueTask(ctx, store.Requeue{TaskID: ts[1].ID, Node: "n", Lost: true, MaxAttempts: 3, Cause: "gone"}); err != nil {
		t.Fatal(err)
	}
	if m := get(t, s, "m1"); m.State != store.Gone {
		t.Errorf("m1 is %s, want still gone", m.State)
	}
}

// walkTo moves a machine to state by compare-and-set from wherever it is.
func walkTo(t *testing.T, s store.Store, label string, to store.MachineState) {
	t.Helper()
	m := get(t, s, label)
	if _, err := s.TransitionMachine(context.Background(), store.Transition{Label: label, From: m.State,
		Version: m.Version, To: to, Cause: "test"}); err != nil {
		t.Fatalf("%s → %s: %v", label, to, err)
	}
}

func testExpiredLeases(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	ms := insert(t, s, machine("m1", "p", store.Ready), machine("m2", "p", store.Ready))
	ts := createTasks(t, s, task("a"), task("b"))
	for i := range 2 {
		if res, err := s.Lease(ctx, []store.LeaseRequest{{TaskID: ts[i].ID, TaskVersion: ts[i].Version,
			Label: ms[i].Label, MachineVersion: ms[i].Version, Node: "n", TTL: []time.Duration{time.Millisecond, time.Hour}[i]}}); err != nil || res[0].Err != nil {
			t.Fatal(err, res)
		}
	}
	var expired []store.Task
	poll.Until(t, 10*time.Second, "a lease expired", func() bool {
		var err error
		if expired, err = s.ExpiredLeases(ctx); err != nil {
			t.Fatal(err)
		}
		return len(expired) > 0
	})
	if len(expired) != 1 || expired[0].ID != ts[0].ID {
		t.Fatalf("ExpiredLeases = %v, want task %d only", expired, ts[0].ID)
	}
	// The rescuer requeues it whoever held it.
	if got, err := s.RequeueTask(ctx, store.Requeue{TaskID: ts[0].ID, Lost: true, MaxAttempts: 3, Cause: "lease expired"}); err != nil || got.Attempt != 2 {
		t.Fatalf("rescue = %+v (%v)", got, err)
	}
}

// Many racers on two handles hand machines to tasks: no machine ever goes to
// two tasks, no task to two machines, and every lease that was reported
// landed.
func testRaceTaskLease(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	a, b := migrated(t, open), open(t)
	const n = 12
	var ms []store.Machine
	var ts []store.Task
	for i := range n {
		ms = append(ms, machine(fmt.Sprintf("r%d", i), "p", store.Ready))
		ts = append(ts, task(fmt.Sprintf("t%d", i)))
	}
	ms = insert(t, a, ms...)
	ts = createTasks(t, a, ts...)
	var (
		mu     sync.Mutex
		byTask = map[int64]string{}
		byMach = map[string]int64{}
	)
	race(8, func(r int) {
		st := []store.Store{a, b}[r%2]
		for i := range n * n {
			tk, m := ts[(i+r)%n], ms[(i*7+r)%n]
			res, err := st.Lease(ctx, []store.LeaseRequest{{TaskID: tk.ID, TaskVersion: tk.Version, Label: m.Label,
				MachineVersion: m.Version, Node: fmt.Sprint(r), TTL: time.Minute}})
			if err != nil {
				t.Errorf("Lease: %v", err)
				return
			}
			if res[0].Err != nil {
				continue
			}
			mu.Lock()
			if prev, dup := byTask[tk.ID]; dup {
				t.Errorf("task %d leased twice: %s and %s", tk.ID, prev, m.Label)
			}
			if prev, dup := byMach[m.Label]; dup {
				t.Errorf("machine %s leased twice: tasks %d and %d", m.Label, prev, tk.ID)
			}
			byTask[tk.ID], byMach[m.Label] = m.Label, tk.ID
			mu.Unlock()
		}
	})
	for id, label := range byTask {
		if got := getTask(t, a, id); got.Status != store.TaskRunning || got.RanOn != label {
			t.Errorf("task %d: %s on %q, want running on %s", id, got.Status, got.RanOn, label)
		}
		if m := get(t, a, label); m.State != store.Leased || m.TaskID != id {
			t.Errorf("machine %s: %s for task %d, want leased to %d", label, m.State, m.TaskID, id)
		}
	}
	if len(byTask) != n {
		t.Errorf("%d of %d tasks leased", len(byTask), n)
	}
}

// An ended analysis leaves its hook pending on the node named, in the same
// transaction; only that node sees it; its run is recorded once; a later
// analysis of the same task leaves a new one, and the earlier record of it
// is then stale. Output is stored as valid text whatever the hook printed.
func testHooks(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	ms := insert(t, s, machine("m1", "p", store.Ready), machine("m2", "p", store.Ready))
	ts := createTasks(t, s, task("a"), task("b"), task("c"))

	leaseOne(t, s, ts[0], ms[0], "n1")
	leaseOne(t, s, ts[1], ms[1], "n1")
	ended, err := s.EndTask(ctx, store.TaskEnd{TaskID: ts[0].ID, Node: "n1", Status: store.TaskCompleted, HookNode: "n1"})
	if err != nil || ended.Hook.Status != store.HookPending || ended.Hook.Node != "n1" {
		t.Fatalf("end with a hook = %+v (%v)", ended.Hook, err)
	}
	// Without a hook configured, none is left pending.
	if plain, err := s.EndTask(ctx, store.TaskEnd{TaskID: ts[1].ID, Node: "n1", Status: store.TaskCompleted}); err != nil ||
		plain.Hook.Status != store.HookNone {
		t.Fatalf("end without a hook = %+v (%v)", plain.Hook, err)
	}
	pendingOn := func(node string) []int64 {
		t.Helper()
		hs, err := s.PendingHooks(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, h := range hs {
			ids = append(ids, h.ID)
		}
		return ids
	}
	if got := pendingOn("n1"); !slices.Equal(got, []int64{ts[0].ID}) {
		t.Errorf("pending on n1 = %v, want [%d]", got, ts[0].ID)
	}
	if got := pendingOn("n2"); len(got) != 0 {
		t.Errorf("pending on n2 = %v, want none", got)
	}
	// Only the node it is pending on records it.
	if err := s.RecordHook(ctx, store.HookRun{TaskID: ts[0].ID, Node: "n2", Status: store.HookOK}); !errors.Is(err, store.ErrStale) {
		t.Errorf("record by another node: %v, want ErrStale", err)
	}
	out := "processing \x00done\xff\n"
	if err := s.RecordHook(ctx, store.HookRun{TaskID: ts[0].ID, Node: "n1", Status: store.HookFailed, Exit: 3, Output: out}); err != nil {
		t.Fatal(err)
	}
	h := getTask(t, s, ts[0].ID).Hook
	if h.Status != store.HookFailed || h.Exit != 3 || h.Output != "processing done\uFFFD\n" || h.EndedOn.IsZero() {
		t.Errorf("recorded hook = %+v", h)
	}
	if got := getTask(t, s, ts[0].ID); got.Status != store.TaskCompleted {
		t.Errorf("a failed hook changed the task to %s", got.Status)
	}
	if err := s.RecordHook(ctx, store.HookRun{TaskID: ts[0].ID, Node: "n1", Status: store.HookOK}); !errors.Is(err, store.ErrStale) {
		t.Errorf("second record: %v, want ErrStale", err)
	}
	if err := s.RecordHook(ctx, store.HookRun{TaskID: ts[0].ID, Node: "n1", Status: store.HookPending}); err == nil {
		t.Error("recording a hook as pending was accepted")
	}
	if got := pendingOn("n1"); len(got) != 0 {
		t.Errorf("pending on n1 after the record = %v", got)
	}

	// A task that fails past its attempts through a requeue gets its hook
	// too, on the node that failed it; one put back in the queue does not.
	walkTo(t, s, "m1", store.Ready)
	leaseOne(t, s, ts[2], get(t, s, "m1"), "n1")
	back, err := s.RequeueTask(ctx, store.Requeue{TaskID: ts[2].ID, Lost: true, MaxAttempts: 2, Cause: "node died", HookNode: "n2"})
	if err != nil || back.Status != store.TaskPending || back.Hook.Status != store.HookNone {
		t.Fatalf("requeue = %s hook %+v (%v), want pending without a hook", back.Status, back.Hook, err)
	}
	walkTo(t, s, "m1", store.Ready)
	leaseOne(t, s, back, get(t, s, "m1"), "n1")
	failed, err := s.RequeueTask(ctx, store.Requeue{TaskID: ts[2].ID, Lost: true, MaxAttempts: 2, Cause: "node died", HookNode: "n2"})
	if err != nil || failed.Status != store.TaskFailedAnalysis || failed.Hook.Status != store.HookPending || failed.Hook.Node != "n2" {
		t.Fatalf("failed past attempts = %s hook %+v (%v)", failed.Status, failed.Hook, err)
	}
	if got := pendingOn("n2"); !slices.Equal(got, []int64{ts[2].ID}) {
		t.Errorf("pending on n2 = %v, want [%d]", got, ts[2].ID)
	}
}

// Tasks that ended are counted by the UTC hour of their end and their
// status; tasks still pending or running, and those that ended before the
// window, are not.
func testCountEndedByHour(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	ms := insert(t, s, machine("m1", "p", store.Ready))
	ts := createTasks(t, s, task("done"), task("failed"), task("waiting"))
	before := time.Now().UTC().Add(-time.Second)
	leaseOne(t, s, ts[0], ms[0], "n")
	done, err := s.EndTask(ctx, store.TaskEnd{TaskID: ts[0].ID, Node: "n", Status: store.TaskCompleted})
	if err != nil {
		t.Fatal(err)
	}
	failed, err := s.TransitionTask(ctx, store.TaskTransition{TaskID: ts[1].ID, From: store.TaskPending,
		To: store.TaskFailedAnalysis, Error: "no machine"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.CountEndedByHour(ctx, before)
	if err != nil {
		t.Fatal(err)
	}
	want := map[store.HourCount]bool{
		{Hour: done.CompletedOn.UTC().Truncate(time.Hour), Status: store.TaskCompleted, Count: 1}:        true,
		{Hour: failed.CompletedOn.UTC().Truncate(time.Hour), Status: store.TaskFailedAnalysis, Count: 1}: true,
	}
	if len(got) != len(want) {
		t.Fatalf("CountEndedByHour = %+v, want %d rows", got, len(want))
	}
	for _, c := range got {
		if !want[c] {
			t.Errorf("CountEndedByHour row %+v not among %+v", c, want)
		}
	}
	if got, err := s.CountEndedByHour(ctx, time.Now().Add(time.Hour)); err != nil || len(got) != 0 {
		t.Errorf("CountEndedByHour(an hour ahead) = %+v (%v), want nothing", got, err)
	}
}
