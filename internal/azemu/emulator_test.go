package azemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/sandfleet/sandfleet/internal/poll"
)

func TestScaleSetCreateListAndAgents(t *testing.T) {
	opts := testOptions(t)
	opts.PageSize = 2
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)

	poller, err := c.sets.BeginCreateOrUpdate(ctx, testRG, "win10", scaleSetBody(3), nil)
	if err != nil {
		t.Fatal(err)
	}
	// VMs exist, Creating, as soon as the PUT is answered.
	vms, _, err := listVMsPages(ctx, c, "win10")
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 3 {
		t.Fatalf("after PUT: %d VMs, want 3", len(vms))
	}
	set := done(t, poller, nil).VirtualMachineScaleSet
	if *set.SKU.Capacity != 3 || *set.Properties.ProvisioningState != "Succeeded" || set.Etag == nil || *set.Tags["AUTO_SCALE_CAPE"] != "True" {
		t.Fatalf("created set: capacity %d state %s etag %v tags %v", *set.SKU.Capacity, *set.Properties.ProvisioningState, set.Etag, set.Tags)
	}
	if got := *set.Properties.VirtualMachineProfile.StorageProfile.ImageReference.ID; !strings.HasSuffix(got, "/images/win10") {
		t.Fatalf("image reference %s", got)
	}
	if set.Properties.VirtualMachineProfile.OSProfile.AdminPassword != nil {
		t.Fatal("the admin password is returned")
	}

	vms, pages, err := listVMsPages(ctx, c, "win10")
	if err != nil {
		t.Fatal(err)
	}
	if pages != 2 {
		t.Fatalf("3 VMs at page size 2 came in %d pages", pages)
	}
	for i, v := range vms {
		id, prov, power := vmState(v)
		if want := []string{"0", "1", "2"}[i]; id != want || prov != "Succeeded" || power != "running" {
			t.Fatalf("VM %d: id %s %s/%s", i, id, prov, power)
		}
		if *v.Name != "win10_"+id {
			t.Fatalf("VM name %s", *v.Name)
		}
		if *v.Properties.StorageProfile.OSDisk.OSType != armcompute.OperatingSystemTypesWindows {
			t.Fatalf("os type %s", *v.Properties.StorageProfile.OSDisk.OSType)
		}
	}

	nics := listNICs(t, c, "win10")
	if len(nics) != 3 {
		t.Fatalf("%d NICs, want 3", len(nics))
	}
	block := netip.MustParsePrefix(e.IPBlock())
	for i, n := range nics {
		if got, want := *n.Properties.VirtualMachine.ID, *vms[i].ID; got != want {
			t.Fatalf("NIC %d belongs to %s, want %s", i, got, want)
		}
		ip := netip.MustParseAddr(*n.Properties.IPConfigurations[0].Properties.PrivateIPAddress)
		if !block.Contains(ip) {
			t.Fatalf("IP %s outside %s", ip, block)
		}
	}
	one, err := c.nics.GetVirtualMachineScaleSetNetworkInterface(ctx, testRG, "win10", "1", "win10-nic", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *one.Properties.IPConfigurations[0].Properties.PrivateIPAddress != *nics[1].Properties.IPConfigurations[0].Properties.PrivateIPAddress {
		t.Fatal("NIC get and list disagree")
	}

	for id, ip := range ipsByID(t, c, "win10") {
		hello, err := agentGet(ip, opts.AgentPort, "/", 5*time.Second)
		if err != nil {
			t.Fatalf("agent of VM %s at %s: %v", id, ip, err)
		}
		// agent.py v0.22's json_success keeps the status code out of the body.
		if _, has := hello["status_code"]; has || hello["message"] != "CAPE Agent!" || hello["version"] != "0.22" {
			t.Fatalf("agent GET /: %v", hello)
		}
		st, err := agentGet(ip, opts.AgentPort, "/status", 5*time.Second)
		if err != nil || st["status"] != "init" {
			t.Fatalf("agent GET /status: %v %v", st, err)
		}
	}
}

