package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// defaultRetryAfter is the wait assumed when a 429 names none.
const defaultRetryAfter = 30 * time.Second

// armError is a Resource Manager error reduced to what a log line needs, still
// matching its provider sentinel and the SDK's *azcore.ResponseError.
type armError struct {
	op       string
	sentinel error // provider.ErrNotFound etc.; nil if none applies
	resp     *azcore.ResponseError
	message  string
}

func (e *armError) Error() string {
	var b strings.Builder
	b.WriteString(e.op)
	b.WriteString(": ")
	if e.sentinel != nil {
		b.WriteString(e.sentinel.Error())
		b.WriteString(": ")
	}
	fmt.Fprintf(&b, "HTTP %d", e.resp.StatusCode)
	if e.resp.ErrorCode != "" {
		b.WriteString(" ")
		b.WriteString(e.resp.ErrorCode)
	}
	if e.message != "" {
		b.WriteString(": ")
		b.WriteString(e.message)
	}
	return b.String()
}

func (e *armError) Unwrap() []error {
	if e.sentinel == nil {
		return []error{e.resp}
	}
	return []error{e.sentinel, e.resp}
}

// mapErr turns an SDK error into one callers can test with errors.Is / As:
// 429 → *provider.ThrottledError, 404 → ErrNotFound, 412 →
// ErrPreconditionFailed, code OperationPreempted → ErrPreempted. op names the
// call and its target ("reimage win10 [3 4]").
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return fmt.Errorf("%s: %w", op, err)
	}
	if re.StatusCode == http.StatusTooManyRequests {
		return &provider.ThrottledError{RetryAfter: retryAfter(re.RawResponse), Op: op}
	}
	e := &armError{op: op, resp: re, message: errorMessage(re.RawResponse)}
	switch {
	case strings.EqualFold(re.ErrorCode, "OperationPreempted"):
		e.sentinel = provider.ErrPreempted
	case re.StatusCode == http.StatusNotFound:
		e.sentinel = provider.ErrNotFound
	case re.StatusCode == http.StatusPreconditionFailed:
		e.sentinel = provider.ErrPreconditionFailed
	}
	return e
}

// retryAfter reads Retry-After (seconds or an HTTP date), or the millisecond
// variants ARM also sends; defaultRetryAfter when none is usable.
func retryAfter(resp *http.Response) time.Duration {
	if resp == nil {
		return defaultRetryAfter
	}
	return parseRetryAfter(resp.Header, time.Now())
}

func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	if d, ok := retryHint(h, now); ok {
		return d
	}
	return defaultRetryAfter
}

// retryHint reads Retry-After as retryAfter does, and says whether the
// headers name a usable one.
func retryHint(h http.Header, now time.Time) (time.Duration, bool) {
	for _, name := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if v := h.Get(name); v != "" {
			if ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond, true
			}
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Duration(s) * time.Second, s > 0
	}
	if at, err := http.ParseTime(v); err == nil {
		if d := at.Sub(now); d > 0 {
			return d.Round(time.Second), true
		}
		// A date in the past: the wait is over, but do not hammer.
		return time.Second, true
	}
	return 0, false
}

// errorMessage extracts error.message from an ARM error body, if any.
func errorMessage(resp *http.Response) string {
	if resp == nil {
		return ""
	}
	body, err := runtime.Payload(resp)
	if err != nil || len(body) == 0 {
		return ""
	}
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil {
		return ""
	}
	msg := e.Error.Message
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return msg
}

// maxPollFactor bounds the backoff between polls whose replies name no
// Retry-After: at most this many PollIntervals. A status read is cheap, but a
// hundred reimages polled every two seconds are fifty reads a second against
// the subscription's limits; backed off to 10 s (at the default interval), a
// reimage is still seen done at most 10 s after it ended.
const maxPollFactor = 5

