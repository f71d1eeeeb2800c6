package azemu

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestIPPool(t *testing.T) {
	tests := []struct {
		block string
		want  []string // the whole allocation sequence until full
	}{
		{"127.0.0.0/29", []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"}},
		{"127.9.0.252/30", []string{"127.9.0.252", "127.9.0.253", "127.9.0.254"}},
		{"127.9.1.0/30", []string{"127.9.1.1", "127.9.1.2", "127.9.1.3"}},
	}
	for _, tt := range tests {
		t.Run(tt.block, func(t *testing.T) {
			b, err := parseIPBlock(tt.block)
			if err != nil {
				t.Fatal(err)
			}
			p := newIPPool(b, 0)
			if got := p.capacity(); got != uint32(len(tt.want)) {
				t.Fatalf("capacity %d, want %d", got, len(tt.want))
			}
			var got []string
			for ip := p.alloc(); ip != ""; ip = p.alloc() {
				got = append(got, ip)
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("allocated %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIPPoolWrapsWithoutEarlyReuse(t *testing.T) {
	b, _ := parseIPBlock("127.5.0.0/29")
	p := newIPPool(b, 0)
	a, c := p.alloc(), p.alloc()
	p.release(a)
	// The freed address comes back only after the cursor went round.
	var seq []string
	for ip := p.alloc(); ip != ""; ip = p.alloc() {
		seq = append(seq, ip)
	}
	if seq[len(seq)-1] != a || c == a {
		t.Fatalf("freed %s reused early: %v", a, seq)
	}
	if p.free() != 0 {
		t.Fatalf("free %d when full", p.free())
	}
}

func TestIPPoolSizes(t *testing.T) {
	for block, want := range map[string]uint32{
		"127.42.0.0/16": 256 * 254,
		"127.0.0.0/16":  256*254 - 1, // never 127.0.0.1
		"127.0.0.0/8":   65536*254 - 1,
	} {
		b, err := parseIPBlock(block)
		if err != nil {
			t.Fatal(err)
		}
		if got := newIPPool(b, 0).capacity(); got != want {
			t.Errorf("%s: capacity %d, want %d", block, got, want)
		}
	}
}

func TestParseIPBlock(t *testing.T) {
	for in, want := range map[string]string{
		"127.42":         "127.42.0.0/16",
		"127.42.0.0":     "127.42.0.0/16",
		"127.42.7.9/24":  "127.42.7.0/24",
		"10.0.0.0/16":    "",
		"127.0.0.0/7":    "",
		"127.1.1.1/31":   "",
		"::1/128":        "",
		"not an address": "",
	} {
		got, err := parseIPBlock(in)
		if want == "" {
			if err == nil {
				t.Errorf("%q: accepted as %s", in, got)
			}
			continue
		}
		if err != nil || got.String() != want {
			t.Errorf("%q: %v %v, want %s", in, got, err, want)
		}
	}
	seen := map[netip.Prefix]bool{}
	for range 100 {
		b := randomIPBlock()
		a := b.Addr().As4()
		if b.Bits() != 19 || a[1] < 16 || a[1] > 250 || a[2]%32 != 0 || a[3] != 0 {
			t.Fatalf("random block %s", b)
		}
		seen[b] = true
	}
	if len(seen) < 90 {
		t.Fatalf("100 random blocks had only %d distinct: parallel emulators would collide", len(seen))
	}
}

func TestMergeFaults(t *testing.T) {
	start, err := ParseFaults([]byte(`{"throttle": {"match": "virtualMachines", "retry_after_s": 120, "count": 5}, "lro_delay_ms": 2000, "error_rate": 0.1}`))
	if err != nil {
		t.Fatal(err)
	}
	if start.Throttle.Count != 5 || *start.LRODelayMS != 2000 || start.ErrorRate != 0.1 {
		t.Fatalf("parsed %+v", start)
	}
	// Merge: keys absent stay, null removes.
	f, _, err := mergeFaults(start, []byte(`{"error_rate": 0.5, "throttle": null, "operation_preempted": 2}`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Throttle != nil || *f.LRODelayMS != 2000 || f.ErrorRate != 0.5 || f.OperationPreempted.Count != 2 {
		t.Fatalf("merged %+v", f)
	}
	for _, doc := range []string{`{}`, `{"clear": true}`, ``} {
		f, cleared, err := mergeFaults(start, []byte(doc))
		if err != nil || !cleared || f.Throttle != nil || f.LRODelayMS != nil || f.ErrorRate != 0 {
			t.Fatalf("%q: %+v %v %v", doc, f, cleared, err)
		}
	}
	f, _, err = mergeFaults(start, []byte(`{"clear": true, "fail_provisioning": 3}`))
	if err != nil || f.Throttle != nil || f.FailProvisioning != 3 {
		t.Fatalf("clear and set: %+v %v", f, err)
	}
	for _, doc := range []string{
		`{"error_rate": 2}`, `{"nonsense": 1}`, `{"throttle": {"match": "x", "bogus": 1}}`,
		`{"lro_delay_ms": -1}`, `{"throttle": {"count": -1}}`, `[1]`, `{"operation_preempted": "x"}`,
		`{"lro_retry_after_s": -1}`,
	} {
		if _, _, err := mergeFaults(start, []byte(doc)); err == nil {
			t.Errorf("%s accepted", doc)
		}
	}
	for doc, want := range map[string]int{`{"operation_preempted": true}`: 1, `{"operation_preempted": {"count": 4, "match": "p"}}`: 4} {
		f, _, err := mergeFaults(Faults{}, []byte(doc))
		if err != nil || f.OperationPreempted == nil || f.OperationPreempted.Count != want {
			t.Errorf("%s: %+v %v", doc, f.OperationPreempted, err)
		}
	}
}

func TestThrottleCounts(t *testing.T) {
	f, _ := ParseFaults([]byte(`{"throttle": {"match": "VirtualMachines", "method": "get", "count": 2}}`))
	if _, ok := f.throttles("GET", "/x/virtualMachineScaleSets/a"); !ok {
		t.Fatal("case-insensitive match missed")
	}
	if _, ok := f.throttles("PUT", "/x/virtualMachines"); ok {
		t.Fatal("another method throttled")
	}
	if ra, ok := f.throttles("GET", "/virtualmachines"); !ok || ra != 1 {
		t.Fatalf("second: %d %v", ra, ok)
	}
	if _, ok := f.throttles("GET", "/virtualmachines"); ok || f.Throttle != nil {
		t.Fatal("throttled past its count")
	}
}

func TestParseDurationRange(t *testing.T) {
	for in, want := range map[string][2]time.Duration{
		"2s":          {2 * time.Second, 2 * time.Second},
		"1s..3s":      {time.Second, 3 * time.Second},
		" 500ms..1s ": {500 * time.Millisecond, time.Second},
	} {
		lo, hi, err := ParseDurationRange(in)
		if err != nil || lo != want[0] || hi != want[1] {
			t.Errorf("%q: %s %s %v", in, lo, hi, err)
		}
	}
	for _, in := range []string{"", "3s..1s", "-1s", "2", "1s..", "fast"} {
		if _, _, err := ParseDurationRange(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
	if _, err := New(Options{StateDir: t.TempDir(), AnalysisDuration: "3s..1s"}); err == nil {
		t.Fatal("New accepted a bad analysis duration")
	}
}

func TestErrorRateAndLatency(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	setFaults(t, e, `{"error_rate": 1, "latency_ms": 50}`)
	start := time.Now()
	_, err := c.sets.Get(ctxT(t), testRG, "any", nil)
	respErr(t, err, 500, "InternalServerError")
	if time.Since(start) < 50*time.Millisecond {
		t.Fatal("latency not applied")
	}
	setFaults(t, e, `{"error_rate": null}`)
	_, err = c.sets.Get(ctxT(t), testRG, "any", nil)
	respErr(t, err, 404, "ResourceNotFound")
}

func TestCAKeptAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	a1, err := loadOrCreateAuthority(dir)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := loadOrCreateAuthority(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !a1.cert.Equal(a2.cert) {
		t.Fatal("CA changed")
	}
	cert, err := a2.serverCertificate("127.0.0.1", "sandbox.local")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(a1.cert)
	for _, host := range []string{"127.0.0.1", "::1", "localhost", "sandbox.local"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.com"}); err == nil {
		t.Error("valid for example.com")
	}
}

func TestPruneOps(t *testing.T) {
	now := time.Now()
	st := &state{ops: map[string]*operation{}}
	add := func(id string, end time.Time, done bool) {
		st.ops[id] = &operation{ID: id, End: end, Done: done}
	}
	add("old", now.Add(-opRetention-time.Minute), true)
	add("recent", now.Add(-time.Minute), true)
	add("pending", now.Add(-opRetention-time.Hour), false)
	st.pruneOps(now)
	if _, ok := st.ops["old"]; ok {
		t.Fatal("an old finished operation is kept")
	}
	if len(st.ops) != 2 {
		t.Fatalf("kept %d, want recent and pending", len(st.ops))
	}
	for i := range opMaxKept + 10 {
		add(fmt.Sprint(i), now.Add(time.Duration(i)*time.Millisecond-time.Hour), true)
	}
	st.pruneOps(now)
	if len(st.ops) != opMaxKept {
		t.Fatalf("kept %d, want %d", len(st.ops), opMaxKept)
	}
	if _, ok := st.ops["pending"]; !ok {
		t.Fatal("a pending operation was forgotten")
	}
	if _, ok := st.ops["0"]; ok {
		t.Fatal("the oldest finished operation is kept over newer ones")
	}
}