func TestCapacityETagReimageDelete(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	set := createSet(t, c, "pool", 3)
	etag0 := *set.Etag

	// Scale out with the current ETag.
	p, err := c.sets.BeginUpdate(ctx, testRG, "pool", withCapacity(5), &armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions{IfMatch: &etag0})
	upd := done(t, p, err)
	if *upd.SKU.Capacity != 5 || *upd.Etag == etag0 {
		t.Fatalf("after scale-out: capacity %d etag %s (was %s)", *upd.SKU.Capacity, *upd.Etag, etag0)
	}
	if got := ids(listVMs(t, c, "pool")); !slices.Equal(got, []string{"0", "1", "2", "3", "4"}) {
		t.Fatalf("ids after scale-out: %v", got)
	}

	// A stale ETag is refused.
	_, err = c.sets.BeginUpdate(ctx, testRG, "pool", withCapacity(1), &armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions{IfMatch: &etag0})
	respErr(t, err, http.StatusPreconditionFailed, "PreconditionFailed")
	// If-None-Match: * refuses to overwrite an existing set.
	_, err = c.sets.BeginCreateOrUpdate(ctx, testRG, "pool", scaleSetBody(3),
		&armcompute.VirtualMachineScaleSetsClientBeginCreateOrUpdateOptions{IfNoneMatch: to.Ptr("*")})
	respErr(t, err, http.StatusPreconditionFailed, "PreconditionFailed")
	got, err := c.sets.Get(ctx, testRG, "pool", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *got.SKU.Capacity != 5 {
		t.Fatalf("a refused update changed the capacity to %d", *got.SKU.Capacity)
	}

	// Reimage keeps instance ids and IPs; VMs are Updating and agents down
	// meanwhile.
	before := ipsByID(t, c, "pool")
	setFaults(t, e, `{"lro_delay_ms": 1500}`)
	rp, err := c.sets.BeginReimage(ctx, testRG, "pool", &armcompute.VirtualMachineScaleSetsClientBeginReimageOptions{
		VMScaleSetReimageInput: &armcompute.VirtualMachineScaleSetReimageParameters{InstanceIDs: []*string{to.Ptr("1"), to.Ptr("3")}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range listVMs(t, c, "pool") {
		id, prov, _ := vmState(v)
		reimaging := id == "1" || id == "3"
		if reimaging != (prov == "Updating") {
			t.Fatalf("during reimage: VM %s is %s", id, prov)
		}
	}
	if !agentRefused(before["1"], opts.AgentPort) {
		t.Fatal("agent of a reimaging VM still listens")
	}
	done(t, rp, nil)
	setFaults(t, e, `{"clear": true}`)
	if after := ipsByID(t, c, "pool"); !mapsEqual(before, after) {
		t.Fatalf("reimage changed IPs: %v -> %v", before, after)
	}
	for _, v := range listVMs(t, c, "pool") {
		if _, prov, power := vmState(v); prov != "Succeeded" || power != "running" {
			t.Fatalf("after reimage VM %s is %s/%s", *v.InstanceID, prov, power)
		}
	}
	if _, err := agentGet(before["1"], opts.AgentPort, "/", 5*time.Second); err != nil {
		t.Fatalf("agent after reimage: %v", err)
	}

	// Delete instances by id.
	dp, err := c.sets.BeginDeleteInstances(ctx, testRG, "pool",
		armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: []*string{to.Ptr("0")}},
		&armcompute.VirtualMachineScaleSetsClientBeginDeleteInstancesOptions{ForceDeletion: to.Ptr(true)})
	done(t, dp, err)
	if got := ids(listVMs(t, c, "pool")); !slices.Equal(got, []string{"1", "2", "3", "4"}) {
		t.Fatalf("ids after deleting 0: %v", got)
	}
	if !agentRefused(before["0"], opts.AgentPort) {
		t.Fatal("agent of a deleted VM still listens")
	}
	// Deleting an absent instance is InvalidParameter.
	_, err = c.sets.BeginDeleteInstances(ctx, testRG, "pool",
		armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: []*string{to.Ptr("0")}}, nil)
	respErr(t, err, http.StatusBadRequest, "InvalidParameter")

	// Scale-in removes the newest; scale-out never reuses an id.
	for _, n := range []int64{2, 3} {
		p, err := c.sets.BeginUpdate(ctx, testRG, "pool", withCapacity(n), nil)
		done(t, p, err)
	}
	if got := ids(listVMs(t, c, "pool")); !slices.Equal(got, []string{"1", "2", "5"}) {
		t.Fatalf("ids after scale to 2 and 3: %v", got)
	}

	// Per-VM reimage and delete.
	vp, err := c.vms.BeginReimage(ctx, testRG, "pool", "2", nil)
	done(t, vp, err)
	vd, err := c.vms.BeginDelete(ctx, testRG, "pool", "5", nil)
	done(t, vd, err)
	one, err := c.vms.Get(ctx, testRG, "pool", "2", &armcompute.VirtualMachineScaleSetVMsClientGetOptions{Expand: to.Ptr(armcompute.InstanceViewTypesInstanceView)})
	if err != nil {
		t.Fatal(err)
	}
	if _, prov, power := vmState(&one.VirtualMachineScaleSetVM); prov != "Succeeded" || power != "running" {
		t.Fatalf("VM 2: %s/%s", prov, power)
	}
	_, err = c.vms.Get(ctx, testRG, "pool", "5", nil)
	respErr(t, err, http.StatusNotFound, "ResourceNotFound")
	got, err = c.sets.Get(ctx, testRG, "pool", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *got.SKU.Capacity != 2 {
		t.Fatalf("capacity %d after deleting VM 5, want 2", *got.SKU.Capacity)
	}

	// Delete the set.
	sd, err := c.sets.BeginDelete(ctx, testRG, "pool", nil)
	done(t, sd, err)
	_, err = c.sets.Get(ctx, testRG, "pool", nil)
	respErr(t, err, http.StatusNotFound, "ResourceNotFound")
	_, _, err = listVMsPages(ctx, c, "pool")
	respErr(t, err, http.StatusNotFound, "ParentResourceNotFound")
	if !agentRefused(before["1"], opts.AgentPort) {
		t.Fatal("agent of a deleted set still listens")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestListScaleSetsPaged(t *testing.T) {
	opts := testOptions(t)
	opts.PageSize = 2
	e := startEmulator(t, opts)
	c := newClients(t, e)
	for _, n := range []string{"c", "a", "b"} {
		createSet(t, c, n, 0)
	}
	var names []string
	pager := c.sets.NewListPager(testRG, nil)
	for pager.More() {
		page, err := pager.NextPage(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.Value {
			names = append(names, *s.Name)
		}
	}
	if !slices.Equal(names, []string{"a", "b", "c"}) {
		t.Fatalf("listed %v", names)
	}
	// Another resource group holds none of them.
	page, err := c.sets.NewListPager("other-rg", nil).NextPage(ctxT(t))
	if err != nil || len(page.Value) != 0 {
		t.Fatalf("other group: %v %v", page.Value, err)
	}
}

func TestResumeTokenAcrossRestart(t *testing.T) {
	opts := testOptions(t)
	opts.LRODelay = 600 * time.Millisecond
	e1 := startEmulator(t, opts)
	c1 := newClients(t, e1)
	ctx := ctxT(t)
	addr := e1.Addr()

	// Resume in the same process first.
	p, err := c1.sets.BeginCreateOrUpdate(ctx, testRG, "resume", scaleSetBody(2), nil)
	tok := resumeToken(t, p, err)
	p2, err := c1.sets.BeginCreateOrUpdate(ctx, testRG, "resume", armcompute.VirtualMachineScaleSet{},
		&armcompute.VirtualMachineScaleSetsClientBeginCreateOrUpdateOptions{ResumeToken: tok})
	done(t, p2, err)

	// Begin a reimage and a scale-out, keep their tokens, restart the
	// emulator in the middle.
	rp, err := c1.sets.BeginReimageAll(ctx, testRG, "resume", nil)
	reimageTok := resumeToken(t, rp, err)
	up, err := c1.sets.BeginUpdate(ctx, testRG, "resume", withCapacity(3), nil)
	updateTok := resumeToken(t, up, err)
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}
	if !agentRefused(e1.st.sets[setKey(testSub, testRG, "resume")].VMs[0].IP, opts.AgentPort) {
		t.Fatal("agents survive Close")
	}

	e2 := startOn(t, opts, addr)
	c2 := newClients(t, e2)
	rp2, err := c2.sets.BeginReimageAll(ctx, testRG, "resume",
		&armcompute.VirtualMachineScaleSetsClientBeginReimageAllOptions{ResumeToken: reimageTok})
	done(t, rp2, err)
	up2, err := c2.sets.BeginUpdate(ctx, testRG, "resume", armcompute.VirtualMachineScaleSetUpdate{},
		&armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions{ResumeToken: updateTok})
	res := done(t, up2, err)
	if *res.SKU.Capacity != 3 || *res.Properties.ProvisioningState != "Succeeded" {
		t.Fatalf("resumed update: capacity %d state %s", *res.SKU.Capacity, *res.Properties.ProvisioningState)
	}
	vms := listVMs(t, c2, "resume")
	if got := ids(vms); !slices.Equal(got, []string{"0", "1", "2"}) {
		t.Fatalf("ids %v", got)
	}
	for id, ip := range ipsByID(t, c2, "resume") {
		if _, err := agentGet(ip, opts.AgentPort, "/", 5*time.Second); err != nil {
			t.Fatalf("agent of VM %s after restart: %v", id, err)
		}
	}

	// An operation that ended while the emulator was down reports its end.
	dp, err := c2.sets.BeginDeleteInstances(ctx, testRG, "resume",
		armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: []*string{to.Ptr("2")}}, nil)
	delTok := resumeToken(t, dp, err)
	if err := e2.Close(); err != nil {
		t.Fatal(err)
	}
	// The operation's end passes while no emulator runs.
	ends := time.Now().Add(opts.LRODelay)
	poll.Until(t, opts.LRODelay+5*time.Second, "the operation's end passes", func() bool { return time.Now().After(ends) })
	// Asked for any port, the emulator comes back on the one it had.
	e3 := startEmulator(t, opts)
	if e3.Addr() != addr {
		t.Fatalf("restarted on %s, was %s", e3.Addr(), addr)
	}
	c3 := newClients(t, e3)
	dp3, err := c3.sets.BeginDeleteInstances(ctx, testRG, "resume", armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{},
		&armcompute.VirtualMachineScaleSetsClientBeginDeleteInstancesOptions{ResumeToken: delTok})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dp3.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if !dp3.Done() {
		t.Fatal("an operation whose end passed during the restart is still in progress")
	}
	if _, err := dp3.Result(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ids(listVMs(t, c3, "resume")); !slices.Equal(got, []string{"0", "1"}) {
		t.Fatalf("ids %v", got)
	}
}

func TestUnknownOperationIs404(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	tok := `{"type":"VirtualMachineScaleSetsClientDeleteResponse","token":{"asyncURL":"` + e.URL() +
		`/subscriptions/` + testSub + `/providers/Microsoft.Compute/locations/westeurope/operations/nope?api-version=2026-04-01","locURL":"","origURL":"` +
		e.URL() + `/x","method":"DELETE","finalState":"","state":"InProgress"}}`
	p, err := c.sets.BeginDelete(ctxT(t), testRG, "x", &armcompute.VirtualMachineScaleSetsClientBeginDeleteOptions{ResumeToken: tok})
	_, err = finish(t, p, err)
	respErr(t, err, http.StatusNotFound, "ResourceNotFound")
}

func TestThrottle(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	ctx := ctxT(t)
	createSet(t, c, "thr", 1)
	status := c.adminDo(t, http.MethodPost, "/_emulator/faults",
		`{"throttle": {"match": "virtualMachines", "retry_after_s": 120, "count": 2}}`, nil)
	if status != http.StatusOK {
		t.Fatalf("set faults: %d", status)
	}
	for i := range 2 {
		_, _, err := listVMsPages(ctx, c, "thr")
		re := respErr(t, err, http.StatusTooManyRequests, "TooManyRequests")
		if ra := re.RawResponse.Header.Get("Retry-After"); ra != "120" {
			t.Fatalf("request %d: Retry-After %q", i, ra)
		}
	}
	if _, _, err := listVMsPages(ctx, c, "thr"); err != nil {
		t.Fatalf("after the count: %v", err)
	}
	// Without a count it lasts until cleared; paths that do not match pass.
	c.adminDo(t, http.MethodPost, "/_emulator/faults", `{"throttle": {"match": "/networkInterfaces", "retry_after_s": 3}}`, nil)
	for range 3 {
		pager := c.nics.NewListVirtualMachineScaleSetNetworkInterfacesPager(testRG, "thr", nil)
		_, err := pager.NextPage(ctx)
		respErr(t, err, http.StatusTooManyRequests, "TooManyRequests")
	}
	if _, err := c.sets.Get(ctx, testRG, "thr", nil); err != nil {
		t.Fatal(err)
	}
	var f Faults
	c.adminDo(t, http.MethodGet, "/_emulator/faults", "", &f)
	if f.Throttle == nil || f.Throttle.Match != "/networkInterfaces" {
		t.Fatalf("GET faults: %+v", f)
	}
	var cleared Faults
	c.adminDo(t, http.MethodPost, "/_emulator/faults", `{}`, &cleared)
	if cleared.Throttle != nil {
		t.Fatalf("{} did not clear: %+v", cleared)
	}
	if _, err := c.nics.NewListVirtualMachineScaleSetNetworkInterfacesPager(testRG, "thr", nil).NextPage(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestPreemptionAndFailedProvisioning(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	set := createSet(t, c, "flaky", 1)

	setFaults(t, e, `{"operation_preempted": 1}`)
	p, err := c.sets.BeginUpdate(ctx, testRG, "flaky", withCapacity(2), nil)
	_, err = finish(t, p, err)
	respErr(t, err, http.StatusOK, "OperationPreempted")
	got, err := c.sets.Get(ctx, testRG, "flaky", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *got.SKU.Capacity != 1 || *got.Etag != *set.Etag {
		t.Fatalf("a preempted update changed the set: capacity %d etag %s", *got.SKU.Capacity, *got.Etag)
	}

	setFaults(t, e, `{"fail_provisioning": 1}`)
	p, err = c.sets.BeginUpdate(ctx, testRG, "flaky", withCapacity(3), nil)
	_, err = finish(t, p, err)
	respErr(t, err, http.StatusOK, "OSProvisioningTimedOut")
	states := map[string]string{}
	for _, v := range listVMs(t, c, "flaky") {
		id, prov, _ := vmState(v)
		states[id] = prov
	}
	if states["0"] != "Succeeded" || states["1"] != "Failed" || states["2"] != "Succeeded" {
		t.Fatalf("states %v", states)
	}
	ips := ipsByID(t, c, "flaky")
	if !agentRefused(ips["1"], opts.AgentPort) {
		t.Fatal("a VM whose provisioning failed runs an agent")
	}
	// Reimage repairs it.
	rp, err := c.vms.BeginReimage(ctx, testRG, "flaky", "1", nil)
	done(t, rp, err)
	if _, err := agentGet(ips["1"], opts.AgentPort, "/", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestAdminEndpoints(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	createSet(t, c, "adm", 1)
	e.ClearRequests()

	var added VMInfo
	if st := c.adminDo(t, http.MethodPost, "/_emulator/scalesets/adm/vms", "", &added); st != http.StatusOK {
		t.Fatalf("add: %d", st)
	}
	if added.InstanceID != "1" || added.IP == "" || added.Name != "adm_1" || added.ProvisioningState != "Succeeded" || added.Agent != "up" {
		t.Fatalf("added %+v", added)
	}
	if _, err := agentGet(added.IP, opts.AgentPort, "/", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	got, err := c.sets.Get(ctx, testRG, "adm", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *got.SKU.Capacity != 2 {
		t.Fatalf("capacity %d after an out-of-band add", *got.SKU.Capacity)
	}

	// down closes the listener, hang accepts and never answers, up restores.
	agent := "/_emulator/scalesets/adm/vms/1/agent"
	var info VMInfo
	c.adminDo(t, http.MethodPost, agent, `{"state": "down"}`, &info)
	if info.Agent != "down" || !agentRefused(added.IP, opts.AgentPort) {
		t.Fatalf("down: %+v", info)
	}
	c.adminDo(t, http.MethodPost, agent, `{"state": "hang"}`, &info)
	if info.Agent != "hang" || agentRefused(added.IP, opts.AgentPort) {
		t.Fatalf("hang: %+v", info)
	}
	if _, err := agentGet(added.IP, opts.AgentPort, "/", 300*time.Millisecond); err == nil {
		t.Fatal("a hung agent answered")
	}
	c.adminDo(t, http.MethodPost, agent, `{"state": "up"}`, &info)
	if _, err := agentGet(added.IP, opts.AgentPort, "/", 5*time.Second); err != nil || info.Agent != "up" {
		t.Fatalf("up: %+v %v", info, err)
	}
	// fail answers as up does (its analyzers fail: see TestAgentFailState).
	c.adminDo(t, http.MethodPost, agent, `{"state": "fail"}`, &info)
	if _, err := agentGet(added.IP, opts.AgentPort, "/", 5*time.Second); err != nil || info.Agent != "fail" {
		t.Fatalf("fail: %+v %v", info, err)
	}
	c.adminDo(t, http.MethodPost, agent, `{"state": "up"}`, &info)
	if st := c.adminDo(t, http.MethodPost, agent, `{"state": "sideways"}`, nil); st != http.StatusBadRequest {
		t.Fatalf("bad agent state: %d", st)
	}

	var sets []ScaleSetInfo
	c.adminDo(t, http.MethodGet, "/_emulator/scalesets", "", &sets)
	if len(sets) != 1 || sets[0].Name != "adm" || len(sets[0].VMs) != 2 || sets[0].VMs[1].IP != added.IP {
		t.Fatalf("scalesets: %+v", sets)
	}

	// Lose one: eviction.
	var removed VMInfo
	if st := c.adminDo(t, http.MethodDelete, "/_emulator/scalesets/adm/vms/0", "", &removed); st != http.StatusOK {
		t.Fatalf("remove: %d", st)
	}
	if got := ids(listVMs(t, c, "adm")); !slices.Equal(got, []string{"1"}) {
		t.Fatalf("ids after eviction %v", got)
	}
	if !agentRefused(removed.IP, opts.AgentPort) {
		t.Fatal("an evicted VM's agent listens")
	}
	if st := c.adminDo(t, http.MethodDelete, "/_emulator/scalesets/adm/vms/0", "", nil); st != http.StatusNotFound {
		t.Fatalf("remove twice: %d", st)
	}
	if st := c.adminDo(t, http.MethodPost, "/_emulator/scalesets/nope/vms", "", nil); st != http.StatusNotFound {
		t.Fatalf("add to a missing set: %d", st)
	}

	// Same name in two resource groups: the admin API wants to be told which.
	p, err := c.sets.BeginCreateOrUpdate(ctx, "other-rg", "adm", scaleSetBody(0), nil)
	done(t, p, err)
	if st := c.adminDo(t, http.MethodPost, "/_emulator/scalesets/adm/vms", "", nil); st != http.StatusConflict {
		t.Fatalf("ambiguous add: %d", st)
	}
	if st := c.adminDo(t, http.MethodPost, "/_emulator/scalesets/adm/vms?resource_group=other-rg", "", &added); st != http.StatusOK || added.InstanceID != "0" {
		t.Fatalf("add in other-rg: %d %+v", st, added)
	}

	// Admin requests are not in the request log.
	for _, r := range e.Requests() {
		if strings.HasPrefix(r.Path, "/_emulator") {
			t.Fatalf("admin request logged: %+v", r)
		}
	}
}

func TestRequestLog(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	ctx := ctxT(t)
	createSet(t, c, "logged", 2)
	if _, err := c.sets.Get(ctx, testRG, "missing", nil); err == nil {
		t.Fatal("missing set found")
	}
	var recs []RequestRecord
	if st := c.adminDo(t, http.MethodGet, "/_emulator/requests", "", &recs); st != http.StatusOK {
		t.Fatal(st)
	}
	if len(recs) < 3 {
		t.Fatalf("%d records", len(recs))
	}
	put := recs[0]
	wantPath := "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.Compute/virtualMachineScaleSets/logged"
	if put.Method != http.MethodPut || put.Path != wantPath || put.Status != http.StatusCreated {
		t.Fatalf("first record %+v", put)
	}
	var body struct {
		SKU struct{ Capacity int } `json:"sku"`
	}
	if err := json.Unmarshal(put.Body, &body); err != nil || body.SKU.Capacity != 2 {
		t.Fatalf("logged body %s: %v", put.Body, err)
	}
	last := recs[len(recs)-1]
	if last.Method != http.MethodGet || last.Status != http.StatusNotFound || string(last.Body) != "null" {
		t.Fatalf("last record %+v", last)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Time.Before(recs[i-1].Time) {
			t.Fatal("records out of order")
		}
		if strings.Contains(recs[i].Path, "?") {
			t.Fatalf("query in path %s", recs[i].Path)
		}
	}
}

func TestStateSurvivesRestart(t *testing.T) {
	opts := testOptions(t)
	e1 := startEmulator(t, opts)
	c1 := newClients(t, e1)
	set := createSet(t, c1, "durable", 2)
	if _, err := e1.AddVM("durable", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e1.SetAgentState("durable", "", "0", "hang"); err != nil {
		t.Fatal(err)
	}
	ips1 := ipsByID(t, c1, "durable")
	block := e1.IPBlock()
	caPEM1 := string(e1.ca.certPEM)
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := startEmulator(t, opts)
	c2 := newClients(t, e2)
	if e2.IPBlock() != block || string(e2.ca.certPEM) != caPEM1 {
		t.Fatal("the address block or CA changed across a restart")
	}
	got, err := c2.sets.Get(ctxT(t), testRG, "durable", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *got.SKU.Capacity != 3 || *got.Tags["pool"] != "win10" || *got.Etag == *set.Etag {
		t.Fatalf("after restart: capacity %d tags %v etag %s", *got.SKU.Capacity, got.Tags, *got.Etag)
	}
	if ips2 := ipsByID(t, c2, "durable"); !mapsEqual(ips1, ips2) {
		t.Fatalf("IPs changed: %v -> %v", ips1, ips2)
	}
	if _, err := agentGet(ips1["2"], opts.AgentPort, "/", 5*time.Second); err != nil {
		t.Fatalf("agent after restart: %v", err)
	}
	if _, err := agentGet(ips1["0"], opts.AgentPort, "/", 300*time.Millisecond); err == nil {
		t.Fatal("the hung agent answers after a restart")
	}
	p, err := c2.sets.BeginUpdate(ctxT(t), testRG, "durable", withCapacity(4), nil)
	done(t, p, err)
	if got := ids(listVMs(t, c2, "durable")); !slices.Equal(got, []string{"0", "1", "2", "3"}) {
		t.Fatalf("ids %v", got)
	}
}

func TestAuthAndErrors(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	for _, h := range []string{"", "Bearer wrong", "Basic " + Token} {
		req, _ := http.NewRequest(http.MethodGet, e.URL()+"/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachineScaleSets?api-version=x", nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := c.admin.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("auth %q: %d", h, resp.StatusCode)
		}
	}
	ctx := ctxT(t)
	_, err := c.sets.Get(ctx, testRG, "ghost", nil)
	respErr(t, err, http.StatusNotFound, "ResourceNotFound")
	_, err = c.vms.Get(ctx, testRG, "ghost", "0", nil)
	respErr(t, err, http.StatusNotFound, "ParentResourceNotFound")
	_, err = c.sets.BeginUpdate(ctx, testRG, "ghost", armcompute.VirtualMachineScaleSetUpdate{}, nil)
	respErr(t, err, http.StatusNotFound, "ResourceNotFound")
	// Deleting what is absent is not an error.
	p, err := c.sets.BeginDelete(ctx, testRG, "ghost", nil)
	done(t, p, err)
	body := scaleSetBody(1)
	body.Location = nil
	_, err = c.sets.BeginCreateOrUpdate(ctx, testRG, "noloc", body, nil)
	respErr(t, err, http.StatusBadRequest, "LocationRequired")
}

func TestCatalog(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	ctx := ctxT(t)
	img, err := c.images.Get(ctx, "gallery-rg", "capegallery", "win10", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(*img.ID, "/galleries/capegallery/images/win10") || *img.Properties.OSType != armcompute.OperatingSystemTypesWindows {
		t.Fatalf("image %s %s", *img.ID, *img.Properties.OSType)
	}
	if *img.Location != DefaultLocation {
		t.Fatalf("image location %s, want the emulator's region %s", *img.Location, DefaultLocation)
	}
	sn, err := c.subnets.Get(ctx, "vnet-rg", "vnet", "sandbox", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *sn.Properties.AddressPrefix != DefaultSubnetPrefix {
		t.Fatalf("subnet prefix %s", *sn.Properties.AddressPrefix)
	}

	vcpus := map[string]string{}
	pager := c.skus.NewListPager(&armcompute.ResourceSKUsClientListOptions{Filter: to.Ptr("location eq 'westeurope'")})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.Value {
			for _, cp := range s.Capabilities {
				if *cp.Name == "vCPUs" {
					vcpus[*s.Name] = *cp.Value
				}
			}
			if *s.Locations[0] != "westeurope" {
				t.Fatalf("sku locations %v", s.Locations)
			}
		}
	}
	if vcpus["Standard_D2s_v3"] != "2" || vcpus["Standard_D4s_v3"] != "4" {
		t.Fatalf("vCPUs %v", vcpus)
	}

	createSet(t, c, "quota", 3)
	setFaults(t, e, `{"quota": {"cores": 10, "low_priority_cores": 4}}`)
	usage := map[string][2]int64{}
	up := c.usage.NewListPager("westeurope", nil)
	for up.More() {
		page, err := up.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range page.Value {
			usage[*u.Name.Value] = [2]int64{int64(*u.CurrentValue), *u.Limit}
		}
	}
	if usage["cores"] != [2]int64{6, 10} || usage["lowPriorityCores"] != [2]int64{0, 4} || usage["standardDSv3Family"][0] != 6 {
		t.Fatalf("usages %v", usage)
	}
}

// With a gallery, an image it does not hold is ARM's 404, whether read or
// named by a scale set's model; the scale set is then not created, nor its
// image changed.
func TestGallery(t *testing.T) {
	opts := testOptions(t)
	opts.GalleryImages = []string{"win10"}
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	if _, err := c.images.Get(ctx, "gallery-rg", "capegallery", "WIN10", nil); err != nil {
		t.Fatalf("an image the gallery holds, named in another case: %v", err)
	}
	_, err := c.images.Get(ctx, "gallery-rg", "capegallery", "win11", nil)
	if re := respErr(t, err, http.StatusNotFound, "ResourceNotFound"); !strings.Contains(re.Error(), "galleries/capegallery/images/win11") {
		t.Errorf("404 does not name the image: %v", re)
	}

	missing := "/subscriptions/" + testSub + "/resourceGroups/gallery-rg/providers/Microsoft.Compute/galleries/capegallery/images/win11"
	body := scaleSetBody(2)
	body.Properties.VirtualMachineProfile.StorageProfile.ImageReference.ID = to.Ptr(missing)
	_, err = c.sets.BeginCreateOrUpdate(ctx, testRG, "nope", body, nil)
	if re := respErr(t, err, http.StatusNotFound, "GalleryImageNotFound"); !strings.Contains(re.Error(), missing) {
		t.Errorf("GalleryImageNotFound does not name the image: %v", re)
	}
	_, err = c.sets.Get(ctx, testRG, "nope", nil)
	respErr(t, err, http.StatusNotFound, "ResourceNotFound")

	createSet(t, c, "win10", 1)
	update := armcompute.VirtualMachineScaleSetUpdate{Properties: &armcompute.VirtualMachineScaleSetUpdateProperties{
		VirtualMachineProfile: &armcompute.VirtualMachineScaleSetUpdateVMProfile{
			StorageProfile: &armcompute.VirtualMachineScaleSetUpdateStorageProfile{
				ImageReference: &armcompute.ImageReference{ID: to.Ptr(missing)},
			},
		},
	}}
	_, err = c.sets.BeginUpdate(ctx, testRG, "win10", update, nil)
	respErr(t, err, http.StatusNotFound, "GalleryImageNotFound")
	got, err := c.sets.Get(ctx, testRG, "win10", nil)
	if err != nil {
		t.Fatal(err)
	}
	if id := *got.Properties.VirtualMachineProfile.StorageProfile.ImageReference.ID; !strings.HasSuffix(id, "/images/win10") {
		t.Errorf("a refused update changed the image to %s", id)
	}
	// A patch that names no image is not held up by the gallery.
	p, err := c.sets.BeginUpdate(ctx, testRG, "win10", withCapacity(2), nil)
	done(t, p, err)
}

// The state directory says where its emulator serves while it serves.
func TestEndpointFile(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	url, ca, err := Endpoint(opts.StateDir)
	if err != nil || url != e.URL() || ca != e.CAFile() {
		t.Fatalf("Endpoint = %q, %q, %v; want %q, %q", url, ca, err, e.URL(), e.CAFile())
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Endpoint(opts.StateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("after Close: Endpoint = %v, want fs.ErrNotExist", err)
	}
}

func TestThousandVMs(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	start := time.Now()
	createSet(t, c, "big", 1000)
	created := time.Since(start)
	start = time.Now()
	vms := listVMs(t, c, "big")
	listed := time.Since(start)
	if len(vms) != 1000 {
		t.Fatalf("%d VMs", len(vms))
	}
	if n := len(ipsByID(t, c, "big")); n != 1000 {
		t.Fatalf("%d NICs", n)
	}
	e.agentMu.Lock()
	agents := len(e.agents)
	e.agentMu.Unlock()
	if agents != 1000 {
		t.Fatalf("%d agents", agents)
	}
	if _, err := agentGet(e.ScaleSets()[0].VMs[999].IP, opts.AgentPort, "/", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("created 1000 VMs with agents in %s, listed them in %s", created, listed)
	// Generous bounds: the race detector and a busy 2-core machine slow this.
	if created > 20*time.Second || listed > 10*time.Second {
		t.Fatalf("too slow: create %s, list %s", created, listed)
	}
	p, err := c.sets.BeginDelete(ctx, testRG, "big", nil)
	done(t, p, err)
}

func TestPowerActionsAndInstanceView(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	createSet(t, c, "pwr", 2)
	ips := ipsByID(t, c, "pwr")

	power := func() map[string]string {
		out := map[string]string{}
		for _, v := range listVMs(t, c, "pwr") {
			id, _, p := vmState(v)
			out[id] = p
		}
		return out
	}
	off, err := c.vms.BeginPowerOff(ctx, testRG, "pwr", "0", nil)
	done(t, off, err)
	if p := power(); p["0"] != "stopped" || p["1"] != "running" {
		t.Fatalf("after power off: %v", p)
	}
	if !agentRefused(ips["0"], opts.AgentPort) {
		t.Fatal("a stopped VM's agent listens")
	}
	start, err := c.sets.BeginStart(ctx, testRG, "pwr", nil)
	done(t, start, err)
	if p := power(); p["0"] != "running" || p["1"] != "running" {
		t.Fatalf("after start: %v", p)
	}
	if _, err := agentGet(ips["0"], opts.AgentPort, "/", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	dealloc, err := c.sets.BeginDeallocate(ctx, testRG, "pwr", &armcompute.VirtualMachineScaleSetsClientBeginDeallocateOptions{
		VMInstanceIDs: &armcompute.VirtualMachineScaleSetVMInstanceIDs{InstanceIDs: []*string{to.Ptr("1")}},
	})
	done(t, dealloc, err)
	if p := power(); p["1"] != "deallocated" {
		t.Fatalf("after deallocate: %v", p)
	}
	iv, err := c.sets.GetInstanceView(ctx, testRG, "pwr", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := iv.VirtualMachine.StatusesSummary; len(s) != 1 || *s[0].Code != "ProvisioningState/succeeded" || *s[0].Count != 2 {
		t.Fatalf("statuses summary %+v", s)
	}
}

// TestLoadsStateFile pins the format of state.json: a file written by an
// earlier emulator, with an operation whose end passed while it was down,
// loads and carries on.
func TestLoadsStateFile(t *testing.T) {
	opts := testOptions(t)
	vm := func(id int, ip, state, power, op string) string {
		return fmt.Sprintf(`"%d":{"id":%d,"vmId":"00000000-0000-4000-8000-00000000000%d","ip":%q,"provisioningState":%q,"power":%q,"op":%q,`+
			`"modelGen":1,"image":{"id":"/x/images/win10"},"size":"Standard_D2s_v3","timeCreated":"2026-01-01T00:00:00Z"}`, id, id, id, ip, state, power, op)
	}
	file := `{"version":1,"ipBlock":"127.61.0.0/24","ipCursor":3,"listen":"192.0.2.1:8443",
		"scaleSets":[{"subscription":"` + testSub + `","resourceGroup":"` + testRG + `","name":"old","location":"westeurope",
		"tags":{"pool":"win10"},"sku":{"name":"Standard_D2s_v3","tier":"Standard"},"capacity":2,
		"model":{"properties":{"virtualMachineProfile":{"osProfile":{"computerNamePrefix":"old"}}}},
		"etag":3,"modelGen":1,"provisioningState":"Updating","stateOp":"op-1","nextInstanceId":2,
		"uniqueId":"00000000-0000-4000-8000-0000000000aa","timeCreated":"2026-01-01T00:00:00Z",
		"vms":{` + vm(0, "127.61.0.1", "Succeeded", "running", "") + `,` + vm(1, "127.61.0.2", "Creating", "starting", "op-1") + `}}],
		"operations":[{"id":"op-1","kind":"patchScaleSet","subscription":"` + testSub + `","scaleSet":"` + setKey(testSub, testRG, "old") + `",
		"location":"westeurope","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:00:01Z"}]}`
	if err := os.WriteFile(filepath.Join(opts.StateDir, stateFile), []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	e := startEmulator(t, opts)
	c := newClients(t, e)
	if e.IPBlock() != "127.61.0.0/24" {
		t.Fatalf("address block %s", e.IPBlock())
	}
	got, err := c.sets.Get(ctxT(t), testRG, "old", nil)
	if err != nil {
		t.Fatal(err)
	}
	if *got.SKU.Capacity != 2 || *got.Etag != `"3"` || *got.Properties.ProvisioningState != "Succeeded" || *got.Tags["pool"] != "win10" {
		t.Fatalf("loaded set: capacity %d etag %s state %s tags %v", *got.SKU.Capacity, *got.Etag, *got.Properties.ProvisioningState, got.Tags)
	}
	for _, v := range listVMs(t, c, "old") {
		if _, prov, power := vmState(v); prov != "Succeeded" || power != "running" {
			t.Fatalf("VM %s is %s/%s", *v.InstanceID, prov, power)
		}
	}
	if ips := ipsByID(t, c, "old"); ips["0"] != "127.61.0.1" || ips["1"] != "127.61.0.2" {
		t.Fatalf("IPs %v", ips)
	}
	p, err := c.sets.BeginUpdate(ctxT(t), testRG, "old", withCapacity(3), nil)
	done(t, p, err)
	if ips := ipsByID(t, c, "old"); ips["2"] != "127.61.0.3" {
		t.Fatalf("the new VM is not the next instance at the next address: %v", ips)
	}
}

// A reimage boots the VM again: its agent is a fresh one, pinned to no one
// and knowing nothing of the analysis or files before it.
func TestReimageGivesAFreshAgent(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	createSet(t, c, "fresh", 1)
	ip := ipsByID(t, c, "fresh")["0"]
	poll.Until(t, 5*time.Second, "the agent", func() bool { return !agentRefused(ip, opts.AgentPort) })
	caller := &agentCaller{t: t, addr: net.JoinHostPort(ip, fmt.Sprint(opts.AgentPort))}
	caller.must("GET", "/pinning", nil)
	caller.must("POST", "/store", fields("filepath", `C:\x.txt`).file("file", "f", "x"))
	caller.must("POST", "/status", fields("status", "running"))

	rp, err := c.sets.BeginReimage(ctx, testRG, "fresh", &armcompute.VirtualMachineScaleSetsClientBeginReimageOptions{
		VMScaleSetReimageInput: &armcompute.VirtualMachineScaleSetReimageParameters{InstanceIDs: []*string{to.Ptr("0")}},
	})
	done(t, rp, err)
	var st agentResp
	poll.Until(t, 5*time.Second, "the fresh agent", func() bool {
		var err error
		st, err = caller.do("GET", "/status", nil)
		return err == nil
	})
	same(t, "status after reimage", st, 200, `{"message": "Analysis status", "status": "init", "description": ""}`)
	same(t, "pinning after reimage", caller.must("GET", "/pinning", nil), 200, `{"message": "Successfully pinned Agent", "client_ip": "127.0.0.1"}`)
	if r := caller.must("POST", "/retrieve", fields("filepath", `C:\x.txt`)); r.status != 404 {
		t.Errorf("a file survived the reimage: %d", r.status)
	}
}

// A restart the agents never saw (it began and ended between two
// reconciliations) still replaces the agent: the boot count says so.
func TestUnseenRestartReplacesTheAgent(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	createSet(t, c, "boot", 1)
	ip := ipsByID(t, c, "boot")["0"]
	poll.Until(t, 5*time.Second, "the agent", func() bool { return e.agentRunning(ip) == agentUp })
	e.agentMu.Lock()
	before := e.agents[ip]
	e.agentMu.Unlock()

	e.mu.Lock()
	e.st.sets[setKey(testSub, testRG, "boot")].VMs[0].Boot++
	e.gen++
	e.mu.Unlock()
	e.syncAgents()

	e.agentMu.Lock()
	after := e.agents[ip]
	e.agentMu.Unlock()
	if after == nil || after == before {
		t.Fatal("the agent outlived its VM's restart")
	}
}

// Readdress moves an instance to another IP, NIC and agent with it; the old
// address answers no more.
func TestReaddress(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	createSet(t, c, "moved", 2)
	before := ipsByID(t, c, "moved")
	info, err := e.Readdress("moved", "", "1")
	if err != nil {
		t.Fatal(err)
	}
	after := ipsByID(t, c, "moved")
	if info.IP == before["1"] || after["1"] != info.IP || after["0"] != before["0"] {
		t.Fatalf("NICs %v after readdressing 1 (was %v, reported %s)", after, before, info.IP)
	}
	if _, err := agentGet(info.IP, opts.AgentPort, "/", 5*time.Second); err != nil {
		t.Fatalf("agent at the new address: %v", err)
	}
	if !agentRefused(before["1"], opts.AgentPort) {
		t.Fatal("an agent still listens at the old address")
	}
	if _, err := e.Readdress("moved", "", "7"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("readdress of a missing instance: %v", err)
	}
}

// With lro_retry_after_s the reply that begins an operation and its polls
// while it runs carry that Retry-After (without it, the seconds left); its
// end does not; with 0 none does.
func TestLRORetryAfter(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	ctx := ctxT(t)
	createSet(t, c, "paced", 1)
	reimage := func() (*runtime.Poller[armcompute.VirtualMachineScaleSetsClientReimageResponse], *http.Response) {
		var first *http.Response
		p, err := c.sets.BeginReimage(policy.WithCaptureResponse(ctx, &first), testRG, "paced", nil)
		if err != nil {
			t.Fatal(err)
		}
		return p, first
	}
	setFaults(t, e, `{"lro_retry_after_s": 0}`)
	if _, first := reimage(); first.Header.Get("Retry-After") != "" {
		t.Fatalf("Retry-After %q with the fault at 0", first.Header.Get("Retry-After"))
	}
	setFaults(t, e, `{"lro_retry_after_s": 3, "lro_delay_ms": 300}`)
	p, first := reimage()
	if got := first.Header.Get("Retry-After"); got != "3" {
		t.Fatalf("the reply that began the reimage: Retry-After %q, want 3", got)
	}
	resp, err := p.Poll(ctx)
	if err != nil || p.Done() || resp.Header.Get("Retry-After") != "3" {
		t.Fatalf("a poll while it runs: done %v, Retry-After %q, %v", p.Done(), resp.Header.Get("Retry-After"), err)
	}
	poll.Until(t, 10*time.Second, "the reimage's end", func() bool {
		resp, err = p.Poll(ctx)
		return err == nil && p.Done()
	})
	if got := resp.Header.Get("Retry-After"); got != "" {
		t.Fatalf("the poll that saw the end: Retry-After %q", got)
	}
}
