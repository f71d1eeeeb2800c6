package azure

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// ListGroups lists every scale set in the sandbox resource group, all pages,
// owned or not: the caller decides what to do with strangers. The IPs known
// of scale sets no longer there are forgotten.
func (d *Driver) ListGroups(ctx context.Context) ([]provider.Group, error) {
	var out []provider.Group
	pager := d.sets.NewListPager(d.rg, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, mapErr("list scale sets in "+d.rg, err)
		}
		for _, s := range page.Value {
			if s != nil {
				out = append(out, groupOf(s))
			}
		}
	}
	d.ips.keep(out)
	return out, nil
}

// GetGroup reads one scale set. ErrNotFound if it does not exist.
func (d *Driver) GetGroup(ctx context.Context, name string) (provider.Group, error) {
	resp, err := d.sets.Get(ctx, d.rg, name, nil)
	if err != nil {
		return provider.Group{}, mapErr("get scale set "+name, err)
	}
	return groupOf(&resp.VirtualMachineScaleSet), nil
}

func groupOf(s *armcompute.VirtualMachineScaleSet) provider.Group {
	g := provider.Group{
		Name:  deref(s.Name),
		Owned: isOwned(s.Tags),
		ETag:  deref(s.Etag),
	}
	if s.SKU != nil && s.SKU.Capacity != nil {
		g.Capacity = int(*s.SKU.Capacity)
	}
	if p := s.Properties; p != nil {
		g.State = deref(p.ProvisioningState)
		if vp := p.VirtualMachineProfile; vp != nil && vp.StorageProfile != nil && vp.StorageProfile.ImageReference != nil {
			g.Image = deref(vp.StorageProfile.ImageReference.ID)
		}
	}
	return g
}

// isOwned reports whether tags carry the owner tag. ARM tag names are case
// insensitive, and a hand edit in the portal may change the value's case.
func isOwned(tags map[string]*string) bool {
	for k, v := range tags {
		if strings.EqualFold(k, OwnerTag) && v != nil && strings.EqualFold(*v, "true") {
			return true
		}
	}
	return false
}

// ImageID returns the Resource Manager id of a gallery image definition in the
// configured gallery; Group.Image and Instance.Image hold ids of this form.
func (d *Driver) ImageID(image string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/galleries/%s/images/%s",
		d.subscription, d.rg, d.cfg.Gallery, image)
}

// SubnetID returns the Resource Manager id of the configured subnet.
func (d *Driver) SubnetID() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Network/virtualNetworks/%s/subnets/%s",
		d.subscription, d.cfg.VNetResourceGroup, d.cfg.VNet, d.cfg.Subnet)
}

// CheckImage reads the gallery image definition a pool names (ImageID): nil
// if it exists, an error wrapping provider.ErrNotFound if not. Creating or
// updating a scale set checks first, so that a missing image fails early,
// with a readable error, rather than deep inside a scale-set operation.
func (d *Driver) CheckImage(ctx context.Context, image string) error {
	if image == "" {
		return fmt.Errorf("pool image: empty gallery image name")
	}
	if _, err := d.images.Get(ctx, d.rg, d.cfg.Gallery, image, nil); err != nil {
		return mapErr(fmt.Sprintf("gallery image %s in %s/%s", image, d.rg, d.cfg.Gallery), err)
	}
	return nil
}

