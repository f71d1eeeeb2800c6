package azemu

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
)

// The api-versions each resource type the emulator serves accepts, oldest
// first. They are ARM's: compute's as a NoRegisteredProviderFound reply for
// virtualMachineScaleSets/networkInterfaces lists them (through 2023-07-01),
// then the versions the Azure SDKs sandfleet is tested with speak (Go:
// compute 2026-04-01, galleries 2026-03-03, network 2025-01-01; Debian's
// Python SDK: compute 2022-08-01, galleries 2022-03-03, network 2022-07-01;
// both: resource SKUs 2021-07-01, scale-set NICs 2018-10-01) and the
// releases between them in azure-rest-api-specs.
var (
	computeVersions = []string{
		"2015-05-01-preview", "2015-06-15", "2016-03-30", "2016-04-30-preview", "2017-03-30",
		"2017-12-01", "2018-04-01", "2018-06-01", "2018-10-01", "2019-03-01", "2019-07-01",
		"2019-12-01", "2020-06-01", "2020-12-01", "2021-03-01", "2021-04-01", "2021-07-01",
		"2021-11-01", "2022-03-01", "2022-08-01", "2022-11-01", "2023-03-01", "2023-07-01",
		"2023-09-01", "2024-03-01", "2024-07-01", "2024-11-01", "2025-04-01", "2025-11-01",
		"2026-04-01",
	}
	// Compute serves a scale set's NICs with network's early versions too.
	scaleSetNICVersions = sortedUnion(computeVersions, "2016-06-01", "2016-07-01", "2016-08-01", "2016-09-01")
	galleryVersions     = []string{
		"2018-06-01", "2019-03-01", "2019-07-01", "2019-12-01", "2020-09-30", "2021-07-01",
		"2021-10-01", "2022-01-03", "2022-03-03", "2022-08-03", "2023-07-03", "2024-03-03",
		"2025-03-03", "2026-03-03",
	}
	skuVersions     = []string{"2017-03-30", "2017-09-01", "2019-04-01", "2021-07-01"}
	networkVersions = []string{
		"2015-05-01-preview", "2015-06-15", "2016-03-30", "2016-06-01", "2016-07-01",
		"2016-08-01", "2016-09-01", "2016-10-01", "2016-11-01", "2016-12-01", "2017-03-01",
		"2017-04-01", "2017-06-01", "2017-08-01", "2017-09-01", "2017-10-01", "2017-11-01",
		"2018-01-01", "2018-02-01", "2018-03-01", "2018-04-01", "2018-05-01", "2018-06-01",
		"2018-07-01", "2018-08-01", "2018-10-01", "2018-11-01", "2018-12-01", "2019-02-01",
		"2019-04-01", "2019-06-01", "2019-07-01", "2019-08-01", "2019-09-01", "2019-11-01",
		"2019-12-01", "2020-03-01", "2020-04-01", "2020-05-01", "2020-06-01", "2020-07-01",
		"2020-08-01", "2020-11-01", "2021-02-01", "2021-03-01", "2021-05-01", "2021-08-01",
		"2022-01-01", "2022-05-01", "2022-07-01", "2022-09-01", "2022-11-01", "2023-02-01",
		"2023-04-01", "2023-05-01", "2023-06-01", "2023-09-01", "2023-11-01", "2024-01-01",
		"2024-03-01", "2024-05-01", "2024-07-01", "2024-10-01", "2025-01-01",
	}
)

// apiVersions maps "<namespace>/<type>", lower-case, to the api-versions
// that type accepts.
var apiVersions = map[string][]string{
	"microsoft.compute/virtualmachinescalesets":                                   computeVersions,
	"microsoft.compute/virtualmachinescalesets/virtualmachines":                   computeVersions,
	"microsoft.compute/virtualmachinescalesets/networkinterfaces":                 scaleSetNICVersions,
	"microsoft.compute/virtualmachinescalesets/virtualmachines/networkinterfaces": scaleSetNICVersions,
	"microsoft.compute/locations/usages":                                          computeVersions,
	"microsoft.compute/locations/operations":                                      computeVersions,
	"microsoft.compute/skus":                                                      skuVersions,
	"microsoft.compute/galleries/images":                                          galleryVersions,
	"microsoft.network/virtualnetworks/subnets":                                   networkVersions,
}

// resourceType reads a Resource Manager path as ARM does: the provider
// namespace after "providers", then the resource types, every other
// segment. An action (reimage, instanceView, …) is not a type: the longest
// prefix of the types that is one the emulator serves is the request's
// type. ok is false when the path names none.
func resourceType(path string) (namespace, typ string, versions []string, ok bool) {
	seg := strings.Split(strings.Trim(path, "/"), "/")
	p := -1
	for i, s := range seg {
		if strings.EqualFold(s, "providers") {
			p = i
			break
		}
	}
	if p < 0 || p+2 >= len(seg) {
		return "", "", nil, false
	}
	namespace = seg[p+1]
	var types []string
	for i := p + 2; i < len(seg); i += 2 {
		types = append(types, seg[i])
	}
	for n := len(types); n > 0; n-- {
		typ = strings.Join(types[:n], "/")
		if v, found := apiVersions[strings.ToLower(namespace+"/"+typ)]; found {
			return namespace, typ, v, true
		}
	}
	return "", "", nil, false
}

// wellFormedVersion is the shape of an api-version: a date, perhaps with a
// suffix such as -preview.
var wellFormedVersion = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}(-[A-Za-z]+)?$`)

// checkAPIVersion refuses a request whose api-version is missing (ARM's
// front door wants one on every request), malformed, or one its resource
// type does not accept, with ARM's 400 and code.
func (e *Emulator) checkAPIVersion(r *http.Request) (code, message string) {
	v := r.URL.Query().Get("api-version")
	if v == "" {
		return "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests."
	}
	_, typ, versions, ok := resourceType(r.URL.Path)
	if !ok {
		return "", ""
	}
	if !wellFormedVersion.MatchString(v) {
		return "InvalidApiVersionParameter", fmt.Sprintf("The api-version '%s' is invalid. The supported versions are '%s'.",
			v, strings.Join(newestFirst(versions), ","))
	}
	for _, s := range versions {
		if strings.EqualFold(s, v) {
			return "", ""
		}
	}
	return "NoRegisteredProviderFound", fmt.Sprintf(
		"No registered resource provider found for location '%s' and API version '%s' for type '%s'. The supported api-versions are '%s'. The supported locations are '%s'.",
		e.opts.Location, v, typ, strings.Join(versions, ", "), strings.Join(defaultLocations, ", "))
}

// sortedUnion is versions and more, in order.
func sortedUnion(versions []string, more ...string) []string {
	out := append(slices.Clone(versions), more...)
	slices.Sort(out)
	return slices.Compact(out)
}

// newestFirst is versions in the order InvalidApiVersionParameter lists them.
func newestFirst(versions []string) []string {
	out := slices.Clone(versions)
	slices.Reverse(out)
	return out
}
