package leadership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The tests run in synctest bubbles: time is virtual, so a lease of 30 s
// plays out in microseconds and every step lands at an exact instant.
const (
	ttl    = 30 * time.Second
	margin = ttl / 10 // the default
	lease  = "reconciler/test"
)

// memStore is a lease table in memory with the SQL store's semantics and a
// clock of its own, the database's: no node's clock ever sets an expiry.
type memStore struct {
	mu      sync.Mutex
	now     func() time.Time
	leases  map[string]*memLease
	granted map[int64]time.Time // term → the latest expiry granted to it (one lease name per test)
	// fault, if set, decides the fate of each call as it arrives.
	fault func(op, holder string) fault
}

type memLease struct {
	holder  string // "" once resigned
	term    int64
	expires time.Time
}

type fault struct {
	err  error         // the call fails without reaching the table
	late time.Duration // the reply comes this long after the table changed, whatever the context says
}

func newMemStore() *memStore {
	return &memStore{now: time.Now, leases: map[string]*memLease{}, granted: map[int64]time.Time{}}
}

// do runs apply on the table at the database's time, as the call's fault
// allows.
func (s *memStore) do(ctx context.Context, op, holder string, apply func(now time.Time)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	var f fault
	if s.fault != nil {
		f = s.fault(op, holder)
	}
	if f.err == nil {
		apply(s.now())
	}
	s.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	time.Sleep(f.late) // a stalled connection, in virtual time
	return nil
}

func (s *memStore) lease(name string) *memLease {
	l := s.leases[name]
	if l == nil {
		l = &memLease{}
		s.leases[name] = l
	}
	return l
}

func (s *memStore) ElectLeader(ctx context.Context, name, holder string, ttl time.Duration) (int64, bool, error) {
	var term int64
	err := s.do(ctx, "elect", holder, func(now time.Time) {
		l := s.lease(name)
		if l.holder != "" && l.holder != holder && !l.expires.Before(now) {
			return
		}
		l.holder, l.term, l.expires = holder, l.term+1, now.Add(ttl)
		s.granted[l.term] = l.expires
		term = l.term
	})
	return term, err == nil && term != 0, err
}

func (s *memStore) ReelectLeader(ctx context.Context, name, holder string, term int64, ttl time.Duration) (bool, error) {
	var ok bool
	err := s.do(ctx, "reelect", holder, func(now time.Time) {
		l := s.lease(name)
		if l.holder != holder || l.term != term || l.expires.Before(now) {
			return
		}
		l.expires = now.Add(ttl)
		s.granted[l.term] = l.expires
		ok = true
	})
	return ok, err
}

func (s *memStore) ResignLeader(ctx context.Context, name, holder string, term int64) error {
	return s.do(ctx, "resign", holder, func(time.Time) {
		if l := s.lease(name); l.holder == holder && l.term == term {
			l.holder = ""
		}
	})
}

// harness runs electors on one memStore and records every tenure: from the
// call of lead to its return.
type harness struct {
	t  *testing.T
	st *memStore
	t0 time.Time
	// exclusive fails the test as soon as two leads overlap.
	exclusive bool

	mu      sync.Mutex
	live    map[string]time.Duration // who → leading since
	tenures []tenure
}

type tenure struct {
	who      string
	term     int64
	from, to time.Duration // since the test began
}

func newHarness(t *testing.T) *harness {
	return &harness{t: t, st: newMemStore(), t0: time.Now(), exclusive: true, live: map[string]time.Duration{}}
}

func (h *harness) since() time.Duration { return time.Since(h.t0) }

type node struct {
	cancel  context.CancelFunc
	done    chan struct{}
	follows atomic.Int32
}

// stop ends the node's Run and waits for it to return.
func (n *node) stop() {
	n.cancel()
	<-n.done
}

