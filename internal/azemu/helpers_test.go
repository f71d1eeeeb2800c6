package azemu

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/sandfleet/sandfleet/internal/poll"
)

const (
	testSub = "00000000-1111-2222-3333-444444444444"
	testRG  = "sandbox-rg"
)

// clients are the real SDK clients pointed at one emulator.
type clients struct {
	sets    *armcompute.VirtualMachineScaleSetsClient
	vms     *armcompute.VirtualMachineScaleSetVMsClient
	images  *armcompute.GalleryImagesClient
	skus    *armcompute.ResourceSKUsClient
	usage   *armcompute.UsageClient
	nics    *armnetwork.InterfacesClient
	subnets *armnetwork.SubnetsClient
	admin   *http.Client
	url     string
}

func newClients(t *testing.T, e *Emulator) *clients {
	t.Helper()
	transport := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.CertPool()}}
	t.Cleanup(transport.CloseIdleConnections)
	hc := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	url := e.URL()
	opts := &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud: cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: url, Audience: url},
		}},
		Transport: hc,
		Retry:     policy.RetryOptions{MaxRetries: -1},
	}}
	cf, err := armcompute.NewClientFactory(testSub, Credential{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	nf, err := armnetwork.NewClientFactory(testSub, Credential{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &clients{
		sets:    cf.NewVirtualMachineScaleSetsClient(),
		vms:     cf.NewVirtualMachineScaleSetVMsClient(),
		images:  cf.NewGalleryImagesClient(),
		skus:    cf.NewResourceSKUsClient(),
		usage:   cf.NewUsageClient(),
		nics:    nf.NewInterfacesClient(),
		subnets: nf.NewSubnetsClient(),
		admin:   hc,
		url:     url,
	}
}

// testOptions gives every emulator its own address block and agent port, so
// tests (and other packages' tests) running at once do not collide.
func testOptions(t *testing.T) Options {
	var logger *slog.Logger
	if os.Getenv("AZEMU_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	} else {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return Options{
		StateDir:  t.TempDir(),
		AgentPort: 20000 + rand.IntN(30000),
		Logger:    logger,
	}
}

func startEmulator(t *testing.T, opts Options) *Emulator {
	t.Helper()
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return e
}

// startOn starts an emulator on addr, retrying while the port is not yet free.
func startOn(t *testing.T, opts Options, addr string) *Emulator {
	t.Helper()
	opts.Listen = addr
	var (
		e       *Emulator
		lastErr error
	)
	err := poll.UntilCtx(context.Background(), 5*time.Second, func() bool {
		var err error
		if e, err = New(opts); err != nil {
			t.Fatal(err)
		}
		if lastErr = e.Start(); lastErr != nil {
			_ = e.Close()
			return false
		}
		return true
	})
	if err != nil {
		t.Fatalf("start on %s: %v", addr, lastErr)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var fastPoll = &runtime.PollUntilDoneOptions{Frequency: 10 * time.Millisecond}

// scaleSetBody is the kind of scale set sandfleet's driver creates.
func scaleSetBody(capacity int64) armcompute.VirtualMachineScaleSet {
	return armcompute.VirtualMachineScaleSet{
		Location: to.Ptr("westeurope"),
		Tags:     map[string]*string{"AUTO_SCALE_CAPE": to.Ptr("True"), "pool": to.Ptr("win10")},
		SKU:      &armcompute.SKU{Name: to.Ptr("Standard_D2s_v3"), Tier: to.Ptr("Standard"), Capacity: to.Ptr(capacity)},
		Properties: &armcompute.VirtualMachineScaleSetProperties{
			Overprovision:        to.Ptr(false),
			SinglePlacementGroup: to.Ptr(false),
			UpgradePolicy:        &armcompute.UpgradePolicy{Mode: to.Ptr(armcompute.UpgradeModeAutomatic)},
			ScaleInPolicy:        &armcompute.ScaleInPolicy{Rules: []*armcompute.VirtualMachineScaleSetScaleInRules{to.Ptr(armcompute.VirtualMachineScaleSetScaleInRulesNewestVM)}},
			VirtualMachineProfile: &armcompute.VirtualMachineScaleSetVMProfile{
				StorageProfile: &armcompute.VirtualMachineScaleSetStorageProfile{
					ImageReference: &armcompute.ImageReference{
						ID: to.Ptr("/subscriptions/" + testSub + "/resourceGroups/gallery-rg/providers/Microsoft.Compute/galleries/capegallery/images/win10"),
					},
					OSDisk: &armcompute.VirtualMachineScaleSetOSDisk{
						CreateOption: to.Ptr(armcompute.DiskCreateOptionTypesFromImage),
						Caching:      to.Ptr(armcompute.CachingTypesReadOnly),
						OSType:       to.Ptr(armcompute.OperatingSystemTypesWindows),
					},
				},
				OSProfile: &armcompute.VirtualMachineScaleSetOSProfile{
					ComputerNamePrefix: to.Ptr("win10"),
					AdminUsername:      to.Ptr("cape"),
					AdminPassword:      to.Ptr("secret-Passw0rd"),
				},
				NetworkProfile: &armcompute.VirtualMachineScaleSetNetworkProfile{
					NetworkInterfaceConfigurations: []*armcompute.VirtualMachineScaleSetNetworkConfiguration{{
						Name: to.Ptr("win10-nic"),
						Properties: &armcompute.VirtualMachineScaleSetNetworkConfigurationProperties{
							Primary: to.Ptr(true),
							IPConfigurations: []*armcompute.VirtualMachineScaleSetIPConfiguration{{
								Name: to.Ptr("win10-ipconfig"),
								Properties: &armcompute.VirtualMachineScaleSetIPConfigurationProperties{
									Subnet: &armcompute.APIEntityReference{ID: to.Ptr("/subscriptions/" + testSub + "/resourceGroups/vnet-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/sandbox")},
								},
							}},
						},
					}},
				},
			},
		},
	}
}

// finish waits for an operation to end, err being the error of its
// beginning, and returns its result and the error it ended with.
func finish[T any](t *testing.T, p *runtime.Poller[T], err error) (T, error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	return p.PollUntilDone(ctxT(t), fastPoll)
}

// done is finish for an operation that must succeed.
func done[T any](t *testing.T, p *runtime.Poller[T], err error) T {
	t.Helper()
	res, err := finish(t, p, err)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// setFaults applies a faults document.
func setFaults(t *testing.T, e *Emulator, doc string) {
	t.Helper()
	if _, err := e.SetFaults([]byte(doc)); err != nil {
		t.Fatal(err)
	}
}

// resumeToken returns the resume token of an operation, err being the error
// of its beginning.
func resumeToken[T any](t *testing.T, p *runtime.Poller[T], err error) string {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := p.ResumeToken()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// withCapacity is an update of a scale set's capacity.
func withCapacity(n int64) armcompute.VirtualMachineScaleSetUpdate {
	return armcompute.VirtualMachineScaleSetUpdate{SKU: &armcompute.SKU{Capacity: to.Ptr(n)}}
}

// createSet creates a scale set and waits for it.
func createSet(t *testing.T, c *clients, name string, capacity int64) armcompute.VirtualMachineScaleSet {
	t.Helper()
	ctx := ctxT(t)
	p, err := c.sets.BeginCreateOrUpdate(ctx, testRG, name, scaleSetBody(capacity), nil)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	res, err := p.PollUntilDone(ctx, fastPoll)
	if err != nil {
		t.Fatalf("create %s: poll: %v", name, err)
	}
	return res.VirtualMachineScaleSet
}

func listVMs(t *testing.T, c *clients, name string) []*armcompute.VirtualMachineScaleSetVM {
	t.Helper()
	vms, _, err := listVMsPages(ctxT(t), c, name)
	if err != nil {
		t.Fatalf("list VMs of %s: %v", name, err)
	}
	return vms
}

func listVMsPages(ctx context.Context, c *clients, name string) ([]*armcompute.VirtualMachineScaleSetVM, int, error) {
	var out []*armcompute.VirtualMachineScaleSetVM
	pages := 0
	pager := c.vms.NewListPager(testRG, name, &armcompute.VirtualMachineScaleSetVMsClientListOptions{Expand: to.Ptr("instanceView")})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, pages, err
		}
		pages++
		out = append(out, page.Value...)
	}
	return out, pages, nil
}

func listNICs(t *testing.T, c *clients, name string) []*armnetwork.Interface {
	t.Helper()
	var out []*armnetwork.Interface
	pager := c.nics.NewListVirtualMachineScaleSetNetworkInterfacesPager(testRG, name, nil)
	for pager.More() {
		page, err := pager.NextPage(ctxT(t))
		if err != nil {
			t.Fatalf("list NICs of %s: %v", name, err)
		}
		out = append(out, page.Value...)
	}
	return out
}

// vmState summarises a listed VM: instance id, provisioning state, power.
func vmState(v *armcompute.VirtualMachineScaleSetVM) (id, prov, power string) {
	id = *v.InstanceID
	prov = *v.Properties.ProvisioningState
	if iv := v.Properties.InstanceView; iv != nil {
		for _, s := range iv.Statuses {
			if c := *s.Code; strings.HasPrefix(c, "PowerState/") {
				power = strings.TrimPrefix(c, "PowerState/")
			}
		}
	}
	return
}

func ids(vms []*armcompute.VirtualMachineScaleSetVM) []string {
	var out []string
	for _, v := range vms {
		out = append(out, *v.InstanceID)
	}
	return out
}

// ipsByID maps instance id to NIC private IP.
func ipsByID(t *testing.T, c *clients, name string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, n := range listNICs(t, c, name) {
		vmID := *n.Properties.VirtualMachine.ID
		id := vmID[strings.LastIndex(vmID, "/")+1:]
		out[id] = *n.Properties.IPConfigurations[0].Properties.PrivateIPAddress
	}
	return out
}

// agentGet calls a guest agent.
func agentGet(ip string, port int, path string, timeout time.Duration) (map[string]any, error) {
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get(fmt.Sprintf("http://%s%s", net.JoinHostPort(ip, fmt.Sprint(port)), path))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, err
	}
	return out, nil
}

// agentRefused reports whether nothing listens at ip:port.
func agentRefused(ip string, port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, fmt.Sprint(port)), time.Second)
	if err != nil {
		return true
	}
	_ = c.Close()
	return false
}

// respErr asserts err is an ARM error with status and code.
func respErr(t *testing.T, err error, status int, code string) *azcore.ResponseError {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("want ResponseError %d %s, got %v", status, code, err)
	}
	if re.StatusCode != status || re.ErrorCode != code {
		t.Fatalf("want %d %s, got %d %s", status, code, re.StatusCode, re.ErrorCode)
	}
	return re
}

// admin calls an admin endpoint and decodes the JSON reply into out.
func (c *clients) adminDo(t *testing.T, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, c.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.admin.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}
