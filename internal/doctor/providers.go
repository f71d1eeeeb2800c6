package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/sandfleet/sandfleet/internal/azemu"
	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
	"github.com/sandfleet/sandfleet/internal/provider/azure"
	"github.com/sandfleet/sandfleet/internal/provider/libvirt"
	"github.com/sandfleet/sandfleet/internal/provider/static"
)

// providers checks each provider the pools use, in the order serve starts
// them.
func (r *run) providers(ctx context.Context) []Check {
	byProvider := map[string][]config.Pool{}
	for _, p := range r.cfg.Pools {
		byProvider[p.Provider] = append(byProvider[p.Provider], p)
	}
	var out []Check
	if pools := byProvider["azure"]; len(pools) > 0 {
		out = append(out, r.bounded(ctx, func(ctx context.Context) []Check { return r.azure(ctx, pools) })...)
	}
	if pools := byProvider["static"]; len(pools) > 0 {
		out = append(out, r.bounded(ctx, func(ctx context.Context) []Check { return staticPools(ctx, pools) })...)
	}
	if pools := byProvider["libvirt"]; len(pools) > 0 {
		out = append(out, r.bounded(ctx, func(ctx context.Context) []Check { return libvirtPools(ctx, pools) })...)
	}
	return out
}

// libvirtPools checks that libvirt answers at each pool's uri and has every
// domain the pool lists, each with the snapshot it is reverted to.
func libvirtPools(ctx context.Context, pools []config.Pool) []Check {
	drv, err := libvirt.New(pools, libvirt.Options{})
	if err != nil {
		return []Check{fail("libvirt", err.Error(), "correct pools[].uri")}
	}
	defer drv.Close()
	var out []Check
	for _, p := range pools {
		insts, err := drv.ListInstances(ctx, p.Name)
		if err != nil {
			out = append(out, fail("libvirt "+p.Name, err.Error(),
				"start libvirtd (or virtqemud) on the host, and check pools[].uri "+p.URI))
			continue
		}
		have := map[string]provider.Instance{}
		for _, in := range insts {
			have[in.ID] = in
		}
		var missing, unsnapped, names []string
		for _, m := range p.Machines {
			in, ok := have[m.Label]
			if !ok {
				missing = append(missing, m.Label)
				continue
			}
			if err := drv.HasSnapshot(ctx, libvirt.Target{Pool: p, Machine: m}); err != nil {
				unsnapped = append(unsnapped, err.Error())
				continue
			}
			snap := p.SnapshotOf(m)
			if snap == "" {
				snap = "current"
			}
			names = append(names, fmt.Sprintf("%s %s (%s, snapshot %s)", m.Label, m.IP, in.Raw, snap))
		}
		if len(missing) > 0 {
			out = append(out, fail("libvirt "+p.Name, fmt.Sprintf("no domain %s at %s", strings.Join(missing, ", "), p.URI),
				"define the domains (virsh define), or correct pools[].machines[].label"))
			continue
		}
		if len(unsnapped) > 0 {
			out = append(out, fail("libvirt "+p.Name, strings.Join(unsnapped, "; "),
				"start each guest clean with its agent, then: sandfleet libvirt snapshot LABEL"))
			continue
		}
		out = append(out, pass("libvirt "+p.Name, fmt.Sprintf("%s at %s: %s (their agents are asked once ready)",
			plural(len(names), "domain"), p.URI, strings.Join(names, ", "))))
	}
	return out
}

// staticPools lists the machines of static pools; their agents are asked
// once they are ready, with every other machine's.
func staticPools(ctx context.Context, pools []config.Pool) []Check {
	drv := static.New(pools)
	var out []Check
	for _, p := range pools {
		insts, err := drv.ListInstances(ctx, p.Name)
		if err != nil {
			out = append(out, fail("static "+p.Name, err.Error(), "correct pools[].machines"))
			continue
		}
		names := make([]string, len(insts))
		for i, in := range insts {
			names[i] = in.Name + " " + in.IP
		}
		out = append(out, pass("static "+p.Name, fmt.Sprintf("%s: %s (their agents are asked once ready)",
			plural(len(insts), "machine"), strings.Join(names, ", "))))
	}
	return out
}

