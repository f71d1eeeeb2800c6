//go:build !unix

package static

import "os/exec"

// setProcessGroup leaves the default: cancellation kills the shell only.
func setProcessGroup(cmd *exec.Cmd) {}
