package fleet

import (
	"maps"
	"sync"

	"github.com/sandfleet/sandfleet/internal/store"
)

// inflight tracks the operations this node awaits: which instances (or
// which whole group) each owns, and how many of MaxConcurrentOps slots are
// taken. An owned instance is left to its operation by the table (InFlight).
type inflight struct {
	mu     sync.Mutex
	max    int
	active int
	owner  map[string]int64 // opKey → operation id
}

// opKey names what an operation owns: "pool/instanceID", or "pool/" for the
// pool's group.
func opKey(pool, instanceID string) string { return pool + "/" + instanceID }

func keys(op store.Operation) []string {
	if len(op.InstanceIDs) == 0 {
		return []string{opKey(op.Pool, "")}
	}
	ks := make([]string, len(op.InstanceIDs))
	for i, id := range op.InstanceIDs {
		ks[i] = opKey(op.Pool, id)
	}
	return ks
}

// acquire takes a slot if one is free.
func (f *inflight) acquire() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.active >= f.max {
		return false
	}
	f.active++
	return true
}

// force takes a slot even above the cap: a resumed operation is issued
// already and must be awaited.
func (f *inflight) force() {
	f.mu.Lock()
	f.active++
	f.mu.Unlock()
}

func (f *inflight) release() {
	f.mu.Lock()
	f.active--
	f.mu.Unlock()
}

// claim records that op owns its instances (or its group).
func (f *inflight) claim(op store.Operation) {
	f.mu.Lock()
	for _, k := range keys(op) {
		f.owner[k] = op.ID
	}
	f.mu.Unlock()
}

// unclaim forgets op's ownership, leaving alone what a later op claimed.
func (f *inflight) unclaim(op store.Operation) {
	f.mu.Lock()
	for _, k := range keys(op) {
		if f.owner[k] == op.ID {
			delete(f.owner, k)
		}
	}
	f.mu.Unlock()
}

// owned reports whether an operation owns pool's instance id ("" = the group).
func (f *inflight) owned(pool, id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.owner[opKey(pool, id)]
	return ok
}

// anyOwned reports whether an operation owns any of pool's instances ids.
func (f *inflight) anyOwned(pool string, ids []string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ids {
		if _, ok := f.owner[opKey(pool, id)]; ok {
			return true
		}
	}
	return false
}

// snapshot copies the ownership map: a plan looks once, not per instance.
func (f *inflight) snapshot() map[string]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.owner)
}