// scaleSet is the model sandfleet creates for a pool (CAPE az.py's, with the
// owner tag): Uniform orchestration, automatic upgrades, no overprovisioning,
// newest VMs removed first on scale-in, an ephemeral OS disk from the gallery
// image, one NIC in the sandbox subnet.
func (d *Driver) scaleSet(spec provider.PoolSpec) armcompute.VirtualMachineScaleSet {
	tags := map[string]*string{
		OwnerTag:    to.Ptr("true"),
		PoolTag:     to.Ptr(spec.Name),
		PlatformTag: to.Ptr(spec.Platform),
		ArchTag:     to.Ptr(spec.Arch),
	}
	if len(spec.Tags) > 0 {
		tags[TagsTag] = to.Ptr(strings.Join(spec.Tags, ","))
	}
	var dns *armcompute.VirtualMachineScaleSetNetworkConfigurationDNSSettings
	if len(d.cfg.DNSServers) > 0 {
		dns = &armcompute.VirtualMachineScaleSetNetworkConfigurationDNSSettings{DNSServers: to.SliceOfPtrs(d.cfg.DNSServers...)}
	}
	placement := d.cfg.EphemeralOSDiskPlacement
	if placement == "" {
		placement = string(armcompute.DiffDiskPlacementCacheDisk)
	}
	vm := &armcompute.VirtualMachineScaleSetVMProfile{
		StorageProfile: &armcompute.VirtualMachineScaleSetStorageProfile{
			ImageReference: &armcompute.ImageReference{ID: to.Ptr(d.ImageID(spec.Image))},
			OSDisk: &armcompute.VirtualMachineScaleSetOSDisk{
				CreateOption: to.Ptr(armcompute.DiskCreateOptionTypesFromImage),
				Caching:      to.Ptr(armcompute.CachingTypesReadOnly),
				DiffDiskSettings: &armcompute.DiffDiskSettings{
					Option:    to.Ptr(armcompute.DiffDiskOptionsLocal),
					Placement: to.Ptr(armcompute.DiffDiskPlacement(placement)),
				},
			},
		},
		NetworkProfile: &armcompute.VirtualMachineScaleSetNetworkProfile{
			NetworkInterfaceConfigurations: []*armcompute.VirtualMachineScaleSetNetworkConfiguration{{
				Name: to.Ptr(spec.Name + "-nic"),
				Properties: &armcompute.VirtualMachineScaleSetNetworkConfigurationProperties{
					Primary:     to.Ptr(true),
					DNSSettings: dns,
					IPConfigurations: []*armcompute.VirtualMachineScaleSetIPConfiguration{{
						Name: to.Ptr(spec.Name + "-ipconfig"),
						Properties: &armcompute.VirtualMachineScaleSetIPConfigurationProperties{
							Primary: to.Ptr(true),
							Subnet:  &armcompute.APIEntityReference{ID: to.Ptr(d.SubnetID())},
						},
					}},
				},
			}},
		},
	}
	if t := osType(spec.Platform); t != nil {
		vm.StorageProfile.OSDisk.OSType = t
	}
	props := &armcompute.VirtualMachineScaleSetProperties{
		OrchestrationMode:    to.Ptr(armcompute.OrchestrationModeUniform),
		UpgradePolicy:        &armcompute.UpgradePolicy{Mode: to.Ptr(armcompute.UpgradeModeAutomatic)},
		Overprovision:        to.Ptr(false),
		SinglePlacementGroup: to.Ptr(false),
		ScaleInPolicy: &armcompute.ScaleInPolicy{
			Rules: []*armcompute.VirtualMachineScaleSetScaleInRules{to.Ptr(armcompute.VirtualMachineScaleSetScaleInRulesNewestVM)},
		},
		VirtualMachineProfile: vm,
	}
	if d.cfg.Spot {
		vm.Priority = to.Ptr(armcompute.VirtualMachinePriorityTypesSpot)
		vm.EvictionPolicy = to.Ptr(armcompute.VirtualMachineEvictionPolicyTypesDelete)
		vm.BillingProfile = &armcompute.BillingProfile{MaxPrice: to.Ptr(-1.0)}
		props.SpotRestorePolicy = &armcompute.SpotRestorePolicy{Enabled: to.Ptr(true), RestoreTimeout: to.Ptr("PT30M")}
	}
	return armcompute.VirtualMachineScaleSet{
		Location: to.Ptr(d.cfg.Region),
		SKU: &armcompute.SKU{
			Name:     to.Ptr(d.cfg.InstanceType),
			Tier:     to.Ptr("Standard"),
			Capacity: to.Ptr(int64(spec.Capacity)),
		},
		Tags:       tags,
		Properties: props,
	}
}

func osType(platform string) *armcompute.OperatingSystemTypes {
	switch platform {
	case "windows":
		return to.Ptr(armcompute.OperatingSystemTypesWindows)
	case "linux":
		return to.Ptr(armcompute.OperatingSystemTypesLinux)
	}
	return nil
}

