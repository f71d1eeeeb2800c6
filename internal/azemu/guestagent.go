package azemu

import (
	"context"
	"log/slog"
	"time"
)

// ServeAgent serves the emulated CAPE agent at addr until ctx ends: the same
// agent an emulated VM runs, for a guest of a real hypervisor that has no
// agent.py of its own (the tiny guests provider/libvirt's tests boot). Its
// analyzer reports to the result server analysis.conf names, from whatever
// address the guest's network gives it, and runs for analysis.
func ServeAgent(ctx context.Context, addr, name string, analysis time.Duration, logger *slog.Logger) error {
	a, err := startAgent("", addr, agentSpec{mode: agentUp, name: name}, [2]time.Duration{analysis, analysis}, logger)
	if err != nil {
		return err
	}
	<-ctx.Done()
	a.stop()
	return nil
}
