// Package guest talks to CAPE's guest agent (agent.py v0.22, HTTP on port
// 8000) inside an analysis machine: it checks the agent is there, hands it
// the analyzer, analysis.conf and the sample, starts the analyzer and waits
// for its end, in the order CAPE's guest manager (lib/cuckoo/core/guest.py)
// uses, with the same form fields, so that CAPE's own agent and analyzer work
// unchanged.
//
// Unlike CAPE, every call has a deadline, every error names the agent and
// the step that failed, and an analyzer that failed is never reported as a
// success.
package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Info is the agent's answer to GET /.
type Info struct {
	Message     string   `json:"message"`
	Version     string   `json:"version"`
	Features    []string `json:"features"`
	IsUserAdmin bool     `json:"is_user_admin"`
}

// Has reports whether the agent offers a feature ("execpy", "pinning", …).
func (i Info) Has(feature string) bool {
	for _, f := range i.Features {
		if f == feature {
			return true
		}
	}
	return false
}

// Defaults for the Client's tunables.
const (
	// DefaultRetryInterval is CAPE's pace: it asks a starting agent, and the
	// status of a running analysis, once a second.
	DefaultRetryInterval = time.Second
	// DefaultMaxStatusFailures is how many failed GET /status in a row Wait
	// accepts before it calls the agent lost: a VM under load, or a network
	// hiccup, can miss a poll or two without the analysis being dead.
	DefaultMaxStatusFailures = 5
)

// uploadRate is the slowest link an upload is given time for, on top of the
// call timeout: a 100 MB sample cannot be sent within a few seconds, and a
// bound that ignores size would fail large samples on a slow link.
const uploadRate = 1 << 20 // bytes per second

// maxReply bounds what is read of an agent's reply: an agent answers small
// JSON documents, and a broken or hostile one must not fill memory.
const maxReply = 4 << 20

// Client calls guest agents. Make one with NewClient; it is safe for
// concurrent use once its fields are set.
type Client struct {
	port    int
	timeout time.Duration
	http    *http.Client

	// RetryInterval is how often WaitReady tries a silent agent again and
	// Wait polls GET /status (default DefaultRetryInterval). Set before use.
	RetryInterval time.Duration
	// MaxStatusFailures is the number of failed GET /status in a row after
	// which Wait gives up (default DefaultMaxStatusFailures). Set before use.
	MaxStatusFailures int
}

// NewClient returns a client for agents listening on port, each call bounded
// by timeout (a hung agent must not hold the caller); uploads get longer in
// proportion to their size.
func NewClient(port int, timeout time.Duration) *Client {
	// One short request per step, several minutes apart between analyses:
	// no connection worth keeping, and a kept one could outlive a reimage.
	tr := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
		DisableKeepAlives: true,
		Proxy:             nil, // CAPE ignores proxy settings too: agents are on the sandbox network
	}
	return &Client{
		port:              port,
		timeout:           timeout,
		http:              &http.Client{Transport: tr},
		RetryInterval:     DefaultRetryInterval,
		MaxStatusFailures: DefaultMaxStatusFailures,
	}
}

