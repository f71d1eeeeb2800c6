package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// BenchmarkARMRequestsPerAnalysis runs the daemon against the emulator in
// its own process at a steady load — more tasks than machines, every
// machine busy — and counts, per finished analysis, the ARM requests the
// daemon made after start-up: the reimage POSTs, the polls of operations,
// and all of them. Reimages take SANDFLEET_BENCH_REIMAGE (default 10s) in
// the emulator. CAPE's az.py sends one reimage POST per analysis and polls
// it every second: about one poll per second of reimage.
//
//	go test -run '^$' -bench ARMRequestsPerAnalysis -benchtime 1x ./internal/e2e/
func BenchmarkARMRequestsPerAnalysis(b *testing.B) {
	reimage := "10s"
	if v := os.Getenv("SANDFLEET_BENCH_REIMAGE"); v != "" {
		reimage = v
	}
	lro, err := time.ParseDuration(reimage)
	if err != nil {
		b.Fatalf("SANDFLEET_BENCH_REIMAGE=%q: %v", reimage, err)
	}
	const machines, tasks = 4, 24
	for range b.N {
		emu := startEmulator(b, b.TempDir(), "--analysis-duration", "2s")
		dir := b.TempDir()
		conf, listen := writeConfig(b, daemonConfig{DataDir: dir, Emulator: emu, Size: machines,
			Azure: []string{"reimage_batch_window: 4s"}})
		d := startDaemon(b, conf, listen)
		d.waitReady(b, machines, 60*time.Second)
		// Reimages from here on take lro.
		emu.do(b, "POST", "/_emulator/faults", map[string]any{"lro_delay_ms": lro.Milliseconds()})
		before := len(emu.requests(b))
		var ids []int64
		for i := range tasks {
			ids = append(ids, d.submit(b, fmt.Sprintf("s%d.exe", i), []byte("MZ sample")))
		}
		for _, id := range ids {
			poll.Until(b, 15*time.Minute, fmt.Sprintf("task %d completed", id), func() bool {
				var x struct{ Status string }
				return d.get(b, fmt.Sprintf("/apiv2/tasks/view/%d/", id), &x) == nil && x.Status == "completed"
			})
		}
		d.waitReady(b, machines, 5*time.Minute)
		rs := emu.requests(b)[before:]
		posts, polls := 0, 0
		for _, r := range rs {
			switch {
			case r.Method == "POST" && strings.HasSuffix(strings.ToLower(r.Path), "/reimage") && r.Status < 300:
				posts++
			case r.Method == "GET" && strings.Contains(r.Path, "/operations/"):
				polls++
			}
		}
		b.ReportMetric(float64(posts)/tasks, "reimage-POSTs/analysis")
		b.ReportMetric(float64(polls)/tasks, "polls/analysis")
		b.ReportMetric(float64(len(rs))/tasks, "ARM-requests/analysis")
		b.ReportMetric(lro.Seconds(), "CAPE-polls/analysis")
		d.kill()
		emu.kill()
	}
}
