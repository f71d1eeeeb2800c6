package azure_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/poll"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/azure"
	"github.com/sandfleet/sandfleet/internal/provider/providertest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var spec = provider.PoolSpec{
	Name: "win10x64", Platform: "windows", Arch: "x64",
	Image: "win10-gallery-image", Tags: []string{"win10", "x64"}, Capacity: 3,
}

// startEmulator runs an ARM emulator for the test, with its state in a
// temporary directory.
func startEmulator(t *testing.T, opts azemu.Options) *azemu.Emulator {
	t.Helper()
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.StateDir == "" {
		opts.StateDir = t.TempDir()
	}
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	e, err := azemu.New(opts)
	if err != nil {
		t.Fatalf("azemu.New: %v", err)
	}
	if err := e.Start(); err != nil {
		t.Fatalf("emulator Start: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("emulator Close: %v", err)
		}
	})
	return e
}

func azureConfig(e *azemu.Emulator) config.Azure {
	cfg := config.Default().Azure
	cfg.SubscriptionID = "8f2b6c1e-0000-4000-8000-0000000000aa"
	cfg.Endpoint = e.URL()
	cfg.Credential = "emulator"
	cfg.DNSServers = []string{"10.0.0.2"}
	return cfg
}

func newDriver(t *testing.T, e *azemu.Emulator) *azure.Driver {
	t.Helper()
	return newDriverOpts(t, e, azure.Options{})
}

func newDriverOpts(t *testing.T, e *azemu.Emulator, opts azure.Options) *azure.Driver {
	t.Helper()
	opts.CertPool = e.CertPool()
	opts.PollInterval = 50 * time.Millisecond
	opts.RetryDelay = 20 * time.Millisecond
	opts.Logger = quiet
	d, err := azure.New(azureConfig(e), opts)
	if err != nil {
		t.Fatalf("azure.New: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// admin calls one of the emulator's /_emulator/ endpoints and decodes its JSON
// answer into out (if not nil).
func admin(ctx context.Context, e *azemu.Emulator, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.URL()+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+azemu.Token)
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.CertPool()}}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, data)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: %w (%s)", method, path, err, data)
		}
	}
	return nil
}

func setFaults(t *testing.T, e *azemu.Emulator, faults string) {
	t.Helper()
	if err := admin(context.Background(), e, http.MethodPost, "/_emulator/faults", json.RawMessage(faults), nil); err != nil {
		t.Fatalf("set faults: %v", err)
	}
}

// addedID finds the new instance's id in the answer to POST …/vms.
func addedID(v map[string]any) (string, error) {
	for _, k := range []string{"instanceId", "instance_id", "id"} {
		switch id := v[k].(type) {
		case string:
			return id, nil
		case float64:
			return fmt.Sprint(id), nil
		}
	}
	if p, ok := v["properties"].(map[string]any); ok {
		return addedID(p)
	}
	return "", fmt.Errorf("no instance id in %v", v)
}

func TestConformance(t *testing.T) {
	providertest.Run(t, providertest.Harness{
		Setup: func(t *testing.T) providertest.Env {
			e := startEmulator(t, azemu.Options{})
			return providertest.Env{
				Provider: newDriver(t, e),
				AddInstance: func(ctx context.Context, group string) (string, error) {
					var v map[string]any
					if err := admin(ctx, e, http.MethodPost, "/_emulator/scalesets/"+group+"/vms", nil, &v); err != nil {
						return "", err
					}
					return addedID(v)
				},
				RemoveInstance: func(ctx context.Context, group, id string) error {
					return admin(ctx, e, http.MethodDelete, "/_emulator/scalesets/"+group+"/vms/"+id, nil, nil)
				},
			}
		},
		Spec:     spec,
		AltImage: "win10-gallery-image-v2",
		Caps: providertest.Caps{
			CreateGroup: true, DeleteGroup: true, UpdateImage: true,
			Capacity: true, Delete: true, BatchReimage: true, Tokens: true,
		},
		Timeout: 60 * time.Second,
	})
}

