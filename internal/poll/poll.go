// Package poll is how tests wait: on a condition, with a deadline, never on
// a guessed sleep. One helper for every package's tests.
package poll

import (
	"context"
	"testing"
	"time"
)

// Every is how often Until checks its condition.
const Every = 20 * time.Millisecond

// Until checks cond every Every until it holds, failing tb (naming what it
// waited for) if it does not within the given time.
func Until(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	if err := UntilCtx(context.Background(), within, cond); err != nil {
		tb.Fatalf("timed out after %s waiting for: %s", within, what)
	}
}

// UntilCtx checks cond every Every until it holds (nil), ctx ends, or within
// passes (the context's error).
func UntilCtx(ctx context.Context, within time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(Every)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}