// start runs an elector called who for holder. Campaigns come exactly every
// TTL/3 unless an option restores the jitter. linger is how long lead takes
// to wind down once its context ends.
func (h *harness) start(who, holder string, linger time.Duration, opts ...func(*Elector)) *node {
	h.t.Helper()
	log := slog.New(slog.NewTextHandler(h.t.Output(), nil)).With("node", who)
	e, err := New(h.st, Config{Name: lease, Holder: holder, TTL: ttl, Logger: log})
	if err != nil {
		h.t.Fatal(err)
	}
	e.jitter = func(time.Duration) time.Duration { return 0 }
	for _, o := range opts {
		o(e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		e.Run(ctx, h.lead(who, holder, linger), func() { n.follows.Add(1) })
	}()
	h.t.Cleanup(n.stop)
	return n
}

func (h *harness) lead(who, holder string, linger time.Duration) func(context.Context) {
	return func(ctx context.Context) {
		h.mu.Lock()
		h.st.mu.Lock()
		l := *h.st.lease(lease)
		h.st.mu.Unlock()
		if l.holder != holder {
			h.t.Errorf("%s leads at %v but the lease is %q's", who, h.since(), l.holder)
		}
		for other := range h.live {
			if h.exclusive {
				h.t.Errorf("%s leads at %v while %s does", who, h.since(), other)
			}
		}
		from := h.since()
		h.live[who] = from
		h.mu.Unlock()

		<-ctx.Done()
		time.Sleep(linger) // winding down, in virtual time

		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.live, who)
		to := h.since()
		h.st.mu.Lock()
		expires := h.st.granted[l.term].Sub(h.t0)
		h.st.mu.Unlock()
		// No other node can be elected before expires; the leader must be
		// done a margin before that.
		if to > expires-margin {
			h.t.Errorf("%s led term %d until %v, its lease expiring at %v: less than the margin", who, l.term, to, expires)
		}
		h.tenures = append(h.tenures, tenure{who, l.term, from, to})
	}
}

func (h *harness) recorded() []tenure {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]tenure(nil), h.tenures...)
}

func (h *harness) leaders() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for who := range h.live {
		out = append(out, who)
	}
	return out
}

// Of several electors started together one leads, unbroken, until it stops;
// each of the others reports itself a standby once, and one of them takes
// over well within the TTL, for its predecessor resigned.
func TestOneLeaderAmongMany(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		nodes := map[string]*node{}
		for i := range 5 {
			who := fmt.Sprintf("node-%d", i)
			nodes[who] = h.start(who, who, 0, func(e *Elector) { e.jitter = randomJitter })
		}
		for round := range len(nodes) {
			time.Sleep(2 * time.Minute) // virtual: renewals and campaigns play out
			synctest.Wait()
			leaders := h.leaders()
			if len(leaders) != 1 {
				t.Fatalf("round %d: leaders %v, want one", round, leaders)
			}
			if got := len(h.recorded()); got != round {
				t.Fatalf("round %d: %d tenures over, want %d: the leader must not lapse while renewing", round, got, round)
			}
			for who, n := range nodes {
				if f := n.follows.Load(); f > 1 || (f == 0 && who != leaders[0]) {
					t.Errorf("round %d: %s called follow %d times", round, who, f)
				}
			}
			nodes[leaders[0]].stop()
			delete(nodes, leaders[0])
		}
		ts := h.recorded()
		for i := 1; i < len(ts); i++ {
			if gap := ts[i].from - ts[i-1].to; gap < 0 || gap > ttl/2 {
				t.Errorf("%s took over %v after %s stopped; want within a campaign interval, TTL/2", ts[i].who, gap, ts[i-1].who)
			}
			if ts[i].term <= ts[i-1].term {
				t.Errorf("term %d followed term %d", ts[i].term, ts[i-1].term)
			}
		}
	})
}

// stallCase is a store that stops answering node a in time from 10 s on,
// while node b stands by.
type stallCase struct {
	name  string
	fault func(op string, at time.Duration) fault
	// aUntil is when a's lead context must end: TTL−margin after the start
	// of its last successful attempt.
	aUntil time.Duration
}

var errDown = errors.New("connection refused")

var stallCases = []stallCase{
	{
		// The renewal at 10 s extends the lease but its reply comes after
		// the TTL: a must stop at 27 s, trusting its election at 0 s only.
		name: "reply later than the TTL",
		fault: func(op string, at time.Duration) fault {
			if at >= 10*time.Second && at < time.Minute {
				return fault{late: 40 * time.Second}
			}
			return fault{}
		},
		aUntil: ttl - margin,
	},
	{
		// The renewal at 10 s is answered at 25 s, then the database is out
		// of reach: trust runs from 10 s, when the attempt started, to 37 s,
		// 3 s before the lease the database extended at 10 s expires. Timed
		// from the reply it would run to 52 s, past the lease.
		name: "late reply then errors",
		fault: func(op string, at time.Duration) fault {
			switch {
			case at >= 10*time.Second && at < 11*time.Second:
				return fault{late: 15 * time.Second}
			case at >= 11*time.Second && at < time.Minute:
				return fault{err: errDown}
			}
			return fault{}
		},
		aUntil: 10*time.Second + ttl - margin,
	},
}