// createGroup creates spec's scale set with n instances and waits for it.
func createGroup(t *testing.T, d *azure.Driver, name string, n int) {
	t.Helper()
	s := spec
	s.Name, s.Capacity = name, n
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	op, err := d.CreateGroup(ctx, s)
	if err != nil {
		t.Fatalf("CreateGroup(%s): %v", name, err)
	}
	if err := op.Wait(ctx); err != nil {
		t.Fatalf("CreateGroup(%s).Wait: %v", name, err)
	}
}

type logged struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Status int    `json:"status"`
}

func requests(t *testing.T, e *azemu.Emulator) []logged {
	t.Helper()
	var out []logged
	if err := admin(context.Background(), e, http.MethodGet, "/_emulator/requests", nil, &out); err != nil {
		t.Fatalf("request log: %v", err)
	}
	return out
}

func TestThrottleReturnsRetryAfter(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 2)
	setFaults(t, e, `{"throttle":{"match":"virtualMachines","retry_after_s":120,"count":5}}`)

	ctx := context.Background()
	start := time.Now()
	_, err := d.ListInstances(ctx, spec.Name)
	took := time.Since(start)
	te, ok := provider.AsThrottled(err)
	if !ok {
		t.Fatalf("ListInstances under throttle = %v, want a ThrottledError", err)
	}
	if te.RetryAfter != 120*time.Second {
		t.Errorf("RetryAfter = %s, want 2m0s", te.RetryAfter)
	}
	if !strings.Contains(te.Op, spec.Name) {
		t.Errorf("Op = %q, want it to name the scale set", te.Op)
	}
	if took > 5*time.Second {
		t.Errorf("ListInstances took %s: the SDK waited out the throttle", took)
	}
	if _, err := d.GetGroup(ctx, spec.Name); err == nil {
		t.Errorf("GetGroup under throttle succeeded")
	} else if _, ok := provider.AsThrottled(err); !ok {
		t.Errorf("GetGroup under throttle = %v, want ThrottledError", err)
	}
}

// TestThrottleNotRetriedBySDK uses a Retry-After short enough that the SDK's
// default policy would wait it out and retry: the driver must not.
func TestThrottleNotRetriedBySDK(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 1)
	setFaults(t, e, `{"throttle":{"match":"virtualMachineScaleSets/`+spec.Name+`","method":"GET","retry_after_s":1,"count":1}}`)
	before := len(requests(t, e))

	_, err := d.GetGroup(context.Background(), spec.Name)
	if te, ok := provider.AsThrottled(err); !ok || te.RetryAfter != time.Second {
		t.Fatalf("GetGroup = %v, want ThrottledError with RetryAfter 1s", err)
	}
	var gets int
	for _, r := range requests(t, e)[before:] {
		if r.Method == http.MethodGet && strings.Contains(r.Path, "virtualMachineScaleSets/"+spec.Name) {
			gets++
		}
	}
	if gets != 1 {
		t.Errorf("emulator saw %d GETs of the scale set, want 1 (no retry inside the SDK)", gets)
	}
	if _, err := d.GetGroup(context.Background(), spec.Name); err != nil {
		t.Errorf("GetGroup after the throttle: %v", err)
	}
}

