package sched_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/sched"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Tasks run to completion, their results where CAPE's processing reads them,
// and no machine serves two tasks without a reimage between them.
func TestTasksRunAndMachinesAreReimagedBetween(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 2, "win10")}})
	ts := l.submit(6, 10)
	for _, got := range l.waitEnded(90*time.Second, ts...) {
		if got.Status != store.TaskCompleted || got.Attempt != 1 || got.RanOn == "" {
			t.Errorf("task %d: %s on %q, attempt %d (%s)", got.ID, got.Status, got.RanOn, got.Attempt, got.Error)
		}
		log, err := os.ReadFile(filepath.Join(l.analysisDir(got.ID), "analysis.log"))
		if err != nil || !strings.Contains(string(log), "analysis completed") {
			t.Errorf("task %d: analysis.log %q (%v)", got.ID, log, err)
		}
	}
	// Between two leases of a machine: dirty, reimaging, provisioning, ready.
	for _, label := range []string{"win10x64_0", "win10x64_1"} {
		evs, err := l.st.MachineEvents(context.Background(), label)
		if err != nil {
			t.Fatal(err)
		}
		var path []string
		for _, e := range evs {
			path = append(path, string(e.To))
		}
		p := strings.Join(path, " ")
		if strings.Contains(p, "leased ready") || strings.Contains(p, "dirty ready") || strings.Contains(p, "leased leased") {
			t.Errorf("%s went %s: reused without a reimage", label, p)
		}
		if strings.Count(p, "leased") < 2 || strings.Count(p, "reimaging") < strings.Count(p, "leased")-1 {
			t.Errorf("%s went %s: want every use followed by a reimage", label, p)
		}
	}
}

// A task nothing could ever serve fails at once naming the requirement, and
// twenty of them at the head of the queue do not delay a task behind them.
func TestUnserviceableFailsAtOnceWithoutHoldingUpOthers(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 1, "win10")}})
	bad := l.submit(20, 10, "office")
	good := l.submit(1, 10, "win10")[0]
	submitted := time.Now()
	got := l.waitRunning(good)
	if took := got.StartedOn.Sub(good.AddedOn); took > time.Second {
		t.Errorf("the serviceable task waited %s behind 20 unserviceable ones", took)
	}
	for _, b := range l.waitEnded(time.Second+time.Since(submitted), bad...) {
		if b.Status != store.TaskFailedAnalysis || !strings.Contains(b.Error, "tag office is on no pool") {
			t.Errorf("task %d: %s %q, want failed naming the tag", b.ID, b.Status, b.Error)
		}
	}
}

// Tasks whose machines are all busy never hold up the tasks behind them.
func TestBusyMachinesDoNotBlockTheQueue(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("poola", 1, "a"), pool("poolb", 1, "b")}, analysis: "3s"})
	first := l.submit(1, 10, "a")[0]
	l.waitRunning(first)
	waiting := l.submit(1, 10, "a")[0]
	other := l.submit(1, 10, "b")[0]
	l.waitRunning(other)
	if w := l.task(waiting.ID); w.Status != store.TaskPending {
		t.Errorf("the task for the busy pool is %s, want still pending", w.Status)
	}
	l.waitEnded(60*time.Second, first, waiting, other)
}

// scheduler.max_machines caps the analyses running at once.
func TestMaxMachines(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 3)}, analysis: "1s",
		edit: func(o *sched.Options) { o.Scheduler.MaxMachines = 1 }})
	ts := l.submit(3, 10)
	most := 0
	poll.Until(t, 60*time.Second, "3 tasks ended", func() bool {
		most = max(most, l.count(store.Leased))
		for _, x := range ts {
			if s := l.task(x.ID).Status; s == store.TaskPending || s == store.TaskRunning {
				return false
			}
		}
		return true
	})
	if most > 1 {
		t.Fatalf("%d machines leased at once with max_machines 1", most)
	}
}

// Paused (SIGUSR1), the scheduler dispatches nothing; resumed, it does.
func TestPauseAndResume(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 1)}})
	l.sched.Pause()
	task := l.submit(1, 10)[0]
	// Dispatches happen and lease nothing.
	for range 3 {
		l.sched.Trigger()
	}
	ctx := context.Background()
	poll.Until(t, 5*time.Second, "a dispatch ran while paused", func() bool {
		evs, _ := l.st.TaskEvents(ctx, task.ID)
		return len(evs) == 1 && l.sched.Paused()
	})
	if got := l.task(task.ID); got.Status != store.TaskPending {
		t.Fatalf("task %s while paused", got.Status)
	}
	l.sched.Resume()
	if got := l.waitEnded(30*time.Second, task)[0]; got.Status != store.TaskCompleted {
		t.Fatalf("task %s after resume: %s", got.Status, got.Error)
	}
}

