// Package providertest is the conformance suite every provider driver passes:
// the same tests, run against the Azure driver (over the ARM emulator), the
// static driver and any later one, so that the reconciler can rely on one
// behaviour whatever the platform.
//
// A driver's test calls Run with a Harness describing how to get a fresh
// provider, which pool to work on and what the driver can do. Capabilities it
// lacks are checked too: they must fail with provider.ErrUnsupported.
package providertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// Caps says what a driver supports: the harness states it, the suite checks
// that the driver declares the same (Provider.Capabilities) and that every
// capability it lacks fails with provider.ErrUnsupported.
type Caps = provider.Capabilities

// Env is one fresh provider and the ways to reach behind its back.
type Env struct {
	Provider provider.Provider
	// AddInstance creates an instance in group without going through the
	// provider (a manual scale-out) and returns its id; nil if impossible.
	AddInstance func(ctx context.Context, group string) (string, error)
	// RemoveInstance makes an instance vanish without the provider (an
	// eviction, a manual delete); nil if impossible.
	RemoveInstance func(ctx context.Context, group, id string) error
	// StopInstance stops an instance without the provider (its host
	// rebooted, its guest shut down); nil if impossible.
	StopInstance func(ctx context.Context, group, id string) error
}

// Harness describes a driver under test.
type Harness struct {
	// Setup returns a fresh provider over fresh state; it registers its own
	// cleanup with t.
	Setup func(t *testing.T) Env
	// Spec is the pool the tests work on. With Caps.CreateGroup the suite
	// creates it (Spec.Capacity >= 2 instances); without, it must exist already
	// with at least one instance.
	Spec provider.PoolSpec
	// AltImage is an image UpdateGroupImage can switch Spec to (Caps.UpdateImage).
	AltImage string
	Caps     Caps
	// Timeout bounds each test; default one minute.
	Timeout time.Duration
}

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, h Harness) {
	if h.Timeout <= 0 {
		h.Timeout = time.Minute
	}
	if h.Caps.CreateGroup && h.Spec.Capacity < 2 {
		t.Fatalf("providertest: Spec.Capacity %d: the suite needs at least 2 instances", h.Spec.Capacity)
	}
	tests := []struct {
		name string
		fn   func(*testing.T, *suite)
	}{
		{"Capabilities", testCapabilities},
		{"ListGroups", testListGroups},
		{"GetGroup", testGetGroup},
		{"CreateGroupThenListInstances", testCreateThenList},
		{"UnknownGroupNotFound", testUnknownGroup},
		{"GetInstance", testGetInstance},
		{"TokenBeforeWait", testTokenBeforeWait},
		{"ResumeFromToken", testResume},
		{"BogusTokenRejected", testBogusToken},
		{"CapacityStaleETag", testStaleETag},
		{"ReimageKeepsIDs", testReimageKeepsIDs},
		{"ReimageStartsStopped", testReimageStartsStopped},
		{"DeleteRemovesIDs", testDeleteRemovesIDs},
		{"DeleteGroup", testDeleteGroup},
		{"UpdateGroupImage", testUpdateImage},
		{"Unsupported", testUnsupported},
		{"BehindTheBack", testBehindTheBack},
		{"ConcurrentReads", testConcurrentReads},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
			defer cancel()
			s := &suite{h: h, ctx: ctx}
			tc.fn(t, s)
		})
	}
}

type suite struct {
	h   Harness
	ctx context.Context
	env Env
}

func (s *suite) p() provider.Provider { return s.env.Provider }

// setup makes a fresh environment.
func (s *suite) setup(t *testing.T) {
	t.Helper()
	s.env = s.h.Setup(t)
	if s.env.Provider == nil {
		t.Fatal("Harness.Setup returned no provider")
	}
}

