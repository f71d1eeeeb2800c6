package fleet

import (
	"fmt"
	"sync"
	"time"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// throttle is the provider's latest throttle window: until it ends no
// provider call is made (Retry-After is honoured however long), the last good
// view stands, and nothing is written.
type throttle struct {
	mu     sync.Mutex
	until  time.Time
	reason string
}

// note records a throttle. It reports whether this starts a new window, so
// the caller logs once per window, and when it ends.
func (t *throttle) note(e *provider.ThrottledError, now time.Time) (newWindow bool, until time.Time) {
	until = now.Add(e.RetryAfter)
	t.mu.Lock()
	defer t.mu.Unlock()
	newWindow = !now.Before(t.until)
	if until.After(t.until) {
		t.until = until
		t.reason = fmt.Sprintf("provider throttled (%s) until %s", e.Op, until.UTC().Format(time.RFC3339))
	}
	return newWindow, t.until
}

// window returns the window in force at now, if any.
func (t *throttle) window(now time.Time) (until time.Time, reason string, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now.Before(t.until) {
		return t.until, t.reason, true
	}
	return time.Time{}, "", false
}

// Throttled reports whether the provider asked us to wait, and why.
func (r *Reconciler) Throttled() (bool, string) {
	_, why, ok := r.throttle.window(time.Now())
	return ok, why
}

// noteThrottle records err if it is a throttle, logs it once per window and
// makes sure a pass runs when the window ends. It reports whether err was one.
func (r *Reconciler) noteThrottle(err error) bool {
	t, ok := provider.AsThrottled(err)
	if !ok {
		return false
	}
	newWindow, until := r.throttle.note(t, time.Now())
	if newWindow {
		r.o.Metrics.Throttled(r.ProviderName())
		r.log.Warn("provider throttled; keeping last view, no writes until retry-after",
			"op", t.Op, "retry_after", t.RetryAfter)
	}
	r.wakeAt(until)
	return true
}

// skipThrottled reports whether the provider asked us to wait, and if so
// makes sure a pass runs when the window ends.
func (r *Reconciler) skipThrottled() bool {
	until, _, ok := r.throttle.window(time.Now())
	if ok {
		r.wakeAt(until)
	}
	return ok
}
