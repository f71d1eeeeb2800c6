package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/sandfleet/sandfleet/internal/guest"
)

// resultServer checks that the result server listens, and that the address
// machines are told to report to is one of this host's, where it listens.
func (r *run) resultServer(ctx context.Context) []Check {
	return r.bounded(ctx, func(ctx context.Context) []Check {
		listen := r.cfg.ResultServer.Listen
		host, port, _ := net.SplitHostPort(listen)
		wildcard := host == "" || net.ParseIP(host).IsUnspecified()
		target := listen
		if wildcard {
			target = net.JoinHostPort("127.0.0.1", port)
		}
		var out []Check
		var d net.Dialer
		if c, err := d.DialContext(ctx, "tcp", target); err != nil {
			out = append(out, fail("resultserver", fmt.Sprintf("nothing listens at %s (resultserver.listen %s): %v", target, listen, err),
				"start sandfleet serve: it runs the result server; if it runs, another process holds the port: "+
					"set resultserver.listen to a free one"))
		} else {
			c.Close()
			out = append(out, pass("resultserver", fmt.Sprintf("listening at %s (resultserver.listen %s)", target, listen)))
		}
		return append(out, r.advertised(host, port, wildcard))
	})
}

// advertised checks the address machines report to: an address of this
// host, where the result server listens.
func (r *run) advertised(host, port string, wildcard bool) Check {
	adv, _ := r.cfg.ResultServerAddr()
	key := "resultserver.advertise_ip"
	if r.cfg.ResultServer.AdvertiseIP == "" {
		key = "resultserver.listen"
	}
	ip := net.ParseIP(adv)
	own, err := hostAddrs()
	if err != nil {
		return fail("resultserver address", "cannot read this host's addresses: "+err.Error(), "run sandfleet doctor on the host sandfleet serve runs on")
	}
	local := ip != nil && ip.IsLoopback() // every 127/8 address is this host's
	var shown []string
	for _, a := range own {
		local = local || a.Equal(ip)
		if !a.IsLoopback() && !a.IsLinkLocalUnicast() {
			shown = append(shown, a.String())
		}
	}
	switch {
	case ip == nil || ip.IsUnspecified():
		return fail("resultserver address", fmt.Sprintf("machines are told to report to %s (%s), which is no address", adv, key),
			"set resultserver.advertise_ip to this host's address on the machines' network")
	case !local:
		return fail("resultserver address", fmt.Sprintf("machines are told to report to %s (%s), which is not an address of this host", adv, key),
			fmt.Sprintf("set resultserver.advertise_ip to this host's address on the machines' network (this host has %s)", strings.Join(shown, ", ")))
	case !wildcard && net.ParseIP(host) != nil && !net.ParseIP(host).Equal(ip):
		return fail("resultserver address", fmt.Sprintf("machines are told to report to %s (%s), but the result server listens on %s only", adv, key, host),
			fmt.Sprintf("set resultserver.listen to %s or 0.0.0.0:%s", net.JoinHostPort(adv, port), port))
	}
	return pass("resultserver address", fmt.Sprintf("machines report to %s (%s), an address of this host", net.JoinHostPort(adv, port), key))
}

// hostAddrs lists the IP addresses of this host's interfaces.
func hostAddrs() ([]net.IP, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			out = append(out, n.IP)
		}
	}
	return out, nil
}

// analyzer checks that guest.analyzer is a package serve would send: a
// folder or a zip with analyzer.py at its top.
func (r *run) analyzer(ctx context.Context) []Check {
	path := r.cfg.Guest.Analyzer
	if path == "" {
		return []Check{pass("analyzer", "guest.analyzer is empty: guests get the built-in stand-in, which analyses nothing and only "+
			"reports what it was given; set guest.analyzer to CAPE's analyzer for real analyses")}
	}
	return r.bounded(ctx, func(ctx context.Context) []Check {
		type loaded struct {
			pkg []byte
			err error
		}
		// Packaging reads every file of a folder, and takes no context.
		done := make(chan loaded, 1)
		go func() {
			pkg, err := guest.LoadAnalyzer(path)
			done <- loaded{pkg, err}
		}()
		const fix = "set guest.analyzer to CAPE's analyzer folder (…/analyzer/windows, or analyzer/linux) or a zip holding analyzer.py at its top"
		select {
		case <-ctx.Done():
			return []Check{fail("analyzer", path+": not read in time: "+ctx.Err().Error(), "check that "+path+" is on a local, responsive file system")}
		case l := <-done:
			if l.err != nil {
				return []Check{fail("analyzer", strings.TrimPrefix(l.err.Error(), "analyzer "), fix)}
			}
			return []Check{pass("analyzer", fmt.Sprintf("%s: analyzer.py found; %s to send each guest", path, size(len(l.pkg))))}
		}
	})
}

func size(n int) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// daemon checks that the daemon answers, is ready, and takes the token.
func (r *run) daemon(ctx context.Context) []Check {
	return r.bounded(ctx, func(ctx context.Context) []Check {
		server := strings.TrimRight(r.o.Server, "/")
		start := "start sandfleet serve (or name the daemon's address with --server)"
		status, body, err := get(ctx, server+"/readyz", "")
		switch {
		case err != nil:
			return []Check{fail("daemon", "no daemon answers at "+server+": "+err.Error(), start)}
		case status == http.StatusServiceUnavailable:
			var why struct {
				Status string `json:"status"`
				Error  string `json:"error"`
			}
			_ = json.Unmarshal(body, &why)
			return []Check{fail("daemon", fmt.Sprintf("answers at %s but is not ready: %s %s", server, why.Status, why.Error),
				"it waits for its database, or for its first look at the providers: see its log")}
		case status != http.StatusOK:
			return []Check{fail("daemon", fmt.Sprintf("%s/readyz answers HTTP %d: not a sandfleet daemon?", server, status), start)}
		}
		status, _, err = get(ctx, server+"/apiv2/cuckoo/status/", r.o.Token)
		switch {
		case err != nil:
			return []Check{fail("daemon", "answers at "+server+", then not: "+err.Error(), start)}
		case status == http.StatusUnauthorized:
			detail := "answers at " + server + " and wants an API token"
			if r.o.Token != "" {
				detail = "answers at " + server + " and refuses the token given"
			}
			return []Check{fail("daemon", detail, "pass --token or set SANDFLEET_TOKEN (sandfleet token create NAME makes one)")}
		case status != http.StatusOK:
			return []Check{fail("daemon", fmt.Sprintf("answers at %s, but cuckoo/status/ answers HTTP %d", server, status), "see its log")}
		}
		return []Check{pass("daemon", "answers at "+server+": ready")}
	})
}

// get GETs a URL, presenting token if any, and returns the status and body.
func get(ctx context.Context, u, token string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Token "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, body, err
}
