"""Drive the emulator with Azure's Python SDK (Debian's python3-azure) the
way a scale-set machinery does, and check what it answers.

Environment: EMULATOR_URL, REQUESTS_CA_BUNDLE (the emulator's ca.pem),
EMULATOR_TOKEN, EMULATOR_LOCATION, EMULATOR_PAGE_SIZE, EMULATOR_SUBNET_PREFIX.
Exits 1 with "FAIL: ..." on the first mismatch.
"""

import math
import os
import sys
import time
import urllib.parse

import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    ApiEntityReference,
    ImageReference,
    Sku,
    UpgradePolicy,
    VirtualMachineScaleSet,
    VirtualMachineScaleSetIPConfiguration,
    VirtualMachineScaleSetNetworkConfiguration,
    VirtualMachineScaleSetNetworkProfile,
    VirtualMachineScaleSetOSDisk,
    VirtualMachineScaleSetOSProfile,
    VirtualMachineScaleSetReimageParameters,
    VirtualMachineScaleSetStorageProfile,
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetVMInstanceRequiredIDs,
    VirtualMachineScaleSetVMProfile,
)
from azure.mgmt.network import NetworkManagementClient

URL = os.environ["EMULATOR_URL"]
CA = os.environ["REQUESTS_CA_BUNDLE"]
TOKEN = os.environ["EMULATOR_TOKEN"]
LOCATION = os.environ["EMULATOR_LOCATION"]
PAGE = int(os.environ["EMULATOR_PAGE_SIZE"])
SUBNET_PREFIX = os.environ["EMULATOR_SUBNET_PREFIX"]
SUB = "11111111-2222-3333-4444-555555555555"
RG, VNET_RG, GALLERY_RG = "cape-sandbox", "cape-network", "cape-gallery"
SET = "win10x64"
SUBNET_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{VNET_RG}/providers/Microsoft.Network"
    "/virtualNetworks/cape-vnet/subnets/sandbox"
)
IMAGE_ID = (
    f"/subscriptions/{SUB}/resourceGroups/{GALLERY_RG}/providers/Microsoft.Compute"
    "/galleries/capegallery/images/win10"
)


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


