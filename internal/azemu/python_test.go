package azemu

import (
	"context"
	_ "embed"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// pythonSDKScript drives the emulator with Azure's SDK for Python.
//
//go:embed testdata/python_sdk.py
var pythonSDKScript []byte

// pythonWithAzure finds a Python that has Debian's python3-azure: the
// python3 on PATH, else Debian's own (a python3 earlier on PATH, such as
// pyenv's, does not see Debian's packages).
func pythonWithAzure(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"python3", "/usr/bin/python3"} {
		path, err := exec.LookPath(name)
		if err != nil {
			continue
		}
		if exec.Command(path, "-c", "import azure.mgmt.compute, azure.mgmt.network").Run() == nil {
			return path
		}
	}
	t.Fatal("no python3 can import azure.mgmt.compute and azure.mgmt.network: apt-get install python3-azure")
	return ""
}

// A second client, written by others: Azure's Python SDK, driven as a
// scale-set machinery drives it (CAPE's az.py makes these calls), must
// find the emulator as it finds ARM. The script checks every answer and
// ARM's headers on all of them.
func TestPythonSDK(t *testing.T) {
	python := pythonWithAzure(t)
	opts := testOptions(t)
	opts.PageSize = 2
	opts.LRODelay = 500 * time.Millisecond
	opts.Location = "northeurope"
	opts.GalleryImages = []string{"win10"}
	e := startEmulator(t, opts)

	dir := t.TempDir()
	script := filepath.Join(dir, "python_sdk.py")
	if err := os.WriteFile(script, pythonSDKScript, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-B", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"EMULATOR_URL="+e.URL(),
		"REQUESTS_CA_BUNDLE="+e.CAFile(),
		"EMULATOR_TOKEN="+Token,
		"EMULATOR_LOCATION="+opts.Location,
		"EMULATOR_PAGE_SIZE="+strconv.Itoa(opts.PageSize),
		"EMULATOR_SUBNET_PREFIX="+DefaultSubnetPrefix,
		"NO_PROXY=127.0.0.1", "no_proxy=127.0.0.1",
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the Python SDK against the emulator: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
