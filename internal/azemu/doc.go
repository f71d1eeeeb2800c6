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
//   - Any subnet exists, with Options.SubnetPrefix; any gallery image exists.
//   - Resource SKUs (a few sizes with vCPUs capabilities, $filter on
//     location) and usages (cores, lowPriorityCores, per-family vCPUs counted
//     from the VMs, against the quota fault's limits).
//
// Errors are ARM's {"error": {"code", "message"}}: ResourceNotFound,
// ParentResourceNotFound, PreconditionFailed (412), InvalidParameter,
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
// first poll sees the end. Operations are persisted with their end time, so
// resume tokens work across restarts, and one whose end passed while the
// emulator was down has ended when it comes back. Unknown operations are 404.
// VMs appear at once (Creating), and move on (Succeeded, Failed, or gone)
// when their operation ends; during reimage, restart and power actions they
// are Updating and their agent is down.
//
// Started on a port it used before (Listen with port 0 and the same host),
// the emulator takes that port again if free, so polling URLs held by
// clients stay valid.
//
// # Guest agents
//
// Every VM that is provisioned, running, and not set down runs a CAPE
// guest agent (agent.py v0.22: GET / and GET /status so far) on
// <ip>:<AgentPort>. IPs come from a loopback block: Options.IPBlock, else the
// one in the state, else on first start a random 127.X.Y.0/19 with X in
// 16..250 and Y a multiple of 32. They are handed out in order from a cursor that wraps, never
// 127.0.0.1 nor addresses ending in .0 or .255.
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
//	                                           lose one (eviction): capacity−1 → VMInfo
//	POST   /_emulator/scalesets/{name}/vms/{id}/agent
//	                                           {"state": "up"|"down"|"hang"} → VMInfo
//
// Scale sets are found by name across resource groups; ?resource_group=
// picks one when the name is in several (else 409). Errors use ARM's shape
// with 400, 404 or 409.
//
// # Faults
//
// A faults document (POST /_emulator/faults, Options.Faults, ParseFaults):
//
//	{
//	  "throttle": {"match": "virtualMachines", "method": "GET", "retry_after_s": 120, "count": 5},
//	  "lro_delay_ms": 2000,
//	  "error_rate": 0.1,
//	  "latency_ms": 100,
//	  "operation_preempted": 1,            // or true, or {"count": 1, "match": "pool"}
//	  "fail_provisioning": 2,
//	  "quota": {"cores": 100, "low_priority_cores": 50},
//	  "clear": true
//	}
//
// throttle answers 429 TooManyRequests with Retry-After to ARM requests whose
// path contains match (case-insensitive; method optional), count times (0:
// until cleared). lro_delay_ms overrides Options.LRODelay for operations
// begun from then on. error_rate fails that fraction of ARM requests with 500
// InternalServerError before they do anything; latency_ms delays every ARM
// request. operation_preempted makes the next operations begun on a matching
// scale set fail with OperationPreempted, changing nothing.
// fail_provisioning makes the next N VMs created end Failed (their
// operation fails with OSProvisioningTimedOut; a reimage repairs them).
// quota sets the usages' limits (default 5000 each).
//
// Keys present replace their fault, null removes it, absent keys stay; {} or
// "clear": true first clears everything (the LRO delay returns to
// Options.LRODelay). Faults are not persisted.
package azemu
