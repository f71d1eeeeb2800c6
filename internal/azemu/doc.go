// Package azemu is an emulator of the part of Azure Resource Manager that
// sandfleet uses: virtual machine scale sets and their VMs, network
// interfaces, subnets, gallery images, resource SKUs and usages. It speaks
// HTTPS to the official Azure SDK for Go, unmodified, and behaves like ARM
// where sandfleet's correctness depends on it; its state survives its own
// restart, as a cloud's does.
//
// # Resource Manager
//
// Any subscription id and resource group name work; state is keyed by them.
// Requests need "Authorization: Bearer " + Token (see Credential).
//
//   - Scale sets: list (paged), get, PUT (If-Match, If-None-Match), PATCH
//     (If-Match; sku.capacity scales), DELETE, and the POST actions delete
//     (by instanceIds), reimage, reimageall, restart, powerOff, start and
//     deallocate. ETags ("\"N\"") change with every model or capacity change.
//   - Scale-set VMs, named <set>_<instanceId>: list (paged, $expand=instanceView
//     for ProvisioningState/… and PowerState/… statuses), get, instanceView,
//     DELETE, the POST actions above and simulateEviction. Instance ids are
//     never reused within a set; scale-in removes the newest; reimage keeps ids
//     and IPs. Capacity is at most 1000.
//   - NICs of scale-set VMs (list per set or VM, get): one per VM, its private
//     IP being the VM's address; properties.virtualMachine.id names the VM.
//   - Subnets: any subnet exists, with Options.SubnetPrefix, and lists the
//     IP configurations of the scale-set NICs in it. A virtual network's
//     subnet list holds "default" (the subnet Azure creates with a network)
//     and every subnet the subscription's scale sets put NICs in.
//   - Gallery images: those Options.GalleryImages names exist, in every
//     gallery of every resource group, and no other (404 ResourceNotFound);
//     with GalleryImages nil, as sandfleet emulator runs by default, any
//     image exists. Their location is Options.Location: a gallery's images
//     are where the scale sets using them are. A scale set PUT, or a PATCH
//     that names an image, whose image reference is a gallery image that
//     does not exist is refused at once with ARM's 404 GalleryImageNotFound
//     naming the image, and nothing changes. A gallery image is one
//     definition: its versions are not modelled, and a model naming a
//     version is judged by its image.
//   - Resource SKUs (a few sizes with vCPUs capabilities, $filter on
//     location) and usages (cores, lowPriorityCores, per-family vCPUs counted
//     from the VMs, whatever their power state, against the quota fault's
//     limits).
//
// Every request needs an api-version, as ARM's front door wants: none is 400
// MissingApiVersionParameter; one that is not a date (2022-08-01, perhaps
// with a suffix such as -preview) is 400 InvalidApiVersionParameter, which
// lists the resource type's versions (ARM lists its own); one the resource
// type does not accept is 400 NoRegisteredProviderFound, naming the type,
// its versions and locations, and Options.Location as the location (ARM
// names the resource group's). Each type accepts ARM's versions for it
// (see apiVersions), the Go and Python SDKs' among them. Polling URLs and
// nextLinks carry the api-version the client sent.
//
// Every reply says what is left of the subscription's limits, as ARM does:
// x-ms-ratelimit-remaining-subscription-reads (GET), -deletes (DELETE) or
// -writes (PUT, PATCH, POST), from ARM's token buckets (reads 250 refilled
// at 25 a second, writes and deletes 200 at 10). Compute's replies add
// x-ms-ratelimit-remaining-resource, its policies comma-separated as
// compute sends them ("Microsoft.Compute/GetOperation3Min;49999,
// Microsoft.Compute/GetOperation30Min;399999"). Compute publishes some of
// its policies' names but not all their sizes; the emulator's are
// GetOperation (polls; 50000 in 3 minutes, 400000 in 30, as seen from
// compute), HighCostGetVMScaleSet (VM and NIC lists; 190, 900, as tools
// watching it assume), DeleteVMScaleSet (120, 600), and, named alike,
// GetVMScaleSet (gets; 200, 1300), HighCostGet (scale-set lists, usages;
// 160, 800), CreateVMScaleSet (PUT, PATCH; 60, 300) and VMScaleSetActions
// (POST actions, VM deletes; 120, 600). Gallery images and resource SKUs
// carry none. The counts only inform: the emulator throttles only as the
// throttle fault says.
//
// A scale-set PUT or PATCH that adds VMs is held, before it changes
// anything, to what a cloud enforces:
//
//   - the core quota in force: one whose VMs' vCPUs would take the
//     regional cores (lowPriorityCores for Spot VMs) past the limit is 409
//     OperationNotAllowed, "Operation could not be completed as it results
//     in exceeding approved Total Regional Cores quota. Additional details -
//     Deployment Model: Resource Manager, Location: …, Current Limit: …,
//     Current Usage: …, Additional Required: …, (Minimum) New Limit
//     Required: …", as compute words it. Family quotas are given the
//     regional limit, so the regional one runs out first.
//   - the subnet's free addresses: its prefix's addresses but the five Azure
//     keeps, less one for each NIC in it and those the subnet_used fault
//     takes. Needing more is 400 SubnetIsFull, "Subnet <name> with address
//     prefix <prefix> does not have enough capacity for <n> IP addresses."
//     Overprovisioning is not modelled.
//   - the emulator's own loopback block (SubnetIsFull too).
//
// Shrinking never is. The admin endpoints' VMs are not held to either.
//
// Spot VMs (priority Spot or Low) can be evicted (simulateEviction, or the
// admin endpoint below), at once where Azure takes up to 30 minutes: with
// eviction policy Delete the VM is gone and the capacity with it (Spot
// restore is not modelled); with Deallocate, Azure's default, it stays,
// Succeeded and deallocated. Evicting another VM is 409
// OperationNotAllowed.
//
// Errors are ARM's {"error": {"code", "message"}}: ResourceNotFound,
// ParentResourceNotFound, GalleryImageNotFound, PreconditionFailed (412),
// InvalidParameter, MissingApiVersionParameter, InvalidApiVersionParameter,
// NoRegisteredProviderFound, OperationNotAllowed (409), SubnetIsFull,
// TooManyRequests (429, Retry-After), InternalServerError.
//
// # Long-running operations
//
// PUT and PATCH answer 201/200 with the resource in provisioningState
// Creating or Updating; POST and DELETE answer 202. All carry
// Azure-AsyncOperation and Location headers pointing at
// /subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/operations/{id}
// on the host the client used. The status there is InProgress until the
// operation's end (its start plus the LRO delay in force then), then
// Succeeded or Failed with {"error": {"code", "message"}}; with delay 0 the
// first poll sees the end. The reply that begins an operation and every
// poll of one in progress carry Retry-After, as ARM's do; its value, which
// ARM leaves to the provider, is the emulator's truest: the seconds left
// until the operation's end, rounded up (0 when it has ended), so that a
// client honouring it polls once. Operations are persisted with their end
// time, so resume tokens work across restarts, and one whose end passed
// while the emulator was down has ended when it comes back. Unknown
// operations are 404.
// VMs appear at once (Creating), and move on (Succeeded, Failed, or gone)
// when their operation ends; during reimage, restart and power actions they
// are Updating and their agent is down.
//
// Started on a port it used before (Listen with port 0 and the same host),
// the emulator takes that port again if free, so polling URLs held by
// clients stay valid. While it serves, the file "endpoint" in its state
// directory holds its URL (see Endpoint), next to ca.pem: that is how a
// client that knows only the directory, such as sandfleet doctor, finds the
// emulator sandfleet serve runs in-process. Close removes it; after a crash
// it names a URL that no longer answers.
//
// # Guest agents
//
// Every VM that is provisioned, running, and not set down runs a CAPE
// guest agent on <ip>:<AgentPort>. IPs come from a loopback block:
// Options.IPBlock, else the one in the state, else on first start a random
// 127.X.Y.0/19 with X in 16..250 and Y a multiple of 32. They are handed out
// in order from a cursor that wraps, never 127.0.0.1 nor addresses ending in
// .0 or .255.
//
// The agent speaks agent.py v0.22's whole protocol, with its JSON replies
// ({"message", …} on success, {"message", "error_code"} with the HTTP status
// on error, a "traceback" on 500s, no status_code key in the body), its
// status codes and its quirks: routes match the raw path exactly (a query
// string makes a 404), GET requests have no form, blank urlencoded values
// are absent, a body without Content-Length is empty, /retrieve of a missing
// file is a bare 404.
//
//	GET  /                  version 0.22, features (execpy, execute, pinning, logs,
//	                        largefile, unicodepath, subdir_upload; Windows adds
//	                        mutex, browser_extension), is_user_admin
//	GET  /status            init, running (with process_id while the async child
//	                        runs), complete or failed ("Exited with exit code N",
//	                        with exitcode, learnt at the first poll after the exit),
//	                        exception
//	POST /status            status (a name or 1..5), description
//	GET  /environ /system /path /logs
//	GET|POST /mktemp /mkdtemp   suffix, prefix, dirpath → filepath / dirpath
//	POST /mkdir /store /retrieve /extract /remove
//	POST /execute /execpy   see below
//	GET  /pinning           pins the agent to the caller's IP: anyone else gets
//	                        no reply at all (the connection closes); a second
//	                        pinning is 500
//	GET  /kill              answers, then the agent quits until the VM restarts
//	POST|DELETE /mutex      Windows: every named mutex exists and is free (201
//	                        got, 200 have, 200 released, 404 not held)
//	POST /browser_extension Windows: networkData kept in a temporary file
//
// The guest is Windows unless the scale set's OS disk says Linux (TEMP
// C:\Users\cape\AppData\Local\Temp, SYSTEMDRIVE C:; on Linux /tmp). Its
// files live in memory, at most 128 MiB per VM (then "[Errno 28] No space
// left on device"), with the OS's path rules (Windows: drive letters, either
// slash, case-insensitive); /extract makes zip member names safe as Python
// does. The guest's own loopback is its own IP (127.0.0.1 is the host): a
// pinned agent still takes POST /status from it, and an unpinned one refuses
// it any command but date.
//
// No program runs. /execpy (and an async /execute naming analyzer.py)
// of an analyzer.py starts an emulated analyzer: it reads analysis.conf
// next to the script, connects to the result server named there (ip, port)
// from the VM's own address, so that a result server's peer-IP → task
// mapping really is exercised, and sends what CAPE's analyzer sends:
//
//	LOG\n                 log lines in CAPE's format, the first ones saying what
//	                      it was given (task id, category, target, package,
//	                      options) and the sample's path, size and sha256; the
//	                      stream stays open until the analysis ends
//	FILE 2\n              files/<sha256 of the report>, then the six v2 header
//	                      lines (guest path, pid, ppid, metadata, "files", 0) and
//	                      a small text report
//	BSON <pid>\n          one BSON document: the monitor's "info" message
//
// It then runs for the analysis duration (Options.AnalysisDuration, "2s" or
// a range "1s..3s" picked from at random; never longer than the timeout in
// analysis.conf) and exits 0: GET /status reports complete, exitcode 0. A
// missing analysis.conf or sample, or a result server unreachable for 30 s,
// exits 1, the reason in the analysis log and in GET /logs' stderr. Run by
// /execute, it reports its end as CAPE's analyzer does, by setting the
// status (complete, description "True"; exception). Another script "exits"
// 0 at once; a missing one exits 2.
//
// A reimage, restart or deallocation boots the VM again: a fresh agent,
// unpinned, status init, empty disk, and any analyzer of the old one cut
// off mid-stream (its result-server connections close; nothing reports its
// end). A deleted VM's agent and analyzer go the same way.
//
// # Admin endpoints
//
// On the same listener, without auth, not recorded in the request log:
//
//	GET    /_emulator/requests                 ARM requests served, oldest first:
//	                                           [{"time","method","path","status","body"}]
//	DELETE /_emulator/requests                 forget them
//	GET    /_emulator/faults                   the faults in force (Faults as JSON)
//	POST   /_emulator/faults                   merge a faults document; {} or {"clear": true} clears
//	GET    /_emulator/scalesets                every scale set with its VMs (ScaleSetInfo)
//	POST   /_emulator/scalesets/{name}/vms     add a VM out of band: capacity+1 → VMInfo
//	DELETE /_emulator/scalesets/{name}/vms/{id}
//	                                           lose one (eviction, manual delete):
//	                                           capacity−1 → VMInfo
//	POST   /_emulator/scalesets/{name}/vms/{id}/evict
//	                                           Spot eviction, by the set's eviction
//	                                           policy (above) → VMInfo; not Spot: 400
//	POST   /_emulator/scalesets/{name}/vms/{id}/agent
//	                                           {"state": "up"|"down"|"hang"|"fail"} → VMInfo
//
// Scale sets are found by name across resource groups; ?resource_group=
// picks one when the name is in several (else 409). Errors use ARM's shape
// with 400, 404 or 409.
//
// Guest faults, as an operator meets them:
//
//	agent down        {"state": "down"}: the listener closes (connection refused);
//	                  "up" brings a fresh agent
//	agent hangs       {"state": "hang"}: connections are accepted, requests read,
//	                  nothing answered; "up" answers again, state kept. Set
//	                  mid-analysis it is a hang mid-analysis: the analyzer runs on,
//	                  the host's polls time out
//	analyzer fails    {"state": "fail"}: the agent answers, but every analyzer it
//	                  starts from then on logs an ERROR and exits 1 (GET /status:
//	                  failed, "Exited with exit code 1", exitcode 1); "up" ends it
//	VM lost mid-      DELETE /_emulator/scalesets/{name}/vms/{id}: the agent and its
//	analysis          analyzer vanish, polls are refused, result-server streams close
//
// A reimage or restart of the VM clears all three states.
//
// # Faults
//
// A faults document (POST /_emulator/faults, Options.Faults, ParseFaults):
//
//	{
//	  "throttle": {"match": "virtualMachines", "method": "GET", "retry_after_s": 120, "count": 5},
//	  "lro_delay_ms": 2000,
//	  "lro_retry_after_s": 5,
//	  "error_rate": 0.1,
//	  "latency_ms": 100,
//	  "operation_preempted": 1,            // or true, or {"count": 1, "match": "pool"}
//	  "fail_provisioning": 2,
//	  "quota": {"cores": 100, "low_priority_cores": 50},
//	  "subnet_used": 250,
//	  "clear": true
//	}
//
// throttle answers 429 TooManyRequests with Retry-After to ARM requests whose
// path contains match (case-insensitive; method optional), count times (0:
// until cleared). lro_delay_ms overrides Options.LRODelay for operations
// begun from then on. lro_retry_after_s sets the Retry-After of the reply
// that begins an operation and of its polls while it is InProgress (by
// default the seconds left until it ends; 0 sends none, as a service that
// does not pace its clients). error_rate fails that fraction of ARM requests with 500
// InternalServerError before they do anything; latency_ms delays every ARM
// request. operation_preempted makes the next operations begun on a matching
// scale set fail with OperationPreempted, changing nothing.
// fail_provisioning makes the next N VMs created end Failed (their
// operation fails with OSProvisioningTimedOut; a reimage repairs them).
// quota sets the usages' limits (default 5000 each), which scale-ups are
// held to. subnet_used is how many addresses of every subnet something
// other than the emulator's scale sets holds: fill a subnet with it.
//
// Keys present replace their fault, null removes it, absent keys stay; {} or
// "clear": true first clears everything (the LRO delay returns to
// Options.LRODelay). Faults are not persisted.
package azemu
