package azemu

import (
	"fmt"
	"net/http"
	"strings"
)

// usage is what a subscription's scale sets take of its compute quota in a
// location. Every VM counts, whatever its power state: Azure counts
// deallocated VMs' cores too.
type usage struct {
	cores, spotCores, vms, sets int64
	family                      map[string]int64 // non-Spot vCPUs by size family
}

func (e *Emulator) usageLocked(sub, location string) usage {
	u := usage{family: map[string]int64{}}
	for _, s := range e.st.sets {
		if !strings.EqualFold(s.Sub, sub) || !sameLocation(s.Location, location) {
			continue
		}
		u.sets++
		view := s.view()
		for _, v := range s.VMs {
			n := vcpusOf(v.Size)
			u.vms++
			if view.spot {
				u.spotCores += n
				continue
			}
			u.cores += n
			if sp, ok := skuByName(v.Size); ok {
				u.family[sp.family] += n
			}
		}
	}
	return u
}

// quotaExceededLocked refuses n more VMs of size size (Spot ones when
// spot) in the subscription's location when their vCPUs would take the
// regional quota in force past its limit, as compute refuses a scale-set
// PUT or PATCH: 409 OperationNotAllowed, before anything changes. Family
// quotas are never the first to run out: the emulator gives each the
// regional limit.
func (e *Emulator) quotaExceededLocked(sub, location, size string, spot bool, n int) (reply, bool) {
	if n <= 0 {
		return reply{}, false
	}
	u := e.usageLocked(sub, location)
	q := e.faults.quota()
	name, cur, limit := "Total Regional Cores", u.cores, q.Cores
	more := "https://docs.microsoft.com/en-us/azure/azure-supportability/regional-quota-requests"
	if spot {
		name, cur, limit = "LowPriorityCores", u.spotCores, q.LowPriorityCores
		more = "https://docs.microsoft.com/en-us/azure/azure-portal/supportability/low-priority-quota"
	}
	need := int64(n) * vcpusOf(size)
	if cur+need <= limit {
		return reply{}, false
	}
	return errReply(http.StatusConflict, "OperationNotAllowed", fmt.Sprintf(
		"Operation could not be completed as it results in exceeding approved %s quota. "+
			"Additional details - Deployment Model: Resource Manager, Location: %s, Current Limit: %d, "+
			"Current Usage: %d, Additional Required: %d, (Minimum) New Limit Required: %d. "+
			"Submit a request for Quota increase at https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/UsageAndQuota.ReactView "+
			"by specifying parameters listed in the ‘Details’ section for deployment to succeed. "+
			"Please read more about quota limits at %s",
		name, location, limit, cur, need, cur+need, more)), true
}

// growthRefusedLocked checks a change of scale set s (nil for a new one)
// to capacity VMs of size size with model model against what a cloud
// enforces: the core quota, the subnet's free addresses, and the
// emulator's own address block.
func (e *Emulator) growthRefusedLocked(s *scaleSet, sub, name, location, size string, model map[string]any, capacity int) (reply, bool) {
	add := capacity
	if s != nil {
		add -= len(s.activeVMs())
	}
	view := viewOf(name, model)
	if rep, refused := e.quotaExceededLocked(sub, location, size, view.spot, add); refused {
		return rep, true
	}
	if rep, refused := e.subnetFullLocked(view.subnetID, add); refused {
		return rep, true
	}
	return e.addressesShortLocked(s, capacity)
}