// A task pending past scheduler.pending_timeout fails with the reason; it
// is never deleted.
func TestPendingTimeoutFailsWithReason(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 1)}, analysis: "5s",
		edit: func(o *sched.Options) { o.Scheduler.PendingTimeout = time.Second }})
	busy := l.submit(1, 10)[0]
	l.waitRunning(busy)
	late := l.submit(1, 10)[0]
	got := l.waitEnded(20*time.Second, late)[0]
	if got.Status != store.TaskFailedAnalysis || !strings.Contains(got.Error, "scheduler.pending_timeout") {
		t.Fatalf("task %s %q, want failed for its pending timeout", got.Status, got.Error)
	}
}

// A machine whose agent is down when its task starts leaves service with the
// reason; the task, its place and attempt kept, runs on another machine.
func TestAgentDownAtStartMovesTheTask(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 2)}})
	// win10x64_0 is the least recently used: the first a task gets.
	if _, err := l.emu.SetAgentState("win10x64", "", "0", "down"); err != nil {
		t.Fatal(err)
	}
	task := l.submit(1, 10)[0]
	got := l.waitEnded(30*time.Second, task)[0]
	if got.Status != store.TaskCompleted || got.RanOn != "win10x64_1" || got.Attempt != 1 {
		t.Fatalf("task %s on %s, attempt %d (%s); want completed on win10x64_1 at attempt 1", got.Status, got.RanOn, got.Attempt, got.Error)
	}
	evs, _ := l.st.MachineEvents(context.Background(), "win10x64_0")
	var why string
	for _, e := range evs {
		if e.From == store.Leased && e.To == store.Provisioning {
			why = e.Cause
		}
	}
	if !strings.Contains(why, "agent does not answer") {
		t.Fatalf("win10x64_0 left its lease with %q, want the agent named", why)
	}
}

// An agent that hangs mid-analysis ends the task at its deadline with the
// cause; the machine is reimaged and serves again.
func TestAgentHangsMidAnalysis(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 1)}, analysis: "20s"})
	task := l.submit(1, 2)[0]
	running := l.waitRunning(task)
	poll.Until(t, 10*time.Second, "analyzer started", func() bool {
		_, err := os.Stat(filepath.Join(l.analysisDir(task.ID), "analysis.log"))
		return err == nil
	})
	if _, err := l.emu.SetAgentState("win10x64", "", instanceOf(running.RanOn), "hang"); err != nil {
		t.Fatal(err)
	}
	got := l.waitEnded(60*time.Second, task)[0]
	if got.Status != store.TaskFailedAnalysis || !strings.Contains(got.Error, "deadline") || !strings.Contains(got.Error, "agent") {
		t.Fatalf("task %s %q, want failed at its deadline naming the agent", got.Status, got.Error)
	}
	poll.Until(t, 60*time.Second, "the machine reimaged and ready", func() bool { return l.count(store.Ready) == 1 })
}

// A VM deleted mid-analysis sends its task back to the queue as attempt 2,
// which runs on another machine; the machine is gone.
func TestVMDeletedMidAnalysis(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 2)}, analysis: "20s"})
	task := l.submit(1, 30)[0]
	running := l.waitRunning(task)
	poll.Until(t, 10*time.Second, "analyzer started", func() bool {
		_, err := os.Stat(filepath.Join(l.analysisDir(task.ID), "analysis.log"))
		return err == nil
	})
	if _, err := l.emu.RemoveVM("win10x64", "", instanceOf(running.RanOn)); err != nil {
		t.Fatal(err)
	}
	var again store.Task
	poll.Until(t, 60*time.Second, "the task running again elsewhere", func() bool {
		again = l.task(task.ID)
		return again.Attempt == 2 && again.Status == store.TaskRunning && again.RanOn != running.RanOn
	})
	if m, _ := l.st.GetMachine(context.Background(), running.RanOn); m.State != store.Gone {
		t.Errorf("%s is %s, want gone", running.RanOn, m.State)
	}
	// The first attempt's results are set aside when the second begins, not
	// mixed with its own.
	poll.Until(t, 30*time.Second, "attempt 1's analysis.log set aside", func() bool {
		_, err := os.Stat(filepath.Join(l.analysisDir(task.ID), "attempts", "1", "analysis.log"))
		return err == nil
	})
}

