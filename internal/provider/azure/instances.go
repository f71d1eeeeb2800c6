package azure

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/sandfleet/sandfleet/internal/provider"
)

// ListInstances lists a scale set's VMs with their private IPs: the VM list
// (with instance views), all its pages, and NICs only where an IP is not
// known yet, or every IPRefresh (see ipCache). ErrNotFound if the scale set
// does not exist.
func (d *Driver) ListInstances(ctx context.Context, group string) ([]provider.Instance, error) {
	return d.listInstances(ctx, group, false)
}

// ListInstancesFresh is ListInstances reading every NIC of the scale set,
// whatever the driver knows: what a drift check compares the database with.
func (d *Driver) ListInstancesFresh(ctx context.Context, group string) ([]provider.Instance, error) {
	return d.listInstances(ctx, group, true)
}

func (d *Driver) listInstances(ctx context.Context, group string, fresh bool) ([]provider.Instance, error) {
	if group == "" {
		return nil, fmt.Errorf("list instances: %w", errNoName)
	}
	now := time.Now()
	known, due := d.ips.get(group, now)
	readAll := fresh || due
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type nicList struct {
		nics []nicView
		err  error
	}
	var nicc chan nicList
	if readAll {
		// Every NIC is read anyway: alongside the VMs.
		nicc = make(chan nicList, 1)
		go func() {
			nics, err := d.listNICs(ctx, group)
			nicc <- nicList{nics, err}
		}()
	}
	vms, err := d.listVMs(ctx, group)
	if err != nil {
		cancel()
		if nicc != nil {
			<-nicc
		}
		if errors.Is(err, provider.ErrNotFound) {
			d.ips.drop(group)
		}
		return nil, err
	}
	ips := make(map[string]string, len(vms))
	var unknown []vmView
	for _, vm := range vms {
		if k, ok := known[vm.InstanceID]; ok && k.vmID == vm.Properties.VMID {
			ips[vm.InstanceID] = k.ip
		} else {
			unknown = append(unknown, vm)
		}
	}
	switch {
	case readAll:
		nl := <-nicc
		if nl.err != nil {
			return nil, nl.err
		}
		takeIPs(ips, vms, nl.nics)
	case len(unknown) > singleNICReads:
		nics, err := d.listNICs(ctx, group)
		if err != nil {
			return nil, err
		}
		readAll = true
		takeIPs(ips, vms, nics)
	default:
		for _, vm := range unknown {
			nics, err := d.listVMNICs(ctx, group, vm.InstanceID)
			if errors.Is(err, provider.ErrNotFound) {
				continue // gone since the VM list; the next list says so
			}
			if err != nil {
				return nil, err
			}
			takeIPs(ips, []vmView{vm}, nics)
		}
	}
	d.ips.put(group, vms, ips, readAll, now)
	out := make([]provider.Instance, 0, len(vms))
	for i := range vms {
		in := instanceOf(&vms[i])
		in.IP = ips[in.ID]
		out = append(out, in)
	}
	return out, nil
}

// GetInstance reads one VM of a scale set with its instance view: one ARM
// read, no NIC (the IP is the list's business).
func (d *Driver) GetInstance(ctx context.Context, group, id string) (provider.Instance, error) {
	op := fmt.Sprintf("get VM %s of scale set %s", id, group)
	if group == "" || id == "" {
		return provider.Instance{}, fmt.Errorf("%s: %w", op, errNoName)
	}
	vm, err := readOne[vmView](ctx, d.arm, d.scaleSetPath(group, "virtualMachines", id), computeAPIVersion, expandInstanceView)
	if err != nil {
		return provider.Instance{}, mapErr(op, err)
	}
	return instanceOf(&vm), nil
}

var (
	expandInstanceView = url.Values{"$expand": {"instanceView"}}
	errNoName          = errors.New("scale-set name or instance id is empty")
)

func (d *Driver) listVMs(ctx context.Context, group string) ([]vmView, error) {
	vms, err := readList[vmView](ctx, d.arm, d.scaleSetPath(group, "virtualMachines"), computeAPIVersion, expandInstanceView, &d.vmPages)
	if err != nil {
		return nil, mapErr("list VMs of scale set "+group, err)
	}
	// A null in the list is no VM.
	return slices.DeleteFunc(vms, func(vm vmView) bool { return vm.InstanceID == "" }), nil
}

// listNICs reads the NICs of every VM of a scale set.
func (d *Driver) listNICs(ctx context.Context, group string) ([]nicView, error) {
	nics, err := readList[nicView](ctx, d.arm, d.scaleSetPath(group, "networkInterfaces"), scaleSetNICVersion, nil, nil)
	if err != nil {
		return nil, mapErr("list NICs of scale set "+group, err)
	}
	return nics, nil
}