// startEmulator is the fix when the in-process emulator cannot be reached.
const startEmulator = "the embedded Azure emulator runs inside sandfleet serve: start it (with this configuration)"

// azure checks, with one driver: that the credentials can read the sandbox
// resource group, that each pool's gallery image exists, and that the
// regional core quota and the subnet can hold every pool at its max_size.
func (r *run) azure(ctx context.Context, pools []config.Pool) []Check {
	ac := r.cfg.Azure
	emulated := ac.Emulated()
	where := "Azure Resource Manager at " + ac.Endpoint
	if emulated {
		endpoint, ca, err := azemu.Endpoint(r.cfg.EmulatorDir())
		if err != nil {
			detail := "the in-process emulator is not running: " + err.Error()
			if errors.Is(err, fs.ErrNotExist) {
				detail = "the in-process emulator is not running (no " + r.cfg.EmulatorDir() + "/" + azemu.EndpointFile + ")"
			}
			return []Check{fail("azure", detail, startEmulator)}
		}
		if err := dial(ctx, endpoint); err != nil {
			return []Check{fail("azure", "the in-process emulator does not answer at "+endpoint+": "+err.Error(), startEmulator)}
		}
		ac.Endpoint, ac.CAFile, ac.Credential = endpoint, ca, "emulator"
		where = "the in-process emulator at " + endpoint
	}
	drv, err := azure.New(ac, azure.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return []Check{fail("azure", err.Error(), "correct the azure key named")}
	}
	defer drv.Close()

	groups, err := drv.ListGroups(ctx)
	if err != nil {
		fix := startEmulator
		if !emulated {
			fix = credentialFix(ac, err)
		}
		return []Check{fail("azure", where+": "+err.Error(), fix)}
	}
	capacity := map[string]int{}
	for _, g := range groups {
		capacity[g.Name] = g.Capacity
	}
	out := []Check{pass("azure", fmt.Sprintf("%s: credentials work: %s in resource group %s",
		where, plural(len(groups), "scale set"), ac.SandboxResourceGroup))}
	for i, p := range r.cfg.Pools {
		if p.Provider == "azure" {
			out = append(out, r.galleryImage(ctx, drv, i, p))
		}
	}
	out = append(out, quota(ctx, drv, ac, pools, capacity), subnet(ctx, drv, ac, pools))
	return out
}

// credentialFix says what to look at when Azure refused to list the scale
// sets.
func credentialFix(ac config.Azure, err error) string {
	var auth *azidentity.AuthenticationFailedError
	var re *azcore.ResponseError
	if t, ok := provider.AsThrottled(err); ok {
		return fmt.Sprintf("Azure throttles this subscription: run sandfleet doctor again in %s", t.RetryAfter)
	}
	switch {
	case errors.Is(err, provider.ErrNotFound):
		return fmt.Sprintf("check azure.subscription_id (%s) and that resource group %s exists (azure.sandbox_resource_group)",
			ac.SubscriptionID, ac.SandboxResourceGroup)
	case errors.As(err, &auth), errors.As(err, &re) && (re.StatusCode == 401 || re.StatusCode == 403):
		return fmt.Sprintf("check azure.credential (%s) and its tenant_id, client_id and secret or certificate; "+
			"the identity needs the Contributor role on resource group %s", ac.Credential, ac.SandboxResourceGroup)
	}
	return fmt.Sprintf("check that this host reaches %s (azure.endpoint) and that azure.credential (%s) can sign in",
		ac.Endpoint, ac.Credential)
}

