package azure

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
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
	vm := &armcompute.VirtualMachineScaleSetVM{
		ID:         to.Ptr("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/win10/virtualMachines/7"),
		InstanceID: to.Ptr("7"),
		Name:       to.Ptr("win10_7"),
		Tags:       map[string]*string{"Sandfleet-Arch": to.Ptr("x64"), TagsTag: to.Ptr("win10,x64")},
		Properties: &armcompute.VirtualMachineScaleSetVMProperties{
			ProvisioningState: to.Ptr("Succeeded"),
			InstanceView: &armcompute.VirtualMachineScaleSetVMInstanceView{Statuses: []*armcompute.InstanceViewStatus{
				{Code: to.Ptr("ProvisioningState/succeeded")}, {Code: to.Ptr("PowerState/running")},
			}},
			StorageProfile: &armcompute.StorageProfile{
				ImageReference: &armcompute.ImageReference{ID: to.Ptr("/galleries/g/images/win10")},
				OSDisk:         &armcompute.OSDisk{OSType: to.Ptr(armcompute.OperatingSystemTypesWindows)},
			},
		},
	}
	in := instanceOf(vm)
	if in.ID != "7" || in.Name != "win10_7" || in.State != provider.InstanceRunning || in.Raw != "Succeeded/running" ||
		in.Platform != "windows" || in.Arch != "x64" || in.Image != "/galleries/g/images/win10" || strings.Join(in.Tags, ",") != "win10,x64" {
		t.Errorf("instanceOf = %+v", in)
	}
}

func nic(vmID string, primary bool, ips ...string) *armnetwork.Interface {
	n := &armnetwork.Interface{Properties: &armnetwork.InterfacePropertiesFormat{
		Primary:        to.Ptr(primary),
		VirtualMachine: &armnetwork.SubResource{ID: to.Ptr(vmID)},
	}}
	for i, ip := range ips {
		n.Properties.IPConfigurations = append(n.Properties.IPConfigurations, &armnetwork.InterfaceIPConfiguration{
			Properties: &armnetwork.InterfaceIPConfigurationPropertiesFormat{
				PrivateIPAddress: to.Ptr(ip), Primary: to.Ptr(i == 1),
			},
		})
	}
	return n
}

func TestPrimaryIPs(t *testing.T) {
	got := primaryIPs([]*armnetwork.Interface{
		nic("/subscriptions/s/.../virtualMachines/1", false, "10.0.0.9"),
		nic("/Subscriptions/S/.../VirtualMachines/1", true, "10.0.0.4", "10.0.0.5"), // primary NIC, primary ipconfig second
		nic("/subscriptions/s/.../virtualMachines/2", false, "10.0.0.6"),
		{Properties: &armnetwork.InterfacePropertiesFormat{}}, // a NIC of no VM
	})
	want := map[string]string{
		"/subscriptions/s/.../virtualmachines/1": "10.0.0.5",
		"/subscriptions/s/.../virtualmachines/2": "10.0.0.6",
	}
	if len(got) != len(want) {
		t.Fatalf("primaryIPs = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("primaryIPs[%s] = %q, want %q", k, got[k], v)
		}
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