// CreateGroup begins creating the pool's scale set. If-None-Match: * makes it
// fail rather than overwrite a scale set that already has the name.
func (d *Driver) CreateGroup(ctx context.Context, spec provider.PoolSpec) (provider.Op, error) {
	op := fmt.Sprintf("create scale set %s (%d × %s)", spec.Name, spec.Capacity, d.cfg.InstanceType)
	if spec.Name == "" || strings.Contains(spec.Name, "_") {
		return nil, fmt.Errorf("%s: invalid scale-set name %q", op, spec.Name)
	}
	if spec.Capacity < 0 {
		return nil, fmt.Errorf("%s: negative capacity", op)
	}
	if err := d.CheckImage(ctx, spec.Image); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	var first *http.Response
	p, err := d.sets.BeginCreateOrUpdate(policy.WithCaptureResponse(ctx, &first), d.rg, spec.Name, d.scaleSet(spec),
		&armcompute.VirtualMachineScaleSetsClientBeginCreateOrUpdateOptions{IfNoneMatch: to.Ptr("*")})
	if err != nil {
		return nil, mapErr(op, err)
	}
	return d.begun(newOp(d, op, p, first), "group", spec.Name), nil
}

// DeleteGroup begins deleting a scale set with all its instances.
func (d *Driver) DeleteGroup(ctx context.Context, name string) (provider.Op, error) {
	op := "delete scale set " + name
	var first *http.Response
	p, err := d.sets.BeginDelete(policy.WithCaptureResponse(ctx, &first), d.rg, name, nil)
	if err != nil {
		return nil, mapErr(op, err)
	}
	return d.begun(newOp(d, op, p, first), "group", name), nil
}

// UpdateGroupImage begins pointing a scale set's model at spec.Image; with the
// Automatic upgrade policy, instances pick it up as they are reimaged.
func (d *Driver) UpdateGroupImage(ctx context.Context, spec provider.PoolSpec) (provider.Op, error) {
	op := fmt.Sprintf("update scale set %s image to %s", spec.Name, spec.Image)
	if err := d.CheckImage(ctx, spec.Image); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	update := armcompute.VirtualMachineScaleSetUpdate{
		Properties: &armcompute.VirtualMachineScaleSetUpdateProperties{
			VirtualMachineProfile: &armcompute.VirtualMachineScaleSetUpdateVMProfile{
				StorageProfile: &armcompute.VirtualMachineScaleSetUpdateStorageProfile{
					ImageReference: &armcompute.ImageReference{ID: to.Ptr(d.ImageID(spec.Image))},
				},
			},
		},
	}
	var first *http.Response
	p, err := d.sets.BeginUpdate(policy.WithCaptureResponse(ctx, &first), d.rg, spec.Name, update, nil)
	if err != nil {
		return nil, mapErr(op, err)
	}
	return d.begun(newOp(d, op, p, first), "group", spec.Name), nil
}

// SetCapacity begins setting a scale set's capacity with If-Match: etag, so a
// capacity computed from a stale read is refused (ErrPreconditionFailed)
// instead of applied. An empty etag writes unconditionally.
func (d *Driver) SetCapacity(ctx context.Context, name string, capacity int, etag string) (provider.Op, error) {
	op := fmt.Sprintf("set scale set %s capacity to %d", name, capacity)
	if capacity < 0 {
		return nil, fmt.Errorf("%s: negative capacity", op)
	}
	var opts armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions
	if etag != "" {
		opts.IfMatch = to.Ptr(etag)
	}
	update := armcompute.VirtualMachineScaleSetUpdate{SKU: &armcompute.SKU{Capacity: to.Ptr(int64(capacity))}}
	var first *http.Response
	p, err := d.sets.BeginUpdate(policy.WithCaptureResponse(ctx, &first), d.rg, name, update, &opts)
	if err != nil {
		return nil, mapErr(op, err)
	}
	return d.begun(newOp(d, op, p, first), "group", name, "etag", etag), nil
}

// begun logs an operation that was just accepted and returns it.
func (d *Driver) begun(o provider.Op, args ...any) provider.Op {
	args = append(args, "op", opName(o), "token", o.Token() != "")
	d.log.Info("operation begun", args...)
	return o
}

func opName(o provider.Op) string {
	if n, ok := o.(interface{ name() string }); ok {
		return n.name()
	}
	return ""
}