func TestThrottleWhilePolling(t *testing.T) {
	e := startEmulator(t, azemu.Options{LRODelay: 500 * time.Millisecond})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 2)
	ins, err := d.ListInstances(context.Background(), spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	op, err := d.Reimage(context.Background(), spec.Name, []string{ins[0].ID})
	if err != nil {
		t.Fatal(err)
	}
	setFaults(t, e, `{"throttle":{"match":"/operations/","retry_after_s":7,"count":1}}`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = op.Wait(ctx)
	if te, ok := provider.AsThrottled(err); !ok || te.RetryAfter != 7*time.Second {
		t.Fatalf("Wait under a polling throttle = %v, want ThrottledError 7s", err)
	}
	// The Op survives a throttle: waiting again finishes it.
	if err := op.Wait(ctx); err != nil {
		t.Fatalf("second Wait: %v", err)
	}
}

// A poll answered 500 is not the operation failing: Wait says the status was
// unreadable (a PollError), and the Op, waited on again once ARM answers,
// reports the operation's real end.
func TestPollErrorIsNotTheOutcome(t *testing.T) {
	e := startEmulator(t, azemu.Options{LRODelay: 300 * time.Millisecond})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 1)
	op, err := d.Reimage(context.Background(), spec.Name, []string{"0"})
	if err != nil {
		t.Fatal(err)
	}
	setFaults(t, e, `{"error_rate": 1}`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = op.Wait(ctx)
	if _, ok := provider.AsPollError(err); !ok {
		t.Fatalf("Wait while every poll fails = %v, want a PollError", err)
	}
	setFaults(t, e, `{"error_rate": 0}`)
	if err := op.Wait(ctx); err != nil {
		t.Fatalf("Wait once polls answer again: %v, want the reimage's success", err)
	}
}

func TestPagingOverManyVMs(t *testing.T) {
	const pageSize, n = 3, 11
	e := startEmulator(t, azemu.Options{PageSize: pageSize})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, n)
	ctx := context.Background()

	before := len(requests(t, e))
	ins, err := d.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) != n {
		t.Fatalf("ListInstances: %d instances, want %d", len(ins), n)
	}
	seen := map[string]bool{}
	for _, in := range ins {
		if in.IP == "" || seen[in.IP] {
			t.Errorf("instance %s: IP %q empty or repeated", in.ID, in.IP)
		}
		seen[in.IP] = true
		if want := spec.Name + "_" + in.ID; in.Name != want {
			t.Errorf("instance name %q, want %q", in.Name, want)
		}
	}
	var vmPages, nicPages int
	for _, r := range requests(t, e)[before:] {
		switch {
		case strings.HasSuffix(r.Path, "/networkInterfaces"):
			nicPages++
		case strings.HasSuffix(r.Path, "/virtualMachines"):
			vmPages++
		default:
			t.Errorf("unexpected request %s %s during ListInstances", r.Method, r.Path)
		}
	}
	wantPages := (n + pageSize - 1) / pageSize
	if vmPages != wantPages || nicPages != wantPages {
		t.Errorf("ListInstances read %d VM pages and %d NIC pages, want %d of each", vmPages, nicPages, wantPages)
	}

	// Groups page too.
	for i := range 4 {
		createGroup(t, d, fmt.Sprintf("extra%d", i), 0)
	}
	groups, err := d.ListGroups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 5 {
		t.Errorf("ListGroups: %d groups, want 5", len(groups))
	}
}

func TestResumeAfterDriverRestart(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d1 := newDriver(t, e)
	createGroup(t, d1, spec.Name, 2)
	g, err := d1.GetGroup(context.Background(), spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	setFaults(t, e, `{"lro_delay_ms":1500}`)
	op, err := d1.SetCapacity(context.Background(), spec.Name, 4, g.ETag)
	if err != nil {
		t.Fatal(err)
	}
	token := op.Token()
	if token == "" {
		t.Fatal("SetCapacity: no token before Wait")
	}
	// A driver dies mid-operation; it never waited. A new one picks up the token.
	d2 := newDriver(t, e)
	resumed, err := d2.Resume(context.Background(), provider.KindCapacity, token)
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := resumed.Wait(ctx); err != nil {
		t.Fatalf("resumed Wait: %v", err)
	}
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("resumed Wait returned after %s, before the operation's delay", took)
	}
	ins, err := d2.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) != 4 {
		t.Errorf("after resumed SetCapacity: %d instances, want 4", len(ins))
	}
}

func TestWaitHonoursContext(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 1)
	setFaults(t, e, `{"lro_delay_ms":60000}`)
	op, err := d.SetCapacity(context.Background(), spec.Name, 2, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := op.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Wait overran its deadline: %s", took)
	}

	// A context without a deadline still gets one: MaxWait.
	bounded := newDriverOpts(t, e, azure.Options{MaxWait: 300 * time.Millisecond})
	op, err = bounded.SetCapacity(context.Background(), spec.Name, 3, "")
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := op.Wait(context.Background()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait without deadline = %v, want DeadlineExceeded after MaxWait", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Wait without deadline took %s, MaxWait is 300ms", took)
	}
}

