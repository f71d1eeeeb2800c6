package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt/libvirttest"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// BenchmarkLibvirtPool runs a queue of analyses through a pool of two real
// guests (the libvirt test guests: the host's kernel and a Go agent, KVM or
// TCG as libvirttest chooses) and reports, from the machines' events, how
// long each guest takes from the start of its revert to ready again
// (revert, then its agent answering), and how many analyses the pool
// finishes per hour. Each analysis's analyzer runs SANDFLEET_BENCH_ANALYSIS
// (default 1s) in the guest, so the rate is the machine layer's overhead
// plus that.
//
//	go test -run '^$' -bench LibvirtPool -benchtime 1x ./internal/e2e/
func BenchmarkLibvirtPool(b *testing.B) {
	analysis := time.Second
	if v := os.Getenv("SANDFLEET_BENCH_ANALYSIS"); v != "" {
		var err error
		if analysis, err = time.ParseDuration(v); err != nil {
			b.Fatalf("SANDFLEET_BENCH_ANALYSIS=%q: %v", v, err)
		}
	}
	const tasks = 20
	for range b.N {
		h := libvirttest.NewHost(b)
		guests := h.Boot(2, "clean", analysis)
		dir := b.TempDir()
		conf, listen := libvirtConfig(b, dir, guests)
		d := startDaemon(b, conf, listen)
		d.waitReady(b, 2, 2*time.Minute)
		ctx := context.Background()
		st, err := open.Open(ctx, "sqlite://"+filepath.Join(dir, "sandfleet.db"))
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for i := range tasks {
			d.submit(b, fmt.Sprintf("s%02d.bin", i), []byte(fmt.Sprint(i)))
		}
		poll.Until(b, 10*time.Minute, "every task ended", func() bool { return countEnded(b, st) == tasks })
		elapsed := time.Since(start)
		checkCompleted(b, st, dir)
		if b.Failed() {
			b.FailNow()
		}
		d.waitReady(b, 2, 2*time.Minute)
		var toReady, reverts []time.Duration
		for _, g := range guests {
			evs, err := st.MachineEvents(ctx, g.Name)
			if err != nil {
				b.Fatal(err)
			}
			var began, reverted time.Time
			for _, e := range evs {
				switch e.To {
				case store.Reimaging:
					began = e.At
				case store.Provisioning:
					if !began.IsZero() {
						reverted = e.At
					}
				case store.Ready:
					if !began.IsZero() && !reverted.IsZero() {
						reverts = append(reverts, reverted.Sub(began))
						toReady = append(toReady, e.At.Sub(began))
					}
					began, reverted = time.Time{}, time.Time{}
				}
			}
		}
		st.Close()
		if len(toReady) == 0 {
			b.Fatal("no revert seen in the machines' events")
		}
		b.ReportMetric(ms(median(reverts)), "revert-ms/median")
		b.ReportMetric(ms(median(toReady)), "revert→ready-ms/median")
		b.ReportMetric(ms(slices.Max(toReady)), "revert→ready-ms/max")
		b.ReportMetric(tasks/elapsed.Hours(), "analyses/hour")
		b.ReportMetric(analysis.Seconds(), "analyzer-s/analysis")
		d.kill()
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
