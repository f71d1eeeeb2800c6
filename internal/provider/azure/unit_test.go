package azure

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/sandfleet/sandfleet/internal/config"
	"github.com/sandfleet/sandfleet/internal/provider"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"seconds", http.Header{"Retry-After": {"120"}}, 120 * time.Second},
		{"http date", http.Header{"Retry-After": {now.Add(90 * time.Second).Format(http.TimeFormat)}}, 90 * time.Second},
		{"date in the past", http.Header{"Retry-After": {now.Add(-time.Minute).Format(http.TimeFormat)}}, time.Second},
		{"absent", http.Header{}, 30 * time.Second},
		{"garbage", http.Header{"Retry-After": {"soon"}}, 30 * time.Second},
		{"zero", http.Header{"Retry-After": {"0"}}, 30 * time.Second},
		{"milliseconds win", http.Header{"Retry-After-Ms": {"1500"}, "Retry-After": {"9"}}, 1500 * time.Millisecond},
		{"x-ms milliseconds", http.Header{"X-Ms-Retry-After-Ms": {"250"}}, 250 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := parseRetryAfter(tc.header, now); got != tc.want {
			t.Errorf("%s: parseRetryAfter = %s, want %s", tc.name, got, tc.want)
		}
		// What falls back to the default names no usable Retry-After.
		usable := tc.name != "absent" && tc.name != "garbage" && tc.name != "zero"
		if got, ok := retryHint(tc.header, now); ok != usable || (ok && got != tc.want) {
			t.Errorf("%s: retryHint = %s, %v; want %s, %v", tc.name, got, ok, tc.want, usable)
		}
	}
}

func responseError(t *testing.T, status int, header http.Header, body string) error {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://arm.example/x", nil)
	if header == nil {
		header = http.Header{}
	}
	resp := &http.Response{
		StatusCode: status, Header: header, Request: req,
		Body: io.NopCloser(bytes.NewBufferString(body)),
	}
	return runtime.NewResponseError(resp)
}

func TestMapErr(t *testing.T) {
	throttled := mapErr("list VMs of scale set win10", responseError(t, 429, http.Header{"Retry-After": {"120"}}, `{"error":{"code":"TooManyRequests"}}`))
	if te, ok := provider.AsThrottled(throttled); !ok || te.RetryAfter != 120*time.Second || te.Op != "list VMs of scale set win10" {
		t.Errorf("429 → %#v, want ThrottledError 120s naming the call", throttled)
	}
	tests := []struct {
		status int
		body   string
		want   error
	}{
		{404, `{"error":{"code":"ResourceNotFound","message":"The Resource 'x' was not found."}}`, provider.ErrNotFound},
		{412, `{"error":{"code":"PreconditionFailed","message":"etag mismatch"}}`, provider.ErrPreconditionFailed},
		{409, `{"error":{"code":"OperationPreempted","message":"superseded"}}`, provider.ErrPreempted},
		{200, `{"status":"Failed","error":{"code":"OperationPreempted"}}`, provider.ErrPreempted},
	}
	for _, tc := range tests {
		err := mapErr("reimage win10 [1 2]", responseError(t, tc.status, nil, tc.body))
		if !errors.Is(err, tc.want) {
			t.Errorf("%d %s → %v, want %v", tc.status, tc.body, err, tc.want)
		}
		if !strings.HasPrefix(err.Error(), "reimage win10 [1 2]: ") || strings.Contains(err.Error(), "\n") {
			t.Errorf("message %q: want one line starting with the operation", err)
		}
	}
	other := mapErr("get scale set x", responseError(t, 400, nil, `{"error":{"code":"InvalidParameter","message":"bad sku"}}`))
	for _, sentinel := range []error{provider.ErrNotFound, provider.ErrPreconditionFailed, provider.ErrPreempted} {
		if errors.Is(other, sentinel) {
			t.Errorf("400 → %v matches %v", other, sentinel)
		}
	}
	if !strings.Contains(other.Error(), "InvalidParameter: bad sku") {
		t.Errorf("400 message = %q, want code and message", other)
	}
}