var opIDRE = regexp.MustCompile(`/operations/[^?"\\]+`)

func TestUnknownOperationTokenRejected(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 1)
	setFaults(t, e, `{"lro_delay_ms":2000}`)
	op, err := d.SetCapacity(context.Background(), spec.Name, 2, "")
	if err != nil {
		t.Fatal(err)
	}
	if !opIDRE.MatchString(op.Token()) {
		t.Fatalf("token %s: no operation URL in it", op.Token())
	}
	forgotten := opIDRE.ReplaceAllString(op.Token(), "/operations/00000000-dead-beef-0000-000000000000")
	resumed, err := d.Resume(context.Background(), provider.KindCapacity, forgotten)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = resumed.Wait(ctx)
	}
	if !errors.Is(err, provider.ErrTokenRejected) {
		t.Errorf("resuming an operation Azure does not know = %v, want ErrTokenRejected", err)
	}
	if errors.Is(err, provider.ErrNotFound) {
		t.Errorf("a forgotten operation reads as ErrNotFound (the scale set is there): %v", err)
	}
}

func TestPreemptedReimage(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 2)
	ins, err := d.ListInstances(context.Background(), spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	setFaults(t, e, `{"operation_preempted":{"count":1}}`)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	op, err := d.Reimage(ctx, spec.Name, []string{ins[0].ID})
	if err == nil {
		err = op.Wait(ctx)
	}
	if !errors.Is(err, provider.ErrPreempted) {
		t.Fatalf("preempted reimage = %v, want ErrPreempted", err)
	}
	if !strings.Contains(err.Error(), "reimage "+spec.Name) || !strings.Contains(err.Error(), ins[0].ID) {
		t.Errorf("error %q does not name the scale set and ids", err)
	}
}

func TestFailedProvisioning(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e)
	setFaults(t, e, `{"fail_provisioning":1}`)
	s := spec
	s.Capacity = 2
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	op, err := d.CreateGroup(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	_ = op.Wait(ctx) // the operation may fail; the instances tell the truth
	ins, err := d.ListInstances(ctx, s.Name)
	if err != nil {
		t.Fatal(err)
	}
	var failed int
	for _, in := range ins {
		if in.State == provider.InstanceFailed {
			failed++
		}
	}
	if len(ins) != 2 || failed != 1 {
		t.Errorf("instances %v: want 2 with one failed", ins)
	}
}

func TestLimits(t *testing.T) {
	e := startEmulator(t, azemu.Options{SubnetPrefix: "10.1.0.0/24"})
	d := newDriver(t, e)
	ctx := context.Background()
	if n, err := d.VCPUs(ctx, "Standard_D4s_v3"); err != nil || n != 4 {
		t.Errorf("VCPUs(Standard_D4s_v3) = %d, %v; want 4", n, err)
	}
	if _, err := d.VCPUs(ctx, "Standard_Nonexistent"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("VCPUs(unknown) = %v, want ErrNotFound", err)
	}
	u, err := d.CoreUsage(ctx, "")
	if err != nil || u.Name != "cores" || u.Limit <= 0 {
		t.Errorf("CoreUsage = %+v, %v", u, err)
	}
	if n, err := d.SubnetLimit(ctx); err != nil || n != 243 {
		t.Errorf("SubnetLimit = %d, %v; want 243", n, err)
	}
}

