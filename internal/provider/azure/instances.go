package azure

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// ListInstances lists a scale set's VMs with their private IPs: one VM list
// (with instance views) and one NIC list, each followed over all its pages,
// whatever the scale set's size. ErrNotFound if the scale set does not exist.
func (d *Driver) ListInstances(ctx context.Context, group string) ([]provider.Instance, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type nicList struct {
		nics []*armnetwork.Interface
		err  error
	}
	nicc := make(chan nicList, 1)
	go func() {
		nics, err := d.listNICs(ctx, group)
		nicc <- nicList{nics, err}
	}()
	vms, err := d.listVMs(ctx, group)
	if err != nil {
		cancel()
		<-nicc
		return nil, err
	}
	nl := <-nicc
	if nl.err != nil {
		return nil, nl.err
	}
	ips := primaryIPs(nl.nics)
	out := make([]provider.Instance, 0, len(vms))
	for _, vm := range vms {
		in := instanceOf(vm)
		in.IP = ips[strings.ToLower(deref(vm.ID))]
		out = append(out, in)
	}
	return out, nil
}

// GetInstance reads one VM of a scale set with its instance view: one ARM
// read, no NIC (the IP is the list's business).
func (d *Driver) GetInstance(ctx context.Context, group, id string) (provider.Instance, error) {
	resp, err := d.vms.Get(ctx, d.rg, group, id, &armcompute.VirtualMachineScaleSetVMsClientGetOptions{
		Expand: to.Ptr(armcompute.InstanceViewTypesInstanceView),
	})
	if err != nil {
		return provider.Instance{}, mapErr(fmt.Sprintf("get VM %s of scale set %s", id, group), err)
	}
	return instanceOf(&resp.VirtualMachineScaleSetVM), nil
}

func (d *Driver) listVMs(ctx context.Context, group string) ([]*armcompute.VirtualMachineScaleSetVM, error) {
	var out []*armcompute.VirtualMachineScaleSetVM
	pager := d.vms.NewListPager(d.rg, group, &armcompute.VirtualMachineScaleSetVMsClientListOptions{
		Expand: to.Ptr("instanceView"),
	})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, mapErr("list VMs of scale set "+group, err)
		}
		for _, vm := range page.Value {
			if vm != nil {
				out = append(out, vm)
			}
		}
	}
	return out, nil
}

func (d *Driver) listNICs(ctx context.Context, group string) ([]*armnetwork.Interface, error) {
	var out []*armnetwork.Interface
	pager := d.nics.NewListVirtualMachineScaleSetNetworkInterfacesPager(d.rg, group, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, mapErr("list NICs of scale set "+group, err)
		}
		for _, nic := range page.Value {
			if nic != nil {
				out = append(out, nic)
			}
		}
	}
	return out, nil
}

// primaryIPs maps each VM id (lower case: ARM ids are case insensitive and
// the two APIs do not always agree on case) to its primary NIC's primary
// private IP.
func primaryIPs(nics []*armnetwork.Interface) map[string]string {
	type pick struct {
		ip      string
		primary bool
	}
	best := map[string]pick{}
	for _, nic := range nics {
		p := nic.Properties
		if p == nil || p.VirtualMachine == nil || p.VirtualMachine.ID == nil {
			continue
		}
		ip := nicIP(p.IPConfigurations)
		if ip == "" {
			continue
		}
		vm := strings.ToLower(*p.VirtualMachine.ID)
		primary := deref(p.Primary)
		if cur, ok := best[vm]; ok && (cur.primary || !primary) {
			continue
		}
		best[vm] = pick{ip, primary}
	}
	out := make(map[string]string, len(best))
	for vm, p := range best {
		out[vm] = p.ip
	}
	return out
}

func nicIP(configs []*armnetwork.InterfaceIPConfiguration) string {
	var first string
	for _, c := range configs {
		if c == nil || c.Properties == nil || c.Properties.PrivateIPAddress == nil {
			continue
		}
		ip := *c.Properties.PrivateIPAddress
		if deref(c.Properties.Primary) {
			return ip
		}
		if first == "" {
			first = ip
		}
	}
	return first
}