// Error is a failed call to an agent.
type Error struct {
	IP   string // the agent's address
	Step string // the call: "POST /extract"
	// StatusCode is the HTTP status of the agent's reply; 0 when there was
	// none (refused, reset, timed out).
	StatusCode int
	// Message is what the agent said of the failure (its "message").
	Message string
	// Err is the cause when there was no usable reply.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "agent %s: %s: ", e.IP, e.Step)
	switch {
	case e.StatusCode != 0 && e.Message != "":
		fmt.Fprintf(&b, "HTTP %d: %s", e.StatusCode, e.Message)
	case e.StatusCode != 0:
		fmt.Fprintf(&b, "HTTP %d", e.StatusCode)
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString("failed")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Hello calls GET / on the agent at ip and returns what it says of itself.
func (c *Client) Hello(ctx context.Context, ip string) (Info, error) {
	var info Info
	err := c.getJSON(ctx, ip, "/", &info)
	return info, err
}

// Ping calls GET / on the agent at ip: nil if it answered as an agent does,
// else why not.
func (c *Client) Ping(ctx context.Context, ip string) error {
	_, err := c.Hello(ctx, ip)
	return err
}

// WaitReady waits until the agent at ip accepts connections and answers 200
// to GET /, trying again every RetryInterval, until ctx ends. CAPE gives an
// agent timeout + critical seconds; one that does not answer by then is a
// dead machine, which the caller decides by the deadline it puts on ctx.
func (c *Client) WaitReady(ctx context.Context, ip string) (Info, error) {
	var last error
	for {
		info, err := c.Hello(ctx, ip)
		if err == nil {
			return info, nil
		}
		// A try cut short by ctx says less than the one before it.
		if ctx.Err() == nil || last == nil {
			last = err
		}
		if ctx.Err() == nil {
			_ = c.pause(ctx)
		}
		if ctx.Err() != nil {
			why := strings.TrimPrefix(last.Error(), "agent "+ip+": ")
			return Info{}, fmt.Errorf("agent %s: not ready (last try %s): %w", ip, why, ctx.Err())
		}
	}
}

// pause waits RetryInterval or until ctx ends.
func (c *Client) pause(ctx context.Context) error {
	t := time.NewTimer(c.retryInterval())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (c *Client) retryInterval() time.Duration {
	if c.RetryInterval > 0 {
		return c.RetryInterval
	}
	return DefaultRetryInterval
}

// getJSON calls GET path and decodes the reply into out.
func (c *Client) getJSON(ctx context.Context, ip, path string, out any) error {
	return c.callJSON(ctx, ip, http.MethodGet, path, nil, out)
}

// callJSON sends a request and decodes the agent's JSON reply into out
// (nil: the reply only has to be a success).
func (c *Client) callJSON(ctx context.Context, ip, method, path string, body *requestBody, out any) error {
	step := method + " " + path
	reply, err := c.call(ctx, ip, method, path, body)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(reply, out); err != nil {
		return &Error{IP: ip, Step: step, Err: fmt.Errorf("not an agent's reply: %w: %s", err, snippet(reply))}
	}
	return nil
}

// requestBody is what a POST sends: a reader of known length, because
// agent.py reads exactly Content-Length bytes and no chunked body.
type requestBody struct {
	contentType string
	r           io.Reader
	size        int64
}

// call sends one request with its own deadline and returns the body of a
// 2xx reply; any other reply or failure is an *Error.
func (c *Client) call(ctx context.Context, ip, method, path string, body *requestBody) ([]byte, error) {
	step := method + " " + path
	limit := c.timeout
	var r io.Reader
	var size int64
	if body != nil {
		r, size = body.r, body.size
		limit += time.Duration(size/uploadRate) * time.Second
	}
	callCtx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	target := "http://" + net.JoinHostPort(ip, strconv.Itoa(c.port)) + path
	req, err := http.NewRequestWithContext(callCtx, method, target, r)
	if err != nil {
		return nil, &Error{IP: ip, Step: step, Err: err}
	}
	if body != nil {
		req.ContentLength = size
		req.Header.Set("Content-Type", body.contentType)
		if size == 0 {
			req.Body = http.NoBody
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &Error{IP: ip, Step: step, Err: c.cause(ctx, err, limit)}
	}
	defer resp.Body.Close()
	reply, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return nil, &Error{IP: ip, Step: step, Err: fmt.Errorf("read reply: %w", c.cause(ctx, err, limit))}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, &Error{IP: ip, Step: step, StatusCode: resp.StatusCode, Message: agentMessage(reply)}
	}
	return reply, nil
}

// cause makes a transport error say what happened: the Go error of a request
// repeats the URL, and a call's own deadline is best told as such.
func (c *Client) cause(ctx context.Context, err error, limit time.Duration) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer within %s: %w", limit, err)
	}
	return err
}

// agentMessage is the "message" of an agent's error reply, or the start of
// the reply when it is not agent.py's JSON.
func agentMessage(reply []byte) string {
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(reply, &e) == nil && e.Message != "" {
		return e.Message
	}
	return snippet(reply)
}

// snippet is the start of a reply, for an error message.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}
