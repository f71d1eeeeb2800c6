package azemu

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

type nicJSON struct {
	Name       string         `json:"name"`
	ID         string         `json:"id"`
	Etag       string         `json:"etag"`
	Type       string         `json:"type"`
	Location   string         `json:"location,omitempty"`
	Tags       map[string]any `json:"tags,omitempty"`
	Properties nicPropsJSON   `json:"properties"`
}

type nicPropsJSON struct {
	ProvisioningState           string         `json:"provisioningState"`
	ResourceGUID                string         `json:"resourceGuid"`
	IPConfigurations            []ipConfigJSON `json:"ipConfigurations"`
	DNSSettings                 dnsJSON        `json:"dnsSettings"`
	MACAddress                  string         `json:"macAddress"`
	EnableAcceleratedNetworking bool           `json:"enableAcceleratedNetworking"`
	EnableIPForwarding          bool           `json:"enableIPForwarding"`
	Primary                     bool           `json:"primary"`
	VirtualMachine              idRef          `json:"virtualMachine"`
}

type dnsJSON struct {
	DNSServers        []any `json:"dnsServers"`
	AppliedDNSServers []any `json:"appliedDnsServers"`
}

type ipConfigJSON struct {
	Name       string           `json:"name"`
	ID         string           `json:"id"`
	Etag       string           `json:"etag"`
	Properties ipConfigPropJSON `json:"properties"`
}

type ipConfigPropJSON struct {
	ProvisioningState         string `json:"provisioningState"`
	PrivateIPAddress          string `json:"privateIPAddress"`
	PrivateIPAllocationMethod string `json:"privateIPAllocationMethod"`
	Subnet                    *idRef `json:"subnet,omitempty"`
	Primary                   bool   `json:"primary"`
	PrivateIPAddressVersion   string `json:"privateIPAddressVersion"`
}

// renderNIC renders a VM's primary NIC; its private IP is the VM's address.
func renderNIC(s *scaleSet, view *setView, v *vm) nicJSON {
	id := nicID(s, view, v.ID)
	etag := `W/"` + v.VMID + `"`
	dns := view.dnsServers
	if dns == nil {
		dns = []any{}
	}
	n := nicJSON{
		Name:     view.nicName,
		ID:       id,
		Etag:     etag,
		Type:     "Microsoft.Network/networkInterfaces",
		Location: s.Location,
		Tags:     v.Tags,
		Properties: nicPropsJSON{
			ProvisioningState:           stSucceeded,
			ResourceGUID:                v.VMID,
			DNSSettings:                 dnsJSON{DNSServers: dns, AppliedDNSServers: []any{}},
			MACAddress:                  macAddress(v.IP),
			EnableAcceleratedNetworking: view.accelerated,
			Primary:                     true,
			VirtualMachine:              idRef{ID: vmID(s, v.ID)},
		},
	}
	ipc := ipConfigJSON{
		Name: view.ipcfgName,
		ID:   id + "/ipConfigurations/" + view.ipcfgName,
		Etag: etag,
		Properties: ipConfigPropJSON{
			ProvisioningState:         stSucceeded,
			PrivateIPAddress:          v.IP,
			PrivateIPAllocationMethod: "Dynamic",
			Primary:                   true,
			PrivateIPAddressVersion:   "IPv4",
		},
	}
	if view.subnetID != "" {
		ipc.Properties.Subnet = &idRef{ID: view.subnetID}
	}
	n.Properties.IPConfigurations = []ipConfigJSON{ipc}
	return n
}

// macAddress derives a stable Azure-style MAC from the IP.
func macAddress(ip string) string {
	v, _ := ipToU32(ip)
	return fmt.Sprintf("00-0D-3A-%02X-%02X-%02X", byte(v>>16), byte(v>>8), byte(v))
}

// handleListNICs lists the NICs of a scale set, or of one of its VMs.
func (e *Emulator) handleListNICs(w http.ResponseWriter, r *http.Request, sub, rg, name, instance string) {
	e.answer(w, r, func(time.Time) reply {
		if instance == "" {
			s, miss := e.parentLocked(sub, rg, name)
			if s == nil {
				return miss
			}
			return e.nicList(r, s, s.sortedVMs())
		}
		s, v, miss := e.vmLocked(sub, rg, name, instance)
		if v == nil {
			return miss
		}
		return e.nicList(r, s, []*vm{v})
	})
}