func TestStateOf(t *testing.T) {
	tests := []struct {
		prov, power string
		want        provider.InstanceState
	}{
		{"Creating", "", provider.InstanceCreating},
		{"Succeeded", "running", provider.InstanceRunning},
		{"Succeeded", "starting", provider.InstanceCreating},
		{"Succeeded", "deallocated", provider.InstanceStopped},
		{"Succeeded", "stopped", provider.InstanceStopped},
		{"Failed", "running", provider.InstanceFailed},
		{"Deleting", "running", provider.InstanceDeleting},
		{"Updating", "running", provider.InstanceUpdating},
		{"Reimaging", "", provider.InstanceUpdating},
	}
	for _, tc := range tests {
		if got := stateOf(tc.prov, tc.power); got != tc.want {
			t.Errorf("stateOf(%q, %q) = %s, want %s", tc.prov, tc.power, got, tc.want)
		}
	}
}

func TestInstanceOf(t *testing.T) {
	tests := []struct {
		name, vm string
		want     provider.Instance
	}{
		{"as ARM lists it", `{
			"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/win10/virtualMachines/7",
			"instanceId": "7", "name": "win10_7", "location": "westeurope",
			"tags": {"Sandfleet-Arch": "x64", "sandfleet-tags": "win10,x64", "sandfleet-pool": "win10"},
			"properties": {
				"latestModelApplied": true, "vmId": "0a6e…",
				"provisioningState": "Succeeded",
				"instanceView": {"platformUpdateDomain": 2, "statuses": [
					{"code": "ProvisioningState/succeeded", "level": "Info"}, {"code": "PowerState/running"}]},
				"hardwareProfile": {"vmSize": "Standard_D2s_v5"},
				"storageProfile": {"imageReference": {"id": "/galleries/g/images/win10"},
					"osDisk": {"osType": "Windows", "caching": "ReadOnly", "diffDiskSettings": {"option": "Local"}}},
				"osProfile": {"computerName": "win10000007"},
				"networkProfile": {"networkInterfaces": [{"id": "/…/networkInterfaces/win10-nic"}]}
			}}`,
			provider.Instance{ID: "7", Name: "win10_7", State: provider.InstanceRunning, Raw: "Succeeded/running",
				Platform: "windows", Arch: "x64", Image: "/galleries/g/images/win10", Tags: []string{"win10", "x64"}}},
		{"platform from the OS profile, no instance view", `{
			"instanceId": "3", "name": "lin_3", "tags": {"sandfleet-tags": null},
			"properties": {"provisioningState": "Creating", "osProfile": {"linuxConfiguration": {}, "windowsConfiguration": null}}}`,
			provider.Instance{ID: "3", Name: "lin_3", State: provider.InstanceCreating, Raw: "Creating", Platform: "linux"}},
	}
	for _, tc := range tests {
		var vm vmView
		if err := json.Unmarshal([]byte(tc.vm), &vm); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := instanceOf(&vm); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: instanceOf = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestPrimaryIPs(t *testing.T) {
	var nics []nicView
	err := json.Unmarshal([]byte(`[
		{"properties": {"primary": false, "virtualMachine": {"id": "/subscriptions/s/.../virtualMachines/1"},
			"ipConfigurations": [{"properties": {"privateIPAddress": "10.0.0.9"}}]}},
		{"properties": {"primary": true, "virtualMachine": {"id": "/Subscriptions/S/.../VirtualMachines/1"},
			"ipConfigurations": [{"properties": {"privateIPAddress": "10.0.0.4"}},
				{"properties": {"privateIPAddress": "10.0.0.5", "primary": true}}]}},
		{"properties": {"virtualMachine": {"id": "/subscriptions/s/.../virtualMachines/2"},
			"ipConfigurations": [{"properties": {"privateIPAddress": "10.0.0.6", "primary": false}}]}},
		{"properties": {"ipConfigurations": [{"properties": {"privateIPAddress": "10.0.0.7"}}]}}
	]`), &nics)
	if err != nil {
		t.Fatal(err)
	}
	got := primaryIPs(nics) // the primary NIC's primary ipconfig; a NIC of no VM is nobody's
	want := map[string]string{"1": "10.0.0.5", "2": "10.0.0.6"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("primaryIPs = %v, want %v", got, want)
	}
}

func TestLimits(t *testing.T) {
	skus := []*armcompute.ResourceSKU{
		{Name: to.Ptr("Standard_D2s_v5"), ResourceType: to.Ptr("disks"),
			Capabilities: []*armcompute.ResourceSKUCapabilities{{Name: to.Ptr("vCPUs"), Value: to.Ptr("99")}}},
		{Name: to.Ptr("Standard_D2s_v5"), ResourceType: to.Ptr("virtualMachines"),
			Capabilities: []*armcompute.ResourceSKUCapabilities{{Name: to.Ptr("MemoryGB"), Value: to.Ptr("8")}, {Name: to.Ptr("vCPUs"), Value: to.Ptr("2")}}},
	}
	if n, ok := vcpusOf(skus, "standard_d2s_v5"); !ok || n != 2 {
		t.Errorf("vcpusOf = %d, %v; want 2", n, ok)
	}
	if _, ok := vcpusOf(skus, "Standard_F4"); ok {
		t.Errorf("vcpusOf(unknown) found one")
	}
	usages := []*armcompute.Usage{
		{Name: &armcompute.UsageName{Value: to.Ptr("cores")}, CurrentValue: to.Ptr[int32](12), Limit: to.Ptr[int64](100)},
		{Name: &armcompute.UsageName{Value: to.Ptr("lowPriorityCores")}, CurrentValue: to.Ptr[int32](3), Limit: to.Ptr[int64](20)},
	}
	if u, ok := findUsage(usages, "lowprioritycores"); !ok || u.Current != 3 || u.Limit != 20 {
		t.Errorf("findUsage = %+v, %v", u, ok)
	}
	for cidr, want := range map[string]int{"10.0.0.0/24": 243, "10.0.0.0/28": 3, "10.0.0.0/29": 0, "10.1.0.0/16": 65523} {
		if got, err := SubnetCapacity(cidr); err != nil || got != want {
			t.Errorf("SubnetCapacity(%s) = %d, %v; want %d", cidr, got, err, want)
		}
	}
	for _, bad := range []string{"", "10.0.0.0", "fd00::/64"} {
		if _, err := SubnetCapacity(bad); err == nil {
			t.Errorf("SubnetCapacity(%q) accepted", bad)
		}
	}
}

func testConfig() config.Azure {
	cfg := config.Default().Azure
	cfg.SubscriptionID = "11111111-2222-3333-4444-555555555555"
	cfg.Credential = "emulator"
	cfg.DNSServers = []string{"10.0.0.2"}
	return cfg
}

func TestScaleSetModel(t *testing.T) {
	cfg := testConfig()
	cfg.Spot = true
	cfg.EphemeralOSDiskPlacement = "ResourceDisk"
	d, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := d.scaleSet(provider.PoolSpec{Name: "win10", Platform: "windows", Arch: "x64", Image: "win10-img", Tags: []string{"win10", "x64"}, Capacity: 3})
	if deref(s.Location) != "westeurope" || deref(s.SKU.Name) != "Standard_D2s_v5" || deref(s.SKU.Capacity) != 3 {
		t.Errorf("sku/location = %s %s %d", deref(s.Location), deref(s.SKU.Name), deref(s.SKU.Capacity))
	}
	if !isOwned(s.Tags) || deref(s.Tags[TagsTag]) != "win10,x64" || deref(s.Tags[PoolTag]) != "win10" {
		t.Errorf("tags = %v", s.Tags)
	}
	p := s.Properties
	if deref(p.UpgradePolicy.Mode) != armcompute.UpgradeModeAutomatic || deref(p.Overprovision) || deref(p.SinglePlacementGroup) ||
		deref(p.ScaleInPolicy.Rules[0]) != armcompute.VirtualMachineScaleSetScaleInRulesNewestVM {
		t.Errorf("policies wrong: %+v", p)
	}
	vm := p.VirtualMachineProfile
	wantImage := "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/sandfleet-sandbox/providers/Microsoft.Compute/galleries/sandfleetgallery/images/win10-img"
	if got := deref(vm.StorageProfile.ImageReference.ID); got != wantImage {
		t.Errorf("image = %s, want %s", got, wantImage)
	}
	od := vm.StorageProfile.OSDisk
	if deref(od.Caching) != armcompute.CachingTypesReadOnly || deref(od.DiffDiskSettings.Option) != armcompute.DiffDiskOptionsLocal ||
		deref(od.DiffDiskSettings.Placement) != armcompute.DiffDiskPlacementResourceDisk {
		t.Errorf("os disk = %+v %+v", od, od.DiffDiskSettings)
	}
	nc := vm.NetworkProfile.NetworkInterfaceConfigurations[0].Properties
	wantSubnet := "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/sandfleet-network/providers/Microsoft.Network/virtualNetworks/sandfleet-vnet/subnets/sandbox"
	if got := deref(nc.IPConfigurations[0].Properties.Subnet.ID); got != wantSubnet {
		t.Errorf("subnet = %s, want %s", got, wantSubnet)
	}
	if len(nc.DNSSettings.DNSServers) != 1 || deref(nc.DNSSettings.DNSServers[0]) != "10.0.0.2" {
		t.Errorf("dns = %v", nc.DNSSettings)
	}
	if deref(vm.Priority) != armcompute.VirtualMachinePriorityTypesSpot || deref(vm.EvictionPolicy) != armcompute.VirtualMachineEvictionPolicyTypesDelete ||
		deref(vm.BillingProfile.MaxPrice) != -1 || !deref(p.SpotRestorePolicy.Enabled) || deref(p.SpotRestorePolicy.RestoreTimeout) != "PT30M" {
		t.Errorf("spot settings wrong")
	}
	cfg.Spot = false
	d2, _ := New(cfg, Options{})
	if s2 := d2.scaleSet(provider.PoolSpec{Name: "x", Image: "i", Capacity: 1}); s2.Properties.VirtualMachineProfile.Priority != nil {
		t.Errorf("non-Spot pool has a priority")
	}
}

func TestNewConfigErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		modify func(*config.Azure)
		key    string
	}{
		{"no subscription", func(c *config.Azure) { c.SubscriptionID = ""; c.Credential = "default" }, "azure.subscription_id"},
		{"http endpoint", func(c *config.Azure) { c.Endpoint = "http://127.0.0.1:8443" }, "azure.endpoint"},
		{"missing ca", func(c *config.Azure) { c.CAFile = filepath.Join(dir, "nope.pem") }, "azure.ca_file"},
		{"ca not pem", func(c *config.Azure) { c.CAFile = notPEM }, "azure.ca_file"},
		{"secret without tenant", func(c *config.Azure) {
			c.Credential, c.ClientID, c.ClientSecretFile = "secret", "app", empty
		}, "azure.tenant_id"},
		{"secret file missing", func(c *config.Azure) {
			c.Credential, c.TenantID, c.ClientID, c.ClientSecretFile = "secret", "t", "app", filepath.Join(dir, "nope")
		}, "azure.client_secret_file"},
		{"secret file empty", func(c *config.Azure) {
			c.Credential, c.TenantID, c.ClientID, c.ClientSecretFile = "secret", "t", "app", empty
		}, "azure.client_secret_file"},
		{"certificate missing", func(c *config.Azure) {
			c.Credential, c.TenantID, c.ClientID, c.CertificateFile = "certificate", "t", "app", filepath.Join(dir, "nope")
		}, "azure.certificate_file"},
		{"certificate garbage", func(c *config.Azure) {
			c.Credential, c.TenantID, c.ClientID, c.CertificateFile = "certificate", "t", "app", notPEM
		}, "azure.certificate_file"},
		{"password file missing", func(c *config.Azure) {
			c.Credential, c.TenantID, c.ClientID, c.CertificateFile = "certificate", "t", "app", notPEM
			c.CertificatePasswordFile = filepath.Join(dir, "nope")
		}, "azure.certificate_password_file"},
		{"unknown credential", func(c *config.Azure) { c.Credential = "kerberos" }, "azure.credential"},
	}
	for _, tc := range tests {
		cfg := testConfig()
		tc.modify(&cfg)
		_, err := New(cfg, Options{})
		if err == nil || !strings.HasPrefix(err.Error(), tc.key+":") {
			t.Errorf("%s: New = %v, want an error starting with %s", tc.name, err, tc.key)
		}
	}
	// The emulator alone needs no subscription id.
	cfg := testConfig()
	cfg.SubscriptionID = ""
	if _, err := New(cfg, Options{}); err != nil {
		t.Errorf("emulator without subscription: %v", err)
	}
	// A client secret is read and trimmed; building the credential makes no call.
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = testConfig()
	cfg.Credential, cfg.TenantID, cfg.ClientID, cfg.ClientSecretFile = "secret", "tenant", "app", secret
	if _, err := New(cfg, Options{}); err != nil {
		t.Errorf("secret credential: %v", err)
	}
}