// runStall plays c: a leads, stalls, b takes over; at 2 min b stops and a,
// healthy again, takes over; at 3 min a stops. clockA and clockB are the
// nodes' clocks.
func runStall(t *testing.T, c stallCase, clockA, clockB func() time.Time) []tenure {
	h := newHarness(t)
	h.st.fault = func(op, holder string) fault {
		if holder != "a" {
			return fault{}
		}
		return c.fault(op, h.since())
	}
	a := h.start("a", "a", 0, func(e *Elector) { e.now = clockA })
	synctest.Wait()
	b := h.start("b", "b", 0, func(e *Elector) { e.now = clockB })
	time.Sleep(2 * time.Minute)
	b.stop()
	time.Sleep(time.Minute)
	a.stop()
	return h.recorded()
}

// A store that stalls, however it stalls, ends the leader's term on time:
// before its lease can expire and before another node is elected.
func TestStall(t *testing.T) {
	for _, c := range stallCases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ts := runStall(t, c, time.Now, time.Now)
				if len(ts) < 3 {
					t.Fatalf("tenures %+v: want a, b, a", ts)
				}
				if ts[0].who != "a" || ts[0].from != 0 || ts[0].to != c.aUntil {
					t.Errorf("first tenure %+v, want a's from 0 to %v", ts[0], c.aUntil)
				}
				if ts[1].who != "b" || ts[1].from < ttl {
					t.Errorf("second tenure %+v, want b's from after a's lease expired", ts[1])
				}
			})
		})
	}
}

// A node's wall clock off by an hour either way changes nothing: trust is a
// duration on the node's own clock, never compared with the database's time.
func TestClockSkew(t *testing.T) {
	c := stallCases[1]
	var want, got []tenure
	synctest.Test(t, func(t *testing.T) {
		want = runStall(t, c, time.Now, time.Now)
	})
	synctest.Test(t, func(t *testing.T) {
		// Round(0) drops the monotonic reading: these are wall clocks.
		ahead := func() time.Time { return time.Now().Add(time.Hour).Round(0) }
		behind := func() time.Time { return time.Now().Add(-time.Hour).Round(0) }
		got = runStall(t, c, ahead, behind)
	})
	if len(want) < 3 || !reflect.DeepEqual(got, want) {
		t.Errorf("with skewed clocks:\n%+v\nwant as without:\n%+v", got, want)
	}
}

// A leader that shuts down resigns once its lead has returned, so a standby
// takes over at its next campaign, well before the lease would have expired,
// and never while the old lead is still winding down.
func TestResignOnShutdown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		const linger = 2 * time.Second
		a := h.start("a", "a", linger)
		synctest.Wait()
		h.start("b", "b", 0) // campaigns at 0, 10, 20, 30 s
		time.Sleep(19 * time.Second)
		a.stop() // a renewed at 10 s: its lease would last to 40 s
		time.Sleep(ttl)
		ts := h.recorded()
		if len(ts) != 1 || ts[0].who != "a" || ts[0].to != 19*time.Second+linger {
			t.Fatalf("tenures %+v: want a's alone, ended at %v", ts, 19*time.Second+linger)
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if since, ok := h.live["b"]; len(h.live) != 1 || !ok || since != 30*time.Second {
			t.Fatalf("leading %v: want b since 30 s, its first campaign after a resigned", h.live)
		}
	})
}

// A node restarted under the same id takes its lease back at once, in a new
// term; the old instance, still running, learns at its next renewal that its
// term is over and stops at that instant, not when its trust would run out.
func TestTakenOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t)
		h.exclusive = false // the old instance overlaps the new until it renews: that is the point
		old := h.start("a#1", "a", 0)
		time.Sleep(5 * time.Second)
		h.start("a#2", "a", 0)
		time.Sleep(6 * time.Second)
		old.stop() // a zombie would campaign again in its own name; this one is gone
		time.Sleep(time.Minute)
		ts := h.recorded()
		if len(ts) != 1 || ts[0] != (tenure{"a#1", 1, 0, 10 * time.Second}) {
			t.Fatalf("tenures %+v: want a#1's, term 1, ended by its renewal at 10 s", ts)
		}
		if l := h.leaders(); len(l) != 1 || l[0] != "a#2" {
			t.Fatalf("leaders %v, want a#2 leading since 5 s without a break", l)
		}
	})
}

func TestNewRejects(t *testing.T) {
	for _, c := range []Config{
		{Holder: "a", TTL: ttl},
		{Name: lease, TTL: ttl},
		{Name: lease, Holder: "a"},
		{Name: lease, Holder: "a", TTL: ttl, Margin: -time.Second},
		{Name: lease, Holder: "a", TTL: ttl, Margin: ttl * 2 / 3},
	} {
		if _, err := New(newMemStore(), c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}