func instanceOf(vm *armcompute.VirtualMachineScaleSetVM) provider.Instance {
	in := provider.Instance{
		ID:   deref(vm.InstanceID),
		Name: deref(vm.Name),
	}
	var prov, power string
	if p := vm.Properties; p != nil {
		prov = deref(p.ProvisioningState)
		if p.InstanceView != nil {
			power = powerState(p.InstanceView.Statuses)
		}
		if sp := p.StorageProfile; sp != nil {
			if sp.ImageReference != nil {
				in.Image = deref(sp.ImageReference.ID)
			}
			if sp.OSDisk != nil && sp.OSDisk.OSType != nil {
				in.Platform = strings.ToLower(string(*sp.OSDisk.OSType))
			}
		}
		if in.Platform == "" && p.OSProfile != nil {
			switch {
			case p.OSProfile.WindowsConfiguration != nil:
				in.Platform = "windows"
			case p.OSProfile.LinuxConfiguration != nil:
				in.Platform = "linux"
			}
		}
	}
	in.State = stateOf(prov, power)
	in.Raw = prov
	if power != "" {
		in.Raw += "/" + power
	}
	for k, v := range vm.Tags {
		switch {
		case v == nil:
		case strings.EqualFold(k, ArchTag):
			in.Arch = *v
		case strings.EqualFold(k, TagsTag) && *v != "":
			in.Tags = strings.Split(*v, ",")
		}
	}
	return in
}

// powerState returns the PowerState/… code of an instance view, without its
// prefix ("running", "deallocated"), or "".
func powerState(statuses []*armcompute.InstanceViewStatus) string {
	for _, s := range statuses {
		if s == nil || s.Code == nil {
			continue
		}
		if rest, ok := strings.CutPrefix(*s.Code, "PowerState/"); ok {
			return strings.ToLower(rest)
		}
	}
	return ""
}

// stateOf summarises a VM's provisioning state and power state.
func stateOf(provisioning, power string) provider.InstanceState {
	switch strings.ToLower(provisioning) {
	case "creating":
		return provider.InstanceCreating
	case "failed":
		return provider.InstanceFailed
	case "deleting":
		return provider.InstanceDeleting
	case "updating", "reimaging", "migrating":
		return provider.InstanceUpdating
	}
	// Succeeded (or Canceled, or unknown): the power state decides.
	switch power {
	case "starting":
		return provider.InstanceCreating
	case "deallocated", "deallocating", "stopped", "stopping":
		return provider.InstanceStopped
	}
	return provider.InstanceRunning
}

// Reimage begins reimaging instances of a scale set; they keep their ids and
// NICs. An empty id list is refused: to Azure it means every instance.
func (d *Driver) Reimage(ctx context.Context, group string, ids []string) (provider.Op, error) {
	op := fmt.Sprintf("reimage %s %v", group, ids)
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: %w", op, errNoIDs)
	}
	p, err := d.sets.BeginReimage(ctx, d.rg, group, &armcompute.VirtualMachineScaleSetsClientBeginReimageOptions{
		VMScaleSetReimageInput: &armcompute.VirtualMachineScaleSetReimageParameters{InstanceIDs: to.SliceOfPtrs(ids...)},
	})
	if err != nil {
		return nil, mapErr(op, err)
	}
	return d.begun(newOp(d, op, p), "group", group, "ids", ids), nil
}

// Delete begins force-deleting instances by id; the scale set's capacity
// shrinks with them.
func (d *Driver) Delete(ctx context.Context, group string, ids []string) (provider.Op, error) {
	op := fmt.Sprintf("delete %s %v", group, ids)
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: %w", op, errNoIDs)
	}
	p, err := d.sets.BeginDeleteInstances(ctx, d.rg, group,
		armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: to.SliceOfPtrs(ids...)},
		&armcompute.VirtualMachineScaleSetsClientBeginDeleteInstancesOptions{ForceDeletion: to.Ptr(true)})
	if err != nil {
		return nil, mapErr(op, err)
	}
	return d.begun(newOp(d, op, p), "group", group, "ids", ids), nil
}

var errNoIDs = errors.New("no instance ids given")