// group makes a fresh environment and returns the name of a group whose
// instances are all running, creating it if the driver can.
func (s *suite) group(t *testing.T) (string, []provider.Instance) {
	t.Helper()
	s.setup(t)
	name := s.h.Spec.Name
	if s.h.Caps.CreateGroup {
		op, err := s.p().CreateGroup(s.ctx, s.h.Spec)
		if err != nil {
			t.Fatalf("CreateGroup(%s): %v", name, err)
		}
		if err := op.Wait(s.ctx); err != nil {
			t.Fatalf("CreateGroup(%s).Wait: %v", name, err)
		}
		return name, s.waitRunning(t, name, s.h.Spec.Capacity)
	}
	ins, err := s.p().ListInstances(s.ctx, name)
	if err != nil {
		t.Fatalf("ListInstances(%s): %v", name, err)
	}
	if len(ins) == 0 {
		t.Fatalf("ListInstances(%s): no instances; the harness must provide some", name)
	}
	return name, s.waitRunning(t, name, len(ins))
}

// run takes a Begin call's results and waits and its Wait, returning the first error.
func (s *suite) run(op provider.Op, err error) error {
	if err != nil {
		return err
	}
	return op.Wait(s.ctx)
}

// waitFor polls ListInstances until ok accepts the list or the test's deadline
// passes.
func (s *suite) waitFor(t *testing.T, group, what string, ok func([]provider.Instance) bool) []provider.Instance {
	t.Helper()
	var last []provider.Instance
	var lastErr error
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		last, lastErr = s.p().ListInstances(s.ctx, group)
		if lastErr == nil && ok(last) {
			return last
		}
		select {
		case <-s.ctx.Done():
			t.Fatalf("%s: waiting for %s: %v (last list: %s, error %v)", group, what, s.ctx.Err(), describe(last), lastErr)
		case <-tick.C:
		}
	}
}

// waitRunning waits until group has exactly n instances, all running with IPs.
func (s *suite) waitRunning(t *testing.T, group string, n int) []provider.Instance {
	t.Helper()
	return s.waitFor(t, group, fmt.Sprintf("%d running instances", n), func(ins []provider.Instance) bool {
		if len(ins) != n {
			return false
		}
		for _, in := range ins {
			if in.State != provider.InstanceRunning || in.IP == "" {
				return false
			}
		}
		return true
	})
}

func describe(ins []provider.Instance) string {
	var b strings.Builder
	b.WriteString("[")
	for i, in := range ins {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s(%s,%s,%q)", in.ID, in.State, in.IP, in.Raw)
	}
	b.WriteString("]")
	return b.String()
}

func ids(ins []provider.Instance) []string {
	out := make([]string, 0, len(ins))
	for _, in := range ins {
		out = append(out, in.ID)
	}
	slices.Sort(out)
	return out
}

func findGroup(groups []provider.Group, name string) (provider.Group, bool) {
	for _, g := range groups {
		if g.Name == name {
			return g, true
		}
	}
	return provider.Group{}, false
}

func testListGroups(t *testing.T, s *suite) {
	name, ins := s.group(t)
	groups, err := s.p().ListGroups(s.ctx)
	if err != nil {
		t.Fatalf("ListGroups: %v", err)
	}
	g, ok := findGroup(groups, name)
	if !ok {
		t.Fatalf("ListGroups = %v, want %s among them", groups, name)
	}
	if !g.Owned {
		t.Errorf("group %s: Owned = false, want true (created or configured by sandfleet)", name)
	}
	if g.Capacity != len(ins) {
		t.Errorf("group %s: Capacity = %d, want %d", name, g.Capacity, len(ins))
	}
}

func testGetGroup(t *testing.T, s *suite) {
	name, ins := s.group(t)
	g, err := s.p().GetGroup(s.ctx, name)
	if err != nil {
		t.Fatalf("GetGroup(%s): %v", name, err)
	}
	if g.Name != name || !g.Owned || g.Capacity != len(ins) {
		t.Errorf("GetGroup(%s) = %+v, want name %s, owned, capacity %d", name, g, name, len(ins))
	}
	if s.h.Caps.Capacity && g.ETag == "" {
		t.Errorf("GetGroup(%s): empty ETag, but SetCapacity is conditional on it", name)
	}
	if s.h.Spec.Image != "" && !strings.HasSuffix(g.Image, s.h.Spec.Image) {
		t.Errorf("GetGroup(%s).Image = %q, want it to name image %q", name, g.Image, s.h.Spec.Image)
	}
}

