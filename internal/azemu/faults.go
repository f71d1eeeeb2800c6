package azemu

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Faults are the misbehaviours and latencies the emulator injects into ARM
// requests. The JSON form is what POST /_emulator/faults takes and GET returns.
type Faults struct {
	// Throttle answers matching requests with 429 TooManyRequests.
	Throttle *Throttle `json:"throttle,omitempty"`
	// LRODelayMS, when set, overrides Options.LRODelay: how long a long-running
	// operation stays InProgress.
	LRODelayMS *int64 `json:"lro_delay_ms,omitempty"`
	// LRORetryAfterS sets the Retry-After of long-running operations'
	// replies (the reply that begins one, and every poll while it runs):
	// unset, the seconds left until the operation ends; N, N seconds; 0, no
	// Retry-After at all, as a service that does not pace its clients.
	LRORetryAfterS *int `json:"lro_retry_after_s,omitempty"`
	// ErrorRate is the probability (0..1) that an ARM request fails with 500
	// InternalServerError before it does anything.
	ErrorRate float64 `json:"error_rate,omitempty"`
	// LatencyMS delays every ARM response.
	LatencyMS int64 `json:"latency_ms,omitempty"`
	// OperationPreempted makes the next operations begun on a scale set fail
	// with code OperationPreempted, changing nothing.
	OperationPreempted *Preemption `json:"operation_preempted,omitempty"`
	// FailProvisioning makes the next N VMs created end in provisioningState
	// Failed (their operation fails with OSProvisioningTimedOut).
	FailProvisioning int `json:"fail_provisioning,omitempty"`
	// Quota sets the limits the usages API reports and scale-ups are held to.
	Quota *Quota `json:"quota,omitempty"`
	// SubnetUsed is how many addresses of every subnet something other
	// than the emulator's scale sets holds.
	SubnetUsed int `json:"subnet_used,omitempty"`
}

// Throttle describes 429 responses.
type Throttle struct {
	// Match is a case-insensitive substring of the request path; "" matches all.
	Match string `json:"match"`
	// Method limits throttling to one HTTP method; "" matches all.
	Method string `json:"method,omitempty"`
	// RetryAfterS is the Retry-After header value in seconds (default 1).
	RetryAfterS int `json:"retry_after_s"`
	// Count is how many requests to throttle; 0 throttles until cleared.
	Count int `json:"count,omitempty"`
}

// Preemption arms OperationPreempted failures. In JSON it is an object, or a
// bare number (the count), or true (one).
type Preemption struct {
	// Match is a case-insensitive substring of the scale-set name; "" matches all.
	Match string `json:"match,omitempty"`
	// Count is how many operations to preempt.
	Count int `json:"count"`
}

// UnmarshalJSON accepts 3, true or {"count": 3, "match": "pool"}.
func (p *Preemption) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("true")):
		*p = Preemption{Count: 1}
		return nil
	case bytes.Equal(b, []byte("false")):
		*p = Preemption{}
		return nil
	case len(b) > 0 && b[0] == '{':
		type plain Preemption
		var v plain
		if err := strictUnmarshal(b, &v); err != nil {
			return err
		}
		*p = Preemption(v)
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("want a count, true or {\"count\", \"match\"}: %w", err)
	}
	*p = Preemption{Count: n}
	return nil
}

// Quota is the compute quota of every subscription and location.
type Quota struct {
	Cores            int64 `json:"cores"`
	LowPriorityCores int64 `json:"low_priority_cores"`
}

// Default quota limits.
const (
	DefaultCoresLimit            = 5000
	DefaultLowPriorityCoresLimit = 5000
)

// ParseFaults reads a faults document (as a command-line flag would carry it).
// Absent keys stay zero.
func ParseFaults(b []byte) (Faults, error) {
	f, _, err := mergeFaults(Faults{}, b)
	return f, err
}

// faultFields read the keys of a faults document, in the order their errors
// are reported. Each decodes its value into a fresh variable, so that null
// leaves the zero value: no fault.
var faultFields = []struct {
	key string
	set func(f *Faults, raw json.RawMessage) error
}{
	{"throttle", func(f *Faults, raw json.RawMessage) error {
		var t *Throttle
		if err := strictUnmarshal(raw, &t); err != nil {
			return err
		}
		if t != nil {
			if t.RetryAfterS < 0 || t.Count < 0 {
				return errors.New("retry_after_s and count must be >= 0")
			}
			if t.RetryAfterS == 0 {
				t.RetryAfterS = 1
			}
			t.Method = strings.ToUpper(t.Method)
		}
		f.Throttle = t
		return nil
	}},
	{"lro_delay_ms", func(f *Faults, raw json.RawMessage) error {
		var ms *int64
		if err := json.Unmarshal(raw, &ms); err != nil {
			return err
		}
		if ms != nil && *ms < 0 {
			return errNegative
		}
		f.LRODelayMS = ms
		return nil
	}},
	{"lro_retry_after_s", func(f *Faults, raw json.RawMessage) error {
		var n int
		if err := decodeNonNegative(raw, &n); err != nil {
			return err
		}
		f.LRORetryAfterS = &n
		return nil
	}},
	{"error_rate", func(f *Faults, raw json.RawMessage) error {
		var rate float64
		if err := json.Unmarshal(raw, &rate); err != nil {
			return err
		}
		if rate < 0 || rate > 1 {
			return errors.New("must be within 0..1")
		}
		f.ErrorRate = rate
		return nil
	}},
	{"latency_ms", func(f *Faults, raw json.RawMessage) error {
		return decodeNonNegative(raw, &f.LatencyMS)
	}},
	{"operation_preempted", func(f *Faults, raw json.RawMessage) error {
		var p *Preemption
		if err := json.Unmarshal(raw, &p); err != nil {
			return err
		}
		if p != nil && p.Count < 0 {
			return errors.New("count must be >= 0")
		}
		if p != nil && p.Count == 0 {
			p = nil
		}
		f.OperationPreempted = p
		return nil
	}},
	{"fail_provisioning", func(f *Faults, raw json.RawMessage) error {
		return decodeNonNegative(raw, &f.FailProvisioning)
	}},
	{"quota", func(f *Faults, raw json.RawMessage) error {
		var q *Quota
		if err := strictUnmarshal(raw, &q); err != nil {
			return err
		}
		if q != nil && (q.Cores < 0 || q.LowPriorityCores < 0) {
			return errors.New("limits must be >= 0")
		}
		f.Quota = q
		return nil
	}},
	{"subnet_used", func(f *Faults, raw json.RawMessage) error {
		return decodeNonNegative(raw, &f.SubnetUsed)
	}},
}