// nicList answers with a page of the NICs of vms, VMs of s.
func (e *Emulator) nicList(r *http.Request, s *scaleSet, vms []*vm) reply {
	view := s.view()
	return reply{status: http.StatusOK, body: e.listPage(r, vmKeys(vms), func(i int) any {
		return renderNIC(s, &view, vms[i])
	})}
}

func (e *Emulator) handleGetNIC(w http.ResponseWriter, r *http.Request, sub, rg, name, instance, nic string) {
	e.answer(w, r, func(time.Time) reply {
		s, v, miss := e.vmLocked(sub, rg, name, instance)
		if v == nil {
			return miss
		}
		view := s.view()
		if !strings.EqualFold(nic, view.nicName) {
			return errReply(http.StatusNotFound, "ResourceNotFound", fmt.Sprintf(
				"The Resource 'Microsoft.Compute/virtualMachineScaleSets/%s/virtualMachines/%s/networkInterfaces/%s' under resource group '%s' was not found.",
				name, instance, nic, rg))
		}
		return okReply(renderNIC(s, &view, v))
	})
}

// Azure keeps five addresses of every subnet for itself: the network
// address, the gateway, two for DNS and the broadcast address.
const subnetReserved = 5

// subnetPrefixID is the id every subnet of virtual network vnet begins with.
func subnetPrefixID(sub, rg, vnet string) string {
	return resourceID(sub, rg, "Microsoft.Network", "virtualNetworks", vnet, "subnets") + "/"
}

// defaultSubnet is the subnet Azure creates with a virtual network, which
// every emulated one lists.
const defaultSubnet = "default"