func testCreateThenList(t *testing.T, s *suite) {
	name, ins := s.group(t) // creates the group when the driver can
	if !s.h.Caps.CreateGroup {
		if err := s.run(s.p().CreateGroup(s.ctx, s.h.Spec)); !errors.Is(err, provider.ErrUnsupported) {
			t.Fatalf("CreateGroup on a driver without it = %v, want ErrUnsupported", err)
		}
	}
	seenID := map[string]bool{}
	seenIP := map[string]bool{}
	for _, in := range ins {
		if in.ID == "" || in.Name == "" {
			t.Errorf("instance %+v: empty ID or Name", in)
		}
		if seenID[in.ID] {
			t.Errorf("instance id %s listed twice", in.ID)
		}
		if seenIP[in.IP] {
			t.Errorf("IP %s listed for two instances", in.IP)
		}
		seenID[in.ID], seenIP[in.IP] = true, true
		if s.h.Spec.Platform != "" && in.Platform != "" && in.Platform != s.h.Spec.Platform {
			t.Errorf("instance %s: Platform = %q, want %q", in.ID, in.Platform, s.h.Spec.Platform)
		}
	}
	if s.h.Caps.CreateGroup {
		// A second create of the same name must not silently take over the
		// existing group (If-None-Match: *).
		err := s.run(s.p().CreateGroup(s.ctx, s.h.Spec))
		if err == nil {
			t.Errorf("CreateGroup(%s) a second time succeeded; want an error", name)
		}
		if again := s.waitRunning(t, name, len(ins)); !slices.Equal(ids(again), ids(ins)) {
			t.Errorf("second CreateGroup changed instances: %v -> %v", ids(ins), ids(again))
		}
	}
}

func testUnknownGroup(t *testing.T, s *suite) {
	s.setup(t)
	const name = "sandfleet-no-such-group"
	if _, err := s.p().ListInstances(s.ctx, name); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("ListInstances(%s) = %v, want ErrNotFound", name, err)
	}
	if _, err := s.p().GetGroup(s.ctx, name); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("GetGroup(%s) = %v, want ErrNotFound", name, err)
	}
}

func testGetInstance(t *testing.T, s *suite) {
	name, ins := s.group(t)
	for _, in := range ins {
		got, err := s.p().GetInstance(s.ctx, name, in.ID)
		if err != nil {
			t.Fatalf("GetInstance(%s, %s): %v", name, in.ID, err)
		}
		if got.ID != in.ID || got.Name != in.Name || got.State != provider.InstanceRunning {
			t.Errorf("GetInstance(%s) = %+v, want %s running as listed", in.ID, got, in.Name)
		}
	}
	if _, err := s.p().GetInstance(s.ctx, name, "no-such-instance"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("GetInstance(unknown id) = %v, want ErrNotFound", err)
	}
	if _, err := s.p().GetInstance(s.ctx, "sandfleet-no-such-group", ins[0].ID); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("GetInstance(unknown group) = %v, want ErrNotFound", err)
	}
}

func testTokenBeforeWait(t *testing.T, s *suite) {
	name, ins := s.group(t)
	op, err := s.p().Reimage(s.ctx, name, []string{ins[0].ID})
	if err != nil {
		t.Fatalf("Reimage: %v", err)
	}
	// The token must be there before anyone waits: the caller journals it first.
	tok := op.Token()
	if s.h.Caps.Tokens && tok == "" {
		t.Errorf("Reimage: Token() empty before Wait")
	}
	if err := op.Wait(s.ctx); err != nil {
		t.Fatalf("Reimage.Wait: %v", err)
	}
	if op.Token() != tok {
		t.Errorf("Token() changed across Wait: %q -> %q", tok, op.Token())
	}
}