func TestCloudFor(t *testing.T) {
	if c := cloudFor("https://management.azure.com/"); c.Services[cloud.ResourceManager].Audience != cloud.AzurePublic.Services[cloud.ResourceManager].Audience {
		t.Errorf("public cloud audience = %q", c.Services[cloud.ResourceManager].Audience)
	}
	if c := cloudFor("https://management.usgovcloudapi.net"); c.ActiveDirectoryAuthorityHost != cloud.AzureGovernment.ActiveDirectoryAuthorityHost {
		t.Errorf("government cloud authority = %q", c.ActiveDirectoryAuthorityHost)
	}
	c := cloudFor("https://127.0.0.1:8443")
	if rm := c.Services[cloud.ResourceManager]; rm.Endpoint != "https://127.0.0.1:8443" || rm.Audience == "" {
		t.Errorf("custom endpoint = %+v", rm)
	}
	if cloud.AzurePublic.Services[cloud.ResourceManager].Endpoint != "https://management.azure.com" {
		t.Errorf("cloudFor modified the shared public cloud configuration")
	}
}

// recorder is a transport that answers every request 404 and keeps it.
type recorder struct{ reqs []*http.Request }

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	r.reqs = append(r.reqs, req)
	return &http.Response{StatusCode: http.StatusNotFound, Header: http.Header{}, Request: req,
		Body: io.NopCloser(strings.NewReader(`{"error":{"code":"ResourceNotFound"}}`))}, nil
}

