package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/poll"
)

// runIn runs the binary to completion in dir and returns its exit code and
// standard output.
func runIn(t *testing.T, dir string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out) + string(ee.Stderr)
	} else if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return 0, string(out)
}

// embeddedEmulator is the in-process emulator of a serve whose emulator
// state is in dir, found as doctor finds it.
func embeddedEmulator(t *testing.T, dir string) *emulator {
	t.Helper()
	url, caFile, err := azemu.Endpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &emulator{url: url, state: dir,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
}

// The README's doctor: on the embedded default with serve running, every
// check passes; then an analyzer folder without analyzer.py, a pool image
// the emulator's gallery does not hold, and the emulator's core quota used
// up each fail, named with what to change. A daemon whose pool names an
// image the gallery lacks fails to create the scale set, naming the image.
func TestDoctor(t *testing.T) {
	dir := t.TempDir()
	// The embedded default but for the result server's port.
	base := fmt.Sprintf("resultserver: { listen: %q }\n", freePort(t))
	if err := os.WriteFile(filepath.Join(dir, "sandfleet.yaml"), []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := freePort(t)
	d := &daemon{proc: startIn(t, dir, "serve", "--listen", listen), api: "http://" + listen}
	d.waitReady(t, 3, 60*time.Second)

	code, out := runIn(t, dir, "doctor", "--server", d.api)
	if code != 0 {
		t.Fatalf("doctor on a healthy embedded default: exit %d\n%s", code, out)
	}
	for _, want := range []string{"✓ configuration:", "✓ database:", "✓ azure:", "✓ azure image win10x64:", "✓ azure quota:",
		"✓ azure subnet:", "✓ resultserver:", "✓ resultserver address:", "✓ analyzer:", "✓ agents: win10x64_0 127.", "✓ daemon:"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "✗") {
		t.Errorf("doctor reports a failure on a healthy setup:\n%s", out)
	}

	// The same setup, seen through configurations that break one thing each.
	broken := func(name, extra string) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(base+extra), 0o644); err != nil {
			t.Fatal(err)
		}
		return name
	}
	empty := t.TempDir()
	for _, tt := range []struct {
		conf string
		want []string
	}{
		{broken("no-analyzer.yaml", "guest: { analyzer: "+empty+" }\n"),
			[]string{"✗ analyzer: " + empty + ": no analyzer.py at its top", "— set guest.analyzer to CAPE's analyzer folder"}},
		{broken("other-image.yaml", "pools:\n  - { name: win10x64, provider: azure, platform: windows, arch: x64, image: win11, initial_size: 3, max_size: 10 }\n"),
			[]string{"✗ azure image win10x64: gallery image win11 not found", "— add win11 to azure.emulator.gallery_images"}},
	} {
		code, out := runIn(t, dir, "doctor", "--config", tt.conf, "--server", d.api)
		if code != 1 {
			t.Errorf("doctor --config %s: exit %d, want 1\n%s", tt.conf, code, out)
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("doctor --config %s does not say %q:\n%s", tt.conf, w, out)
			}
		}
		if n := strings.Count(out, "✗"); n != 1 {
			t.Errorf("doctor --config %s: %d failures, want 1:\n%s", tt.conf, n, out)
		}
	}

	emu := embeddedEmulator(t, filepath.Join(dir, "sandfleet-data", "emulator"))
	emu.do(t, "POST", "/_emulator/faults", map[string]any{"quota": map[string]int{"cores": 8, "low_priority_cores": 8}})
	code, out = runIn(t, dir, "doctor", "--server", d.api, "--json")
	if code != 1 || !strings.Contains(out, `"check": "azure quota"`) ||
		!strings.Contains(out, "cores in westeurope: 6 of 8 vCPUs used, 2 free; the pools at max_size need 14 more") ||
		!strings.Contains(out, "raise the cores quota in westeurope to at least 20 vCPUs, or lower the pools' max_size") {
		t.Errorf("doctor --json with the quota used up: exit %d\n%s", code, out)
	}
	emu.do(t, "POST", "/_emulator/faults", map[string]any{"clear": true})

	// A daemon of its own whose pool's image the gallery lacks.
	other := t.TempDir()
	conf := fmt.Sprintf("resultserver: { listen: %q }\n", freePort(t)) +
		"pools:\n  - { name: win11x64, provider: azure, platform: windows, arch: x64, image: win11, initial_size: 1, max_size: 2 }\n"
	if err := os.WriteFile(filepath.Join(other, "sandfleet.yaml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	listen = freePort(t)
	d2 := &daemon{proc: startIn(t, other, "serve", "--listen", listen), api: "http://" + listen}
	var ops []struct {
		Kind  string `json:"kind"`
		State string `json:"state"`
		Error string `json:"error"`
	}
	poll.Until(t, 30*time.Second, "create_pool failed naming the image", func() bool {
		if d2.get(t, "/apiv2/operations/list/", &ops) != nil {
			return false
		}
		for _, op := range ops {
			if op.Kind == "create_pool" && op.State == "failed" && strings.Contains(op.Error, "win11") {
				return true
			}
		}
		return false
	})
}