var errNegative = errors.New("must be >= 0")

// decodeNonNegative decodes a count or duration into v; null is 0.
func decodeNonNegative[T int | int64](raw json.RawMessage, v *T) error {
	var n T
	if err := json.Unmarshal(raw, &n); err != nil {
		return err
	}
	if n < 0 {
		return errNegative
	}
	*v = n
	return nil
}

// mergeFaults applies a faults document to cur: each key present replaces
// that fault (null removes it); {} or "clear": true first clears them all.
// cleared reports that the document asked for a clear.
func mergeFaults(cur Faults, doc []byte) (out Faults, cleared bool, err error) {
	var m map[string]json.RawMessage
	if len(bytes.TrimSpace(doc)) == 0 {
		doc = []byte("{}")
	}
	if err := json.Unmarshal(doc, &m); err != nil {
		return cur, false, fmt.Errorf("faults: %w", err)
	}
	known := map[string]bool{"clear": true}
	for _, ff := range faultFields {
		known[ff.key] = true
	}
	var unknown []string
	for k := range m {
		if !known[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return cur, false, fmt.Errorf("faults: unknown key %q", unknown[0])
	}
	out = cur
	if raw, ok := m["clear"]; ok {
		var c bool
		if err := json.Unmarshal(raw, &c); err != nil {
			return cur, false, fmt.Errorf("faults: clear: %w", err)
		}
		cleared = c
	}
	if len(m) == 0 {
		cleared = true
	}
	if cleared {
		out = Faults{}
	}
	for _, ff := range faultFields {
		raw, ok := m[ff.key]
		if !ok {
			continue
		}
		if err := ff.set(&out, raw); err != nil {
			return cur, false, fmt.Errorf("faults: %s: %w", ff.key, err)
		}
	}
	return out, cleared, nil
}

// strictUnmarshal decodes JSON and rejects unknown fields.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// lroDelay is the delay new operations get.
func (f *Faults) lroDelay(def time.Duration) time.Duration {
	if f.LRODelayMS != nil {
		return time.Duration(*f.LRODelayMS) * time.Millisecond
	}
	return def
}

// quota returns the limits in force.
func (f *Faults) quota() Quota {
	if f.Quota != nil {
		return *f.Quota
	}
	return Quota{Cores: DefaultCoresLimit, LowPriorityCores: DefaultLowPriorityCoresLimit}
}

// throttles reports whether a request is throttled, consuming one count.
func (f *Faults) throttles(method, path string) (retryAfter int, ok bool) {
	t := f.Throttle
	if t == nil {
		return 0, false
	}
	if t.Method != "" && t.Method != method {
		return 0, false
	}
	if t.Match != "" && !strings.Contains(strings.ToLower(path), strings.ToLower(t.Match)) {
		return 0, false
	}
	if t.Count > 0 {
		t.Count--
		if t.Count == 0 {
			f.Throttle = nil
		}
	}
	return t.RetryAfterS, true
}

// preempts reports whether an operation on scale set name is preempted,
// consuming one count.
func (f *Faults) preempts(name string) bool {
	p := f.OperationPreempted
	if p == nil || p.Count <= 0 {
		return false
	}
	if p.Match != "" && !strings.Contains(strings.ToLower(name), strings.ToLower(p.Match)) {
		return false
	}
	p.Count--
	if p.Count == 0 {
		f.OperationPreempted = nil
	}
	return true
}

// clone deep-copies f so a caller can read it without the lock.
func (f Faults) clone() Faults {
	out := f
	if f.Throttle != nil {
		t := *f.Throttle
		out.Throttle = &t
	}
	if f.LRODelayMS != nil {
		v := *f.LRODelayMS
		out.LRODelayMS = &v
	}
	if f.LRORetryAfterS != nil {
		v := *f.LRORetryAfterS
		out.LRORetryAfterS = &v
	}
	if f.OperationPreempted != nil {
		p := *f.OperationPreempted
		out.OperationPreempted = &p
	}
	if f.Quota != nil {
		q := *f.Quota
		out.Quota = &q
	}
	return out
}

// retryAfter is the lro_retry_after_s fault: -1 when unset.
func (f *Faults) retryAfter() int {
	if f.LRORetryAfterS == nil {
		return -1
	}
	return *f.LRORetryAfterS
}

// paceRetryAfter applies the lro_retry_after_s fault n (retryAfter's) to a
// reply whose Retry-After is the time left: -1 keeps it, 0 drops it, N sets
// it.
func paceRetryAfter(h http.Header, n int) {
	switch {
	case n == 0:
		h.Del("Retry-After")
	case n > 0:
		h.Set("Retry-After", strconv.Itoa(n))
	}
}