// lro is a begun long-running operation: an SDK poller plus its token,
// captured when the operation was begun, before any wait.
type lro[T any] struct {
	d     *Driver
	op    string // names the operation in errors and logs
	token string

	mu     sync.Mutex
	poller *runtime.Poller[T]
	next   time.Duration // the pause before the next poll
	done   bool
	err    error
}

// newOp wraps a freshly begun (or resumed) poller; first is the reply that
// began it, if known, whose Retry-After the first poll follows. A poller
// already in a terminal state has no token: the operation finished at once.
func newOp[T any](d *Driver, op string, p *runtime.Poller[T], first *http.Response) *lro[T] {
	o := &lro[T]{d: d, op: op, poller: p, next: d.nextPoll(first, 0)}
	if !p.Done() {
		if tok, err := p.ResumeToken(); err == nil {
			o.token = tok
		} else {
			d.log.Warn("no resume token for operation", "op", op, "err", err)
		}
	}
	return o
}

func (o *lro[T]) Token() string { return o.token }

func (o *lro[T]) name() string { return o.op }

// nextPoll is the pause before the next poll of an operation, after reply
// resp (nil: none) and a pause of last: the reply's Retry-After when it names
// one, as ARM asks; otherwise half as long again as last, from PollInterval
// up to maxPollFactor times it.
func (d *Driver) nextPoll(resp *http.Response, last time.Duration) time.Duration {
	if resp != nil {
		if hint, ok := retryHint(resp.Header, time.Now()); ok {
			return hint
		}
	}
	if last <= 0 {
		return d.poll
	}
	return min(max(last, d.poll)*3/2, maxPollFactor*d.poll)
}

// Wait polls until the operation ends or ctx is done: after the Retry-After
// of the reply before, or backing off from PollInterval (nextPoll). A poll
// that fails — a throttle, a 5xx, a lost connection — is not the
// operation's outcome: Wait returns a *provider.ThrottledError or
// *provider.PollError and the Op stays usable, to be waited on again. Only
// an end Azure reports (Succeeded, Failed, Canceled) is final.
func (o *lro[T]) Wait(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.done {
		return o.err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.d.maxWait)
		defer cancel()
	}
	start := time.Now()
	timer := time.NewTimer(o.next)
	defer timer.Stop()
	for !o.poller.Done() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: waited %s: %w", o.op, time.Since(start).Round(time.Millisecond), ctx.Err())
		case <-timer.C:
		}
		resp, err := o.poller.Poll(ctx)
		if err != nil {
			// The caller paces its next Wait by this error (its Retry-After,
			// or its own backoff); that Wait starts again from PollInterval.
			o.next = o.d.poll
			return o.pollErr(ctx, err)
		}
		o.next = o.d.nextPoll(resp, o.next)
		timer.Reset(o.next)
	}
	_, err := o.poller.Result(ctx)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%s: %w", o.op, ctx.Err())
	}
	if err != nil && unreadable(err) {
		// Reading the outcome failed, not the operation: Wait again later.
		return transient(o.op, err)
	}
	err = mapErr(o.op, err)
	o.done, o.err = true, err
	o.d.log.Info("operation finished", "op", o.op, "took", time.Since(start).Round(time.Millisecond), "err", err)
	return err
}

// unreadable reports whether err says the request failed rather than the
// operation: no HTTP answer at all (a refused or dropped connection, a
// request timeout), or one that ARM gives when it could not serve the
// request (408, 429, 5xx). A terminal failure arrives as a status document
// Azure answered with 200, and is none of these.
func unreadable(err error) bool {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return true
	}
	return re.StatusCode == http.StatusRequestTimeout || re.StatusCode == http.StatusTooManyRequests ||
		re.StatusCode >= 500
}

// transient wraps an error from reading an operation's status: a throttle
// stays a *provider.ThrottledError (callers pause every call for it); any
// other becomes a *provider.PollError carrying ARM's Retry-After if it sent one.
func transient(op string, err error) error {
	mapped := mapErr(op, err)
	if _, ok := provider.AsThrottled(mapped); ok {
		return mapped
	}
	pe := &provider.PollError{Err: mapped}
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.RawResponse != nil {
		pe.RetryAfter, _ = retryHint(re.RawResponse.Header, time.Now())
	}
	return pe
}

