package fleet_test

import (
	"context"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/store"
)

// shutdownAfterReimage is the Azure driver, with a SIGTERM arriving just after
// the cloud accepted a reimage (before the reconciler stored its token).
type shutdownAfterReimage struct {
	provider.Provider
	cancel context.CancelFunc
}

func (p shutdownAfterReimage) Reimage(ctx context.Context, group string, ids []string) (provider.Op, error) {
	op, err := p.Provider.Reimage(ctx, group, ids)
	p.cancel()
	return op, err
}

// A shutdown landing between the cloud accepting a reimage and the token's
// write does not lose the token: the next start resumes the operation rather
// than issuing it again (SPEC §1.3).
func TestTokenStoredDespiteShutdown(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 1)
	c.emu.SetFaults([]byte(`{"lro_delay_ms": 1500}`))

	ctx := context.Background()
	walk(t, st, "win10x64_0", store.Leased, store.Dirty)

	runCtx, cancel := context.WithCancel(ctx)
	r := c.reconcilerOn(st, shutdownAfterReimage{c.driver(t), cancel})
	r.Run(runCtx) // returns once the SIGTERM stand-in cancels it

	stop := run(c.reconciler(t, st))
	defer stop()
	poll.Until(t, 20*time.Second, "machine ready after its reimage", func() bool { return machineState(t, st, "win10x64_0") == store.Ready })
	if n := c.count("POST", "/virtualMachineScaleSets/win10x64/reimage"); n != 1 {
		ops, _ := st.ListOperations(ctx, store.OperationFilter{Pool: "win10x64"})
		for _, op := range ops {
			t.Logf("op %d %s %s token=%v err=%q", op.ID, op.Kind, op.State, op.ResumeToken != "", op.Error)
		}
		t.Fatalf("reimage POSTed %d times, want 1 (the first was accepted and its token known)", n)
	}
}