// TestResumeAfterCloudRestart restarts the emulator (same address, same state)
// as well as the driver while an operation is in flight.
func TestResumeAfterCloudRestart(t *testing.T) {
	dir := t.TempDir()
	e1, err := azemu.New(azemu.Options{Listen: "127.0.0.1:0", StateDir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := e1.Start(); err != nil {
		t.Fatal(err)
	}
	d1 := newDriver(t, e1)
	createGroup(t, d1, spec.Name, 2)
	ins, err := d1.ListInstances(context.Background(), spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	setFaults(t, e1, `{"lro_delay_ms":1500}`)
	op, err := d1.Delete(context.Background(), spec.Name, []string{ins[0].ID})
	if err != nil {
		t.Fatal(err)
	}
	token := op.Token()
	_ = d1.Close()
	addr := e1.Addr()
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := startEmulator(t, azemu.Options{Listen: addr, StateDir: dir})
	d2 := newDriver(t, e2)
	resumed, err := d2.Resume(context.Background(), provider.KindDelete, token)
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := resumed.Wait(ctx); err != nil {
		t.Fatalf("resumed Wait: %v", err)
	}
	after, err := d2.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 1 || after[0].ID == ins[0].ID {
		t.Errorf("after resumed delete of %s: %v", ins[0].ID, after)
	}
}

// emulatorIPs reads the scale set's instance IPs from the emulator itself.
func emulatorIPs(t *testing.T, e *azemu.Emulator, group string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, s := range e.ScaleSets() {
		if s.Name == group {
			for _, v := range s.VMs {
				out[v.InstanceID] = v.IP
			}
		}
	}
	return out
}

func listedIPs(t *testing.T, ins []provider.Instance) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, in := range ins {
		out[in.ID] = in.IP
	}
	return out
}

// nicReads sorts the NIC reads among logged requests: of the scale set's NIC
// list, and of single VMs' NICs (by instance id).
func nicReads(rs []logged) (setPages int, single []string) {
	for _, r := range rs {
		p := strings.ToLower(r.Path)
		switch {
		case !strings.HasSuffix(p, "/networkinterfaces"):
		case strings.Contains(p, "/virtualmachines/"):
			parts := strings.Split(r.Path, "/")
			single = append(single, parts[len(parts)-2])
		default:
			setPages++
		}
	}
	return setPages, single
}

func sameIPs(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("%s: IPs %v, want the emulator's %v", what, got, want)
	}
	for id, ip := range got {
		if ip == "" {
			t.Fatalf("%s: instance %s has no IP", what, id)
		}
	}
}

// Once IPs are known a list reads the VMs and nothing else, and a reimage
// changes nothing to that: the IP survives it.
func TestSteadyListReadsNoNIC(t *testing.T) {
	e := startEmulator(t, azemu.Options{PageSize: 2})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 5)
	ctx := context.Background()
	first, err := d.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	sameIPs(t, "first list", listedIPs(t, first), emulatorIPs(t, e, spec.Name))

	op, err := d.Reimage(ctx, spec.Name, []string{"0", "3"})
	if err == nil {
		err = op.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("reimage: %v", err)
	}
	e.ClearRequests()
	for range 3 {
		ins, err := d.ListInstances(ctx, spec.Name)
		if err != nil {
			t.Fatal(err)
		}
		sameIPs(t, "steady list", listedIPs(t, ins), listedIPs(t, first))
	}
	rs := requests(t, e)
	if pages, single := nicReads(rs); pages+len(single) != 0 {
		t.Errorf("steady lists read NICs: %d pages of the scale set's, and of VMs %v", pages, single)
	}
	if len(rs) != 3*3 { // 5 VMs in pages of 2
		t.Errorf("three steady lists made %d requests, want 9 VM pages: %+v", len(rs), rs)
	}
}

