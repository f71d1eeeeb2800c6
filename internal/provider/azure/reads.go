package azure

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// The reads a reconcile pass makes every time — the VMs of each scale set,
// and the NICs of those whose IP is not known yet — are decoded into the few
// fields sandfleet uses instead of the SDK's generated models. Those decode
// every property of every VM through a map of raw messages per object, and
// that was four fifths of a no-op pass's CPU; encoding/json into small
// structs skips what it is not asked for.
//
// Everything else is the SDK's: the requests go through an arm.Client built
// from the same options as the generated clients (credential, retry policy,
// resource-provider registration, telemetry), lists through its pager and
// next links, with the API versions the generated clients send
// (TestReadsMatchTheSDK keeps them in step), and a refusal comes back as the SDK's
// *azcore.ResponseError, which mapErr reads as it reads any other.

// The module the reads' arm.Client names in its telemetry (User-Agent).
const (
	readerModule  = "github.com/sandfleet/sandfleet/internal/provider/azure"
	readerVersion = "v0.1.0"
)

// API versions of the reads decoded here: armcompute/v8's, and armnetwork/v7's
// for the NICs of scale-set VMs (ARM serves those on an older version only).
const (
	computeAPIVersion  = "2026-04-01"
	scaleSetNICVersion = "2018-10-01"
)

// vmView is what sandfleet reads of a scale-set VM (see instanceOf).
type vmView struct {
	InstanceID string `json:"instanceId"`
	Name       string `json:"name"`
	// ArchTag and TagsTag. Tag names are case insensitive, and so is
	// encoding/json's matching of keys.
	Tags struct {
		Arch string `json:"sandfleet-arch"`
		Tags string `json:"sandfleet-tags"`
	} `json:"tags"`
	Properties struct {
		VMID              string `json:"vmId"`
		ProvisioningState string `json:"provisioningState"`
		InstanceView      struct {
			Statuses []statusView `json:"statuses"`
		} `json:"instanceView"`
		StorageProfile struct {
			ImageReference struct {
				ID string `json:"id"`
			} `json:"imageReference"`
			OSDisk struct {
				OSType string `json:"osType"`
			} `json:"osDisk"`
		} `json:"storageProfile"`
		OSProfile struct {
			WindowsConfiguration json.RawMessage `json:"windowsConfiguration"`
			LinuxConfiguration   json.RawMessage `json:"linuxConfiguration"`
		} `json:"osProfile"`
	} `json:"properties"`
}

type statusView struct {
	Code string `json:"code"`
}

// nicView is what sandfleet reads of a scale-set VM's NIC: whose it is, and
// its private IPs.
type nicView struct {
	Properties struct {
		Primary        bool `json:"primary"`
		VirtualMachine struct {
			ID string `json:"id"`
		} `json:"virtualMachine"`
		IPConfigurations []ipConfigView `json:"ipConfigurations"`
	} `json:"properties"`
}

type ipConfigView struct {
	Properties struct {
		PrivateIPAddress string `json:"privateIPAddress"`
		Primary          bool   `json:"primary"`
	} `json:"properties"`
}

// listPage is one page of an ARM list.
type listPage[T any] struct {
	Value    []T    `json:"value"`
	NextLink string `json:"nextLink"`
}

// readList reads every page of the ARM list at path, decoding its items into
// T. With a cache, a page whose bytes are those the cache holds for the
// same page of path is not decoded again: a pass over a scale set where
// nothing changed decodes nothing.
func readList[T any](ctx context.Context, c *arm.Client, path, apiVersion string, query url.Values, cache *pageCache) ([]T, error) {
	var read []pageEntry
	pager := runtime.NewPager(runtime.PagingHandler[listPage[T]]{
		More: func(p listPage[T]) bool { return p.NextLink != "" },
		Fetcher: func(ctx context.Context, p *listPage[T]) (listPage[T], error) {
			next := ""
			if p != nil {
				next = p.NextLink
			}
			resp, err := runtime.FetcherForNextLink(ctx, c.Pipeline(), next, func(ctx context.Context) (*policy.Request, error) {
				return newGet(ctx, c, path, apiVersion, query)
			}, nil)
			if err != nil {
				return listPage[T]{}, err
			}
			var page listPage[T]
			if cache == nil {
				return page, runtime.UnmarshalAsJSON(resp, &page)
			}
			body, err := runtime.Payload(resp)
			if err != nil {
				return page, err
			}
			sum := maphash.Bytes(pageSeed, body)
			if cached, ok := cache.get(path, len(read), sum).(listPage[T]); ok {
				page = cached
			} else if err := json.Unmarshal(body, &page); err != nil {
				return page, fmt.Errorf("unmarshalling page %d of %s: %w", len(read)+1, path, err)
			}
			read = append(read, pageEntry{sum: sum, page: page})
			return page, nil
		},
		Tracer: c.Tracer(),
	})
	var out []T
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Value...)
	}
	if cache != nil {
		cache.put(path, read)
	}
	return out, nil
}

// pageSeed hashes pages for the process's life.
var pageSeed = maphash.MakeSeed()

// pageCache holds, for each list path, the pages last read whole: each
// page's hash and its decoded value. A decoded page is shared by the lists
// that reuse it, so it is never written to.
type pageCache struct {
	mu    sync.Mutex
	paths map[string][]pageEntry
}

type pageEntry struct {
	sum  uint64
	page any // a listPage[T]
}

// get returns page i of path if the cache holds it with hash sum.
func (c *pageCache) get(path string, i int, sum uint64) any {
	c.mu.Lock()
	defer c.mu.Unlock()
	if pages := c.paths[path]; i < len(pages) && pages[i].sum == sum {
		return pages[i].page
	}
	return nil
}

// put replaces what the cache holds for path by the pages of a whole list.
func (c *pageCache) put(path string, pages []pageEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.paths == nil {
		c.paths = map[string][]pageEntry{}
	}
	c.paths[path] = pages
}

// readOne reads the ARM resource at path into a T.
func readOne[T any](ctx context.Context, c *arm.Client, path, apiVersion string, query url.Values) (T, error) {
	var v T
	req, err := newGet(ctx, c, path, apiVersion, query)
	if err != nil {
		return v, err
	}
	resp, err := c.Pipeline().Do(req)
	if err != nil {
		return v, err
	}
	if !runtime.HasStatusCode(resp, http.StatusOK) {
		return v, runtime.NewResponseError(resp)
	}
	return v, runtime.UnmarshalAsJSON(resp, &v)
}

// newGet builds a GET of path as the generated clients build theirs.
func newGet(ctx context.Context, c *arm.Client, path, apiVersion string, query url.Values) (*policy.Request, error) {
	req, err := runtime.NewRequest(ctx, http.MethodGet, runtime.JoinPaths(c.Endpoint(), path))
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	for k, v := range query {
		q[k] = v
	}
	q.Set("api-version", apiVersion)
	req.Raw().URL.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	req.Raw().Header["Accept"] = []string{"application/json"}
	return req, nil
}

// scaleSetPath is the path of a scale set, or of something below it (parts
// are path segments, escaped here).
func (d *Driver) scaleSetPath(group string, parts ...string) string {
	var b strings.Builder
	b.WriteString("/subscriptions/")
	b.WriteString(url.PathEscape(d.subscription))
	b.WriteString("/resourceGroups/")
	b.WriteString(url.PathEscape(d.rg))
	b.WriteString("/providers/Microsoft.Compute/virtualMachineScaleSets/")
	b.WriteString(url.PathEscape(group))
	for _, p := range parts {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(p))
	}
	return b.String()
}
