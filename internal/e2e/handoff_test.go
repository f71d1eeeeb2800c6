package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/api"
	"github.com/sandfleet/sandfleet/internal/poll"
)

// What an operator sees when analyses run: hooks.on_complete hands each
// one on (a failing hook leaves the result alone), /metrics moves, and the
// JSON log names the task, machine, pool and instance of every step.
func TestHandOffMetricsAndLogs(t *testing.T) {
	emu := startEmulator(t, t.TempDir())
	dir := t.TempDir()
	// The hook fails for even task ids, after printing.
	hook := `echo "processing {task_id} ({status})"; ls {analysis_dir} > {analysis_dir}/hook.txt; [ $(({task_id} % 2)) -eq 1 ] || exit 3`
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 2, Extra: fmt.Sprintf(`hooks:
  on_complete: [/bin/sh, -c, %q]
  timeout: 30s
log: { format: json, level: info }
`, hook)})
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 2, 60*time.Second)

	before := d.metrics(t)
	if v, ok := before.Value("sandfleet_machines", "pool", "win10x64", "state", "ready"); !ok || v != 2 {
		t.Errorf("machines ready before = %v (%v), want 2", v, ok)
	}
	reimaged := func() float64 {
		return d.metric(t, "sandfleet_cloud_operations_total", "kind", "reimage", "outcome", "succeeded")
	}
	reimagedBefore := reimaged()

	ok := d.submit(t, "first.exe", []byte("MZ first"))
	bad := d.submit(t, "second.exe", []byte("MZ second"))
	if ok%2 != 1 || bad != ok+1 {
		t.Fatalf("task ids %d, %d: want an odd one, then the next", ok, bad)
	}
	view := func(id int64) api.Task {
		var tk api.Task
		if err := d.get(t, fmt.Sprintf("/apiv2/tasks/view/%d/", id), &tk); err != nil {
			t.Fatal(err)
		}
		return tk
	}
	for _, id := range []int64{ok, bad} {
		poll.Until(t, 90*time.Second, fmt.Sprintf("task %d completed and handed off", id), func() bool {
			tk := view(id)
			return tk.Status == "completed" && tk.Hook != nil && tk.Hook.Status != "pending"
		})
	}
	if h := view(ok).Hook; h.Status != "ok" || h.ExitCode != 0 || h.Output != fmt.Sprintf("processing %d (completed)\n", ok) {
		t.Errorf("hook of task %d = %+v", ok, h)
	}
	// The failing hook is on record, and the analysis still completed.
	if tk := view(bad); tk.Status != "completed" || tk.Hook.Status != "failed" || tk.Hook.ExitCode != 3 || tk.Error != nil {
		t.Errorf("task %d = %s error %v hook %+v", bad, tk.Status, tk.Error, tk.Hook)
	}
	// The hook saw the analysis folder, with what the analysis left there.
	listing, err := os.ReadFile(filepath.Join(dir, "analyses", fmt.Sprint(ok), "hook.txt"))
	if err != nil || !strings.Contains(string(listing), "files") {
		t.Errorf("the hook's listing of the analysis folder: %q %v", listing, err)
	}

	// Every family moved by what happened.
	poll.Until(t, 60*time.Second, "the used machines reimaged", func() bool { return reimaged() >= reimagedBefore+1 })
	after := d.metrics(t)
	moved := []struct {
		name   string
		labels []string
		by     float64
	}{
		{"sandfleet_tasks", []string{"status", "completed"}, 2},
		{"sandfleet_submit_to_lease_seconds", nil, 2},
		{"sandfleet_analysis_duration_seconds", []string{"outcome", "completed"}, 2},
		{"sandfleet_hooks_total", []string{"outcome", "ok"}, 1},
		{"sandfleet_hooks_total", []string{"outcome", "failed"}, 1},
	}
	for _, m := range moved {
		was, _ := before.Value(m.name, m.labels...)
		now, _ := after.Value(m.name, m.labels...)
		if now-was != m.by {
			t.Errorf("%s%v went %v → %v, want +%v", m.name, m.labels, was, now, m.by)
		}
	}
	for _, name := range []string{"sandfleet_pool_drift", "sandfleet_operations_unfinished",
		"process_resident_memory_bytes", "go_goroutines"} {
		if _, ok := after[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	was, _ := before.Value("sandfleet_reconcile_duration_seconds")
	if now, _ := after.Value("sandfleet_reconcile_duration_seconds"); now <= was {
		t.Errorf("reconcile passes %v → %v: none recorded", was, now)
	}

	// The JSON log: every record parses; the analysis's records carry its
	// task, machine, pool and instance; the hook's carry the task.
	var analysis, handoff bool
	sc := bufio.NewScanner(strings.NewReader(d.output()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Errorf("log line is not JSON: %q", sc.Text())
			continue
		}
		if rec["task_id"] != float64(ok) {
			continue
		}
		switch rec["msg"] {
		case "analysis completed":
			analysis = rec["label"] != "" && rec["pool"] == "win10x64" && rec["instance_id"] != nil
		case "hook ran":
			handoff = rec["component"] == "hooks"
		}
	}
	if !analysis || !handoff {
		t.Errorf("JSON log: analysis record with label/pool/instance %v, hook record %v\n%s", analysis, handoff, tail(d.output(), 30))
	}
}