// The reads the driver decodes itself ask what the generated clients ask:
// the same paths (ARM paths are case insensitive), query and API versions.
func TestReadsMatchTheSDK(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	opts := &arm.ClientOptions{ClientOptions: policy.ClientOptions{Transport: rec, Cloud: cloudFor("https://arm.example")},
		DisableRPRegistration: true}
	cred := staticToken("t")
	vms, err := armcompute.NewVirtualMachineScaleSetVMsClient("sub", cred, opts)
	if err != nil {
		t.Fatal(err)
	}
	nics, err := armnetwork.NewInterfacesClient("sub", cred, opts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := arm.NewClient(readerModule, readerVersion, cred, opts)
	if err != nil {
		t.Fatal(err)
	}
	d := &Driver{subscription: "sub", rg: "rg", arm: c}
	expand := to.Ptr("instanceView")
	pairs := []struct {
		name      string
		sdk, ours func() error
	}{
		{"VM list", func() error {
			_, err := vms.NewListPager("rg", "set", &armcompute.VirtualMachineScaleSetVMsClientListOptions{Expand: expand}).NextPage(ctx)
			return err
		}, func() error { _, err := d.listVMs(ctx, "set"); return err }},
		{"VM", func() error {
			_, err := vms.Get(ctx, "rg", "set", "7", &armcompute.VirtualMachineScaleSetVMsClientGetOptions{
				Expand: to.Ptr(armcompute.InstanceViewTypesInstanceView)})
			return err
		}, func() error { _, err := d.GetInstance(ctx, "set", "7"); return err }},
		{"NIC list", func() error {
			_, err := nics.NewListVirtualMachineScaleSetNetworkInterfacesPager("rg", "set", nil).NextPage(ctx)
			return err
		}, func() error { _, err := d.listNICs(ctx, "set"); return err }},
		{"NICs of a VM", func() error {
			_, err := nics.NewListVirtualMachineScaleSetVMNetworkInterfacesPager("rg", "set", "7", nil).NextPage(ctx)
			return err
		}, func() error { _, err := d.listVMNICs(ctx, "set", "7"); return err }},
	}
	for _, p := range pairs {
		rec.reqs = nil
		if err := p.sdk(); err == nil {
			t.Fatalf("%s: the SDK's read of a 404 succeeded", p.name)
		}
		if err := p.ours(); !errors.Is(err, provider.ErrNotFound) {
			t.Errorf("%s: our read of a 404 = %v, want ErrNotFound", p.name, err)
		}
		if len(rec.reqs) != 2 {
			t.Fatalf("%s: %d requests, want one each", p.name, len(rec.reqs))
		}
		sdk, ours := rec.reqs[0], rec.reqs[1]
		if !strings.EqualFold(sdk.URL.Path, ours.URL.Path) || sdk.URL.Query().Encode() != ours.URL.Query().Encode() ||
			sdk.Header.Get("Accept") != ours.Header.Get("Accept") {
			t.Errorf("%s: we ask %s (Accept %s), the SDK asks %s (Accept %s)", p.name,
				ours.URL, ours.Header.Get("Accept"), sdk.URL, sdk.Header.Get("Accept"))
		}
	}
}

func TestIPCache(t *testing.T) {
	vm := func(id, vmID string) vmView {
		var v vmView
		v.InstanceID, v.Properties.VMID = id, vmID
		return v
	}
	now := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	c := ipCache{every: time.Minute}
	if _, due := c.get("Win10", now); !due {
		t.Fatal("a scale set never listed is not due for its NICs")
	}
	c.put("Win10", []vmView{vm("0", "a"), vm("1", "b"), vm("2", "c")},
		map[string]string{"0": "10.0.0.4", "1": "10.0.0.5", "2": ""}, true, now)
	known, due := c.get("win10", now.Add(50*time.Second))
	want := map[string]knownIP{"0": {"a", "10.0.0.4"}, "1": {"b", "10.0.0.5"}}
	if due || !reflect.DeepEqual(known, want) {
		t.Fatalf("after a list: %v, due %v; want %v, not due", known, due, want)
	}
	if _, due := c.get("win10", now.Add(70*time.Second)); !due {
		t.Fatal("not due for its NICs past the refresh period and its tenth")
	}

	// Instance 1 left the list: it leaves the cache. A list that read no NIC
	// keeps the period.
	c.put("win10", []vmView{vm("0", "a"), vm("2", "c")}, map[string]string{"0": "10.0.0.4"}, false, now.Add(time.Second))
	if known, due := c.get("win10", now.Add(70*time.Second)); !due || !reflect.DeepEqual(known, map[string]knownIP{"0": {"a", "10.0.0.4"}}) {
		t.Fatalf("after instance 1 left: %v, due %v", known, due)
	}

	// A scale set ListGroups no longer finds is forgotten, as is one dropped.
	c.put("other", []vmView{vm("0", "z")}, map[string]string{"0": "10.0.1.4"}, true, now)
	c.keep([]provider.Group{{Name: "OTHER"}})
	if known, _ := c.get("win10", now); known != nil {
		t.Fatalf("a scale set gone from the list kept %v", known)
	}
	c.drop("other")
	if known, _ := c.get("other", now); known != nil {
		t.Fatalf("a dropped scale set kept %v", known)
	}
}
