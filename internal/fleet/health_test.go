package fleet_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/fleet"
	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/store"
)

func agentClient(port int) *guest.Client { return guest.NewClient(port, time.Second) }

// A ready machine whose agent stops answering leaves ready within two health
// intervals, saying why, and is ready again once the agent is back.
func TestReadyMachineWhoseAgentDiesLeavesReady(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 2)
	const interval = 400 * time.Millisecond
	r := c.reconcilerWith(st, c.driver(t), func(o *fleet.Options) { o.HealthInterval, o.Interval = interval, time.Hour })
	stop := run(r)
	defer stop()
	poll.Until(t, 10*time.Second, "2 ready", func() bool { return countReady(t, st) == 2 })

	if _, err := c.emu.SetAgentState("win10x64", "", "1", "down"); err != nil {
		t.Fatal(err)
	}
	downAt := time.Now()
	poll.Until(t, 20*time.Second, "win10x64_1 out of ready", func() bool { return machineState(t, st, "win10x64_1") != store.Ready })
	// Two intervals, plus the confirming second probe and the pass it triggers.
	if took := time.Since(downAt); took > 2*interval+2*time.Second {
		t.Errorf("left ready %s after its agent died, want within two health intervals", took)
	}
	evs, _ := st.MachineEvents(context.Background(), "win10x64_1")
	last := evs[len(evs)-1]
	if last.To != store.Provisioning || !strings.Contains(last.Cause, "agent stopped answering") {
		t.Fatalf("last event %s → %s (%s), want provisioning because the agent stopped answering", last.From, last.To, last.Cause)
	}
	if s := machineState(t, st, "win10x64_0"); s != store.Ready {
		t.Errorf("the healthy machine is %s", s)
	}
	// Asked why it is not ready, it says its agent does not answer, since
	// when and what the probe met.
	f := fleet.NewFleet(r)
	why := ""
	poll.Until(t, 10*time.Second, "win10x64_1 explained by its silent agent", func() bool {
		m, _ := st.GetMachine(context.Background(), "win10x64_1")
		why = f.Why(m, nil, last.Cause)
		return strings.HasPrefix(why, "agent at "+m.IP+" not answering since ")
	})
	if !strings.Contains(why, "connect") && !strings.Contains(why, "refused") && !strings.Contains(why, "timeout") {
		t.Errorf("reason %q does not say what the probe met", why)
	}

	if _, err := c.emu.SetAgentState("win10x64", "", "1", "up"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 20*time.Second, "win10x64_1 ready again", func() bool { return machineState(t, st, "win10x64_1") == store.Ready })
	if m, _ := st.GetMachine(context.Background(), "win10x64_1"); f.Why(m, nil, "") != "" {
		t.Errorf("a ready machine explained: %q", f.Why(m, nil, ""))
	}
}

// countingAgent is an agent checker that counts its probes.
type countingAgent struct {
	*guest.Client
	n atomic.Int32
}

func (a *countingAgent) Ping(ctx context.Context, ip string) error {
	a.n.Add(1)
	return a.Client.Ping(ctx, ip)
}

// Health probes are paced by the interval: a ready machine is not probed
// on every pass.
func TestHealthProbesPacedByInterval(t *testing.T) {
	st := openSQLite(t)
	c := readyCloud(t, st, 1)
	agent := &countingAgent{Client: agentClient(c.emu.AgentPort())}
	r := c.reconcilerWith(st, c.driver(t), func(o *fleet.Options) {
		o.Agent, o.HealthInterval, o.Interval = agent, time.Hour, 50*time.Millisecond
	})
	stop := run(r)
	defer stop()
	poll.Until(t, 10*time.Second, "20 passes", func() bool { return r.PassStats().Passes >= 20 })
	if n := agent.n.Load(); n != 0 {
		t.Fatalf("a ready machine's agent was probed %d times in 20 passes with an hour's health interval", n)
	}
}