// listVMNICs reads the NICs of one VM of a scale set.
func (d *Driver) listVMNICs(ctx context.Context, group, id string) ([]nicView, error) {
	nics, err := readList[nicView](ctx, d.arm, d.scaleSetPath(group, "virtualMachines", id, "networkInterfaces"), scaleSetNICVersion, nil, nil)
	if err != nil {
		return nil, mapErr(fmt.Sprintf("list NICs of VM %s of scale set %s", id, group), err)
	}
	return nics, nil
}

// takeIPs sets ips[instance id] for each of vms to its primary IP among nics,
// NICs of their scale set ("" when they give it none).
func takeIPs(ips map[string]string, vms []vmView, nics []nicView) {
	byID := primaryIPs(nics)
	for _, vm := range vms {
		ips[vm.InstanceID] = byID[vm.InstanceID]
	}
}

// primaryIPs maps the instance id of each VM the NICs of one scale set belong
// to (the last segment of the VM's resource id) to its primary NIC's primary
// private IP.
func primaryIPs(nics []nicView) map[string]string {
	type pick struct {
		ip      string
		primary bool
	}
	best := map[string]pick{}
	for _, nic := range nics {
		p := &nic.Properties
		if p.VirtualMachine.ID == "" {
			continue
		}
		ip := nicIP(p.IPConfigurations)
		if ip == "" {
			continue
		}
		vm := path.Base(p.VirtualMachine.ID)
		if cur, ok := best[vm]; ok && (cur.primary || !p.Primary) {
			continue
		}
		best[vm] = pick{ip, p.Primary}
	}
	out := make(map[string]string, len(best))
	for vm, p := range best {
		out[vm] = p.ip
	}
	return out
}

func nicIP(configs []ipConfigView) string {
	var first string
	for _, c := range configs {
		ip := c.Properties.PrivateIPAddress
		if ip == "" {
			continue
		}
		if c.Properties.Primary {
			return ip
		}
		if first == "" {
			first = ip
		}
	}
	return first
}

func instanceOf(vm *vmView) provider.Instance {
	p := &vm.Properties
	in := provider.Instance{
		ID:       vm.InstanceID,
		Name:     vm.Name,
		Image:    p.StorageProfile.ImageReference.ID,
		Platform: strings.ToLower(p.StorageProfile.OSDisk.OSType),
	}
	if in.Platform == "" {
		switch {
		case present(p.OSProfile.WindowsConfiguration):
			in.Platform = "windows"
		case present(p.OSProfile.LinuxConfiguration):
			in.Platform = "linux"
		}
	}
	prov, power := p.ProvisioningState, powerState(p.InstanceView.Statuses)
	in.State = stateOf(prov, power)
	in.Raw = prov
	if power != "" {
		in.Raw += "/" + power
	}
	in.Arch = vm.Tags.Arch
	if vm.Tags.Tags != "" {
		in.Tags = strings.Split(vm.Tags.Tags, ",")
	}
	return in
}

// present reports whether a JSON value was given and is not null.
func present(raw json.RawMessage) bool {
	return len(raw) > 0 && string(raw) != "null"
}

// powerState returns the PowerState/… code of an instance view, without its
// prefix ("running", "deallocated"), or "".
func powerState(statuses []statusView) string {
	for _, s := range statuses {
		if rest, ok := strings.CutPrefix(s.Code, "PowerState/"); ok {
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
	var first *http.Response
	p, err := d.sets.BeginReimage(policy.WithCaptureResponse(ctx, &first), d.rg, group, &armcompute.VirtualMachineScaleSetsClientBeginReimageOptions{
		VMScaleSetReimageInput: &armcompute.VirtualMachineScaleSetReimageParameters{InstanceIDs: to.SliceOfPtrs(ids...)},
	})
	if err != nil {
		return nil, mapErr(op, err)
	}
	return d.begun(newOp(d, op, p, first), "group", group, "ids", ids), nil
}

// Delete begins force-deleting instances by id; the scale set's capacity
// shrinks with them.
func (d *Driver) Delete(ctx context.Context, group string, ids []string) (provider.Op, error) {
	op := fmt.Sprintf("delete %s %v", group, ids)
	if len(ids) == 0 {
		return nil, fmt.Errorf("%s: %w", op, errNoIDs)
	}
	var first *http.Response
	p, err := d.sets.BeginDeleteInstances(policy.WithCaptureResponse(ctx, &first), d.rg, group,
		armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: to.SliceOfPtrs(ids...)},
		&armcompute.VirtualMachineScaleSetsClientBeginDeleteInstancesOptions{ForceDeletion: to.Ptr(true)})
	if err != nil {
		return nil, mapErr(op, err)
	}
	return d.begun(newOp(d, op, p, first), "group", group, "ids", ids), nil
}

var errNoIDs = errors.New("no instance ids given")