// handleSubnets lists the subnets of a virtual network: default, and those
// the NICs of the subscription's scale sets are in. Any other subnet can
// still be read.
func (e *Emulator) handleSubnets(w http.ResponseWriter, r *http.Request, sub, rg, vnet string) {
	e.answer(w, r, func(time.Time) reply {
		prefix := subnetPrefixID(sub, rg, vnet)
		names := map[string]string{defaultSubnet: defaultSubnet}
		for _, s := range e.st.sets {
			id := s.view().subnetID
			if len(id) > len(prefix) && strings.EqualFold(id[:len(prefix)], prefix) && !strings.Contains(id[len(prefix):], "/") {
				names[strings.ToLower(id[len(prefix):])] = id[len(prefix):]
			}
		}
		keys := make([]string, 0, len(names))
		for k := range names {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return reply{status: http.StatusOK, body: e.listPage(r, keys, func(i int) any {
			return e.renderSubnetLocked(sub, rg, vnet, names[keys[i]])
		})}
	})
}

// handleSubnet answers for any subnet of any virtual network: it exists, with
// the configured address prefix.
func (e *Emulator) handleSubnet(w http.ResponseWriter, r *http.Request, sub, rg, vnet, subnet string) {
	e.answer(w, r, func(time.Time) reply {
		return okReply(e.renderSubnetLocked(sub, rg, vnet, subnet))
	})
}

// renderSubnetLocked renders a subnet with the IP configurations of the
// scale-set NICs in it, as a subnet lists those of the NICs in it.
func (e *Emulator) renderSubnetLocked(sub, rg, vnet, name string) map[string]any {
	id := resourceID(sub, rg, "Microsoft.Network", "virtualNetworks", vnet, "subnets", name)
	props := map[string]any{
		"provisioningState":                 stSucceeded,
		"addressPrefix":                     e.opts.SubnetPrefix,
		"privateEndpointNetworkPolicies":    "Disabled",
		"privateLinkServiceNetworkPolicies": "Enabled",
	}
	var ipcs []idRef
	for _, s := range e.setsInSubnetLocked(id) {
		view := s.view()
		for _, v := range s.sortedVMs() {
			ipcs = append(ipcs, idRef{ID: nicID(s, &view, v.ID) + "/ipConfigurations/" + view.ipcfgName})
		}
	}
	if len(ipcs) > 0 {
		props["ipConfigurations"] = ipcs
	}
	return map[string]any{
		"name":       name,
		"id":         id,
		"etag":       `W/"00000000-0000-0000-0000-000000000001"`,
		"type":       "Microsoft.Network/virtualNetworks/subnets",
		"properties": props,
	}
}

// setsInSubnetLocked are the scale sets whose NICs are in subnet id, by key.
func (e *Emulator) setsInSubnetLocked(id string) []*scaleSet {
	var out []*scaleSet
	for _, s := range e.st.sets {
		if strings.EqualFold(s.view().subnetID, id) {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *scaleSet) int { return strings.Compare(a.key(), b.key()) })
	return out
}

// subnetFullLocked refuses n more NICs in subnet id when it has fewer free
// addresses, as Azure refuses them: 400 SubnetIsFull, before anything
// changes. A subnet holds its prefix's addresses but the five Azure keeps,
// less one for each NIC in it and those the subnet_used fault takes.
func (e *Emulator) subnetFullLocked(id string, n int) (reply, bool) {
	if n <= 0 || id == "" {
		return reply{}, false
	}
	used := int64(e.faults.SubnetUsed)
	for _, s := range e.setsInSubnetLocked(id) {
		used += int64(len(s.VMs))
	}
	p := netip.MustParsePrefix(e.opts.SubnetPrefix)
	if bits := p.Addr().BitLen() - p.Bits(); bits < 31 && int64(1)<<bits-subnetReserved-used < int64(n) {
		name := id[strings.LastIndex(id, "/")+1:]
		return errReply(http.StatusBadRequest, "SubnetIsFull", fmt.Sprintf(
			"Subnet %s with address prefix %s does not have enough capacity for %d IP addresses.", name, e.opts.SubnetPrefix, n)), true
	}
	return reply{}, false
}

// handleGalleryImage answers for an image of any gallery: it exists if
// Options.GalleryImages names it (or is nil), else it is ARM's 404.
// Names mentioning linux, ubuntu or debian are Linux images, others Windows.
func (e *Emulator) handleGalleryImage(w http.ResponseWriter, r *http.Request, sub, rg, gallery, image string) {
	if !e.imageExists(image) {
		armError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf(
			"The Resource 'Microsoft.Compute/galleries/%s/images/%s' under resource group '%s' was not found.", gallery, image, rg))
		return
	}
	osType := "Windows"
	lower := strings.ToLower(image)
	for _, l := range []string{"linux", "ubuntu", "debian"} {
		if strings.Contains(lower, l) {
			osType = "Linux"
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"name":     image,
		"id":       resourceID(sub, rg, "Microsoft.Compute", "galleries", gallery, "images", image),
		"type":     "Microsoft.Compute/galleries/images",
		"location": e.opts.Location,
		"properties": map[string]any{
			"osType":            osType,
			"osState":           "Generalized",
			"hyperVGeneration":  "V2",
			"identifier":        map[string]any{"publisher": "sandfleet", "offer": gallery, "sku": image},
			"provisioningState": stSucceeded,
		},
	})
}

// imageExists reports whether the gallery holds an image definition named
// name (in any gallery: galleries are not modelled).
func (e *Emulator) imageExists(name string) bool {
	return e.images == nil || e.images[strings.ToLower(name)]
}

// missingImage is ARM's answer to a scale-set model whose image reference
// names a gallery image the gallery does not hold: compute refuses the
// request at once, naming the image. ok when the model names none, or one
// that exists.
func (e *Emulator) missingImage(model map[string]any, location string) (rep reply, missing bool) {
	id, _ := imageReference(model)["id"].(string)
	seg := strings.Split(strings.Trim(id, "/"), "/")
	for i := 0; i+3 < len(seg); i++ {
		if strings.EqualFold(seg[i], "galleries") && strings.EqualFold(seg[i+2], "images") {
			if e.imageExists(seg[i+3]) {
				return reply{}, false
			}
			return errReply(http.StatusNotFound, "GalleryImageNotFound", fmt.Sprintf(
				"The gallery image %s is not available in %s region. Please contact image owner to replicate to this region, or change your requested region.",
				id, location)), true
		}
	}
	return reply{}, false
}

// skuSpec is one VM size the emulator offers.
type skuSpec struct {
	name, family string
	vcpus, memGB int
}

