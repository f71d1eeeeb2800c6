// Package storetest is the conformance suite of store.Store: the same tests
// run against every database (store/sqlite, store/postgres), so that they keep
// behaving alike — above all, so that a compare-and-set has exactly one
// winner however many goroutines, or sandfleet nodes, race for it.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/store"
)

// PerTest builds Run's open function from newDB, which creates an empty
// database for a test and says where it is, and openAt, which opens a handle
// on it. The first call for a test creates its database; every call returns a
// new handle, closed when the test ends.
func PerTest(newDB func(t testing.TB) string, openAt func(ctx context.Context, where string) (store.Store, error)) func(t *testing.T) store.Store {
	var dbs sync.Map // *testing.T → where
	return func(t *testing.T) store.Store {
		t.Helper()
		where, ok := dbs.Load(t)
		if !ok {
			where = newDB(t)
			dbs.Store(t, where)
			t.Cleanup(func() { dbs.Delete(t) })
		}
		s, err := openAt(context.Background(), where.(string))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

// Run runs the suite. open(t) must return a new, unmigrated handle on t's own
// database: empty on the first call for t, the same database on later calls
// for t, and closed when t ends (PerTest builds such a function).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func(t *testing.T) store.Store)
	}{
		{"Migrate", testMigrate},
		{"Schema", testSchema},
		{"Pools", testPools},
		{"InsertAndList", testInsertAndList},
		{"InsertLargeBatch", testInsertLargeBatch},
		{"InsertConflict", testInsertConflict},
		{"Transition", testTransition},
		{"TransitionStale", testTransitionStale},
		{"TransitionMachines", testTransitionMachines},
		{"Operations", testOperations},
		{"OperationFilters", testOperationFilters},
		{"Reopen", testReopen},
		{"RoundTrips", testRoundTrips},
		{"RaceCompareAndSet", testRaceCompareAndSet},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Leases", testLeases},
		{"RaceLease", testRaceLease},
		{"SamplesAndTasks", testSamplesAndTasks},
		{"TaskLease", testTaskLease},
		{"TaskRequeue", testTaskRequeue},
		{"ExpiredLeases", testExpiredLeases},
		{"RaceTaskLease", testRaceTaskLease},
		{"Hooks", testHooks},
		{"CountEndedByHour", testCountEndedByHour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open)
		})
	}
}

// migrated opens a handle and migrates it.
func migrated(t *testing.T, open func(t *testing.T) store.Store) store.Store {
	t.Helper()
	s := open(t)
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return s
}

// machine is a ready machine in pool p with the given tags.
func machine(label, pool string, state store.MachineState, tags ...string) store.Machine {
	return store.Machine{
		Label: label, Pool: pool, InstanceID: label + "-id", Arch: "x64", IP: "10.0.0.1",
		Platform: "windows", Interface: "eth0", Snapshot: "snap", ResultServerIP: "10.0.0.4",
		ResultServerPort: 2042, Tags: tags, State: state,
	}
}

func insert(t *testing.T, s store.Store, ms ...store.Machine) []store.Machine {
	t.Helper()
	got, err := s.InsertMachines(context.Background(), ms, "test")
	if err != nil {
		t.Fatalf("InsertMachines: %v", err)
	}
	return got
}

func get(t *testing.T, s store.Store, label string) store.Machine {
	t.Helper()
	m, err := s.GetMachine(context.Background(), label)
	if err != nil {
		t.Fatalf("GetMachine(%s): %v", label, err)
	}
	return m
}

func events(t *testing.T, s store.Store, label string) []store.MachineEvent {
	t.Helper()
	es, err := s.MachineEvents(context.Background(), label)
	if err != nil {
		t.Fatalf("MachineEvents(%s): %v", label, err)
	}
	return es
}

func labels(ms []store.Machine) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Label)
	}
	return out
}

// now is the current time as a store keeps it, for before/after checks.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func strp(s string) *string { return &s }