// galleryImage checks that pool p's image is in the gallery.
func (r *run) galleryImage(ctx context.Context, drv *azure.Driver, i int, p config.Pool) Check {
	ac := r.cfg.Azure
	name := "azure image " + p.Name
	err := drv.CheckImage(ctx, p.Image)
	if err == nil {
		return pass(name, fmt.Sprintf("gallery image %s exists in gallery %s", p.Image, ac.Gallery))
	}
	if !errors.Is(err, provider.ErrNotFound) {
		return fail(name, err.Error(), "see azure above")
	}
	detail := fmt.Sprintf("gallery image %s not found in gallery %s of resource group %s", p.Image, ac.Gallery, ac.SandboxResourceGroup)
	if ac.Emulated() {
		return fail(name, detail, fmt.Sprintf("add %s to azure.emulator.gallery_images (the in-process emulator's gallery), "+
			"or set pools[%d].image to one it holds: %s", p.Image, i, strings.Join(ac.Emulator.GalleryImages, ", ")))
	}
	return fail(name, detail, fmt.Sprintf("create the image definition %s in gallery %s (azure.gallery), "+
		"or set pools[%d].image to an image the gallery holds", p.Image, ac.Gallery, i))
}

// quota checks that the regional core quota holds every pool at its
// max_size: the vCPUs of the machines that do not exist yet fit in what is
// left of it.
func quota(ctx context.Context, drv *azure.Driver, ac config.Azure, pools []config.Pool, capacity map[string]int) Check {
	vcpus, err := drv.VCPUs(ctx, "")
	if errors.Is(err, provider.ErrNotFound) {
		return fail("azure quota", fmt.Sprintf("instance type %s is not offered in %s", ac.InstanceType, ac.Region),
			fmt.Sprintf("set azure.instance_type to a size offered in %s (azure.region)", ac.Region))
	}
	if err != nil {
		return fail("azure quota", err.Error(), "see azure above")
	}
	u, err := drv.CoreUsage(ctx, "")
	if err != nil {
		return fail("azure quota", err.Error(), "set azure.quota_name to a usage Azure reports in the region (cores, lowPriorityCores, a family's)")
	}
	machines := 0
	for _, p := range pools {
		machines += max(p.MaxSize-capacity[p.Name], 0)
	}
	need, free := machines*vcpus, u.Limit-u.Current
	detail := fmt.Sprintf("%s in %s: %d of %d vCPUs used, %d free; the pools at max_size need %d more (%s × %d vCPUs of %s)",
		u.Name, ac.Region, u.Current, u.Limit, max(free, 0), need, plural(machines, "machine"), vcpus, ac.InstanceType)
	if need == 0 || need <= free {
		return pass("azure quota", detail)
	}
	return fail("azure quota", detail, fmt.Sprintf("raise the %s quota in %s to at least %d vCPUs, or lower the pools' max_size "+
		"(room for %s now)", u.Name, ac.Region, u.Current+need, plural(max(free, 0)/vcpus, "more machine")))
}

// subnet checks that the subnet has an address for every machine of every
// pool at its max_size.
func subnet(ctx context.Context, drv *azure.Driver, ac config.Azure, pools []config.Pool) Check {
	where := ac.VNetResourceGroup + "/" + ac.VNet + "/" + ac.Subnet
	room, err := drv.SubnetLimit(ctx)
	if errors.Is(err, provider.ErrNotFound) {
		return fail("azure subnet", "subnet "+where+" not found",
			"create it, or correct azure.vnet_resource_group, azure.vnet and azure.subnet")
	}
	if err != nil {
		return fail("azure subnet", err.Error(), "see azure above")
	}
	need := 0
	for _, p := range pools {
		need += p.MaxSize
	}
	detail := fmt.Sprintf("subnet %s holds %s; the pools at max_size need %d", where, plural(room, "machine"), need)
	if need <= room {
		return pass("azure subnet", detail)
	}
	return fail("azure subnet", detail, fmt.Sprintf("give the pools a larger subnet (azure.subnet), or lower their max_size to %d in all", room))
}

// dial makes sure something accepts connections at a URL's host.
func dial(ctx context.Context, rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not a URL", rawURL)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return err
	}
	return c.Close()
}
