package azemu

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
)

// spotBody is scaleSetBody for Spot VMs with eviction policy policy.
func spotBody(capacity int64, policy armcompute.VirtualMachineEvictionPolicyTypes) armcompute.VirtualMachineScaleSet {
	b := scaleSetBody(capacity)
	b.Properties.VirtualMachineProfile.Priority = to.Ptr(armcompute.VirtualMachinePriorityTypesSpot)
	b.Properties.VirtualMachineProfile.EvictionPolicy = to.Ptr(policy)
	return b
}

func capacityOf(t *testing.T, c *clients, name string) int64 {
	t.Helper()
	s, err := c.sets.Get(ctxT(t), testRG, name, nil)
	if err != nil {
		t.Fatal(err)
	}
	return *s.SKU.Capacity
}

// coresUsage reads a usage's current value and limit.
func coresUsage(t *testing.T, c *clients, name string) [2]int64 {
	t.Helper()
	pager := c.usage.NewListPager("westeurope", nil)
	for pager.More() {
		page, err := pager.NextPage(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range page.Value {
			if *u.Name.Value == name {
				return [2]int64{int64(*u.CurrentValue), *u.Limit}
			}
		}
	}
	t.Fatalf("no usage %s", name)
	return [2]int64{}
}

// A scale-up that would take more vCPUs than the quota in force is refused
// as compute refuses it, and changes nothing; Spot VMs count against their
// own quota.
func TestQuotaRefusesScaleUp(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	ctx := ctxT(t)
	createSet(t, c, "q", 3) // 3 × 2 vCPUs
	setFaults(t, e, `{"quota": {"cores": 10, "low_priority_cores": 4}}`)
	if u := coresUsage(t, c, "cores"); u != [2]int64{6, 10} {
		t.Fatalf("cores usage %v, want 6 of 10", u)
	}
	// Up to the limit is allowed.
	p, err := c.sets.BeginUpdate(ctx, testRG, "q", withCapacity(5), nil)
	done(t, p, err)
	_, err = c.sets.BeginUpdate(ctx, testRG, "q", withCapacity(6), nil)
	re := respErr(t, err, http.StatusConflict, "OperationNotAllowed")
	for _, want := range []string{"exceeding approved Total Regional Cores quota", "Location: westeurope",
		"Current Limit: 10, Current Usage: 10, Additional Required: 2, (Minimum) New Limit Required: 12."} {
		if !strings.Contains(re.Error(), want) {
			t.Errorf("quota error does not say %q: %v", want, re)
		}
	}
	if n := capacityOf(t, c, "q"); n != 5 {
		t.Fatalf("a refused scale-up changed the capacity to %d", n)
	}
	// A PUT, a new set, is held to it too; shrinking never is.
	_, err = c.sets.BeginCreateOrUpdate(ctx, testRG, "q2", scaleSetBody(1), nil)
	respErr(t, err, http.StatusConflict, "OperationNotAllowed")
	p, err = c.sets.BeginUpdate(ctx, testRG, "q", withCapacity(1), nil)
	done(t, p, err)

	// Spot: lowPriorityCores, 4 of them.
	p2, err := c.sets.BeginCreateOrUpdate(ctx, testRG, "spot", spotBody(2, armcompute.VirtualMachineEvictionPolicyTypesDelete), nil)
	done(t, p2, err)
	if u := coresUsage(t, c, "lowPriorityCores"); u != [2]int64{4, 4} {
		t.Fatalf("lowPriorityCores usage %v, want 4 of 4", u)
	}
	_, err = c.sets.BeginUpdate(ctx, testRG, "spot", withCapacity(3), nil)
	if re := respErr(t, err, http.StatusConflict, "OperationNotAllowed"); !strings.Contains(re.Error(), "LowPriorityCores quota") {
		t.Errorf("Spot quota error: %v", re)
	}
}

// A scale-up needing more addresses than the subnet has free is refused
// with SubnetIsFull; the subnet lists its NICs, and subnet_used fills it.
func TestSubnetRefusesScaleUp(t *testing.T) {
	opts := testOptions(t)
	opts.SubnetPrefix = "10.0.0.0/29" // 8 addresses, 3 for VMs
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	createSet(t, c, "sn", 2)
	_, err := c.sets.BeginUpdate(ctx, testRG, "sn", withCapacity(4), nil)
	re := respErr(t, err, http.StatusBadRequest, "SubnetIsFull")
	if want := "Subnet sandbox with address prefix 10.0.0.0/29 does not have enough capacity for 2 IP addresses."; !strings.Contains(re.Error(), want) {
		t.Errorf("SubnetIsFull does not say %q: %v", want, re)
	}
	if n := capacityOf(t, c, "sn"); n != 2 {
		t.Fatalf("a refused scale-up changed the capacity to %d", n)
	}
	sn, err := c.subnets.Get(ctx, "vnet-rg", "vnet", "sandbox", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(sn.Properties.IPConfigurations); n != 2 {
		t.Fatalf("the subnet lists %d IP configurations, want 2", n)
	}
	setFaults(t, e, `{"subnet_used": 1}`)
	_, err = c.sets.BeginUpdate(ctx, testRG, "sn", withCapacity(3), nil)
	respErr(t, err, http.StatusBadRequest, "SubnetIsFull")
	setFaults(t, e, `{"subnet_used": null}`)
	p, err := c.sets.BeginUpdate(ctx, testRG, "sn", withCapacity(3), nil)
	done(t, p, err)

	var names []string
	pager := c.subnets.NewListPager("vnet-rg", "vnet", nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.Value {
			names = append(names, *s.Name)
			if *s.Properties.AddressPrefix != opts.SubnetPrefix {
				t.Errorf("subnet %s prefix %s", *s.Name, *s.Properties.AddressPrefix)
			}
		}
	}
	if !slices.Equal(names, []string{"default", "sandbox"}) {
		t.Fatalf("subnets %v", names)
	}
}

// Evicting a Spot VM: with eviction policy Delete it is gone and the
// capacity with it; with Deallocate it stays, deallocated; a VM that is not
// Spot cannot be evicted.
func TestEviction(t *testing.T) {
	opts := testOptions(t)
	e := startEmulator(t, opts)
	c := newClients(t, e)
	ctx := ctxT(t)
	for name, policy := range map[string]armcompute.VirtualMachineEvictionPolicyTypes{
		"del": armcompute.VirtualMachineEvictionPolicyTypesDelete, "dealloc": armcompute.VirtualMachineEvictionPolicyTypesDeallocate,
	} {
		p, err := c.sets.BeginCreateOrUpdate(ctx, testRG, name, spotBody(2, policy), nil)
		done(t, p, err)
	}
	createSet(t, c, "regular", 1)

	var info VMInfo
	if st := c.adminDo(t, http.MethodPost, "/_emulator/scalesets/del/vms/0/evict", "", &info); st != http.StatusOK {
		t.Fatalf("evict: %d", st)
	}
	if got := ids(listVMs(t, c, "del")); !slices.Equal(got, []string{"1"}) || capacityOf(t, c, "del") != 1 {
		t.Fatalf("after evicting with Delete: ids %v", got)
	}
	if !agentRefused(info.IP, opts.AgentPort) {
		t.Fatal("an evicted VM's agent listens")
	}
	if st := c.adminDo(t, http.MethodPost, "/_emulator/scalesets/dealloc/vms/1/evict", "", &info); st != http.StatusOK || info.PowerState != pwDeallocated {
		t.Fatalf("evict with Deallocate: %d %+v", st, info)
	}
	vms := listVMs(t, c, "dealloc")
	if _, prov, power := vmState(vms[1]); len(vms) != 2 || prov != stSucceeded || power != pwDeallocated || capacityOf(t, c, "dealloc") != 2 {
		t.Fatalf("after evicting with Deallocate: %d VMs, %s %s", len(vms), prov, power)
	}
	if st := c.adminDo(t, http.MethodPost, "/_emulator/scalesets/regular/vms/0/evict", "", nil); st != http.StatusBadRequest {
		t.Fatalf("evicting a regular VM: %d", st)
	}
	if st := c.adminDo(t, http.MethodPost, "/_emulator/scalesets/del/vms/7/evict", "", nil); st != http.StatusNotFound {
		t.Fatalf("evicting a missing VM: %d", st)
	}
	// ARM's simulateEviction does the same.
	if _, err := c.vms.SimulateEviction(ctx, testRG, "del", "1", nil); err != nil {
		t.Fatal(err)
	}
	if got := listVMs(t, c, "del"); len(got) != 0 {
		t.Fatalf("after simulateEviction: %v", ids(got))
	}
	_, err := c.vms.SimulateEviction(ctx, testRG, "regular", "0", nil)
	respErr(t, err, http.StatusConflict, "OperationNotAllowed")
}