// An analyzer that fails is a failed analysis with the agent's words, never
// a completed one.
func TestAnalyzerFailureIsNotCompleted(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 1)}})
	if _, err := l.emu.SetAgentState("win10x64", "", "0", "fail"); err != nil {
		t.Fatal(err)
	}
	got := l.waitEnded(30*time.Second, l.submit(1, 10)[0])[0]
	if got.Status != store.TaskFailedAnalysis || !strings.Contains(got.Error, "exit code 1") {
		t.Fatalf("task %s %q, want failed with the exit code", got.Status, got.Error)
	}
}

// Stopping drains: analyses still running at the bound go back to the queue
// as a new attempt and their machines are released dirty.
func TestDrainPutsUnfinishedAnalysesBack(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 1)}, analysis: "30s"})
	task := l.submit(1, 60)[0]
	running := l.waitRunning(task)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	l.sched.Drain(ctx)
	cancel()
	got := l.task(task.ID)
	if got.Status != store.TaskPending || got.Attempt != 2 {
		t.Fatalf("after the drain: %s attempt %d, want pending attempt 2", got.Status, got.Attempt)
	}
	m, _ := l.st.GetMachine(context.Background(), running.RanOn)
	if m.State == store.Leased || m.State == store.Ready {
		t.Fatalf("%s is %s after its analysis was stopped, want released dirty", running.RanOn, m.State)
	}
}

// A node that dies mid-analysis leaves a lease nobody renews: another node's
// rescuer puts the task back (attempt 2) and it runs to completion.
func TestExpiredLeaseIsRescuedByAnotherNode(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("win10x64", 2)}, analysis: "20s"})
	task := l.submit(1, 30)[0]
	running := l.waitRunning(task)
	// node-a dies: its database handle goes with it, nothing it does lands.
	l.st.Close()
	other := openStore(t, filepath.Join(l.dir, "sandfleet.db"))
	opts := l.opts
	opts.Store, opts.Node = other, "node-b"
	b := sched.New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	poll.Until(t, 30*time.Second, "the task rescued", func() bool {
		got, err := other.GetTask(context.Background(), task.ID)
		return err == nil && got.Attempt == 2
	})
	got, _ := other.GetTask(context.Background(), task.ID)
	evs, _ := other.TaskEvents(context.Background(), task.ID)
	if got.Attempt != 2 || !slices.ContainsFunc(evs, func(e store.TaskEvent) bool { return strings.Contains(e.Cause, "lease of node node-a expired") }) {
		t.Fatalf("task %+v, events %+v: want attempt 2 after node-a's lease expired", got, evs)
	}
	if m, _ := other.GetMachine(context.Background(), running.RanOn); m.State == store.Leased {
		t.Fatalf("%s still leased to the dead node's analysis", running.RanOn)
	}
}

// A waiting task says why, from the matching the dispatch uses: the busy
// machines that match it and who holds them, max_machines, a pause, a tag
// no pool has.
func TestWhyATaskWaits(t *testing.T) {
	l := newLab(t, labConfig{pools: []config.Pool{pool("poola", 1, "a"), pool("poolb", 2, "b")}, analysis: "60s",
		edit: func(o *sched.Options) { o.Scheduler.MaxMachines, o.Scheduler.FailUnserviceable = 2, false }})
	ctx := context.Background()
	why := func(task store.Task) string {
		t.Helper()
		got, err := l.sched.Why(ctx, []store.Task{l.task(task.ID)})
		if err != nil {
			t.Fatal(err)
		}
		return got[task.ID]
	}
	want := func(task store.Task, parts ...string) {
		t.Helper()
		w := why(task)
		for _, p := range parts {
			if !strings.Contains(w, p) {
				t.Errorf("task %d waits because %q; want it to say %q", task.ID, w, p)
			}
		}
	}

	first := l.waitRunning(l.submit(1, 60, "a")[0])
	busy := l.submit(1, 60, "a")[0]
	want(busy, fmt.Sprintf("1 machine matches (a): poola_0 leased by task %d since ", first.ID))
	if w := why(busy); strings.Contains(w, "max_machines") || strings.Contains(w, "paused") {
		t.Errorf("busy task's reason %q names what does not hold it", w)
	}

	third := l.waitRunning(l.submit(1, 60, "b")[0])
	capped := l.submit(1, 60, "b")[0]
	want(capped, "max_machines 2 reached: 2 analyses running", "2 machines match (b): ",
		fmt.Sprintf("%s leased by task %d", third.RanOn, third.ID), "ready")

	office := l.submit(1, 60, "office")[0]
	want(office, "no machine matches: tag office is on no pool")

	l.sched.Pause()
	want(busy, "scheduler paused (SIGUSR1", "poola_0 leased by task")

	// Only pending tasks are explained.
	if got, _ := l.sched.Why(ctx, []store.Task{l.task(first.ID)}); len(got) != 0 {
		t.Errorf("a running task explained: %v", got)
	}
}
