package hooks_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/hooks"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/sqlite"
)

const node = "node-a"

// bench is a store with analyses that ended on node, their hooks pending.
type bench struct {
	t   *testing.T
	st  store.Store
	dir string
}

func newBench(t *testing.T) *bench {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "sandfleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &bench{t: t, st: st, dir: dir}
}

// ended runs one task to status on a fresh machine, leaving its hook pending
// on node when hook is set.
func (b *bench) ended(status store.TaskStatus, hook bool) store.Task {
	b.t.Helper()
	ctx := context.Background()
	ts, err := b.st.CreateTasks(ctx, []store.Task{{Target: "sample.exe", Category: "file"}}, "test")
	if err != nil {
		b.t.Fatal(err)
	}
	label := "m" + strconv.FormatInt(ts[0].ID, 10)
	ms, err := b.st.InsertMachines(ctx, []store.Machine{{Label: label, Pool: "p", InstanceID: label, Arch: "x64",
		IP: "127.0.0.9", Platform: "windows", State: store.Ready}}, "test")
	if err != nil {
		b.t.Fatal(err)
	}
	res, err := b.st.Lease(ctx, []store.LeaseRequest{{TaskID: ts[0].ID, TaskVersion: ts[0].Version, Label: label,
		MachineVersion: ms[0].Version, Node: node, TTL: time.Minute}})
	if err != nil || res[0].Err != nil {
		b.t.Fatalf("lease: %v %v", err, res)
	}
	e := store.TaskEnd{TaskID: ts[0].ID, Node: node, Status: status}
	if hook {
		e.HookNode = node
	}
	t, err := b.st.EndTask(ctx, e)
	if err != nil {
		b.t.Fatal(err)
	}
	return t
}

func (b *bench) task(id int64) store.Task {
	b.t.Helper()
	t, err := b.st.GetTask(context.Background(), id)
	if err != nil {
		b.t.Fatal(err)
	}
	return t
}

