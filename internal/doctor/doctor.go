// Package doctor checks a sandfleet setup end to end before the first
// analysis — the configuration, the database, each provider, the result
// server, the analyzer package, the agents of the ready machines and the
// daemon — and says, of each thing that fails, what to change.
//
// It only reads: it migrates nothing, creates no file and starts nothing.
// Every check is bounded (Options.Timeout), and the checks that do not
// depend on each other run at once, so that a setup where everything hangs
// is reported in a few timeouts, not one per thing checked.
package doctor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/store"
)

// Check is one line of the report: a thing looked at and what was found.
type Check struct {
	// Check names what was looked at: "database", "azure image win10x64".
	Check  string `json:"check"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	// Fix says what to change; empty when OK.
	Fix string `json:"fix"`
}

func pass(check, detail string) Check { return Check{Check: check, OK: true, Detail: detail} }

func fail(check, detail, fix string) Check { return Check{Check: check, Detail: detail, Fix: fix} }

// DefaultTimeout bounds each check.
const DefaultTimeout = 10 * time.Second

// Options say what to check.
type Options struct {
	// Config is the configuration in use, as config.Load made it; nil with
	// ConfigErr saying why it could not be loaded.
	Config    *config.Config
	ConfigErr error
	// ConfigFile is where Config came from; "" for the built-in defaults.
	ConfigFile string
	// Server is the daemon's API URL; "" leaves the daemon unchecked.
	Server string
	// Token is the API token to present to it, if any.
	Token string
	// Timeout bounds each check (default DefaultTimeout).
	Timeout time.Duration
}

// OK reports whether every check passed.
func OK(cs []Check) bool {
	for _, c := range cs {
		if !c.OK {
			return false
		}
	}
	return true
}

// run is one Run: the options and what one check leaves for another.
type run struct {
	o   Options
	cfg *config.Config
	// st is the database, read-only, once the database check could read
	// it; nil otherwise, and unread says why.
	st     store.Store
	unread string
}

// Run checks the setup and returns the report, in order: configuration,
// database, providers, result server, analyzer, agents, daemon.
func Run(ctx context.Context, o Options) []Check {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	r := &run{o: o, cfg: o.Config}
	conf := r.configuration()
	var db, providers, results, analyzer, agents, daemon []Check
	var wg sync.WaitGroup
	if conf.OK {
		wg.Go(func() {
			db = r.bounded(ctx, r.database)
			// The machines are read from the database: after it, in a
			// time of their own.
			agents = r.bounded(ctx, r.agents)
			if r.st != nil {
				r.st.Close()
			}
		})
		wg.Go(func() { providers = r.providers(ctx) })
		wg.Go(func() { results = r.resultServer(ctx) })
		wg.Go(func() { analyzer = r.analyzer(ctx) })
	} else {
		skip := func(name string) []Check {
			return []Check{fail(name, "skipped: configuration invalid", "correct the configuration first")}
		}
		db, providers, results, analyzer, agents = skip("database"), skip("providers"), skip("resultserver"),
			skip("analyzer"), skip("agents")
	}
	if o.Server != "" {
		wg.Go(func() { daemon = r.daemon(ctx) })
	}
	wg.Wait()
	return slices.Concat([]Check{conf}, db, providers, results, analyzer, agents, daemon)
}

// bounded runs fn with a context that ends after the check timeout.
func (r *run) bounded(ctx context.Context, fn func(ctx context.Context) []Check) []Check {
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	return fn(ctx)
}

// configuration reports whether the configuration loaded and is valid.
func (r *run) configuration() Check {
	source := "built-in defaults"
	if r.o.ConfigFile != "" {
		source = r.o.ConfigFile
	}
	if r.o.ConfigErr != nil {
		return fail("configuration", oneLine(r.o.ConfigErr.Error()),
			"correct the line and key named (the README's Configuration section lists every key)")
	}
	if r.cfg == nil {
		return fail("configuration", "none given", "pass --config FILE")
	}
	if err := r.cfg.Validate(); err != nil {
		return fail("configuration", source+": "+oneLine(err.Error()),
			"correct the keys named (the README's Configuration section lists every key)")
	}
	names := make([]string, len(r.cfg.Pools))
	for i, p := range r.cfg.Pools {
		names[i] = p.Name + " (" + p.Provider + ")"
	}
	detail := fmt.Sprintf("%s valid, %s: %s", source, plural(len(names), "pool"), strings.Join(names, ", "))
	if r.cfg.Azure.Emulated() && r.usesAzure() {
		detail += "; Azure is the in-process emulator (no azure.subscription_id)"
	}
	return pass("configuration", detail)
}

// usesAzure reports whether a pool is on Azure.
func (r *run) usesAzure() bool {
	for _, p := range r.cfg.Pools {
		if p.Provider == "azure" {
			return true
		}
	}
	return false
}

// oneLine joins the lines of a multi-line error (config.Validate's, one
// problem a line) for a report of one line a check.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
