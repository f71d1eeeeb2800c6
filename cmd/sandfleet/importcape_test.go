package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sandfleet/sandfleet/internal/config"
)

func runImport(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := rootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(append([]string{"import-cape"}, args...))
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

// TestImportCapeCommand: the command prints a configuration sandfleet
// loads and accepts, and says on stderr what needs filling in.
func TestImportCapeCommand(t *testing.T) {
	conf := filepath.Join("..", "..", "internal", "capeconf", "testdata", "cape-default")
	out, errOut, err := runImport(t, "--conf", conf, "--machinery", "az", "--secrets-dir", "/srv/secrets")
	if err != nil {
		t.Fatalf("import-cape: %v\n%s", err, errOut)
	}
	path := filepath.Join(t.TempDir(), "sandfleet.yaml")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if len(cfg.Pools) != 1 || cfg.Pools[0].Provider != "azure" || cfg.Pools[0].Name != "cuckoo1" {
		t.Errorf("pools = %+v", cfg.Pools)
	}
	if !strings.Contains(errOut, "placeholders") {
		t.Errorf("stderr does not warn about CAPE's placeholders: %q", errOut)
	}
}

// TestImportCapeCommandRejected: a configuration sandfleet would not take
// as it is is still printed, with exit status 1 and the reason.
func TestImportCapeCommandRejected(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{
		// 0.0.0.0 and no machine told another address: no advertise_ip.
		"cuckoo.conf": "[cuckoo]\nmachinery = kvm\n[resultserver]\nip = 0.0.0.0\nport = 2042\n",
		"kvm.conf":    "[kvm]\nmachines = a\ndsn = qemu:///system\n[a]\nlabel = a\nplatform = windows\nip = 10.0.0.2\narch = x64\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, _, err := runImport(t, "--conf", dir)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), "resultserver.advertise_ip") {
		t.Fatalf("err = %v, want exit status 1 naming resultserver.advertise_ip", err)
	}
	if !strings.Contains(out, "provider: libvirt") {
		t.Errorf("the YAML was not printed:\n%s", out)
	}
	if _, _, err := runImport(t); err == nil || !strings.Contains(err.Error(), "--conf") {
		t.Errorf("without --conf: %v", err)
	}
}