func testMigrate(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	a, b := open(t), open(t)
	// Two handles migrating an empty database at once must take turns.
	errs := make(chan error, 2)
	for _, s := range []store.Store{a, b} {
		go func() { errs <- s.Migrate(ctx) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	insert(t, a, machine("m1", "p", store.Ready))
	for range 2 {
		if err := a.Migrate(ctx); err != nil {
			t.Fatalf("Migrate again: %v", err)
		}
	}
	c := migrated(t, open)
	if d := c.Dialect(); d != "sqlite" && d != "postgres" {
		t.Errorf("Dialect() = %q", d)
	}
	if got := get(t, c, "m1"); got.State != store.Ready {
		t.Errorf("after re-migrating, m1 is %s", got.State)
	}
}

// Schema tells a database never migrated from a migrated one, and reading
// it creates nothing: a second look finds the database as untouched.
func testSchema(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	for range 2 {
		sc, err := s.Schema(ctx)
		if err != nil {
			t.Fatalf("Schema of an empty database: %v", err)
		}
		if len(sc.Applied) != 0 || sc.Latest < 1 || len(sc.Pending) == 0 || sc.Pending[len(sc.Pending)-1] != sc.Latest || sc.Current() {
			t.Fatalf("Schema of an empty database = %+v", sc)
		}
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	sc, err := open(t).Schema(ctx)
	if err != nil {
		t.Fatalf("Schema of a migrated database: %v", err)
	}
	if len(sc.Pending) != 0 || !sc.Current() {
		t.Fatalf("Schema of a migrated database = %+v", sc)
	}
}

// ReadOnly checks a read-only handle, opened by openReadOnly, on the
// database at where: it reads what a handle opened by openAt wrote, and
// cannot write.
func ReadOnly(t *testing.T, where string, openAt, openReadOnly func(ctx context.Context, where string) (store.Store, error)) {
	t.Helper()
	ctx := context.Background()
	rw, err := openAt(ctx, where)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if err := rw.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	insert(t, rw, machine("m", "p", store.Ready))
	ro, err := openReadOnly(ctx, where)
	if err != nil {
		t.Fatalf("open read-only: %v", err)
	}
	defer ro.Close()
	if sc, err := ro.Schema(ctx); err != nil || !sc.Current() {
		t.Errorf("Schema read-only = %+v, %v", sc, err)
	}
	if ms, err := ro.ListMachines(ctx, store.MachineFilter{}); err != nil || len(ms) != 1 {
		t.Errorf("ListMachines read-only = %v, %v", ms, err)
	}
	if _, err := ro.InsertMachines(ctx, []store.Machine{machine("n", "p", store.Ready)}, "test"); err == nil {
		t.Error("a read-only handle wrote")
	}
}

func testPools(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	if _, err := s.GetPool(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetPool(missing) = %v, want ErrNotFound", err)
	}
	if err := s.UpsertPool(ctx, store.Pool{}); err == nil {
		t.Fatal("UpsertPool without a name succeeded")
	}
	win := store.Pool{Name: "win10", Provider: "azure", Platform: "windows", Arch: "x64",
		Tags: []string{"x64", "win10"}, Image: "img", InitialSize: 2, MaxSize: 20}
	lab := store.Pool{Name: "lab", Provider: "static", Platform: "linux", Reserved: true}
	start := now()
	for _, p := range []store.Pool{win, lab} {
		if err := s.UpsertPool(ctx, p); err != nil {
			t.Fatalf("UpsertPool(%s): %v", p.Name, err)
		}
	}
	got, err := s.GetPool(ctx, "win10")
	if err != nil {
		t.Fatalf("GetPool: %v", err)
	}
	if got.UpdatedAt.Before(start) || got.UpdatedAt.Location() != time.UTC {
		t.Errorf("UpdatedAt = %v, want UTC, not before %v", got.UpdatedAt, start)
	}
	got.UpdatedAt = time.Time{}
	if !reflect.DeepEqual(got, win) {
		t.Errorf("GetPool = %+v, want %+v", got, win)
	}

	win.Tags, win.MaxSize, win.Image = []string{"win11"}, 5, "img2"
	if err := s.UpsertPool(ctx, win); err != nil {
		t.Fatalf("UpsertPool(update): %v", err)
	}
	ps, err := s.ListPools(ctx)
	if err != nil {
		t.Fatalf("ListPools: %v", err)
	}
	for i := range ps {
		ps[i].UpdatedAt = time.Time{}
	}
	if want := []store.Pool{lab, win}; !reflect.DeepEqual(ps, want) {
		t.Errorf("ListPools = %+v, want %+v", ps, want)
	}
}

func testInsertAndList(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	start := now()
	in := []store.Machine{
		machine("a1", "a", store.Ready, "win10", "x64", "win10"),
		machine("a2", "a", store.Provisioning),
		machine("b1", "b", store.Ready, "linux"),
		machine("b2", "b", store.Leased),
	}
	in[1].Name = "custom-name"
	got := insert(t, s, in...)
	if len(got) != len(in) {
		t.Fatalf("InsertMachines returned %d machines, want %d", len(got), len(in))
	}
	for i, m := range got {
		if m.ID == 0 || m.Version != 1 || m.Label != in[i].Label {
			t.Errorf("inserted %s: ID %d version %d, want an ID and version 1", m.Label, m.ID, m.Version)
		}
		if m.CreatedAt.Before(start) || m.StateChangedOn.Before(start) {
			t.Errorf("inserted %s: CreatedAt %v StateChangedOn %v before %v", m.Label, m.CreatedAt, m.StateChangedOn, start)
		}
		if read := get(t, s, m.Label); !reflect.DeepEqual(read, m) {
			t.Errorf("GetMachine(%s) = %+v\nInsertMachines returned %+v", m.Label, read, m)
		}
		es := events(t, s, m.Label)
		want := store.MachineEvent{ID: es[0].ID, MachineID: m.ID, Label: m.Label, To: m.State, Cause: "test", At: m.CreatedAt}
		if len(es) != 1 || !reflect.DeepEqual(es[0], want) {
			t.Errorf("events of %s = %+v, want [%+v]", m.Label, es, want)
		}
	}
	if got[0].Name != "a1" || got[1].Name != "custom-name" {
		t.Errorf("names %q %q, want the label when empty", got[0].Name, got[1].Name)
	}
	if !reflect.DeepEqual(got[0].Tags, []string{"win10", "x64"}) || got[1].Tags != nil {
		t.Errorf("tags %q %q, want [win10 x64] (deduplicated, in order) and none", got[0].Tags, got[1].Tags)
	}
	if !got[3].LockedChangedOn.Equal(got[3].CreatedAt) || !got[0].LockedChangedOn.IsZero() {
		t.Errorf("LockedChangedOn %v (leased) %v (ready): want set only for the leased machine",
			got[3].LockedChangedOn, got[0].LockedChangedOn)
	}

	for _, tc := range []struct {
		f    store.MachineFilter
		want []string
	}{
		{store.MachineFilter{}, []string{"a1", "a2", "b1", "b2"}},
		{store.MachineFilter{Pool: "a"}, []string{"a1", "a2"}},
		{store.MachineFilter{States: []store.MachineState{store.Ready}}, []string{"a1", "b1"}},
		{store.MachineFilter{States: []store.MachineState{store.Leased, store.Provisioning}}, []string{"a2", "b2"}},
		{store.MachineFilter{Pool: "b", States: []store.MachineState{store.Ready}}, []string{"b1"}},
		{store.MachineFilter{Pool: "c"}, nil},
		{store.MachineFilter{States: []store.MachineState{store.Gone}}, nil},
	} {
		ms, err := s.ListMachines(ctx, tc.f)
		if err != nil {
			t.Fatalf("ListMachines(%+v): %v", tc.f, err)
		}
		if !reflect.DeepEqual(labels(ms), tc.want) {
			t.Errorf("ListMachines(%+v) = %v, want %v", tc.f, labels(ms), tc.want)
		}
	}
	all, _ := s.ListMachines(ctx, store.MachineFilter{})
	if !reflect.DeepEqual(all, got) {
		t.Errorf("ListMachines = %+v\nwant %+v", all, got)
	}

	if _, err := s.GetMachine(ctx, "zz"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetMachine(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.MachineEvents(ctx, "zz"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("MachineEvents(missing) = %v, want ErrNotFound", err)
	}
	for _, bad := range []store.Machine{{State: store.Ready}, {Label: "nostate"},
		{Label: "badtag", State: store.Ready, Tags: []string{"a\x1fb"}}} {
		if _, err := s.InsertMachines(ctx, []store.Machine{bad}, "test"); err == nil {
			t.Errorf("InsertMachines(%+v) succeeded", bad)
		}
	}
	if ms, err := s.InsertMachines(ctx, nil, "test"); err != nil || len(ms) != 0 {
		t.Errorf("InsertMachines(nil) = %v, %v", ms, err)
	}
}

func testInsertLargeBatch(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	const n = 1234 // more than one statement's worth of rows
	in := make([]store.Machine, n)
	for i := range in {
		in[i] = machine(fmt.Sprintf("m%04d", i), "p", store.Ready, "t1", fmt.Sprintf("t%d", i))
	}
	got := insert(t, s, in...)
	all, err := s.ListMachines(ctx, store.MachineFilter{Pool: "p"})
	if err != nil {
		t.Fatalf("ListMachines: %v", err)
	}
	if len(all) != n {
		t.Fatalf("listed %d machines, want %d", len(all), n)
	}
	byLabel := map[string]store.Machine{}
	for _, m := range all {
		byLabel[m.Label] = m
	}
	for _, m := range got {
		if !reflect.DeepEqual(byLabel[m.Label], m) {
			t.Fatalf("listed %+v\ninserted %+v", byLabel[m.Label], m)
		}
	}
}

func testInsertConflict(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	insert(t, s, machine("taken", "p", store.Ready))
	for _, batch := range [][]store.Machine{
		{machine("new1", "p", store.Ready, "x"), machine("taken", "q", store.Provisioning)},
		{machine("new2", "p", store.Ready), machine("new2", "p", store.Ready)},
	} {
		_, err := s.InsertMachines(ctx, batch, "test")
		if !errors.Is(err, store.ErrConflict) {
			t.Errorf("InsertMachines(%v) = %v, want ErrConflict", labels(batch), err)
		}
	}
	ms, err := s.ListMachines(ctx, store.MachineFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got := labels(ms); !reflect.DeepEqual(got, []string{"taken"}) {
		t.Errorf("after conflicts the machines are %v, want only [taken]", got)
	}
	if m := get(t, s, "taken"); m.Pool != "p" || m.State != store.Ready || m.Version != 1 {
		t.Errorf("the existing row changed: %+v", m)
	}
	// The failed batches left no stray events or tags behind a reused label.
	insert(t, s, machine("new1", "p", store.Ready))
	if m := get(t, s, "new1"); m.Tags != nil || len(events(t, s, "new1")) != 1 {
		t.Errorf("new1 has tags %v and %d events, want none and 1", m.Tags, len(events(t, s, "new1")))
	}
}

func testTransition(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	quarantined := machine("", "p", store.Quarantined)
	quarantined.QuarantineReason = "agent down"
	quarantined.Failures = 3
	failing := machine("", "p", store.Reimaging)
	failing.Failures = 2
	failures := func(want int) func(t *testing.T, _, after store.Machine) {
		return func(t *testing.T, _, after store.Machine) {
			t.Helper()
			if after.Failures != want {
				t.Errorf("Failures = %d, want %d", after.Failures, want)
			}
		}
	}

	tests := []struct {
		name  string
		start store.Machine
		tr    store.Transition
		// event: the transition records one; locked: it moves LockedChangedOn.
		event, locked bool
		check         func(t *testing.T, before, after store.Machine)
	}{
		{name: "lease", start: machine("", "p", store.Ready),
			tr:    store.Transition{From: store.Ready, To: store.Leased, Cause: "task 1"},
			event: true, locked: true},
		{name: "release", start: machine("", "p", store.Leased),
			tr:    store.Transition{From: store.Leased, To: store.Dirty, Version: 1, Cause: "task 1 done"},
			event: true, locked: true},
		{name: "not via leased", start: machine("", "p", store.Dirty),
			tr:    store.Transition{From: store.Dirty, To: store.Reimaging},
			event: true},
		{name: "quarantine", start: machine("", "p", store.Ready),
			tr:    store.Transition{From: store.Ready, To: store.Quarantined, QuarantineReason: strp("missing in provider")},
			event: true,
			check: func(t *testing.T, _, after store.Machine) {
				if after.QuarantineReason != "missing in provider" {
					t.Errorf("QuarantineReason = %q", after.QuarantineReason)
				}
			}},
		{name: "leave quarantine clears reason", start: quarantined,
			tr:    store.Transition{From: store.Quarantined, To: store.Dirty, Cause: "operator release"},
			event: true,
			check: func(t *testing.T, _, after store.Machine) {
				if after.QuarantineReason != "" {
					t.Errorf("QuarantineReason = %q, want cleared", after.QuarantineReason)
				}
			}},
		{name: "leave quarantine keeping a given reason", start: quarantined,
			tr:    store.Transition{From: store.Quarantined, To: store.Gone, QuarantineReason: strp("was: agent down")},
			event: true,
			check: func(t *testing.T, _, after store.Machine) {
				if after.QuarantineReason != "was: agent down" {
					t.Errorf("QuarantineReason = %q", after.QuarantineReason)
				}
			}},
		{name: "new reason without a state change", start: quarantined,
			tr: store.Transition{From: store.Quarantined, To: store.Quarantined, QuarantineReason: strp("still down")},
			check: func(t *testing.T, _, after store.Machine) {
				if after.QuarantineReason != "still down" {
					t.Errorf("QuarantineReason = %q", after.QuarantineReason)
				}
			}},
		{name: "a failure counts", start: failing,
			tr:    store.Transition{From: store.Reimaging, To: store.Dirty, Failures: store.AddFailure},
			event: true, check: failures(3)},
		{name: "a success clears failures", start: failing,
			tr:    store.Transition{From: store.Reimaging, To: store.Provisioning, Failures: store.ClearFailures},
			event: true, check: failures(0)},
		{name: "failures kept unless told", start: failing,
			tr:    store.Transition{From: store.Reimaging, To: store.Dirty},
			event: true, check: failures(2)},
		{name: "a failure without a state change", start: machine("", "p", store.Deleting),
			tr: store.Transition{From: store.Deleting, To: store.Deleting, Failures: store.AddFailure}, check: failures(1)},
		{name: "leaving quarantine clears failures", start: quarantined,
			tr:    store.Transition{From: store.Quarantined, To: store.Dirty, Cause: "operator release"},
			event: true, check: failures(0)},
		{name: "IP only", start: machine("", "p", store.Ready),
			tr: store.Transition{From: store.Ready, To: store.Ready, Version: 1, IP: strp("10.9.9.9")},
			check: func(t *testing.T, before, after store.Machine) {
				if after.IP != "10.9.9.9" {
					t.Errorf("IP = %q", after.IP)
				}
			}},
		{name: "IP with a state change", start: machine("", "p", store.Provisioning),
			tr:    store.Transition{From: store.Provisioning, To: store.Ready, IP: strp("10.1.2.3")},
			event: true,
			check: func(t *testing.T, _, after store.Machine) {
				if after.IP != "10.1.2.3" {
					t.Errorf("IP = %q", after.IP)
				}
			}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.start.Label = fmt.Sprintf("m%d", i)
			tc.start.Tags = []string{"keep"}
			before := insert(t, s, tc.start)[0]
			tc.tr.Label = before.Label
			start := now()
			after, err := s.TransitionMachine(ctx, tc.tr)
			if err != nil {
				t.Fatalf("TransitionMachine: %v", err)
			}
			if read := get(t, s, before.Label); !reflect.DeepEqual(read, after) {
				t.Errorf("GetMachine = %+v\nTransitionMachine returned %+v", read, after)
			}
			if after.State != tc.tr.To || after.Version != before.Version+1 {
				t.Errorf("state %s version %d, want %s version %d", after.State, after.Version, tc.tr.To, before.Version+1)
			}
			if !reflect.DeepEqual(after.Tags, []string{"keep"}) || after.ID != before.ID || !after.CreatedAt.Equal(before.CreatedAt) {
				t.Errorf("fields the transition should keep changed: %+v -> %+v", before, after)
			}
			if tc.tr.IP == nil && after.IP != before.IP {
				t.Errorf("IP %q -> %q without being asked", before.IP, after.IP)
			}
			if moved := !after.LockedChangedOn.Equal(before.LockedChangedOn); moved != tc.locked ||
				(tc.locked && after.LockedChangedOn.Before(start)) {
				t.Errorf("LockedChangedOn %v -> %v, want moved to now: %v", before.LockedChangedOn, after.LockedChangedOn, tc.locked)
			}
			if moved := !after.StateChangedOn.Equal(before.StateChangedOn); moved != tc.event ||
				(tc.event && after.StateChangedOn.Before(start)) {
				t.Errorf("StateChangedOn %v -> %v, want moved to now: %v", before.StateChangedOn, after.StateChangedOn, tc.event)
			}
			es := events(t, s, before.Label)
			if !tc.event {
				if len(es) != 1 {
					t.Errorf("%d events, want only the creation event", len(es))
				}
			} else if len(es) != 2 {
				t.Errorf("%d events, want 2", len(es))
			} else if e := es[1]; e.From != tc.tr.From || e.To != tc.tr.To || e.Cause != tc.tr.Cause ||
				e.MachineID != before.ID || e.Label != before.Label || !e.At.Equal(after.StateChangedOn) {
				t.Errorf("event %+v does not match transition %+v at %v", e, tc.tr, after.StateChangedOn)
			}
			if tc.check != nil {
				tc.check(t, before, after)
			}
		})
	}
}

func testTransitionStale(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	m := insert(t, s, machine("m", "p", store.Ready))[0]
	if _, err := s.TransitionMachine(ctx, store.Transition{Label: "m", From: store.Ready, To: store.Ready, IP: strp("10.0.0.2")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tr   store.Transition
		want error
	}{
		{"wrong state", store.Transition{Label: "m", From: store.Leased, To: store.Dirty}, store.ErrStale},
		{"wrong version", store.Transition{Label: "m", From: store.Ready, Version: m.Version, To: store.Leased}, store.ErrStale},
		{"wrong state and version", store.Transition{Label: "m", From: store.Dirty, Version: 9, To: store.Ready}, store.ErrStale},
		{"no such machine", store.Transition{Label: "nope", From: store.Ready, To: store.Leased}, store.ErrNotFound},
	} {
		_, err := s.TransitionMachine(ctx, tc.tr)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: TransitionMachine = %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := s.TransitionMachine(ctx, store.Transition{Label: "m", From: store.Ready}); err == nil ||
		errors.Is(err, store.ErrStale) {
		t.Errorf("a transition without To = %v, want a usage error", err)
	}
	got := get(t, s, "m")
	if got.State != store.Ready || got.Version != 2 || len(events(t, s, "m")) != 1 {
		t.Errorf("failed transitions changed the row: %+v", got)
	}
	// The right version wins.
	if _, err := s.TransitionMachine(ctx, store.Transition{Label: "m", From: store.Ready, Version: 2, To: store.Leased}); err != nil {
		t.Errorf("TransitionMachine at the current version: %v", err)
	}
}

func testTransitionMachines(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	insert(t, s, machine("a", "p", store.Ready, "t"), machine("b", "p", store.Ready), machine("c", "p", store.Dirty))
	got, err := s.TransitionMachines(ctx, []store.Transition{
		{Label: "a", From: store.Ready, To: store.Leased, Cause: "batch"},
		{Label: "b", From: store.Leased, To: store.Dirty},                     // wrong state
		{Label: "nope", From: store.Ready, To: store.Leased},                  // no such machine
		{Label: "c", From: store.Dirty, Version: 7, To: store.Reimaging},      // wrong version
		{Label: "a", From: store.Ready, To: store.Dirty},                      // sees the first one's change
		{Label: "c", From: store.Dirty, Version: 1, To: store.Reimaging},      // fine
		{Label: "b", From: store.Ready, To: store.Ready, IP: strp("1.2.3.4")}, // fine, no event
	})
	if err != nil {
		t.Fatalf("TransitionMachines: %v", err)
	}
	if len(got) != 7 {
		t.Fatalf("%d results, want 7", len(got))
	}
	for i, ok := range []bool{true, false, false, false, false, true, true} {
		if (got[i] != nil) != ok {
			t.Errorf("result %d = %+v, want success: %v", i, got[i], ok)
		}
	}
	if got[0] != nil && (got[0].State != store.Leased || got[0].Version != 2 || !reflect.DeepEqual(got[0].Tags, []string{"t"})) {
		t.Errorf("a = %+v", got[0])
	}
	for _, m := range []*store.Machine{got[0], got[5], got[6]} {
		if m != nil && !reflect.DeepEqual(get(t, s, m.Label), *m) {
			t.Errorf("GetMachine(%s) differs from the returned %+v", m.Label, *m)
		}
	}
	for label, n := range map[string]int{"a": 2, "b": 1, "c": 2} {
		if es := events(t, s, label); len(es) != n {
			t.Errorf("%s has %d events, want %d", label, len(es), n)
		}
	}
	if res, err := s.TransitionMachines(ctx, nil); err != nil || len(res) != 0 {
		t.Errorf("TransitionMachines(nil) = %v, %v", res, err)
	}
}

func testOperations(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	deadline := time.Now().Add(5 * time.Minute) // nanoseconds, local zone: stored as UTC µs
	start := now()
	op, err := s.CreateOperation(ctx, store.Operation{Pool: "win10", Kind: store.OpReimage,
		InstanceIDs: []string{"3", "7"}, Attempt: 1, Deadline: deadline, State: store.OpSucceeded})
	if err != nil {
		t.Fatalf("CreateOperation: %v", err)
	}
	if op.ID == 0 || op.State != store.OpPending || op.CreatedAt.Before(start) || !op.UpdatedAt.Equal(op.CreatedAt) {
		t.Errorf("created %+v, want an ID, Pending, timestamps", op)
	}
	if !op.Deadline.Equal(deadline.Truncate(time.Microsecond)) || op.Deadline.Location() != time.UTC {
		t.Errorf("Deadline = %v, want %v in UTC", op.Deadline, deadline)
	}
	read := func() store.Operation {
		t.Helper()
		got, err := s.GetOperation(ctx, op.ID)
		if err != nil {
			t.Fatalf("GetOperation: %v", err)
		}
		return got
	}
	if got := read(); !reflect.DeepEqual(got, op) {
		t.Errorf("GetOperation = %+v\nCreateOperation returned %+v", got, op)
	}
	if err := s.FinishOperation(ctx, op.ID, store.OpRunning, ""); err == nil {
		t.Error("FinishOperation to Running succeeded")
	}

	if err := s.SetOperationToken(ctx, op.ID, "token-1"); err != nil {
		t.Fatalf("SetOperationToken: %v", err)
	}
	if got := read(); got.State != store.OpRunning || got.ResumeToken != "token-1" || got.UpdatedAt.Before(op.UpdatedAt) {
		t.Errorf("after SetOperationToken: %+v", got)
	}
	if err := s.SetOperationToken(ctx, op.ID, "token-2"); err != nil {
		t.Errorf("replacing a running operation's token: %v", err)
	}
	if err := s.FinishOperation(ctx, op.ID, store.OpFailed, "quota exceeded"); err != nil {
		t.Fatalf("FinishOperation: %v", err)
	}
	got := read()
	if got.State != store.OpFailed || got.Error != "quota exceeded" || got.ResumeToken != "token-2" ||
		!reflect.DeepEqual(got.InstanceIDs, []string{"3", "7"}) || got.Attempt != 1 {
		t.Errorf("after FinishOperation: %+v", got)
	}
	if err := s.FinishOperation(ctx, op.ID, store.OpSucceeded, ""); !errors.Is(err, store.ErrStale) {
		t.Errorf("FinishOperation twice = %v, want ErrStale", err)
	}
	if err := s.SetOperationToken(ctx, op.ID, "late"); !errors.Is(err, store.ErrStale) {
		t.Errorf("SetOperationToken after finishing = %v, want ErrStale", err)
	}
	if after := read(); !reflect.DeepEqual(after, got) {
		t.Errorf("refused calls changed the operation: %+v -> %+v", got, after)
	}
	if _, err := s.GetOperation(ctx, 99999); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetOperation(missing) = %v, want ErrNotFound", err)
	}
	if err := s.SetOperationToken(ctx, 99999, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetOperationToken(missing) = %v, want ErrNotFound", err)
	}
	if err := s.FinishOperation(ctx, 99999, store.OpAbandoned, ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("FinishOperation(missing) = %v, want ErrNotFound", err)
	}

	// A pending operation can be finished directly (abandoned before it was issued).
	op2, err := s.CreateOperation(ctx, store.Operation{Pool: "win10", Kind: store.OpSetCapacity, Capacity: 4})
	if err != nil {
		t.Fatal(err)
	}
	if op2.InstanceIDs != nil || !op2.Deadline.IsZero() {
		t.Errorf("created %+v, want no instance ids and no deadline", op2)
	}
	if err := s.FinishOperation(ctx, op2.ID, store.OpAbandoned, ""); err != nil {
		t.Errorf("FinishOperation(pending): %v", err)
	}
	if _, err := s.CreateOperation(ctx, store.Operation{Kind: store.OpDelete}); err == nil {
		t.Error("CreateOperation without a pool succeeded")
	}
}

func testOperationFilters(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	var ids []int64
	for i, pool := range []string{"a", "b", "a", "a", "b"} {
		op, err := s.CreateOperation(ctx, store.Operation{Pool: pool, Kind: store.OpDelete, InstanceIDs: []string{fmt.Sprint(i)}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, op.ID)
	}
	if err := s.SetOperationToken(ctx, ids[2], "tok"); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishOperation(ctx, ids[0], store.OpSucceeded, ""); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		f    store.OperationFilter
		want []int64
	}{
		{store.OperationFilter{}, ids},
		{store.OperationFilter{Pool: "a"}, []int64{ids[0], ids[2], ids[3]}},
		{store.OperationFilter{Unfinished: true}, ids[1:]},
		{store.OperationFilter{Pool: "a", Unfinished: true}, []int64{ids[2], ids[3]}},
		{store.OperationFilter{Limit: 2}, []int64{ids[4], ids[3]}},
		{store.OperationFilter{Pool: "a", Limit: 10}, []int64{ids[3], ids[2], ids[0]}},
		{store.OperationFilter{Pool: "c"}, nil},
	} {
		ops, err := s.ListOperations(ctx, tc.f)
		if err != nil {
			t.Fatalf("ListOperations(%+v): %v", tc.f, err)
		}
		var got []int64
		for _, op := range ops {
			got = append(got, op.ID)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ListOperations(%+v) = %v, want %v", tc.f, got, tc.want)
		}
	}
	op, _ := s.GetOperation(ctx, ids[2])
	if ops, _ := s.ListOperations(ctx, store.OperationFilter{Pool: "a", Limit: 2}); len(ops) == 0 || !reflect.DeepEqual(ops[1], op) {
		t.Errorf("listed operation differs from GetOperation %+v", op)
	}
}

func testReopen(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	if err := s.UpsertPool(ctx, store.Pool{Name: "p", Tags: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	insert(t, s, machine("m", "p", store.Ready, "x"))
	m, err := s.TransitionMachine(ctx, store.Transition{Label: "m", From: store.Ready, To: store.Leased, Cause: "c"})
	if err != nil {
		t.Fatal(err)
	}
	op, err := s.CreateOperation(ctx, store.Operation{Pool: "p", Kind: store.OpReimage, InstanceIDs: []string{"1"}})
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := s.GetPool(ctx, "p")
	es := events(t, s, "m")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s2 := migrated(t, open)
	if got := get(t, s2, "m"); !reflect.DeepEqual(got, m) {
		t.Errorf("after reopening, machine %+v\nwant %+v", got, m)
	}
	if got := events(t, s2, "m"); !reflect.DeepEqual(got, es) {
		t.Errorf("after reopening, events %+v\nwant %+v", got, es)
	}
	if got, err := s2.GetPool(ctx, "p"); err != nil || !reflect.DeepEqual(got, pool) {
		t.Errorf("after reopening, pool %+v, %v\nwant %+v", got, err, pool)
	}
	if got, err := s2.GetOperation(ctx, op.ID); err != nil || !reflect.DeepEqual(got, op) {
		t.Errorf("after reopening, operation %+v, %v\nwant %+v", got, err, op)
	}
}

func testRoundTrips(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	s := migrated(t, open)
	listTrips := func() int64 {
		t.Helper()
		before := s.Stats().RoundTrips
		if _, err := s.ListMachines(ctx, store.MachineFilter{}); err != nil {
			t.Fatal(err)
		}
		return s.Stats().RoundTrips - before
	}
	insert(t, s, machine("first", "p", store.Ready, "a", "b"))
	one := listTrips()
	if one < 1 {
		t.Fatalf("ListMachines counted %d round trips", one)
	}
	var ms []store.Machine
	for i := range 100 {
		ms = append(ms, machine(fmt.Sprintf("m%d", i), "p", store.Ready, "a", "b"))
	}
	insert(t, s, ms...)
	if many := listTrips(); many != one {
		t.Errorf("ListMachines costs %d round trips for 1 machine and %d for 101", one, many)
	}
	before := s.Stats().RoundTrips
	if _, err := s.TransitionMachine(ctx, store.Transition{Label: "m1", From: store.Ready, To: store.Leased}); err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().RoundTrips - before; n < 3 || n > 6 {
		t.Errorf("TransitionMachine counted %d round trips, want begin, statements and commit", n)
	}
}

// testRaceCompareAndSet races goroutines on two handles (two sandfleet nodes)
// for the same compare-and-set, round after round: exactly one may win.
func testRaceCompareAndSet(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	nodes := []store.Store{migrated(t, open), migrated(t, open)}
	const rounds, racers = 50, 8
	for r := range rounds {
		label := fmt.Sprintf("race%d", r)
		insert(t, nodes[0], machine(label, "p", store.Ready))
		// Even rounds race on the state alone, odd rounds on the version with
		// no state change.
		tr := store.Transition{Label: label, From: store.Ready, To: store.Leased}
		if r%2 == 1 {
			tr = store.Transition{Label: label, From: store.Ready, Version: 1, To: store.Ready, IP: strp("10.0.0.9")}
		}
		results := make(chan error, racers)
		race(racers, func(i int) {
			_, err := nodes[i%2].TransitionMachine(ctx, tr)
			results <- err
		})
		close(results)
		wins := 0
		for err := range results {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, store.ErrStale):
				t.Fatalf("round %d: %v", r, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d winners, want exactly 1", r, wins)
		}
		if m := get(t, nodes[1], label); m.Version != 2 || m.State != tr.To {
			t.Fatalf("round %d: machine %s at version %d, want %s at 2", r, m.State, m.Version, tr.To)
		}
	}
}

// testConcurrentWriters runs goroutines on two handles, each inserting and
// cycling its own machines: no write may fail for being concurrent.
func testConcurrentWriters(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	nodes := []store.Store{migrated(t, open), migrated(t, open)}
	const workers, perWorker = 8, 4
	cycle := []store.MachineState{store.Ready, store.Leased, store.Dirty, store.Reimaging, store.Ready}
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			s := nodes[w%2]
			for i := range perWorker {
				label := fmt.Sprintf("w%d-%d", w, i)
				if _, err := s.InsertMachines(ctx, []store.Machine{machine(label, "p", store.Ready, "t")}, "test"); err != nil {
					errs <- err
					return
				}
				for j := 1; j < len(cycle); j++ {
					tr := store.Transition{Label: label, From: cycle[j-1], Version: int64(j), To: cycle[j]}
					if _, err := s.TransitionMachine(ctx, tr); err != nil {
						errs <- err
						return
					}
				}
				if _, err := s.ListMachines(ctx, store.MachineFilter{Pool: "p"}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ms, err := nodes[0].ListMachines(ctx, store.MachineFilter{States: []store.MachineState{store.Ready}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != workers*perWorker {
		t.Errorf("%d ready machines, want %d", len(ms), workers*perWorker)
	}
	for _, m := range ms {
		if m.Version != int64(len(cycle)) {
			t.Errorf("%s at version %d, want %d", m.Label, m.Version, len(cycle))
		}
	}
}

func testLeases(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	a, b := migrated(t, open), migrated(t, open)
	const name = "reconciler/azure"
	elect := func(s store.Store, holder string, ttl time.Duration, wantTerm int64) {
		t.Helper()
		term, ok, err := s.ElectLeader(ctx, name, holder, ttl)
		if err != nil || ok != (wantTerm != 0) || term != wantTerm {
			t.Fatalf("ElectLeader(%s, %s) = %d, %v, %v; want term %d", holder, ttl, term, ok, err, wantTerm)
		}
	}
	reelect := func(s store.Store, holder string, term int64, want bool) {
		t.Helper()
		ok, err := s.ReelectLeader(ctx, name, holder, term, time.Minute)
		if err != nil || ok != want {
			t.Fatalf("ReelectLeader(%s, term %d) = %v, %v; want %v", holder, term, ok, err, want)
		}
	}
	resign := func(s store.Store, holder string, term int64) {
		t.Helper()
		if err := s.ResignLeader(ctx, name, holder, term); err != nil {
			t.Fatalf("ResignLeader(%s, term %d): %v", holder, term, err)
		}
	}

	elect(a, "node-a", time.Minute, 1) // free: taken, first term
	elect(b, "node-b", time.Minute, 0) // held and unexpired
	reelect(a, "node-a", 1, true)      // extended by its holder in its term
	reelect(a, "node-a", 2, false)     // a term it does not hold
	reelect(b, "node-b", 1, false)     // not its lease
	if term, ok, err := b.ElectLeader(ctx, "reconciler/static", "node-b", time.Minute); err != nil || !ok || term != 1 {
		t.Fatalf("another lease name is independent: %d, %v, %v", term, ok, err)
	}

	resign(b, "node-b", 1) // not its lease: nothing happens
	resign(a, "node-a", 0) // a stale term: nothing happens
	elect(b, "node-b", time.Minute, 0)
	resign(a, "node-a", 1)
	reelect(a, "node-a", 1, false)     // resigned terms stay over
	elect(b, "node-b", time.Minute, 2) // free: taken, the term counting on

	// The same holder, restarted, takes its lease back at once; the term it
	// ran before is over.
	elect(b, "node-b", time.Minute, 3)
	reelect(b, "node-b", 2, false)
	reelect(b, "node-b", 3, true)

	// An expired term is not revived, and the next election is a new term.
	resign(b, "node-b", 3)
	elect(b, "node-b", 0, 4) // expiring at once
	reelect(b, "node-b", 4, false)
	elect(a, "node-a", time.Minute, 5) // expired: taken over
	reelect(b, "node-b", 4, false)
	elect(b, "node-b", time.Minute, 0)
	reelect(a, "node-a", 5, true)

	if _, _, err := a.ElectLeader(ctx, "", "node-a", time.Minute); err == nil {
		t.Fatal("a lease without a name was accepted")
	}
	if _, _, err := a.ElectLeader(ctx, name, "", time.Minute); err == nil {
		t.Fatal("a lease without a holder was accepted")
	}
}

// Nodes racing on two handles for a free lease, then for the same lease once
// its holder resigns: exactly one is elected each time, in the next term.
func testRaceLease(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	nodes := []store.Store{migrated(t, open), migrated(t, open)}
	const rounds, racers = 30, 8
	type win struct {
		i    int
		term int64
	}
	elect := func(r int, name string) win {
		t.Helper()
		wins := make(chan win, racers)
		race(racers, func(i int) {
			term, ok, err := nodes[i%2].ElectLeader(ctx, name, fmt.Sprintf("node-%d", i), time.Minute)
			if err != nil {
				t.Errorf("round %d: %v", r, err)
			}
			if ok {
				wins <- win{i, term}
			}
		})
		close(wins)
		if n := len(wins); n != 1 {
			t.Fatalf("round %d: %d holders got the lease, want exactly 1", r, n)
		}
		return <-wins
	}
	for r := range rounds {
		name := fmt.Sprintf("lease%d", r)
		w := elect(r, name)
		if w.term != 1 {
			t.Fatalf("round %d: first term %d, want 1", r, w.term)
		}
		if err := nodes[w.i%2].ResignLeader(ctx, name, fmt.Sprintf("node-%d", w.i), w.term); err != nil {
			t.Fatal(err)
		}
		if w = elect(r, name); w.term != 2 {
			t.Fatalf("round %d: after a resignation, term %d, want 2", r, w.term)
		}
	}
}

// race runs fn(0) … fn(n-1) in goroutines released at the same instant, and
// waits for them all.
func race(n int, fn func(i int)) {
	var wg sync.WaitGroup
	startGun := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-startGun
			fn(i)
		})
	}
	close(startGun)
	wg.Wait()
}
