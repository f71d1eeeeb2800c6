package azure

import (
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// An instance's IP is read once. A scale-set VM's NIC lives as long as the
// VM, and Azure keeps a NIC's dynamic private IP as long as the NIC: reimage,
// restart and deallocation keep it. So in steady state a list reads a scale
// set's VMs and no NIC: each VM gets the IP known for its instance id, if it
// was read for the same vmId (a scale set deleted and created again under
// its name counts its instance ids from 0 again). A VM whose IP is not known
// — a new instance, whoever added it, or one whose NIC had no address yet —
// has its NICs read: its own NIC list when a few are unknown, the scale
// set's when more are. An instance that left the VM list leaves the cache
// with it, and a scale set that is gone takes its instances along.
//
// What Azure does not do, someone with access to the subscription can: give
// a NIC another address, or move the scale set to another subnet and update
// its instances. So every IPRefresh (give or take a tenth, per scale set, so
// that sets do not all come due in the same pass) a list reads every NIC of
// the set again and takes what it finds, and the reconciler updates the
// machine's row; ListInstancesFresh, which a drift check uses, always does.
// Until then a machine whose address moved fails its health probes and
// waits, not ready, for the refresh or its replacement.

// singleNICReads is how many VMs of unknown IP a list reads the NICs of one
// by one; with more it reads the scale set's NIC list, whose pages hold many.
const singleNICReads = 8

// defaultIPRefresh is how often every NIC of a scale set is read again:
// well within timeouts.vm_state's default (5 min), so that a machine whose
// address changed is found at its new one before it is given up.
const defaultIPRefresh = 3 * time.Minute

// ipCache keeps the IPs of each scale set's instances between lists.
type ipCache struct {
	every time.Duration

	mu   sync.Mutex
	sets map[string]*setIPs // by lower-case scale-set name
}

// setIPs is what is known of one scale set. It is replaced, never changed,
// so a list can read it without the lock.
type setIPs struct {
	ips map[string]knownIP // by instance id
	due time.Time          // when every NIC is read again
}

type knownIP struct{ vmID, ip string }

// get returns the IPs known for group's instances, and whether every NIC of
// it is due to be read (never read, or IPRefresh has passed).
func (c *ipCache) get(group string, now time.Time) (map[string]knownIP, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sets[strings.ToLower(group)]
	if s == nil {
		return nil, true
	}
	return s.ips, !now.Before(s.due)
}

// put records a list of group: vms and the IPs found or known for them, by
// instance id ("" or absent: not known). Instances not listed are forgotten.
// readAll says every NIC was read, which starts a new refresh period.
func (c *ipCache) put(group string, vms []vmView, ips map[string]string, readAll bool, now time.Time) {
	s := &setIPs{ips: make(map[string]knownIP, len(vms))}
	for i := range vms {
		if ip := ips[vms[i].InstanceID]; ip != "" {
			s.ips[vms[i].InstanceID] = knownIP{vmID: vms[i].Properties.VMID, ip: ip}
		}
	}
	key := strings.ToLower(group)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sets == nil {
		c.sets = map[string]*setIPs{}
	}
	switch old := c.sets[key]; {
	case readAll || old == nil:
		s.due = now.Add(c.every - c.every/10 + rand.N(c.every/5+1))
	default:
		s.due = old.due
	}
	c.sets[key] = s
}

// keep forgets every scale set not among groups.
func (c *ipCache) keep(groups []provider.Group) {
	live := make(map[string]bool, len(groups))
	for _, g := range groups {
		live[strings.ToLower(g.Name)] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.sets {
		if !live[k] {
			delete(c.sets, k)
		}
	}
}

// drop forgets one scale set.
func (c *ipCache) drop(group string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.sets, strings.ToLower(group))
}
