package azemu

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// tokenBucket counts what is left of a request limit: size tokens, refilled
// at rate a second.
type tokenBucket struct {
	size, rate float64
	tokens     float64
	last       time.Time
}

// take spends one token, if there is one, and returns how many are left.
func (b *tokenBucket) take(now time.Time) int {
	if b.last.IsZero() {
		b.tokens = b.size
	} else {
		b.tokens = min(b.size, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
	}
	return int(b.tokens)
}

// rateLimit is one limit: its size and how long it takes to refill.
type rateLimit struct {
	name   string
	size   float64
	refill time.Duration
}

// Resource Manager's per-subscription limits (its token buckets since 2024:
// reads 250 refilled at 25 a second; writes and deletes 200 at 10).
var (
	subscriptionReads   = rateLimit{"reads", 250, 10 * time.Second}
	subscriptionWrites  = rateLimit{"writes", 200, 20 * time.Second}
	subscriptionDeletes = rateLimit{"deletes", 200, 20 * time.Second}
)

// computeLimit is a compute throttling policy, named as compute names it
// (Microsoft.Compute/<group><window>), with its size.
func computeLimit(group string, size3, size30 float64) []rateLimit {
	return []rateLimit{
		{"Microsoft.Compute/" + group + "3Min", size3, 3 * time.Minute},
		{"Microsoft.Compute/" + group + "30Min", size30, 30 * time.Minute},
	}
}

// Compute's policies, by the operations they cover.
var (
	limitsGetOperation   = computeLimit("GetOperation", 50000, 400000)
	limitsGetScaleSet    = computeLimit("GetVMScaleSet", 200, 1300)
	limitsListScaleSetVM = computeLimit("HighCostGetVMScaleSet", 190, 900)
	limitsHighCostGet    = computeLimit("HighCostGet", 160, 800)
	limitsPutScaleSet    = computeLimit("CreateVMScaleSet", 60, 300)
	limitsDeleteScaleSet = computeLimit("DeleteVMScaleSet", 120, 600)
	limitsScaleSetAction = computeLimit("VMScaleSetActions", 120, 600)
)

// computeLimits are the compute policies a request counts against: none
// for other providers, gallery images and resource SKUs.
func computeLimits(method, path string) []rateLimit {
	ns, typ, _, ok := resourceType(path)
	if !ok || !strings.EqualFold(ns, "Microsoft.Compute") {
		return nil
	}
	seg := strings.Split(strings.Trim(path, "/"), "/")
	last := strings.ToLower(seg[len(seg)-1])
	switch strings.ToLower(typ) {
	case "locations/operations":
		return limitsGetOperation
	case "locations/usages":
		return limitsHighCostGet
	case "virtualmachinescalesets":
		switch {
		case method == http.MethodPut || method == http.MethodPatch:
			return limitsPutScaleSet
		case method == http.MethodDelete:
			return limitsDeleteScaleSet
		case method == http.MethodPost:
			return limitsScaleSetAction
		case last == "virtualmachinescalesets":
			return limitsHighCostGet
		}
		return limitsGetScaleSet
	case "virtualmachinescalesets/virtualmachines":
		switch {
		case method != http.MethodGet:
			return limitsScaleSetAction
		case last == "virtualmachines":
			return limitsListScaleSetVM
		}
		return limitsGetScaleSet
	case "virtualmachinescalesets/networkinterfaces", "virtualmachinescalesets/virtualmachines/networkinterfaces":
		return limitsListScaleSetVM
	}
	return nil
}

// rateLimits keeps the buckets of every subscription: they only inform, in
// the x-ms-ratelimit-remaining-* headers; throttling is the throttle
// fault's.
type rateLimits struct {
	mu      sync.Mutex
	buckets map[string]*tokenBucket
}

func (l *rateLimits) take(key string, lim rateLimit, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buckets == nil {
		l.buckets = map[string]*tokenBucket{}
	}
	b := l.buckets[key]
	if b == nil {
		b = &tokenBucket{size: lim.size, rate: lim.size / lim.refill.Seconds()}
		l.buckets[key] = b
	}
	return b.take(now)
}

// setHeaders counts an ARM request of subscription sub and says what is
// left: x-ms-ratelimit-remaining-subscription-reads (GET), -deletes
// (DELETE) or -writes (the rest), and for compute
// x-ms-ratelimit-remaining-resource, its policies comma-separated as
// compute sends them.
func (l *rateLimits) setHeaders(w http.ResponseWriter, r *http.Request, sub string, now time.Time) {
	sub = strings.ToLower(sub)
	lim := subscriptionWrites
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		lim = subscriptionReads
	case http.MethodDelete:
		lim = subscriptionDeletes
	}
	w.Header().Set("x-ms-ratelimit-remaining-subscription-"+lim.name,
		strconv.Itoa(l.take(sub+"/"+lim.name, lim, now)))
	var policies []string
	for _, p := range computeLimits(r.Method, r.URL.Path) {
		policies = append(policies, p.name+";"+strconv.Itoa(l.take(sub+"/"+p.name, p, now)))
	}
	if len(policies) > 0 {
		w.Header().Set("x-ms-ratelimit-remaining-resource", strings.Join(policies, ","))
	}
}
