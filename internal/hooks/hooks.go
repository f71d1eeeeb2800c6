// Package hooks runs hooks.on_complete: the command that hands an ended
// analysis on — to CAPE's processing, say — once per analysis, on the node
// that ended it.
//
// The hand-off is in the database, not in memory: the transaction that ends
// an analysis leaves its hook pending on this node (package store), and the
// runner records how the hook ended. A hook a crash or a shutdown
// interrupted is still pending when the node comes back, and runs again; a
// hook is therefore run at least once, and should be idempotent (CAPE's
// utils/process.py -r is). No transaction is open while a hook runs, and
// nothing a hook does changes the analysis's result.
package hooks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sandfleet/sandfleet/internal/metrics"
	"github.com/sandfleet/sandfleet/internal/store"
)

// OutputTail is how much of a hook's output (stdout and stderr together,
// the end of it) is kept on the task.
const OutputTail = 4096

// Options configure a Runner.
type Options struct {
	Store store.Store
	// Node is this node: the runner runs the hooks pending on it.
	Node string
	// Argv is hooks.on_complete; {task_id}, {analysis_dir} and {status}
	// are replaced in every argument.
	Argv    []string
	Timeout time.Duration
	// DataDir holds analyses/<task id>/.
	DataDir string
	// Parallel bounds the hooks running at once (default 2).
	Parallel int
	Metrics  *metrics.Metrics
	Logger   *slog.Logger
}

// Runner runs the hooks pending on this node.
type Runner struct {
	o    Options
	wake chan struct{}

	mu      sync.Mutex
	running map[int64]bool
}

// New returns a runner; Run starts it.
func New(o Options) *Runner {
	if o.Parallel < 1 {
		o.Parallel = 2
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Runner{o: o, wake: make(chan struct{}, 1), running: map[int64]bool{}}
}

// Wake asks the runner to look for pending hooks now: an analysis ended.
func (r *Runner) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// safetyNet is the longest a pending hook waits without a wake-up.
const safetyNet = 30 * time.Second

// Run runs pending hooks until ctx ends; the hooks running then are killed
// and stay pending, to run again when the node is back.
func (r *Runner) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-r.wake:
		}
		pending, err := r.o.Store.PendingHooks(ctx, r.o.Node)
		if err != nil && ctx.Err() == nil {
			r.o.Logger.Warn("list pending hooks", "err", err)
		}
		for _, t := range pending {
			if !r.claim(t.ID) {
				continue
			}
			wg.Go(func() {
				defer r.unclaim(t.ID)
				r.run(ctx, t)
			})
		}
		timer.Stop()
		timer.Reset(safetyNet)
	}
}

// claim takes a slot for task id's hook unless it already runs or every
// slot is taken.
func (r *Runner) claim(id int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running[id] || len(r.running) >= r.o.Parallel {
		return false
	}
	r.running[id] = true
	return true
}

func (r *Runner) unclaim(id int64) {
	r.mu.Lock()
	delete(r.running, id)
	r.mu.Unlock()
	r.Wake() // a slot is free: more may be pending
}

// Argv returns the hook's arguments for task t.
func (r *Runner) Argv(t store.Task) []string {
	dir, err := filepath.Abs(filepath.Join(r.o.DataDir, "analyses", strconv.FormatInt(t.ID, 10)))
	if err != nil {
		dir = filepath.Join(r.o.DataDir, "analyses", strconv.FormatInt(t.ID, 10))
	}
	fill := strings.NewReplacer("{task_id}", strconv.FormatInt(t.ID, 10), "{analysis_dir}", dir,
		"{status}", string(t.Status))
	argv := make([]string, len(r.o.Argv))
	for i, a := range r.o.Argv {
		argv[i] = fill.Replace(a)
	}
	return argv
}

// run runs task t's hook and records how it ended.
func (r *Runner) run(ctx context.Context, t store.Task) {
	log := r.o.Logger.With("task_id", t.ID, "status", t.Status)
	argv := r.Argv(t)
	start := time.Now()
	res := execute(ctx, argv, r.o.Timeout)
	if ctx.Err() != nil {
		log.Info("hook interrupted by shutdown; it runs again when the node is back")
		return
	}
	took := time.Since(start).Round(time.Millisecond)
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := r.o.Store.RecordHook(rctx, store.HookRun{TaskID: t.ID, Node: r.o.Node, Status: res.status, Exit: res.exit,
		Output: res.output})
	switch {
	case errors.Is(err, store.ErrStale):
		log.Info("hook ended after its task moved on (deleted, or analysed again); not recorded", "hook", res.status)
		return
	case err != nil:
		// Still pending: it runs again at the next pass.
		log.Error("record the hook's end", "err", err)
		return
	}
	r.o.Metrics.Hook(string(res.status))
	if res.status == store.HookOK {
		log.Info("hook ran", "exit", res.exit, "took", took)
		return
	}
	log.Warn("hook failed; the analysis's result stands", "hook", res.status, "exit", res.exit, "took", took,
		"argv0", argv[0], "output_tail", lastLines(res.output, 3))
}

type result struct {
	status store.HookStatus
	exit   int
	output string
}

// execute runs argv without a shell, in its own process group so that a
// timeout kills whatever it started too.
func execute(ctx context.Context, argv []string, timeout time.Duration) result {
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := &tail{max: OutputTail}
	cmd := exec.CommandContext(hctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A grandchild holding the output open does not hold the runner.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case hctx.Err() == context.DeadlineExceeded && ctx.Err() == nil:
		fmt.Fprintf(out, "\n[sandfleet: killed after hooks.timeout %s]\n", timeout)
		return result{status: store.HookTimeout, exit: -1, output: out.String()}
	case err == nil:
		return result{status: store.HookOK, output: out.String()}
	case errors.As(err, &exitErr):
		return result{status: store.HookFailed, exit: exitErr.ExitCode(), output: out.String()}
	default:
		// It did not start (not found, not executable).
		fmt.Fprintf(out, "[sandfleet: %v]\n", err)
		return result{status: store.HookFailed, exit: -1, output: out.String()}
	}
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// lastLines returns the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}
