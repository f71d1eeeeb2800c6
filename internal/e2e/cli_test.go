package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// run runs the binary to completion and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (int, string) {
	t.Helper()
	out, err := exec.Command(binary, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return 0, string(out)
}

// The client commands, pointed at the daemon by --server or by the daemon's
// own configuration file.
func TestClientCommands(t *testing.T) {
	emu := startEmulator(t, t.TempDir())
	dir := t.TempDir()
	conf, listen := writeConfig(t, daemonConfig{DataDir: dir, Emulator: emu, Size: 2})
	d := startDaemon(t, conf, listen)
	d.waitReady(t, 2, 60*time.Second)

	code, out := runCLI(t, "machines", "list", "--server", d.api, "--pool", "win10x64", "--state", "ready")
	if code != 0 || !strings.Contains(out, "win10x64_0") || !strings.Contains(out, "win10x64_1") {
		t.Fatalf("machines list: exit %d\n%s", code, out)
	}
	code, out = runCLI(t, "machines", "list", "--config", conf, "--json")
	var ms []machine
	if code != 0 || json.Unmarshal([]byte(out), &ms) != nil || len(ms) != 2 {
		t.Fatalf("machines list --json via --config: exit %d\n%s", code, out)
	}
	if code, out = runCLI(t, "machines", "show", "win10x64_1", "--config", conf); code != 0 || !strings.Contains(out, `"instance_id": "1"`) {
		t.Fatalf("machines show: exit %d\n%s", code, out)
	}
	if code, out = runCLI(t, "machines", "show", "nope", "--config", conf); code == 0 || !strings.Contains(out, `"nope" not found`) {
		t.Fatalf("machines show of an unknown label: exit %d\n%s", code, out)
	}
	if code, out = runCLI(t, "pools", "list", "--config", conf); code != 0 || !strings.Contains(out, "win10x64") || !strings.Contains(out, "azure") {
		t.Fatalf("pools list: exit %d\n%s", code, out)
	}
	code, out = runCLI(t, "check", "--config", conf, "--json")
	var rep struct {
		Consistent bool `json:"consistent"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &rep) != nil || !rep.Consistent {
		t.Fatalf("check --json: exit %d\n%s", code, out)
	}
	if code, out = runCLI(t, "check", "--server", "http://127.0.0.1:1"); code != 2 {
		t.Fatalf("check against no daemon: exit %d, want 2\n%s", code, out)
	}
}

func TestVersionMigrateAndBadConfig(t *testing.T) {
	if code, out := runCLI(t, "version"); code != 0 || !strings.Contains(out, "sandfleet") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: exit %d\n%s", code, out)
	}
	dir := t.TempDir()
	db := filepath.Join(dir, "m.db")
	if code, out := runCLI(t, "migrate", "--database", "sqlite://"+db); code != 0 || !strings.Contains(out, "sqlite") {
		t.Fatalf("migrate: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(db); err != nil {
		t.Fatalf("migrate created no database: %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("listen: 127.0.0.1:0\npools:\n  - name: win_10\n    provider: azure\n    platform: windows\n    image: x\n    colour: blue\n"), 0o644)
	if code, out := runCLI(t, "serve", "--config", bad); code != 2 || !strings.Contains(out, "line 7") || !strings.Contains(out, "colour") {
		t.Fatalf("serve with an unknown key: exit %d\n%s", code, out)
	}
	os.WriteFile(bad, []byte("listen: 127.0.0.1:0\npools:\n  - {name: win_10, provider: azure, platform: windows, image: x}\n"), 0o644)
	if code, out := runCLI(t, "serve", "--config", bad); code != 2 || !strings.Contains(out, `pools[0].name: "win_10" contains "_"`) {
		t.Fatalf("serve with a bad pool name: exit %d\n%s", code, out)
	}
}