func testResume(t *testing.T, s *suite) {
	if !s.h.Caps.Tokens {
		t.Skip("driver has no resume tokens (BogusTokenRejected covers Resume)")
	}
	name, ins := s.group(t)
	op, err := s.p().Reimage(s.ctx, name, []string{ins[0].ID})
	if err != nil {
		t.Fatalf("Reimage: %v", err)
	}
	resumed, err := s.p().Resume(s.ctx, provider.KindReimage, op.Token())
	if err != nil {
		t.Fatalf("Resume(reimage, token): %v", err)
	}
	if err := resumed.Wait(s.ctx); err != nil {
		t.Fatalf("resumed reimage: Wait: %v", err)
	}
	after := s.waitRunning(t, name, len(ins))
	if !slices.Equal(ids(after), ids(ins)) {
		t.Errorf("instances after resumed reimage = %v, want %v", ids(after), ids(ins))
	}
	if s.h.Caps.Capacity {
		g, err := s.p().GetGroup(s.ctx, name)
		if err != nil {
			t.Fatalf("GetGroup: %v", err)
		}
		op, err := s.p().SetCapacity(s.ctx, name, g.Capacity+1, g.ETag)
		if err != nil {
			t.Fatalf("SetCapacity: %v", err)
		}
		resumed, err := s.p().Resume(s.ctx, provider.KindCapacity, op.Token())
		if err != nil {
			t.Fatalf("Resume(set_capacity, token): %v", err)
		}
		if err := resumed.Wait(s.ctx); err != nil {
			t.Fatalf("resumed SetCapacity: Wait: %v", err)
		}
		s.waitRunning(t, name, g.Capacity+1)
	}
}

var allKinds = []provider.Kind{
	provider.KindCreateGroup, provider.KindDeleteGroup, provider.KindUpdateGroup,
	provider.KindCapacity, provider.KindReimage, provider.KindDelete,
}

func testBogusToken(t *testing.T, s *suite) {
	s.setup(t)
	for _, kind := range allKinds {
		for _, tok := range []string{"", "not-a-token", `{"type":"nonsense","token":{}}`} {
			op, err := s.p().Resume(s.ctx, kind, tok)
			if err == nil {
				err = op.Wait(s.ctx)
			}
			if !errors.Is(err, provider.ErrTokenRejected) {
				t.Errorf("Resume(%s, %q) = %v, want ErrTokenRejected", kind, tok, err)
			}
		}
	}
	if !s.h.Caps.Tokens {
		return
	}
	// A real token presented as another kind of operation is rejected too.
	name, ins := s.group(t)
	op, err := s.p().Reimage(s.ctx, name, []string{ins[0].ID})
	if err != nil {
		t.Fatalf("Reimage: %v", err)
	}
	if _, err := s.p().Resume(s.ctx, provider.KindCreateGroup, op.Token()); !errors.Is(err, provider.ErrTokenRejected) {
		t.Errorf("Resume(create_pool, <reimage token>) = %v, want ErrTokenRejected", err)
	}
	if err := op.Wait(s.ctx); err != nil {
		t.Fatalf("Reimage.Wait: %v", err)
	}
}

func testStaleETag(t *testing.T, s *suite) {
	if !s.h.Caps.Capacity {
		t.Skip("driver cannot set capacity (Unsupported covers it)")
	}
	name, ins := s.group(t)
	g, err := s.p().GetGroup(s.ctx, name)
	if err != nil {
		t.Fatalf("GetGroup: %v", err)
	}
	n := len(ins)
	if err := s.run(s.p().SetCapacity(s.ctx, name, n+1, g.ETag)); err != nil {
		t.Fatalf("SetCapacity(%d, fresh etag): %v", n+1, err)
	}
	// g.ETag is stale now: the write must be refused, not applied.
	err = s.run(s.p().SetCapacity(s.ctx, name, n+3, g.ETag))
	if !errors.Is(err, provider.ErrPreconditionFailed) {
		t.Fatalf("SetCapacity(%d, stale etag) = %v, want ErrPreconditionFailed", n+3, err)
	}
	g2, err := s.p().GetGroup(s.ctx, name)
	if err != nil {
		t.Fatalf("GetGroup: %v", err)
	}
	if g2.Capacity != n+1 {
		t.Errorf("capacity after stale write = %d, want %d", g2.Capacity, n+1)
	}
	if g2.ETag == g.ETag {
		t.Errorf("ETag unchanged (%q) after a capacity change", g.ETag)
	}
	s.waitRunning(t, name, n+1)
	// An empty etag writes unconditionally.
	if err := s.run(s.p().SetCapacity(s.ctx, name, n, "")); err != nil {
		t.Fatalf("SetCapacity(%d, no etag): %v", n, err)
	}
	s.waitRunning(t, name, n)
}

