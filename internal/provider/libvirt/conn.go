package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// Bounds of the connection's backoff: the first redial after a loss waits
// minBackoff, each failure doubles it up to maxBackoff.
const (
	minBackoff = 500 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// conn is one libvirt connection that heals. A call made while it is down
// dials again (no sooner than the backoff allows); a call that fails on the
// transport, or outlives its context, drops the connection so the next one
// dials afresh. The daemon's own answers (no such domain, no such
// snapshot) are errors of the call; a lost or refused connection is
// unreachable: transient, never a verdict on the machines.
//
// go-libvirt's calls take no context, so each runs in its own goroutine and
// the caller waits for it or for its context, whichever ends first; a call
// left behind ends when the connection it runs on is closed.
type conn struct {
	uri *url.URL
	log *slog.Logger
	// dial makes a client for uri; tests replace it.
	dial func(uri *url.URL) (*golibvirt.Libvirt, error)

	mu       sync.Mutex
	lv       *golibvirt.Libvirt // nil while down
	backoff  time.Duration
	notUntil time.Time // no dial before this
	lastErr  error     // why the last dial or call failed
	lost     bool      // logged as lost, not yet as back
}

func newConn(uri string, log *slog.Logger) (*conn, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("libvirt uri %q: %w", uri, err)
	}
	return &conn{uri: u, log: log.With("uri", uri), dial: golibvirt.ConnectToURI}, nil
}

// unreachable says the libvirt daemon could not be asked: its socket
// refused, the connection broke mid-call, or a call outlived its deadline.
// It is a *provider.ThrottledError, so the reconciler keeps its last view,
// writes nothing and tries again after RetryAfter, and an operation whose
// status it hid is waited for again, not failed.
func unreachable(uri string, retry time.Duration, err error) error {
	return &unreachableError{ThrottledError: provider.ThrottledError{RetryAfter: retry,
		Op: fmt.Sprintf("libvirt %s unreachable (%v); reconnecting", uri, err)}, cause: err}
}

// unreachableError is the throttle unreachable returns, with its cause for
// a command to name.
type unreachableError struct {
	provider.ThrottledError
	cause error
}

func (e *unreachableError) Unwrap() error { return &e.ThrottledError }

func isUnreachable(err error) bool {
	var u *unreachableError
	return errors.As(err, &u)
}

// cause is why the daemon could not be reached, when err says it could not.
func cause(err error) error {
	var u *unreachableError
	if errors.As(err, &u) {
		return u.cause
	}
	return err
}

// client returns a connected client, dialling when there is none and the
// backoff allows it.
func (c *conn) client() (*golibvirt.Libvirt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lv != nil {
		select {
		case <-c.lv.Disconnected():
			c.dropLocked(c.lv, errors.New("connection closed by the daemon"))
		default:
			return c.lv, nil
		}
	}
	if wait := time.Until(c.notUntil); wait > 0 {
		return nil, unreachable(c.uri.String(), wait, c.lastErr)
	}
	lv, err := c.dial(c.uri)
	if err != nil {
		c.failLocked(err)
		return nil, unreachable(c.uri.String(), time.Until(c.notUntil), err)
	}
	c.lv, c.backoff = lv, 0
	if c.lost {
		c.lost = false
		c.log.Info("libvirt connection back")
	}
	return lv, nil
}

// failLocked pushes the next dial back by the doubled backoff.
func (c *conn) failLocked(err error) {
	c.backoff = min(max(2*c.backoff, minBackoff), maxBackoff)
	c.notUntil = time.Now().Add(c.backoff)
	c.lastErr = err
	if !c.lost {
		c.lost = true
		c.log.Warn("libvirt connection lost; reconnecting with backoff", "err", err, "retry_in", c.backoff)
	}
}

// dropLocked forgets lv (when it is still the current client) and closes it.
func (c *conn) dropLocked(lv *golibvirt.Libvirt, err error) {
	if c.lv != lv {
		return
	}
	c.lv = nil
	c.failLocked(err)
	go func() { _ = lv.Disconnect() }()
}

func (c *conn) drop(lv *golibvirt.Libvirt, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(lv, err)
}

// do runs fn on a connected client, bounded by ctx. An error of the
// transport drops the connection and comes back as a throttle; the daemon's
// answer comes back as it is.
func (c *conn) do(ctx context.Context, fn func(*golibvirt.Libvirt) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	lv, err := c.client()
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- fn(lv) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		// The daemon hangs or the caller gave up: this connection cannot be
		// trusted with the next call while its answer is outstanding.
		c.drop(lv, fmt.Errorf("call outlived its deadline: %w", ctx.Err()))
		return ctx.Err()
	}
	if err != nil && transport(err) {
		c.drop(lv, err)
		c.mu.Lock()
		retry := time.Until(c.notUntil)
		c.mu.Unlock()
		return unreachable(c.uri.String(), max(retry, minBackoff), err)
	}
	return err
}

// answer marks an error a call made of what the daemon answered (a domain
// in the wrong state, say): the connection is fine.
type answer struct{ error }

func (a answer) Unwrap() error { return a.error }

// transport reports whether err is the connection failing rather than the
// daemon answering.
func transport(err error) bool {
	if errors.As(err, new(answer)) {
		return false
	}
	var e golibvirt.Error
	if !errors.As(err, &e) {
		return true
	}
	switch golibvirt.ErrorNumber(e.Code) {
	case golibvirt.ErrNoConnect, golibvirt.ErrInvalidConn, golibvirt.ErrRPC:
		return true
	}
	return false
}

// close drops the connection for good.
func (c *conn) close() {
	c.mu.Lock()
	lv := c.lv
	c.lv = nil
	c.mu.Unlock()
	if lv != nil {
		_ = lv.Disconnect()
	}
}