var skuCatalog = []skuSpec{
	{"Standard_B2s", "standardBSFamily", 2, 4},
	{"Standard_D2as_v5", "standardDASv5Family", 2, 8},
	{"Standard_D2s_v3", "standardDSv3Family", 2, 8},
	{"Standard_D4s_v3", "standardDSv3Family", 4, 16},
	{"Standard_D8s_v3", "standardDSv3Family", 8, 32},
	{"Standard_D2s_v5", "standardDSv5Family", 2, 8},
	{"Standard_D4s_v5", "standardDSv5Family", 4, 16},
	{"Standard_F2s_v2", "standardFSv2Family", 2, 4},
	{"Standard_F4s_v2", "standardFSv2Family", 4, 8},
}

// skuByName finds a size case-insensitively.
func skuByName(name string) (skuSpec, bool) {
	for _, s := range skuCatalog {
		if strings.EqualFold(s.name, name) {
			return s, true
		}
	}
	return skuSpec{}, false
}

// vcpusOf is the vCPU count of a size; unknown sizes count 2.
func vcpusOf(name string) int64 {
	if s, ok := skuByName(name); ok {
		return int64(s.vcpus)
	}
	return 2
}

var defaultLocations = []string{"eastus", "eastus2", "westus2", "northeurope", "westeurope", "uksouth"}

// handleSKUs lists the VM sizes. $filter "location eq 'x'" lists them in x.
func (e *Emulator) handleSKUs(w http.ResponseWriter, r *http.Request) {
	locs := defaultLocations
	if f := r.URL.Query().Get("$filter"); f != "" {
		if _, v, ok := strings.Cut(f, "eq"); ok {
			locs = []string{strings.Trim(strings.TrimSpace(v), "'\"")}
		}
	}
	body := e.listPage(r, indexKeys(len(skuCatalog)), func(i int) any {
		s := skuCatalog[i]
		li := make([]any, len(locs))
		for j, l := range locs {
			li[j] = map[string]any{"location": l, "zones": []string{"1", "2", "3"}}
		}
		return map[string]any{
			"resourceType": "virtualMachines",
			"name":         s.name,
			"tier":         "Standard",
			"size":         strings.TrimPrefix(s.name, "Standard_"),
			"family":       s.family,
			"locations":    locs,
			"locationInfo": li,
			"capabilities": []map[string]string{
				{"name": "vCPUs", "value": strconv.Itoa(s.vcpus)},
				{"name": "vCPUsAvailable", "value": strconv.Itoa(s.vcpus)},
				{"name": "MemoryGB", "value": strconv.Itoa(s.memGB)},
				{"name": "LowPriorityCapable", "value": "True"},
				{"name": "EphemeralOSDiskSupported", "value": "True"},
				{"name": "CachedDiskBytes", "value": strconv.Itoa(s.vcpus * 25 << 30)},
				{"name": "HyperVGenerations", "value": "V1,V2"},
				{"name": "PremiumIO", "value": "True"},
			},
			"restrictions": []any{},
		}
	})
	writeRaw(w, http.StatusOK, body)
}

// handleUsages reports compute quota use in a location, counted from the
// VMs of the subscription's scale sets there.
func (e *Emulator) handleUsages(w http.ResponseWriter, r *http.Request, sub, location string) {
	e.answer(w, r, func(time.Time) reply {
		u := e.usageLocked(sub, location)
		quota := e.faults.quota()
		type usage struct {
			name, display string
			cur, limit    int64
		}
		usages := []usage{
			{"cores", "Total Regional vCPUs", u.cores, quota.Cores},
			{"lowPriorityCores", "Total Regional Low-priority vCPUs", u.spotCores, quota.LowPriorityCores},
			{"virtualMachines", "Virtual Machines", u.vms, 25000},
			{"virtualMachineScaleSets", "Virtual Machine Scale Sets", u.sets, 2500},
		}
		seen := map[string]bool{}
		for _, s := range skuCatalog {
			if seen[s.family] {
				continue
			}
			seen[s.family] = true
			usages = append(usages, usage{s.family, s.family + " vCPUs", u.family[s.family], quota.Cores})
		}
		return reply{status: http.StatusOK, body: e.listPage(r, indexKeys(len(usages)), func(i int) any {
			u := usages[i]
			return map[string]any{
				"unit":         "Count",
				"currentValue": u.cur,
				"limit":        u.limit,
				"name":         map[string]string{"value": u.name, "localizedValue": u.display},
			}
		})}
	})
}

func sameLocation(a, b string) bool {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, " ", "")) }
	return norm(a) == norm(b)
}
