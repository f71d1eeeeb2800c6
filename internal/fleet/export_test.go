package fleet

import "time"

// PendingWake reports whether a pass was asked for (triggered), and the
// earliest time one was asked for (zero if none): what tests check to tell
// a reconciler at rest from one that spins.
func (r *Reconciler) PendingWake() (triggered bool, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.wake) > 0, r.nextWake
}