func testReimageKeepsIDs(t *testing.T, s *suite) {
	name, ins := s.group(t)
	target := ids(ins)[:min(2, len(ins))]
	if err := s.run(s.p().Reimage(s.ctx, name, target)); err != nil {
		t.Fatalf("Reimage(%v): %v", target, err)
	}
	after := s.waitRunning(t, name, len(ins))
	if !slices.Equal(ids(after), ids(ins)) {
		t.Errorf("ids after reimage = %v, want %v", ids(after), ids(ins))
	}
	names := func(ins []provider.Instance) map[string]string {
		m := map[string]string{}
		for _, in := range ins {
			m[in.ID] = in.Name
		}
		return m
	}
	before, now := names(ins), names(after)
	for id, n := range before {
		if now[id] != n {
			t.Errorf("instance %s renamed by reimage: %q -> %q", id, n, now[id])
		}
	}
	if err := s.run(s.p().Reimage(s.ctx, name, []string{"no-such-instance-999"})); err == nil {
		t.Errorf("Reimage of an unknown id succeeded")
	}
}

// testReimageStartsStopped: a driver that declares ReimageStarts brings a
// stopped instance back running with a reimage.
func testReimageStartsStopped(t *testing.T, s *suite) {
	if !s.h.Caps.ReimageStarts {
		t.Skip("driver does not declare that a reimage starts a stopped instance")
	}
	name, ins := s.group(t)
	stop := s.env.StopInstance
	if stop == nil {
		t.Fatal("the driver declares ReimageStarts: the harness must be able to stop an instance (Env.StopInstance)")
	}
	id := ins[0].ID
	if err := stop(s.ctx, name, id); err != nil {
		t.Fatalf("stop %s: %v", id, err)
	}
	in, err := s.p().GetInstance(s.ctx, name, id)
	if err != nil || in.State != provider.InstanceStopped {
		t.Fatalf("after the stop: %+v, %v; want stopped", in, err)
	}
	if err := s.run(s.p().Reimage(s.ctx, name, []string{id})); err != nil {
		t.Fatalf("Reimage(%s) of the stopped instance: %v", id, err)
	}
	s.waitRunning(t, name, len(ins))
}

func testDeleteRemovesIDs(t *testing.T, s *suite) {
	if !s.h.Caps.Delete {
		t.Skip("driver cannot delete instances (Unsupported covers it)")
	}
	name, ins := s.group(t)
	victim := ids(ins)[0]
	if err := s.run(s.p().Delete(s.ctx, name, []string{victim})); err != nil {
		t.Fatalf("Delete(%s): %v", victim, err)
	}
	after := s.waitRunning(t, name, len(ins)-1)
	if slices.Contains(ids(after), victim) {
		t.Errorf("deleted instance %s still listed: %v", victim, ids(after))
	}
	g, err := s.p().GetGroup(s.ctx, name)
	if err != nil {
		t.Fatalf("GetGroup: %v", err)
	}
	if g.Capacity != len(ins)-1 {
		t.Errorf("capacity after deleting one = %d, want %d", g.Capacity, len(ins)-1)
	}
}

func testDeleteGroup(t *testing.T, s *suite) {
	if !s.h.Caps.DeleteGroup {
		t.Skip("driver cannot delete groups (Unsupported covers it)")
	}
	name, _ := s.group(t)
	op, err := s.p().DeleteGroup(s.ctx, name)
	if err != nil {
		t.Fatalf("DeleteGroup: %v", err)
	}
	if s.h.Caps.Tokens && op.Token() == "" {
		t.Errorf("DeleteGroup: no token before Wait")
	}
	if err := op.Wait(s.ctx); err != nil {
		t.Fatalf("DeleteGroup.Wait: %v", err)
	}
	if _, err := s.p().GetGroup(s.ctx, name); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("GetGroup after delete = %v, want ErrNotFound", err)
	}
	groups, err := s.p().ListGroups(s.ctx)
	if err != nil {
		t.Fatalf("ListGroups: %v", err)
	}
	if _, ok := findGroup(groups, name); ok {
		t.Errorf("ListGroups after delete still has %s", name)
	}
}

