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
//	                                           lose one (eviction): capacity−1 → VMInfo
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
//	  "clear": true
//	}
//
// throttle answers 429 TooManyRequests with Retry-After to ARM requests whose
// path contains match (case-insensitive; method optional), count times (0:
// until cleared). lro_delay_ms overrides Options.LRODelay for operations
// begun from then on. lro_retry_after_s puts Retry-After on the reply that
// begins an operation and on its polls while it is InProgress, as ARM paces
// its clients. error_rate fails that fraction of ARM requests with 500
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
