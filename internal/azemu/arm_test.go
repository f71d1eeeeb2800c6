package azemu

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sandfleet/sandfleet/internal/poll"
)

// armReply is a raw ARM reply: status, headers, and the error code of an
// error document.
type armReply struct {
	status int
	header http.Header
	body   map[string]any
}

func (r armReply) code() string {
	code, _ := dig(r.body, "error", "code").(string)
	return code
}

func (r armReply) message() string {
	msg, _ := dig(r.body, "error", "message").(string)
	return msg
}

// armDo sends an ARM request as a client with the emulator's token would;
// target is a path with its query, or a URL the emulator handed out.
func (c *clients) armDo(t *testing.T, method, target, body string) armReply {
	t.Helper()
	if strings.HasPrefix(target, "/") {
		target = c.url + target
	}
	req, err := http.NewRequest(method, target, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.admin.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := armReply{status: resp.StatusCode, header: resp.Header}
	_ = json.Unmarshal(b, &out.body)
	return out
}

func setPath(name string) string {
	return "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.Compute/virtualMachineScaleSets/" + name
}

// The api-version is required, must look like one, and must be one the
// resource type accepts; the links the emulator hands out keep the
// caller's.
func TestAPIVersion(t *testing.T) {
	opts := testOptions(t)
	opts.PageSize = 1
	e := startEmulator(t, opts)
	c := newClients(t, e)
	createSet(t, c, "ver", 2)

	for _, tc := range []struct {
		query, code, says string
	}{
		{"", "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests."},
		{"?api-version=", "MissingApiVersionParameter", "is required"},
		{"?api-version=latest", "InvalidApiVersionParameter", "The api-version 'latest' is invalid. The supported versions are '2026-04-01,2025-11-01,"},
		{"?api-version=2099-01-01", "NoRegisteredProviderFound", "No registered resource provider found for location 'westeurope' and API version '2099-01-01' for type 'virtualMachineScaleSets'. The supported api-versions are '2015-05-01-preview, "},
		{"?api-version=2022-07-01", "NoRegisteredProviderFound", "for type 'virtualMachineScaleSets'"},
	} {
		r := c.armDo(t, http.MethodGet, setPath("ver")+tc.query, "")
		if r.status != http.StatusBadRequest || r.code() != tc.code || !strings.Contains(r.message(), tc.says) {
			t.Errorf("GET %q: %d %s %q; want 400 %s saying %q", tc.query, r.status, r.code(), r.message(), tc.code, tc.says)
		}
	}
	// The type decides: network's 2022-07-01 is a subnet's, not a scale set's.
	subnet := "/subscriptions/" + testSub + "/resourceGroups/vnet-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/sandbox"
	if r := c.armDo(t, http.MethodGet, subnet+"?api-version=2022-07-01", ""); r.status != http.StatusOK {
		t.Errorf("subnet with network's api-version: %d %s", r.status, r.code())
	}
	if r := c.armDo(t, http.MethodPost, setPath("ver")+"/reimage?api-version=2099-01-01", ""); r.code() != "NoRegisteredProviderFound" {
		t.Errorf("an action is judged by its resource's type: %d %s", r.status, r.code())
	}

	// The Python SDK's version comes back in polling URLs and nextLinks.
	const v = "2022-08-01"
	r := c.armDo(t, http.MethodPost, setPath("ver")+"/restart?api-version="+v, "")
	async, loc := r.header.Get("Azure-AsyncOperation"), r.header.Get("Location")
	for _, u := range []string{async, loc} {
		pu, err := url.Parse(u)
		if err != nil || pu.Query().Get("api-version") != v {
			t.Fatalf("polling URL %q does not carry api-version %s", u, v)
		}
	}
	if p := c.armDo(t, http.MethodGet, async, ""); p.status != http.StatusOK || p.body["status"] != "Succeeded" {
		t.Fatalf("poll at the URL handed out: %d %v", p.status, p.body)
	}
	list := c.armDo(t, http.MethodGet, setPath("ver")+"/virtualMachines?api-version="+v, "")
	next, _ := list.body["nextLink"].(string)
	if pu, err := url.Parse(next); err != nil || pu.Query().Get("api-version") != v || pu.Query().Get("$skiptoken") == "" {
		t.Fatalf("nextLink %q does not carry api-version %s", next, v)
	}
	if p := c.armDo(t, http.MethodGet, next, ""); p.status != http.StatusOK {
		t.Fatalf("next page: %d %s", p.status, p.code())
	}
}

func TestResourceType(t *testing.T) {
	for path, want := range map[string]string{
		"/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachineScaleSets":                                         "virtualMachineScaleSets",
		"/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachineScaleSets/x/reimageall":                            "virtualMachineScaleSets",
		"/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachineScaleSets/x/virtualMachines/0/instanceView":        "virtualMachineScaleSets/virtualMachines",
		"/subscriptions/s/resourceGroups/r/providers/microsoft.compute/virtualMachineScaleSets/x/virtualMachines/0/networkInterfaces/n": "virtualMachineScaleSets/virtualMachines/networkInterfaces",
		"/subscriptions/s/providers/Microsoft.Compute/locations/westeurope/operations/id":                                               "locations/operations",
		"/subscriptions/s/providers/Microsoft.Compute/skus":                                                                             "skus",
		"/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v/subnets":                                       "virtualNetworks/subnets",
		"/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/a":                                               "",
		"/subscriptions/s/resourceGroups/r": "",
	} {
		_, got, _, _ := resourceType(path)
		if got != want {
			t.Errorf("resourceType(%s) = %q, want %q", path, got, want)
		}
	}
}

// Every ARM reply says what is left of the subscription's limits, and a
// compute reply what is left of compute's policies.
func TestRateLimitHeaders(t *testing.T) {
	e := startEmulator(t, testOptions(t))
	c := newClients(t, e)
	createSet(t, c, "lim", 1)
	v := "?api-version=2026-04-01"
	remaining := func(r armReply, h string) int {
		t.Helper()
		n, err := strconv.Atoi(r.header.Get(h))
		if err != nil {
			t.Fatalf("%s: %q", h, r.header.Get(h))
		}
		return n
	}
	first := c.armDo(t, http.MethodGet, setPath("lim")+v, "")
	second := c.armDo(t, http.MethodGet, setPath("lim")+v, "")
	if a, b := remaining(first, "x-ms-ratelimit-remaining-subscription-reads"), remaining(second, "x-ms-ratelimit-remaining-subscription-reads"); b >= a || a > 250 {
		t.Errorf("subscription reads left: %d then %d", a, b)
	}
	if res := second.header.Get("x-ms-ratelimit-remaining-resource"); !strings.HasPrefix(res, "Microsoft.Compute/GetVMScaleSet3Min;") ||
		!strings.Contains(res, ",Microsoft.Compute/GetVMScaleSet30Min;") {
		t.Errorf("GET scale set: x-ms-ratelimit-remaining-resource %q", res)
	}
	list := c.armDo(t, http.MethodGet, setPath("lim")+"/virtualMachines"+v, "")
	if res := list.header.Get("x-ms-ratelimit-remaining-resource"); !strings.HasPrefix(res, "Microsoft.Compute/HighCostGetVMScaleSet3Min;189,") {
		t.Errorf("first VM list: x-ms-ratelimit-remaining-resource %q", res)
	}
	patch := c.armDo(t, http.MethodPatch, setPath("lim")+v, `{"tags": {"a": "b"}}`)
	if remaining(patch, "x-ms-ratelimit-remaining-subscription-writes") > 200 || patch.header.Get("x-ms-ratelimit-remaining-subscription-reads") != "" {
		t.Errorf("PATCH: %v", patch.header)
	}
	if res := patch.header.Get("x-ms-ratelimit-remaining-resource"); !strings.HasPrefix(res, "Microsoft.Compute/CreateVMScaleSet3Min;") {
		t.Errorf("PATCH: x-ms-ratelimit-remaining-resource %q", res)
	}
	del := c.armDo(t, http.MethodDelete, setPath("lim")+v, "")
	remaining(del, "x-ms-ratelimit-remaining-subscription-deletes")
	subnet := c.armDo(t, http.MethodGet, "/subscriptions/"+testSub+"/resourceGroups/vnet-rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets?api-version=2025-01-01", "")
	remaining(subnet, "x-ms-ratelimit-remaining-subscription-reads")
	if res := subnet.header.Get("x-ms-ratelimit-remaining-resource"); res != "" {
		t.Errorf("network reply with compute's header %q", res)
	}
}

func TestTokenBucket(t *testing.T) {
	b := &tokenBucket{size: 250, rate: 25}
	now := time.Unix(1_700_000_000, 0)
	if got := b.take(now); got != 249 {
		t.Fatalf("first take: %d", got)
	}
	for range 300 {
		b.take(now)
	}
	if got := b.take(now); got != 0 {
		t.Fatalf("emptied: %d", got)
	}
	if got := b.take(now.Add(2 * time.Second)); got != 49 {
		t.Fatalf("2 s later: %d, want 49", got)
	}
	if got := b.take(now.Add(time.Hour)); got != 249 {
		t.Fatalf("an hour later: %d, want 249", got)
	}
}

// Replies that begin an operation, and polls of one in progress, say when
// to poll again: when the operation will have ended.
func TestRetryAfter(t *testing.T) {
	opts := testOptions(t)
	opts.LRODelay = 2500 * time.Millisecond
	e := startEmulator(t, opts)
	c := newClients(t, e)
	v := "?api-version=2026-04-01"
	body := mustJSON(scaleSetBody(1))
	put := c.armDo(t, http.MethodPut, setPath("ra")+v, string(body))
	if put.status != http.StatusCreated || put.header.Get("Retry-After") != "3" {
		t.Fatalf("PUT: %d Retry-After %q, want 201 and 3", put.status, put.header.Get("Retry-After"))
	}
	async, loc := put.header.Get("Azure-AsyncOperation"), put.header.Get("Location")
	for _, u := range []string{async, loc} {
		p := c.armDo(t, http.MethodGet, u, "")
		if n, err := strconv.Atoi(p.header.Get("Retry-After")); err != nil || n < 1 || n > 3 {
			t.Fatalf("poll in progress of %s: %d Retry-After %q", u, p.status, p.header.Get("Retry-After"))
		}
	}
	if loc := c.armDo(t, http.MethodGet, loc, ""); loc.status != http.StatusAccepted {
		t.Fatalf("Location poll in progress: %d", loc.status)
	}
	var last armReply
	poll.Until(t, 10*time.Second, "the operation's end", func() bool {
		last = c.armDo(t, http.MethodGet, async, "")
		return last.body["status"] == "Succeeded"
	})
	if ra := last.header.Get("Retry-After"); ra != "" {
		t.Errorf("a poll of an ended operation has Retry-After %q", ra)
	}
	setFaults(t, e, `{"lro_delay_ms": 0}`)
	del := c.armDo(t, http.MethodDelete, setPath("ra")+v, "")
	if del.status != http.StatusAccepted || del.header.Get("Retry-After") != "0" {
		t.Fatalf("DELETE with no delay: %d Retry-After %q, want 202 and 0", del.status, del.header.Get("Retry-After"))
	}
}