// start runs a runner of argv until the test ends; it returns its stop.
func (b *bench) start(argv []string, timeout time.Duration) (*hooks.Runner, func()) {
	r := hooks.New(hooks.Options{Store: b.st, Node: node, Argv: argv, Timeout: timeout, DataDir: b.dir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	b.t.Cleanup(stop)
	return r, stop
}

// waitHook waits until task id's hook is no longer pending.
func (b *bench) waitHook(id int64) store.Hook {
	b.t.Helper()
	var h store.Hook
	poll.Until(b.t, 20*time.Second, "the hook of task "+strconv.FormatInt(id, 10)+" recorded", func() bool {
		h = b.task(id).Hook
		return h.Status != store.HookPending
	})
	return h
}

// The hook runs once per ended analysis, with its placeholders filled in,
// not through a shell; it sees the analysis folder; its end is recorded.
// An analysis that ended without a hook configured gets none.
func TestHookRunsWithItsArguments(t *testing.T) {
	b := newBench(t)
	done := b.ended(store.TaskCompleted, true)
	failed := b.ended(store.TaskFailedAnalysis, true)
	plain := b.ended(store.TaskCompleted, false)
	for _, tk := range []store.Task{done, failed} {
		os.MkdirAll(filepath.Join(b.dir, "analyses", strconv.FormatInt(tk.ID, 10)), 0o755)
	}
	script := `echo "id=$1 status=$3 args=$#"; touch "$2/processed"; [ "$3" = completed ]`
	b.start([]string{"/bin/sh", "-c", script, "hook", "{task_id}", "{analysis_dir}", "{status}"}, 10*time.Second)

	h := b.waitHook(done.ID)
	if h.Status != store.HookOK || h.Exit != 0 || h.Node != node || h.EndedOn.IsZero() {
		t.Errorf("hook of the completed task = %+v", h)
	}
	if want := "id=" + strconv.FormatInt(done.ID, 10) + " status=completed args=3\n"; h.Output != want {
		t.Errorf("output %q, want %q", h.Output, want)
	}
	// A failing hook is recorded as such; the analysis's result stands.
	h = b.waitHook(failed.ID)
	if h.Status != store.HookFailed || h.Exit != 1 || !strings.Contains(h.Output, "status=failed_analysis") {
		t.Errorf("hook of the failed task = %+v", h)
	}
	if got := b.task(failed.ID); got.Status != store.TaskFailedAnalysis || got.Error != "" {
		t.Errorf("the hook changed the task: %s %q", got.Status, got.Error)
	}
	for _, tk := range []store.Task{done, failed} {
		if _, err := os.Stat(filepath.Join(b.dir, "analyses", strconv.FormatInt(tk.ID, 10), "processed")); err != nil {
			t.Errorf("the hook did not see task %d's analysis folder: %v", tk.ID, err)
		}
	}
	if h := b.task(plain.ID).Hook; h.Status != store.HookNone {
		t.Errorf("a task ended without a hook got one: %+v", h)
	}
}

// A hook past hooks.timeout is killed with what it started, and recorded
// as timed out; a program that cannot start is a failed hook naming why.
func TestHookTimeoutAndMissingProgram(t *testing.T) {
	b := newBench(t)
	slow := b.ended(store.TaskCompleted, true)
	pidFile := filepath.Join(b.dir, "child.pid")
	b.start([]string{"/bin/sh", "-c", `sleep 60 & echo $! > ` + pidFile + `; echo started; wait`}, 500*time.Millisecond)
	h := b.waitHook(slow.ID)
	if h.Status != store.HookTimeout || h.Exit != -1 || !strings.Contains(h.Output, "started") ||
		!strings.Contains(h.Output, "killed after hooks.timeout 500ms") {
		t.Errorf("slow hook = %+v", h)
	}
	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	poll.Until(t, 5*time.Second, "the hook's child killed", func() bool {
		return syscall.Kill(pid, 0) != nil
	})

	b2 := newBench(t)
	missing := b2.ended(store.TaskCompleted, true)
	b2.start([]string{filepath.Join(b2.dir, "no-such-program"), "{task_id}"}, 10*time.Second)
	h = b2.waitHook(missing.ID)
	if h.Status != store.HookFailed || h.Exit != -1 || !strings.Contains(h.Output, "no-such-program") {
		t.Errorf("missing program = %+v", h)
	}
}

// Only the end of a long output is kept.
func TestHookOutputTail(t *testing.T) {
	b := newBench(t)
	tk := b.ended(store.TaskCompleted, true)
	b.start([]string{"/bin/sh", "-c", `i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done`}, 10*time.Second)
	h := b.waitHook(tk.ID)
	if len(h.Output) != hooks.OutputTail || !strings.HasSuffix(h.Output, "line 1999\n") || strings.Contains(h.Output, "line 0\n") {
		t.Errorf("output: %d bytes, ends %q", len(h.Output), h.Output[max(0, len(h.Output)-20):])
	}
}

// A hook interrupted by a shutdown stays pending and runs again when the
// node is back: the hand-off is in the database, not in the process.
func TestHookInterruptedRunsAgain(t *testing.T) {
	b := newBench(t)
	tk := b.ended(store.TaskCompleted, true)
	runs := filepath.Join(b.dir, "runs")
	_, stop := b.start([]string{"/bin/sh", "-c", `echo run >> ` + runs + `; sleep 60`}, time.Minute)
	poll.Until(t, 10*time.Second, "the first run started", func() bool {
		raw, _ := os.ReadFile(runs)
		return len(raw) > 0
	})
	stop()
	if h := b.task(tk.ID).Hook; h.Status != store.HookPending {
		t.Fatalf("after the shutdown the hook is %+v, want still pending", h)
	}
	b.start([]string{"/bin/sh", "-c", `echo run >> ` + runs}, time.Minute)
	if h := b.waitHook(tk.ID); h.Status != store.HookOK {
		t.Errorf("second run = %+v", h)
	}
	if raw, _ := os.ReadFile(runs); string(raw) != "run\nrun\n" {
		t.Errorf("runs: %q, want two", raw)
	}
}

// The README's hand-off to CAPE: contrib/hand-to-cape.sh as the hook links
// the analysis folder into CAPE's storage and runs utils/process.py -r on it
// (here a stand-in process.py that checks what CAPE's would read); a failed
// analysis is not processed.
func TestHandToCAPE(t *testing.T) {
	b := newBench(t)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "utils"), 0o755)
	os.WriteFile(filepath.Join(root, "utils", "process.py"), []byte(`import os, sys
assert sys.argv[1:3] == ["-r", sys.argv[2]] and sys.argv[2].isdigit(), sys.argv
folder = os.path.join("storage", "analyses", sys.argv[2])
print("processed", sys.argv[2], sorted(os.listdir(folder)))
`), 0o644)
	t.Setenv("CAPE_ROOT", root)
	t.Setenv("CAPE_PYTHON", "python3")
	done := b.ended(store.TaskCompleted, true)
	failed := b.ended(store.TaskFailedAnalysis, true)
	dir := filepath.Join(b.dir, "analyses", strconv.FormatInt(done.ID, 10))
	os.MkdirAll(filepath.Join(dir, "logs"), 0o755)
	os.WriteFile(filepath.Join(dir, "analysis.log"), []byte("log"), 0o644)
	script, err := filepath.Abs("../../contrib/hand-to-cape.sh")
	if err != nil {
		t.Fatal(err)
	}
	b.start([]string{script, "{task_id}", "{analysis_dir}", "{status}"}, 30*time.Second)

	h := b.waitHook(done.ID)
	if want := "processed " + strconv.FormatInt(done.ID, 10) + " ['analysis.log', 'logs']\n"; h.Status != store.HookOK || h.Output != want {
		t.Errorf("hand-off of a completed analysis = %+v, want output %q", h, want)
	}
	if target, err := os.Readlink(filepath.Join(root, "storage", "analyses", strconv.FormatInt(done.ID, 10))); err != nil || target != dir {
		t.Errorf("CAPE's storage link = %q %v, want %s", target, err, dir)
	}
	h = b.waitHook(failed.ID)
	if h.Status != store.HookOK || !strings.Contains(h.Output, "nothing to process") {
		t.Errorf("hand-off of a failed analysis = %+v", h)
	}
}
