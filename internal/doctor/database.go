package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sandfleet/sandfleet/internal/guest"
	"github.com/sandfleet/sandfleet/internal/store"
	"github.com/sandfleet/sandfleet/internal/store/open"
)

// database opens the database read-only and compares its migrations with
// this build's. It leaves the store open in r.st for the agents, or says
// in r.unread why there is none.
func (r *run) database(ctx context.Context) []Check {
	dbURL := r.cfg.DatabaseURL()
	shown := open.Redact(dbURL)
	if err := open.Check(dbURL); err != nil {
		r.unread = "the database URL is not usable"
		return []Check{fail("database", shown+": "+err.Error(), "correct database: sqlite:///path or postgres://user@host:5432/db")}
	}
	st, err := open.OpenReadOnly(ctx, dbURL)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		r.unread = "the database is not created yet"
		return []Check{fail("database", shown+": not created yet", "run sandfleet migrate or sandfleet serve (with this configuration): both create and migrate it")}
	case err != nil && open.IsServer(dbURL):
		r.unread = "the database does not answer"
		return []Check{fail("database", shown+": "+err.Error(),
			"start PostgreSQL, or correct database: the server, the database and a user that may connect to it")}
	case err != nil:
		r.unread = "the database cannot be opened"
		return []Check{fail("database", shown+": "+err.Error(), "correct database (or data_dir, where the default database is)")}
	}
	sc, err := st.Schema(ctx)
	if err != nil {
		st.Close()
		r.unread = "the database cannot be read"
		return []Check{fail("database", shown+": "+err.Error(), "check the database is sandfleet's, and readable by this user")}
	}
	at := 0
	if len(sc.Applied) > 0 {
		at = sc.Applied[len(sc.Applied)-1]
	}
	switch {
	case len(sc.Applied) == 0:
		st.Close()
		r.unread = "the database is not migrated"
		return []Check{fail("database", shown+": reachable, not migrated (no sandfleet tables)",
			"run sandfleet migrate or sandfleet serve (with this configuration): both migrate it")}
	case at > sc.Latest:
		st.Close()
		r.unread = "the database is newer than this sandfleet"
		return []Check{fail("database", fmt.Sprintf("%s: at migration %d, newer than this sandfleet knows (%d)", shown, at, sc.Latest),
			"run the sandfleet that migrated it, or a newer one")}
	case len(sc.Pending) > 0:
		// Older, but readable enough for the agents' check.
		r.st = st
		return []Check{fail("database", fmt.Sprintf("%s: migrations %s not applied; this sandfleet needs all %d",
			shown, ints(sc.Pending), sc.Latest), "run sandfleet migrate (sandfleet serve migrates too, when it starts)")}
	}
	r.st = st
	return []Check{pass("database", fmt.Sprintf("%s: reachable, migrated (%d of %d)", shown, at, sc.Latest))}
}

func ints(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ", ")
}

// agentsAtOnce bounds the agents asked at once.
const agentsAtOnce = 16

// agents asks the agent of every ready machine in the database what it is.
func (r *run) agents(ctx context.Context) []Check {
	if r.st == nil {
		return []Check{fail("agents", "not checked: "+r.unread, "see database above")}
	}
	ms, err := r.st.ListMachines(ctx, store.MachineFilter{})
	if err != nil {
		return []Check{fail("agents", "not checked: list machines: "+err.Error(), "see database above")}
	}
	var ready []store.Machine
	states := map[store.MachineState]int{}
	for _, m := range ms {
		if m.State == store.Ready {
			ready = append(ready, m)
		} else if m.State != store.Gone {
			states[m.State]++
		}
	}
	if len(ready) == 0 {
		detail := "no machine is ready"
		if len(states) > 0 {
			var parts []string
			for _, s := range slices.Sorted(maps.Keys(states)) {
				parts = append(parts, fmt.Sprintf("%d %s", states[s], s))
			}
			detail += " (" + strings.Join(parts, ", ") + ")"
		}
		return []Check{fail("agents", detail,
			"start sandfleet serve and wait for its machines to become ready (sandfleet machines list); "+
				"a machine stays provisioning while its agent does not answer")}
	}
	port := r.cfg.Guest.AgentPort
	// A call never outlasts the check; the client's own bound is for a
	// dial that hangs.
	client := guest.NewClient(port, min(r.o.Timeout, 5*time.Second))
	out := make([]Check, len(ready))
	limit := make(chan struct{}, agentsAtOnce)
	var wg sync.WaitGroup
	for i, m := range ready {
		limit <- struct{}{}
		wg.Go(func() {
			defer func() { <-limit }()
			if m.IP == "" {
				out[i] = fail("agents", m.Label+": ready, with no IP address to reach its agent at",
					"sandfleet serve records a machine's IP from its provider: see sandfleet machines show "+m.Label)
				return
			}
			info, err := client.Hello(ctx, m.IP)
			if err != nil {
				why := strings.TrimPrefix(err.Error(), "agent "+m.IP+": ")
				out[i] = fail("agents", fmt.Sprintf("%s: agent at %s:%d does not answer: %s", m.Label, m.IP, port, why),
					fmt.Sprintf("check that %s runs and its agent (agent.py) is started, listening on port %d (guest.agent_port) "+
						"and reachable from this host; sandfleet serve takes a silent machine out of service", m.Label, port))
				return
			}
			out[i] = pass("agents", fmt.Sprintf("%s %s: agent answers (version %s)", m.Label, m.IP, info.Version))
		})
	}
	wg.Wait()
	return out
}
