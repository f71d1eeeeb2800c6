package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// A static machine running CAPE's own agent.py (agent/agent.py of
// kevoreilly/CAPEv2, which sandfleet does not ship: point
// SANDFLEET_CAPE_AGENT at a copy) completes an analysis with the stand-in
// analyzer, which reports through the result server.
//
// On loopback the analyzer's connections come from 127.0.0.1, so the agent
// listens there too: its machine's address is the one the result server
// sees, as a VM's is.
func TestStaticPoolRunsCAPEAgent(t *testing.T) {
	agentPy := os.Getenv("SANDFLEET_CAPE_AGENT")
	if agentPy == "" {
		t.Skip("SANDFLEET_CAPE_AGENT does not name CAPE's agent/agent.py; the interop test is skipped")
	}
	agentAddr := freePort(t)
	port := agentAddr[strings.LastIndex(agentAddr, ":")+1:]
	agent := exec.Command("python3", agentPy, "127.0.0.1", port)
	agentOut := &proc{done: make(chan struct{})}
	agent.Stdout, agent.Stderr = agentOut, agentOut
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		agent.Process.Kill()
		agent.Wait()
		if t.Failed() {
			t.Logf("agent.py:\n%s", tail(agentOut.output(), 40))
		}
	})

	dir := t.TempDir()
	listen := freePort(t)
	conf := filepath.Join(dir, "sandfleet.yaml")
	yaml := fmt.Sprintf(`listen: %s
data_dir: %s
resultserver: { listen: "%s" }
guest: { agent_port: %s }
pools:
  - name: lab
    provider: static
    platform: linux
    machines:
      - { label: cape1, ip: 127.0.0.1, arch: x64 }
`, listen, dir, freePort(t), port)
	if err := os.WriteFile(conf, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 1, 60*time.Second)
	sampleFile := filepath.Join(dir, "hello.sh")
	if err := os.WriteFile(sampleFile, []byte("#!/bin/sh\necho hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := runCLI(t, "submit", "--wait", "--timeout", "5", "--server", d.api, sampleFile)
	if code != 0 || !strings.Contains(out, "task 1: completed") {
		t.Fatalf("submit --wait: exit %d\n%s\n%s", code, out, tail(d.output(), 30))
	}
	var log []byte
	poll.Until(t, 5*time.Second, "analysis.log", func() bool {
		var err error
		log, err = os.ReadFile(filepath.Join(dir, "analyses", strconv.Itoa(1), "analysis.log"))
		return err == nil
	})
	if !strings.Contains(string(log), "hello.sh") {
		t.Fatalf("analysis.log does not name the sample:\n%s", log)
	}
	t.Logf("analysis.log from CAPE's agent.py and the stand-in analyzer:\n%s", log)
}