func testUpdateImage(t *testing.T, s *suite) {
	if !s.h.Caps.UpdateImage {
		t.Skip("driver cannot update images (Unsupported covers it)")
	}
	if s.h.AltImage == "" {
		t.Fatal("Harness.AltImage is required with Caps.UpdateImage")
	}
	name, _ := s.group(t)
	spec := s.h.Spec
	spec.Image = s.h.AltImage
	if err := s.run(s.p().UpdateGroupImage(s.ctx, spec)); err != nil {
		t.Fatalf("UpdateGroupImage(%s): %v", spec.Image, err)
	}
	g, err := s.p().GetGroup(s.ctx, name)
	if err != nil {
		t.Fatalf("GetGroup: %v", err)
	}
	if !strings.HasSuffix(g.Image, s.h.AltImage) {
		t.Errorf("group image after update = %q, want it to name %q", g.Image, s.h.AltImage)
	}
}

func testCapabilities(t *testing.T, s *suite) {
	s.setup(t)
	if got := s.p().Capabilities(); got != s.h.Caps {
		t.Fatalf("driver declares %+v, harness expects %+v", got, s.h.Caps)
	}
}

func testUnsupported(t *testing.T, s *suite) {
	s.setup(t)
	c := s.h.Caps
	name := s.h.Spec.Name
	calls := []struct {
		supported bool
		what      string
		call      func() (provider.Op, error)
	}{
		{c.CreateGroup, "CreateGroup", func() (provider.Op, error) { return s.p().CreateGroup(s.ctx, s.h.Spec) }},
		{c.DeleteGroup, "DeleteGroup", func() (provider.Op, error) { return s.p().DeleteGroup(s.ctx, name) }},
		{c.UpdateImage, "UpdateGroupImage", func() (provider.Op, error) { return s.p().UpdateGroupImage(s.ctx, s.h.Spec) }},
		{c.Capacity, "SetCapacity", func() (provider.Op, error) { return s.p().SetCapacity(s.ctx, name, 1, "") }},
		{c.Delete, "Delete", func() (provider.Op, error) { return s.p().Delete(s.ctx, name, []string{"0"}) }},
	}
	tested := 0
	for _, call := range calls {
		if call.supported {
			continue
		}
		tested++
		if err := s.run(call.call()); !errors.Is(err, provider.ErrUnsupported) {
			t.Errorf("%s = %v, want ErrUnsupported", call.what, err)
		}
	}
	if tested == 0 {
		t.Skip("driver supports every operation")
	}
}

func testBehindTheBack(t *testing.T, s *suite) {
	name, ins := s.group(t)
	if s.env.AddInstance == nil && s.env.RemoveInstance == nil {
		t.Skip("harness cannot change instances behind the provider's back")
	}
	n := len(ins)
	if s.env.AddInstance != nil {
		id, err := s.env.AddInstance(s.ctx, name)
		if err != nil {
			t.Fatalf("AddInstance: %v", err)
		}
		after := s.waitRunning(t, name, n+1)
		if !slices.Contains(ids(after), id) {
			t.Errorf("instance %s added behind the provider's back is not listed: %v", id, ids(after))
		}
		n++
	}
	if s.env.RemoveInstance != nil {
		victim := ids(ins)[0]
		if err := s.env.RemoveInstance(s.ctx, name, victim); err != nil {
			t.Fatalf("RemoveInstance(%s): %v", victim, err)
		}
		after := s.waitFor(t, name, "instance "+victim+" gone", func(ins []provider.Instance) bool {
			return !slices.Contains(ids(ins), victim)
		})
		if len(after) != n-1 {
			t.Errorf("after removing %s: %d instances, want %d", victim, len(after), n-1)
		}
	}
}

func testConcurrentReads(t *testing.T, s *suite) {
	name, ins := s.group(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 4 {
		wg.Go(func() {
			got, err := s.p().ListInstances(s.ctx, name)
			if err == nil && len(got) != len(ins) {
				err = fmt.Errorf("ListInstances: %d instances, want %d", len(got), len(ins))
			}
			errs <- err
		})
		wg.Go(func() {
			_, err := s.p().GetGroup(s.ctx, name)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