class Credential:
    """A TokenCredential handing out the token the emulator accepts."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken(TOKEN, int(time.time()) + 3600)


# Every response the SDK receives, to check ARM's headers on all of them.
seen = []


def record(pipeline_response):
    resp = pipeline_response.http_response
    seen.append((resp.request.method, resp.request.url, resp.status_code, resp.headers))


def query(url, key):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get(key, [None])[0]


def path_of(url):
    return urllib.parse.urlsplit(url).path.lower()


def requests_to(suffix):
    return [s for s in seen if path_of(s[1]).endswith(suffix.lower())]


def admin(doc):
    r = requests.post(URL + "/_emulator/faults", json=doc, verify=CA)
    check(r.status_code == 200, f"POST /_emulator/faults {doc}: {r.status_code} {r.text}")


def raw_get(path, api_version):
    url = URL + path + ("" if api_version is None else "?api-version=" + api_version)
    return requests.get(url, headers={"Authorization": "Bearer " + TOKEN}, verify=CA)


def expect_error(what, fn, status, code, text=None):
    try:
        fn()
    except HttpResponseError as e:
        check(e.status_code == status, f"{what}: status {e.status_code}, want {status}: {e}")
        got = e.error.code if e.error else None
        check(got == code, f"{what}: code {got}, want {code}: {e}")
        if text:
            check(text in e.message, f"{what}: message {e.message!r} does not say {text!r}")
        return e
    fail(f"{what}: succeeded, want {status} {code}")


def scale_set_model(capacity):
    ipconfig = VirtualMachineScaleSetIPConfiguration(
        name=SET + "-ipconfig", primary=True, subnet=ApiEntityReference(id=SUBNET_ID)
    )
    return VirtualMachineScaleSet(
        location=LOCATION,
        tags={"AUTO_SCALE_CAPE": "True", "pool": SET},
        sku=Sku(name="Standard_D2s_v3", tier="Standard", capacity=capacity),
        overprovision=False,
        upgrade_policy=UpgradePolicy(mode="Automatic"),
        virtual_machine_profile=VirtualMachineScaleSetVMProfile(
            storage_profile=VirtualMachineScaleSetStorageProfile(
                image_reference=ImageReference(id=IMAGE_ID),
                os_disk=VirtualMachineScaleSetOSDisk(create_option="FromImage", caching="ReadOnly", os_type="Windows"),
            ),
            os_profile=VirtualMachineScaleSetOSProfile(
                computer_name_prefix=SET, admin_username="cape", admin_password="Secret-Passw0rd"
            ),
            network_profile=VirtualMachineScaleSetNetworkProfile(
                network_interface_configurations=[
                    VirtualMachineScaleSetNetworkConfiguration(
                        name=SET + "-nic", primary=True, ip_configurations=[ipconfig]
                    )
                ]
            ),
        ),
    )


def vms():
    out = list(compute.virtual_machine_scale_set_vms.list(RG, SET, expand="instanceView"))
    return {v.instance_id: v for v in out}


def nics():
    return list(network.network_interfaces.list_virtual_machine_scale_set_network_interfaces(RG, SET))


def pages_of(suffix, want_items, api_version):
    """Checks the requests of one paged list: enough pages for want_items,
    each after the first asking for its nextLink with the caller's
    api-version."""
    reqs = requests_to(suffix)
    check(len(reqs) >= math.ceil(want_items / PAGE), f"{suffix}: {len(reqs)} pages for {want_items} items")
    for method, url, status, _ in reqs:
        check(query(url, "api-version") == api_version, f"{suffix}: page {url} lost the api-version {api_version}")
    check(any(query(u, "$skiptoken") for _, u, _, _ in reqs), f"{suffix}: no request followed a nextLink")


def usages():
    return {u.name.value: (u.current_value, u.limit) for u in compute.usage.list(LOCATION)}


cred = Credential()
common = dict(base_url=URL, polling_interval=0.05, raw_response_hook=record)
compute = ComputeManagementClient(cred, SUB, **common)
network = NetworkManagementClient(cred, SUB, **common)

# The gallery image the pools use.
image = compute.gallery_images.get(GALLERY_RG, "capegallery", "win10")
check(image.id == IMAGE_ID, f"gallery image id {image.id}")
check(image.location == LOCATION, f"gallery image location {image.location}, want {LOCATION}")
check(image.os_type == "Windows", f"gallery image os {image.os_type}")
expect_error("a missing gallery image", lambda: compute.gallery_images.get(GALLERY_RG, "capegallery", "nope"), 404,
             "ResourceNotFound")

# Sizes and quota.
vcpus = {}
for sku in compute.resource_skus.list(filter=f"location eq '{LOCATION}'"):
    check(sku.locations == [LOCATION], f"sku {sku.name} locations {sku.locations}")
    for c in sku.capabilities or []:
        if c.name == "vCPUs":
            vcpus[sku.name] = int(c.value)
check(vcpus.get("Standard_D2s_v3") == 2, f"vCPUs {vcpus}")
u = usages()
check(u["cores"] == (0, 5000) and u["lowPriorityCores"] == (0, 5000), f"usages before any VM {u}")

# Create: an LRO whose polling URLs carry the caller's api-version, with
# Retry-After on the reply and on a poll in progress.
poller = compute.virtual_machine_scale_sets.begin_create_or_update(RG, SET, scale_set_model(5))
put = [s for s in requests_to("/virtualMachineScaleSets/" + SET) if s[0] == "PUT"][-1]
check(put[2] == 201, f"create: status {put[2]}")
async_url = put[3].get("Azure-AsyncOperation", "")
compute_version = query(put[1], "api-version")
check(query(async_url, "api-version") == compute_version,
      f"Azure-AsyncOperation {async_url} does not carry the caller's api-version {compute_version}")
check(query(put[3].get("Location", ""), "api-version") == compute_version, f"Location {put[3].get('Location')}")
check(put[3].get("Retry-After", "").isdigit() and int(put[3]["Retry-After"]) >= 1,
      f"create: Retry-After {put[3].get('Retry-After')!r}")
poll = requests.get(async_url, headers={"Authorization": "Bearer " + TOKEN}, verify=CA)
check(poll.json().get("status") == "InProgress" and poll.headers.get("Retry-After", "").isdigit(),
      f"a poll in progress: {poll.json()} Retry-After {poll.headers.get('Retry-After')!r}")
created = poller.result()
check(created.sku.capacity == 5 and created.provisioning_state == "Succeeded",
      f"created: capacity {created.sku.capacity}, state {created.provisioning_state}")

# List and get.
names = [s.name for s in compute.virtual_machine_scale_sets.list(RG)]
check(names == [SET], f"scale sets {names}")
got = compute.virtual_machine_scale_sets.get(RG, SET)
check(got.tags.get("AUTO_SCALE_CAPE") == "True" and got.sku.capacity == 5, f"get: {got.tags} {got.sku}")
check(got.virtual_machine_profile.os_profile.admin_password is None, "get returned the admin password")

# VMs and NICs, paged.
listed = vms()
check(sorted(listed) == ["0", "1", "2", "3", "4"], f"instance ids {sorted(listed)}")
for iid, v in listed.items():
    check(v.name == f"{SET}_{iid}", f"VM name {v.name}")
    power = [s.code for s in v.instance_view.statuses if s.code.startswith("PowerState/")]
    check(power == ["PowerState/running"], f"VM {iid} power {power}")
pages_of(f"/virtualMachineScaleSets/{SET}/virtualMachines", 5, compute_version)
ips = {}
for n in nics():
    iid = n.virtual_machine.id.rsplit("/", 1)[1]
    ips[iid] = n.ip_configurations[0].private_ip_address
    check(n.ip_configurations[0].subnet.id.lower() == SUBNET_ID.lower(), f"NIC subnet {n.ip_configurations[0].subnet.id}")
check(sorted(ips) == sorted(listed) and len(set(ips.values())) == 5, f"NIC IPs {ips}")
nic_version = query(requests_to(f"/virtualMachineScaleSets/{SET}/networkInterfaces")[0][1], "api-version")
pages_of(f"/virtualMachineScaleSets/{SET}/networkInterfaces", 5, nic_version)

# Subnets: the list names the pool's subnet (and default); the subnet holds
# the NICs.
subnets = {s.name: s for s in network.subnets.list(VNET_RG, "cape-vnet")}
check(sorted(subnets) == ["default", "sandbox"], f"subnets {sorted(subnets)}")
sandbox = network.subnets.get(VNET_RG, "cape-vnet", "sandbox")
check(sandbox.address_prefix == SUBNET_PREFIX, f"subnet prefix {sandbox.address_prefix}")
check(len(sandbox.ip_configurations or []) == 5, f"subnet ipConfigurations {len(sandbox.ip_configurations or [])}")

# Scale up, reimage one, reimage all, delete two.
updated = compute.virtual_machine_scale_sets.begin_update(RG, SET, VirtualMachineScaleSetUpdate(sku=Sku(capacity=6))).result()
check(updated.sku.capacity == 6, f"update: capacity {updated.sku.capacity}")
compute.virtual_machine_scale_sets.begin_reimage(
    RG, SET, VirtualMachineScaleSetReimageParameters(instance_ids=["1"])).result()
compute.virtual_machine_scale_sets.begin_reimage_all(RG, SET).result()
after = {n.virtual_machine.id.rsplit("/", 1)[1]: n.ip_configurations[0].private_ip_address for n in nics()}
check(after.get("1") == ips["1"], f"reimage changed instance 1's IP: {ips['1']} -> {after.get('1')}")
compute.virtual_machine_scale_sets.begin_delete_instances(
    RG, SET, VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["0", "2"]), force_deletion=True).result()
left = vms()
check(sorted(left) == ["1", "3", "4", "5"], f"after delete_instances: {sorted(left)}")
for iid, v in left.items():
    check(v.provisioning_state == "Succeeded", f"VM {iid} is {v.provisioning_state}")
check(compute.virtual_machine_scale_sets.get(RG, SET).sku.capacity == 4, "capacity after delete_instances")
u = usages()
check(u["cores"] == (8, 5000), f"usages with 4 VMs {u['cores']}")

# A scale-up past the core quota is refused; usages show the limit.
admin({"quota": {"cores": 10, "low_priority_cores": 10}})
check(usages()["cores"] == (8, 10), f"usages under the quota fault {usages()['cores']}")
expect_error("a scale-up past the quota",
             lambda: compute.virtual_machine_scale_sets.begin_update(RG, SET, VirtualMachineScaleSetUpdate(sku=Sku(capacity=6))),
             409, "OperationNotAllowed", "exceeding approved Total Regional Cores quota")
compute.virtual_machine_scale_sets.begin_update(RG, SET, VirtualMachineScaleSetUpdate(sku=Sku(capacity=5))).result()

# A scale-up past the subnet's free addresses is refused.
prefix_bits = int(SUBNET_PREFIX.split("/")[1])
capacity = 2 ** (32 - prefix_bits) - 5
admin({"quota": None, "subnet_used": capacity - 5})
expect_error("a scale-up past the subnet", lambda: compute.virtual_machine_scale_sets.begin_update(
    RG, SET, VirtualMachineScaleSetUpdate(sku=Sku(capacity=6))), 400, "SubnetIsFull", "sandbox")
admin({"subnet_used": None})

# api-version: required, well formed, and one the type accepts.
vmss_path = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{SET}"
for version, code in [(None, "MissingApiVersionParameter"), ("yesterday", "InvalidApiVersionParameter"),
                      ("2099-01-01", "NoRegisteredProviderFound")]:
    r = raw_get(vmss_path, version)
    got = r.json().get("error", {}).get("code")
    check(r.status_code == 400 and got == code, f"api-version {version}: {r.status_code} {got}, want 400 {code}")

# Delete the set.
compute.virtual_machine_scale_sets.begin_delete(RG, SET).result()
expect_error("get after delete", lambda: compute.virtual_machine_scale_sets.get(RG, SET), 404, "ResourceNotFound")

# ARM's headers on everything the SDK got.
lros = 0
for method, url, status, headers in seen:
    what = f"{method} {url} ({status})"
    kind = {"GET": "reads", "DELETE": "deletes"}.get(method, "writes")
    check(headers.get("x-ms-ratelimit-remaining-subscription-" + kind, "").isdigit(),
          f"{what}: no x-ms-ratelimit-remaining-subscription-{kind}")
    p = path_of(url)
    if "/microsoft.compute/" in p and "/galleries/" not in p and not p.endswith("/skus"):
        check(headers.get("x-ms-ratelimit-remaining-resource", "").startswith("Microsoft.Compute/"),
              f"{what}: x-ms-ratelimit-remaining-resource {headers.get('x-ms-ratelimit-remaining-resource')!r}")
    if "Azure-AsyncOperation" in headers:
        lros += 1
        check(headers.get("Retry-After", "").isdigit(), f"{what}: an LRO reply without Retry-After")
        check(query(headers["Azure-AsyncOperation"], "api-version") == query(url, "api-version"),
              f"{what}: polling URL {headers['Azure-AsyncOperation']} has another api-version")
check(lros >= 7, f"only {lros} replies began an operation")
print(f"ok: {len(seen)} responses")
