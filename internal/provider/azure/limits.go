package azure

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// The numbers below bound how far the reconciler may scale (CAPE az.py's
// limits): cores per VM against the regional core quota, and the subnet's
// address space.

// VCPUs returns the vCPU count of VM size (azure.instance_type when size is
// "") in the configured region, from the resource SKU list.
func (d *Driver) VCPUs(ctx context.Context, size string) (int, error) {
	if size == "" {
		size = d.cfg.InstanceType
	}
	op := fmt.Sprintf("vCPUs of %s in %s", size, d.cfg.Region)
	opts := &armcompute.ResourceSKUsClientListOptions{}
	if d.cfg.Region != "" {
		opts.Filter = to.Ptr(fmt.Sprintf("location eq '%s'", d.cfg.Region))
	}
	pager := d.skus.NewListPager(opts)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return 0, mapErr(op, err)
		}
		if n, ok := vcpusOf(page.Value, size); ok {
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s: %w", op, provider.ErrNotFound)
}

// vcpusOf finds size among virtualMachines SKUs and reads its vCPUs capability.
func vcpusOf(skus []*armcompute.ResourceSKU, size string) (int, bool) {
	for _, s := range skus {
		if s == nil || !strings.EqualFold(deref(s.Name), size) ||
			!strings.EqualFold(deref(s.ResourceType), "virtualMachines") {
			continue
		}
		for _, c := range s.Capabilities {
			if c == nil || !strings.EqualFold(deref(c.Name), "vCPUs") {
				continue
			}
			if n, err := strconv.Atoi(deref(c.Value)); err == nil && n > 0 {
				return n, true
			}
		}
	}
	return 0, false
}

// Usage is one regional compute quota: how much is used of how much.
type Usage struct {
	Name    string // e.g. "cores", "lowPriorityCores", "standardDSv5Family"
	Current int
	Limit   int
}

// CoreUsage reads the regional usage named name; with "" it is
// azure.quota_name, else lowPriorityCores for Spot pools and cores otherwise.
func (d *Driver) CoreUsage(ctx context.Context, name string) (Usage, error) {
	if name == "" {
		name = d.cfg.QuotaName
	}
	if name == "" {
		name = "cores"
		if d.cfg.Spot {
			name = "lowPriorityCores"
		}
	}
	op := fmt.Sprintf("usage %s in %s", name, d.cfg.Region)
	pager := d.usage.NewListPager(d.cfg.Region, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return Usage{}, mapErr(op, err)
		}
		if u, ok := findUsage(page.Value, name); ok {
			return u, nil
		}
	}
	return Usage{}, fmt.Errorf("%s: %w", op, provider.ErrNotFound)
}

func findUsage(list []*armcompute.Usage, name string) (Usage, bool) {
	for _, u := range list {
		if u == nil || u.Name == nil || !strings.EqualFold(deref(u.Name.Value), name) {
			continue
		}
		out := Usage{Name: deref(u.Name.Value)}
		if u.CurrentValue != nil {
			out.Current = int(*u.CurrentValue)
		}
		if u.Limit != nil {
			out.Limit = int(*u.Limit)
		}
		return out, true
	}
	return Usage{}, false
}

// SubnetLimit reads the configured subnet and returns how many machines fit in
// it (SubnetCapacity of its address prefix).
func (d *Driver) SubnetLimit(ctx context.Context) (int, error) {
	op := fmt.Sprintf("subnet %s/%s/%s", d.cfg.VNetResourceGroup, d.cfg.VNet, d.cfg.Subnet)
	resp, err := d.subnets.Get(ctx, d.cfg.VNetResourceGroup, d.cfg.VNet, d.cfg.Subnet, nil)
	if err != nil {
		return 0, mapErr(op, err)
	}
	p := resp.Properties
	if p == nil {
		return 0, fmt.Errorf("%s: no properties in response", op)
	}
	prefix := deref(p.AddressPrefix)
	if prefix == "" && len(p.AddressPrefixes) > 0 {
		prefix = deref(p.AddressPrefixes[0])
	}
	n, err := SubnetCapacity(prefix)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	return n, nil
}

// SubnetCapacity is how many machines an IPv4 subnet holds as CAPE counts it:
// 2^(32−prefix length) − 13 (Azure's five reserved addresses and a margin for
// the sandbox's own hosts); never below 0.
func SubnetCapacity(cidr string) (int, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(cidr))
	if err != nil {
		return 0, fmt.Errorf("address prefix %q: %w", cidr, err)
	}
	if !p.Addr().Is4() {
		return 0, fmt.Errorf("address prefix %q: only IPv4 subnets are supported", cidr)
	}
	n := (1 << (32 - p.Bits())) - 13
	return max(n, 0), nil
}

// Room implements provider.Room: the machines that still fit in the core
// quota, less quota_machine_exclusion machines kept free, and in the
// subnet's addresses, whichever is fewer.
func (d *Driver) Room(ctx context.Context, inUse int) (int, string, error) {
	vcpus := int(d.vcpus.Load())
	if vcpus == 0 {
		n, err := d.VCPUs(ctx, "")
		if err != nil {
			return 0, "", err
		}
		vcpus = n
		d.vcpus.Store(int64(n))
	}
	u, err := d.CoreUsage(ctx, "")
	if err != nil {
		return 0, "", err
	}
	keep := d.cfg.QuotaMachineExclusion * vcpus
	n := max(0, (u.Limit-u.Current-keep)/vcpus)
	why := fmt.Sprintf("core quota %s in %s: %d of %d cores used, %d kept free (quota_machine_exclusion %d × %d vCPUs of %s)",
		u.Name, d.cfg.Region, u.Current, u.Limit, keep, d.cfg.QuotaMachineExclusion, vcpus, d.cfg.InstanceType)
	subnet, err := d.SubnetLimit(ctx)
	if err != nil {
		return 0, "", err
	}
	if free := max(0, subnet-inUse); free < n {
		n, why = free, fmt.Sprintf("subnet %s/%s holds %d machines, %d in use", d.cfg.VNet, d.cfg.Subnet, subnet, inUse)
	}
	return n, why, nil
}
