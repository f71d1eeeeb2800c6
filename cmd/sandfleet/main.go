// Command sandfleet is the machine layer of a malware-analysis sandbox: see
// the README. This package holds commands only; the work is in internal/.
package main

import (
	"errors"
	"fmt"
	"os"
)

// exitError carries a process exit code (check: 1 drift, 2 cannot tell).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func main() {
	err := rootCmd().Execute()
	if err == nil {
		return
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "sandfleet:", ee.err)
		}
		os.Exit(ee.code)
	}
	fmt.Fprintln(os.Stderr, "sandfleet:", err)
	os.Exit(2)
}