// pollErr maps an error from polling. The operation's status URL answering
// 404 means the provider no longer knows the operation: whoever holds the token
// must re-derive from the resources themselves. Anything else is transient.
func (o *lro[T]) pollErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", o.op, ctx.Err())
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusNotFound {
		o.done = true
		// Not ErrNotFound: that would say the scale set is gone, which is unknown.
		o.err = fmt.Errorf("%s: operation unknown to Azure: %w (%v)", o.op, provider.ErrTokenRejected, mapErr("poll", err))
		return o.err
	}
	return transient(o.op, err)
}

// Resume re-attaches to an operation from its token. A token that does not
// parse, or that belongs to another kind of operation, is ErrTokenRejected; so
// is one whose operation Azure no longer knows, from Wait.
func (d *Driver) Resume(ctx context.Context, kind provider.Kind, token string) (provider.Op, error) {
	if token == "" {
		return nil, fmt.Errorf("resume %s: empty token: %w", kind, provider.ErrTokenRejected)
	}
	op := "resumed " + string(kind)
	var (
		o   provider.Op
		err error
	)
	switch kind {
	case provider.KindCreateGroup:
		o, err = resume(d, op, func() (*runtime.Poller[armcompute.VirtualMachineScaleSetsClientCreateOrUpdateResponse], error) {
			return d.sets.BeginCreateOrUpdate(ctx, d.rg, "resumed", armcompute.VirtualMachineScaleSet{},
				&armcompute.VirtualMachineScaleSetsClientBeginCreateOrUpdateOptions{ResumeToken: token})
		})
	case provider.KindDeleteGroup:
		o, err = resume(d, op, func() (*runtime.Poller[armcompute.VirtualMachineScaleSetsClientDeleteResponse], error) {
			return d.sets.BeginDelete(ctx, d.rg, "resumed",
				&armcompute.VirtualMachineScaleSetsClientBeginDeleteOptions{ResumeToken: token})
		})
	case provider.KindUpdateGroup, provider.KindCapacity:
		o, err = resume(d, op, func() (*runtime.Poller[armcompute.VirtualMachineScaleSetsClientUpdateResponse], error) {
			return d.sets.BeginUpdate(ctx, d.rg, "resumed", armcompute.VirtualMachineScaleSetUpdate{},
				&armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions{ResumeToken: token})
		})
	case provider.KindReimage:
		o, err = resume(d, op, func() (*runtime.Poller[armcompute.VirtualMachineScaleSetsClientReimageResponse], error) {
			return d.sets.BeginReimage(ctx, d.rg, "resumed",
				&armcompute.VirtualMachineScaleSetsClientBeginReimageOptions{ResumeToken: token})
		})
	case provider.KindDelete:
		o, err = resume(d, op, func() (*runtime.Poller[armcompute.VirtualMachineScaleSetsClientDeleteInstancesResponse], error) {
			return d.sets.BeginDeleteInstances(ctx, d.rg, "resumed", armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{},
				&armcompute.VirtualMachineScaleSetsClientBeginDeleteInstancesOptions{ResumeToken: token})
		})
	default:
		return nil, fmt.Errorf("resume: unknown operation kind %q: %w", kind, provider.ErrTokenRejected)
	}
	if err != nil {
		return nil, err
	}
	d.log.Info("operation resumed", "op", op)
	return o, nil
}

func resume[T any](d *Driver, op string, begin func() (*runtime.Poller[T], error)) (provider.Op, error) {
	p, err := begin()
	if err != nil {
		// With a token the SDK makes no call: any error is the token's.
		return nil, fmt.Errorf("%s: %w: %v", op, provider.ErrTokenRejected, err)
	}
	return newOp(d, op, p, nil), nil
}

// deref returns *p, or the zero value for nil: the SDK's models are all
// pointers.
func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}