// An instance the driver has not seen — added behind its back, or by a
// scale-out — has its IP read: a few one VM at a time, many with the scale
// set's NIC list.
func TestNewInstancesGetTheirIPs(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 3)
	ctx := context.Background()
	if _, err := d.ListInstances(ctx, spec.Name); err != nil {
		t.Fatal(err)
	}

	var added []string
	for range 2 {
		var v map[string]any
		if err := admin(ctx, e, http.MethodPost, "/_emulator/scalesets/"+spec.Name+"/vms", nil, &v); err != nil {
			t.Fatal(err)
		}
		id, err := addedID(v)
		if err != nil {
			t.Fatal(err)
		}
		added = append(added, id)
	}
	e.ClearRequests()
	ins, err := d.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	sameIPs(t, "after two added", listedIPs(t, ins), emulatorIPs(t, e, spec.Name))
	if pages, single := nicReads(requests(t, e)); pages != 0 || fmt.Sprint(single) != fmt.Sprint(added) {
		t.Errorf("NIC reads: %d pages of the scale set's, VMs %v; want the NICs of %v alone", pages, single, added)
	}

	g, err := d.GetGroup(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	op, err := d.SetCapacity(ctx, spec.Name, 20, g.ETag)
	if err == nil {
		err = op.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("scale out: %v", err)
	}
	e.ClearRequests()
	ins, err = d.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	sameIPs(t, "after a scale-out by 15", listedIPs(t, ins), emulatorIPs(t, e, spec.Name))
	if pages, single := nicReads(requests(t, e)); pages != 1 || len(single) != 0 {
		t.Errorf("NIC reads after a scale-out by 15: %d pages of the scale set's, VMs %v; want its one page", pages, single)
	}
}

