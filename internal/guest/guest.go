// Package guest talks to CAPE's guest agent (agent.py, HTTP on port 8000) inside
// an analysis machine.
package guest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// Info is the agent's answer to GET /.
type Info struct {
	Message     string   `json:"message"`
	Version     string   `json:"version"`
	Features    []string `json:"features"`
	IsUserAdmin bool     `json:"is_user_admin"`
}

// Client calls guest agents. The zero value is not usable; use NewClient.
type Client struct {
	port int
	http *http.Client
}

// NewClient returns a client for agents listening on port, each call bounded by
// timeout (a hung agent must not hold the caller).
func NewClient(port int, timeout time.Duration) *Client {
	// One short request per agent now and then: no connection worth keeping.
	tr := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
		DisableKeepAlives: true,
	}
	return &Client{port: port, http: &http.Client{Transport: tr, Timeout: timeout}}
}

// Hello calls GET / on the agent at ip and returns what it says of itself.
func (c *Client) Hello(ctx context.Context, ip string) (Info, error) {
	var info Info
	url := "http://" + net.JoinHostPort(ip, strconv.Itoa(c.port)) + "/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return info, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return info, fmt.Errorf("agent %s: %w", ip, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return info, fmt.Errorf("agent %s: read: %w", ip, err)
	}
	if resp.StatusCode != http.StatusOK {
		return info, fmt.Errorf("agent %s: GET / answered %s", ip, resp.Status)
	}
	if err := json.Unmarshal(body, &info); err != nil {
		return info, fmt.Errorf("agent %s: GET / answered non-JSON: %w", ip, err)
	}
	return info, nil
}

// Ping calls GET / on the agent at ip: nil if it answered as an agent does,
// else why not.
func (c *Client) Ping(ctx context.Context, ip string) error {
	_, err := c.Hello(ctx, ip)
	return err
}