// A scale set deleted and created again under its name counts its instance
// ids from 0 again: its new VMs do not inherit the old ones' IPs.
func TestRecreatedScaleSetGetsNewIPs(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	old, err := d.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	op, err := d.DeleteGroup(ctx, spec.Name)
	if err == nil {
		err = op.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	createGroup(t, d, spec.Name, 3)
	ins, err := d.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	now := emulatorIPs(t, e, spec.Name)
	sameIPs(t, "recreated", listedIPs(t, ins), now)
	if fmt.Sprint(now) == fmt.Sprint(listedIPs(t, old)) {
		t.Fatalf("the emulator gave the recreated VMs their predecessors' IPs %v: the test proves nothing", now)
	}
}

// An IP changed behind the driver's back (Azure never does it; an operator
// can) is seen by a fresh list at once, and by plain lists once IPRefresh has
// passed; either starts a new period without NIC reads.
func TestReaddressedInstance(t *testing.T) {
	e := startEmulator(t, azemu.Options{})
	d := newDriverOpts(t, e, azure.Options{IPRefresh: time.Second})
	createGroup(t, d, spec.Name, 2)
	ctx := context.Background()
	before, err := d.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	moved, err := e.Readdress(spec.Name, "", "1")
	if err != nil {
		t.Fatal(err)
	}
	if listedIPs(t, before)["1"] == moved.IP {
		t.Fatal("Readdress kept the address: the test proves nothing")
	}
	fresh, err := d.ListInstancesFresh(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	sameIPs(t, "fresh list", listedIPs(t, fresh), emulatorIPs(t, e, spec.Name))
	ins, err := d.ListInstances(ctx, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	sameIPs(t, "list after the fresh one", listedIPs(t, ins), emulatorIPs(t, e, spec.Name))

	// Without a fresh list, the refresh finds it.
	if _, err := e.Readdress(spec.Name, "", "0"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	poll.Until(t, 10*time.Second, "the new address listed", func() bool {
		ins, err := d.ListInstances(ctx, spec.Name)
		return err == nil && listedIPs(t, ins)["0"] == emulatorIPs(t, e, spec.Name)["0"]
	})
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the new address was listed after %s; IPRefresh is 1s", took)
	}
	// The refresh starts a new period: the next list reads no NIC.
	e.ClearRequests()
	if _, err := d.ListInstances(ctx, spec.Name); err != nil {
		t.Fatal(err)
	}
	if pages, single := nicReads(requests(t, e)); pages+len(single) != 0 {
		t.Errorf("the list after a refresh read NICs: %d pages of the scale set's, VMs %v", pages, single)
	}
}

// pollGaps are the pauses before each poll of an operation, the first from
// the request that began it (whose path ends in began). The read of the
// result at its Location URL, straight after the poll that saw the end, is
// no poll.
func pollGaps(t *testing.T, e *azemu.Emulator, began string) []time.Duration {
	t.Helper()
	var (
		gaps []time.Duration
		last time.Time
	)
	for _, r := range e.Requests() {
		switch {
		case strings.HasSuffix(r.Path, began):
			last = r.Time
		case strings.Contains(r.Path, "/operations/") && !last.IsZero():
			gaps = append(gaps, r.Time.Sub(last))
			last = r.Time
		}
	}
	if n := len(gaps); n > 1 && gaps[n-1] < 20*time.Millisecond {
		gaps = gaps[:n-1]
	}
	if len(gaps) == 0 {
		t.Fatal("no poll in the request log")
	}
	return gaps
}

// reimagePolls reimages the one instance of a new scale set with faults in
// force, and returns the pauses before each poll of the reimage.
func reimagePolls(t *testing.T, faults string) []time.Duration {
	t.Helper()
	e := startEmulator(t, azemu.Options{})
	d := newDriver(t, e) // PollInterval 50ms
	createGroup(t, d, spec.Name, 1)
	setFaults(t, e, faults)
	e.ClearRequests()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	op, err := d.Reimage(ctx, spec.Name, []string{"0"})
	if err == nil {
		err = op.Wait(ctx)
	}
	if err != nil {
		t.Fatalf("reimage: %v", err)
	}
	return pollGaps(t, e, "/reimage")
}

// A reply's Retry-After paces the polls of an operation, from the reply that
// began it on, however short PollInterval is.
func TestPollsFollowRetryAfter(t *testing.T) {
	gaps := reimagePolls(t, `{"lro_retry_after_s": 1, "lro_delay_ms": 2500}`)
	if len(gaps) > 4 {
		t.Errorf("%d polls of a 2.5s operation that asked for one a second: %v", len(gaps), gaps)
	}
	for i, g := range gaps {
		if g < 900*time.Millisecond {
			t.Fatalf("poll %d came %s after the reply before, which asked for 1s: %v", i+1, g, gaps)
		}
	}
}

// Without Retry-After polls back off, from PollInterval up to five times it:
// pauses of 50, 75, 112 … up to 250ms.
func TestPollsBackOff(t *testing.T) {
	gaps := reimagePolls(t, `{"lro_retry_after_s": 0, "lro_delay_ms": 2500}`)
	if len(gaps) > 16 {
		t.Errorf("%d polls of a 2.5s operation: no backoff from 50ms: %v", len(gaps), gaps)
	}
	if last := gaps[len(gaps)-1]; last < 200*time.Millisecond || last > 700*time.Millisecond {
		t.Errorf("the last pause was %s, want about 250ms (five PollIntervals): %v", last, gaps)
	}
}

// TestChangedPageDecodedAgain: the driver keeps each VM list page decoded
// and skips decoding a page whose bytes did not change; a page that did —
// one VM reimaging, then done — is read afresh, and the other pages' VMs
// are listed as before.
func TestChangedPageDecodedAgain(t *testing.T) {
	const pageSize, n = 3, 7
	e := startEmulator(t, azemu.Options{PageSize: pageSize, LRODelay: 2 * time.Second})
	d := newDriver(t, e)
	createGroup(t, d, spec.Name, n)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	states := func() map[string]provider.InstanceState {
		t.Helper()
		ins, err := d.ListInstances(ctx, spec.Name)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]provider.InstanceState{}
		for _, in := range ins {
			out[in.ID] = in.State
		}
		if len(out) != n {
			t.Fatalf("ListInstances: %d instances, want %d", len(out), n)
		}
		return out
	}
	before := states()
	states() // the same pages again, none decoded
	var target string
	for id := range before {
		if target == "" || id > target {
			target = id // on a later page than the first
		}
	}
	op, err := d.Reimage(ctx, spec.Name, []string{target})
	if err != nil {
		t.Fatal(err)
	}
	during := states()
	for id, s := range during {
		switch {
		case id == target && s == provider.InstanceRunning:
			t.Errorf("instance %s listed running while its reimage is in progress: its changed page was not read afresh", id)
		case id != target && s != before[id]:
			t.Errorf("instance %s listed %s during another's reimage, was %s", id, s, before[id])
		}
	}
	if err := op.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if s := states()[target]; s != provider.InstanceRunning {
		t.Errorf("instance %s listed %s after its reimage, want running", target, s)
	}
}
