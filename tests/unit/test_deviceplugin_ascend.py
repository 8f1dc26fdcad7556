"""`hami device-plugin --vendor ascend`: registration read back by the scheduler side, handshake,
Allocate over real gRPC (template and hami-vnpu-core modes), DCMI's failures (fake and ctypes)."""

from __future__ import annotations

import ctypes
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hami.annotations.handshake import encode_requesting
from hami.config import HamiConfig, NodeOverride, parse_config
from hami.deviceplugin.backend import BackendError
from hami.deviceplugin.vendors import ascend
from hami.deviceplugin.vendors.ascend import Npu
from hami.deviceplugin.vendors.dcmi import DcmiBackend
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.vendors.registry import VendorSet
from tests.unit.test_deviceplugin_support import NODE, wait_until
from tests.unit.vendor_plugin_helpers import (
    LOCK,
    allocate,
    build_library,
    mounts,
    registered,
    running_vendor_plugin,
    vendor_pod,
)

UUIDS = [f"2A3F1C0E-0B5D4E21-7C8A9B10-3E4F5A6B-0000000{i}" for i in range(8)]
REGISTER = "hami.io/node-register-Ascend910B3"
TO_ALLOCATE = "hami.io/Ascend910B3-devices-to-allocate"


def npus(n: int, chip: str = "910B3", **extra: Any) -> dict[str, Any]:
    return {"chipName": chip, "devices": [{"uuid": UUIDS[i], "phyId": 10 + i, **extra} for i in range(n)]}


def factory(config: HamiConfig | None = None, hami_core: bool | None = None,
            core_path: str = "/usr/local/hami-vnpu-core") -> Any:
    return lambda found: ascend.node_vendor(config or HamiConfig(), NODE, found, hami_core, core_path)


def test_registration_is_hamis_json_and_the_scheduler_reads_it_back() -> None:
    with running_vendor_plugin(ascend.fake_backend(data=npus(8)), factory()) as h:
        request = h.kubelet.next_registration()
        assert request.resource_name == "huawei.com/Ascend910B3" and request.endpoint == "v.sock"
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        value = h.source.nodes[NODE][REGISTER]
        # Go's encoding/json of HAMi's DeviceInfo: struct order, zero values (index 0, numa 0) left out.
        assert value.startswith(
            f'[{{"id":"{UUIDS[0]}","count":4,"devmem":65536,"devcore":20,"type":"Ascend910B3","health":true,'
            f'"custominfo":{{"NetworkID":0}}}},{{"id":"{UUIDS[1]}","index":1,')
        assert h.source.nodes[NODE]["hami-vnpu-core"] == "false"
        node = registered(h.node())
        assert [d.id for d in node.devices] == UUIDS
        assert {(d.vendor, d.count, d.devmem, d.devcore, d.type, d.health) for d in node.devices} == {
            ("Ascend910B3", 4, 65536, 20, "Ascend910B3", True)}
        assert [d.index for d in node.devices] == list(range(8))
        assert [d.custom["NetworkID"] for d in node.devices] == [0, 0, 0, 0, 1, 1, 1, 1]
        assert {d.mode for d in node.devices} == {"template"}


@pytest.mark.parametrize(("chip", "word", "shares", "groups"), [
    ("910A", "Ascend910A", 15, [0, 0, 0, 0, 1]),
    ("910B2", "Ascend910B2", 8, [0, 0, 0, 0, 1]),
    ("910B4", "Ascend910B4", 4, [0, 0, 0, 0, 1]),
    ("310P3", "Ascend310P", 7, None),
    ("Ascend910", "Ascend910C", 4, [0, 0, 0, 0, 0]),
])
def test_each_chip_registers_its_vdevice_count_and_network_groups(chip: str, word: str, shares: int,
                                                                   groups: list[int] | None) -> None:
    with running_vendor_plugin(ascend.fake_backend(data=npus(5, chip)), factory()) as h:
        assert h.kubelet.next_registration().resource_name == f"huawei.com/{word}"
        assert len(h.plugin.state.kubelet_devices()) == 5 * shares
        wait_until(lambda: f"hami.io/node-register-{word}" in h.source.nodes[NODE], what="registration")
        node = registered(h.node())
        assert {(d.vendor, d.count) for d in node.devices} == {(word, shares)}
        assert [d.custom.get("NetworkID") for d in node.devices] == (groups or [None] * 5)


def test_hami_vnpu_core_node_registers_percent_cores_and_a_node_override() -> None:
    config = HamiConfig(nodeconfig=(NodeOverride(name=NODE, devicesplitcount=6),))
    with running_vendor_plugin(ascend.fake_backend(data=npus(2)), factory(config, hami_core=True), config=config) as h:
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        assert h.source.nodes[NODE]["hami-vnpu-core"] == "true"
        node = registered(h.node())
        assert {(d.devcore, d.count, d.mode) for d in node.devices} == {(100, 6, "hami-core")}
        assert [d.ID for d in h.plugin.state.kubelet_devices()][:2] == [f"{UUIDS[0]}-0", f"{UUIDS[0]}-1"]


def test_handshake_is_hamis_and_answers_the_scheduler() -> None:
    key = "hami.io/node-handshake-Ascend910B3"
    with running_vendor_plugin(ascend.fake_backend(data=npus(1)), factory()) as h:
        first = wait_until(lambda: h.source.nodes[NODE].get(key), what="handshake")
        assert re.fullmatch(r"Reported_\d{4}\.\d{2}\.\d{2} \d{2}:\d{2}:\d{2}", first)
        # The scheduler asks again; the agent answers at its next round.
        h.source.patch_node_annotations(NODE, {key: encode_requesting(datetime.now(UTC))})
        wait_until(lambda: h.source.nodes[NODE][key].startswith("Reported_"), what="answer")
        vendor = VendorSet.from_config(HamiConfig())["Ascend910B3"]
        assert vendor.node_health(h.node(), datetime.now(UTC))


def decided(h: Any, pod: dict[str, Any], allocation: tuple[tuple[ContainerDevice, ...], ...]) -> dict[str, Any]:
    """The pod with the annotations the scheduler side writes for `allocation` on this node."""
    vendors = VendorSet.from_config(HamiConfig())
    node = registered(h.node(), vendors)
    request = vendors.pod_request(pod)
    pod["metadata"]["annotations"].update(vendors.decision_annotations(node, request, allocation, 10**18))
    h.source.add_pod(pod)
    return pod


def test_template_mode_allocate_gives_the_physical_ids_and_the_template() -> None:
    with running_vendor_plugin(ascend.fake_backend(data=npus(4)), factory()) as h:
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        pod = vendor_pod("p1", [("a", {"huawei.com/Ascend910B3": 1, "huawei.com/Ascend910B3-memory": 16384}),
                                ("b", {"huawei.com/Ascend910B3": 2, "huawei.com/Ascend910B3-memory": 65536})], {})
        decided(h, pod, ((ContainerDevice(UUIDS[2], "Ascend910B3", 16384, 0),),
                         (ContainerDevice(UUIDS[0], "Ascend910B3", 65536, 0),
                          ContainerDevice(UUIDS[1], "Ascend910B3", 65536, 0))))
        h.source.patch_node_annotations(NODE, {"hami.io/mutex.lock": LOCK.format(name="p1")})
        assert json.loads(h.annotations("p1")["huawei.com/Ascend910B3"])[0] == {
            "UUID": UUIDS[2], "temp": "vir05_1c_16g", "memory": 16384}
        with h.kubelet.client(h.endpoint) as stub:
            first = allocate(stub, [f"{UUIDS[3]}-0"]).container_responses[0]
            assert dict(first.envs) == {"ASCEND_VISIBLE_DEVICES": "12", "ASCEND_VNPU_SPECS": "vir05_1c_16g"}
            assert mounts(first) == [] and list(first.devices) == []
            second = allocate(stub, [f"{UUIDS[0]}-1", f"{UUIDS[1]}-0"]).container_responses[0]
            assert dict(second.envs) == {"ASCEND_VISIBLE_DEVICES": "10,11"}  # whole NPUs: no template
        done = h.annotations("p1")
        assert done[TO_ALLOCATE] == ";;" and done["hami.io/bind-phase"] == "success"
        assert "hami.io/mutex.lock" not in h.source.nodes[NODE]


def test_hami_core_mode_allocate_gives_limits_and_the_shared_regions(tmp_path: Path) -> None:
    core = tmp_path / "vnpu-core"
    with running_vendor_plugin(ascend.fake_backend(data=npus(2)), factory(hami_core=True, core_path=str(core))) as h:
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        pod = vendor_pod("p2", [("main", {"huawei.com/Ascend910B3": 1, "huawei.com/Ascend910B3-memory": 5000,
                                          "huawei.com/Ascend910B3-core": 30})],
                         {"huawei.com/vnpu-mode": "hami-core"}, uid="u-2")
        decided(h, pod, ((ContainerDevice(UUIDS[1], "Ascend910B3", 5000, 30),),))
        with h.kubelet.client(h.endpoint) as stub:
            got = allocate(stub, [f"{UUIDS[1]}-3"]).container_responses[0]
        assert dict(got.envs) == {
            "ASCEND_VISIBLE_DEVICES": "11", "NPU_MEM_QUOTA": "5000", "NPU_PRIORITY": "30",
            "NPU_GLOBAL_SHM_PATH": "/hami-shared-region/11_global_registry",
            "NPU_LOCAL_SHM_PATH": "/hami-vnpu-shmem/vnpu_local_shmem",
        }
        shmem = core / "containers" / "u-2_main"
        assert mounts(got) == [
            ("/usr/local/bin/npu-smi", "/usr/local/bin/npu-smi", True),
            ("/etc/ascend_install.info", "/etc/ascend_install.info", True),
            ("/usr/local/Ascend/driver/lib64/driver", "/usr/local/Ascend/driver/lib64/driver", True),
            ("/usr/local/Ascend/driver/version.info", "/usr/local/Ascend/driver/version.info", True),
            ("/hami-vnpu-core", str(core), True),
            ("/etc/ld.so.preload", str(core / "ld.so.preload"), True),
            ("/hami-shared-region", "/usr/local/hami-shared-region", False),
            ("/hami-vnpu-shmem", str(shmem), False),
        ]
        assert shmem.is_dir()


def test_decision_for_an_npu_not_on_this_node_fails_the_bind() -> None:
    with running_vendor_plugin(ascend.fake_backend(data=npus(1)), factory()) as h:
        h.source.add_pod(vendor_pod("p3", [("main", {"huawei.com/Ascend910B3": 1})],
                                    {TO_ALLOCATE: "OTHER-NPU,Ascend910B3,65536,0:;"}))
        with h.kubelet.client(h.endpoint) as stub, pytest.raises(Exception) as raised:
            allocate(stub, [f"{UUIDS[0]}-0"])
        assert "OTHER-NPU" in str(raised.value) and "FAILED_PRECONDITION" in str(raised.value)
        assert h.annotations("p3")["hami.io/bind-phase"] == "failed"


def test_the_chip_must_have_a_config() -> None:
    with pytest.raises(HamiError, match=r"no vnpus config has chipName '910X'.*910B3"):
        ascend.node_vendor(HamiConfig(), NODE, [Npu(uuid="u", index=0, phy_id=0, logic_id=0, chip_name="910X")])
    mixed = [Npu(uuid="a", index=0, phy_id=0, logic_id=0, chip_name="910B3"),
             Npu(uuid="b", index=1, phy_id=1, logic_id=1, chip_name="910B4")]
    with pytest.raises(HamiError, match="several chips"):
        ascend.node_vendor(HamiConfig(), NODE, mixed)
    custom = parse_config({"vnpus": {"configs": [{"commonWord": "Ascend910B3", "chipName": "910B3",
                                                  "resourceName": "huawei.com/npu-b3",
                                                  "resourceMemoryName": "huawei.com/npu-b3-memory",
                                                  "memoryAllocatable": 60000, "memoryCapacity": 65536,
                                                  "templates": [{"name": "t", "memory": 20000}]}]}})
    vendor = ascend.node_vendor(custom, NODE, mixed[:1])
    assert (vendor.resource_name, vendor.split_count) == ("huawei.com/npu-b3", 3)


def test_fake_fails_like_dcmi(tmp_path: Path) -> None:
    backend = ascend.fake_backend(data={**npus(1), "initError": "DCMI_ERR_CODE_NOT_REDAY"})
    with pytest.raises(BackendError) as raised:
        backend.init()
    assert raised.value.code == "DCMI_ERR_CODE_NOT_REDAY" and "-8012" in str(raised.value)
    with pytest.raises(HamiError, match="'DCMI_NOPE' is not a DCMI error"):
        ascend.fake_backend(data={"devices": [{"uuid": "u", "error": "DCMI_NOPE"}]})
    with pytest.raises(HamiError, match="'phyId' must be a whole number"):
        ascend.fake_backend(data={"devices": [{"uuid": "u", "phyId": -1}]})
    listed = ascend.fake_backend(data={"devices": [{"uuid": "u", "error": "DCMI_ERR_CODE_DEVICE_NOT_EXIST"}]})
    listed.init()
    assert [n.healthy for n in listed.devices()] == [False]
    # The file is read again when it changes: a health flip is an event, with DCMI's reason.
    path = tmp_path / "npus.yaml"
    path.write_text(json.dumps(npus(1)))
    watched = ascend.fake_backend(str(path))
    watched.init()
    assert watched.wait_event(0) is None
    path.write_text(json.dumps({**npus(1), "devices": [{"uuid": UUIDS[0], "error": "DCMI_ERR_CODE_IOCTL_FAIL"}]}))
    event = wait_until(lambda: watched.wait_event(0.01), what="health event")
    assert (event.uuid, event.healthy) == (UUIDS[0], False) and "ioctl failed" in event.reason


STAND_IN_DCMI = r"""
#include <string.h>
struct die { unsigned int soc_die[5]; };
struct chip { unsigned char type[32]; unsigned char name[32]; unsigned char ver[32]; unsigned int aicore; };
static int init_error = 0;
static unsigned int health[2] = {0, 0};
void stand_in_set(int err, int card, unsigned int h) { init_error = err; health[card] = h; }
int dcmi_init(void) { return init_error; }
int dcmi_get_card_list(int *num, int *list, int len) { list[0] = 0; list[1] = 1; *num = 2; return 0; }
int dcmi_get_device_num_in_card(int card, int *num) { *num = 1; return 0; }
int dcmi_get_device_logic_id(int *logic, int card, int dev) { *logic = 1 - card; return 0; }
int dcmi_get_device_phyid_from_logicid(unsigned int logic, unsigned int *phy) { *phy = logic + 4; return 0; }
int dcmi_get_device_die_v2(int card, int dev, int type, struct die *d) {
    if (type != 1) return -8001;
    unsigned int words[5] = {0x1a2b, 0xc0ffee, 0, 7, (unsigned int)card};
    memcpy(d->soc_die, words, sizeof words); return 0;
}
int dcmi_get_device_chip_info(int card, int dev, struct chip *c) {
    memset(c, 0, sizeof *c); strcpy((char *)c->type, "Ascend"); strcpy((char *)c->name, "910B3"); return 0;
}
int dcmi_get_device_health(int card, int dev, unsigned int *h) {
    if (card == 1 && health[1] == 99) return -8008;
    *h = health[card]; return 0;
}
"""


def test_dcmi_backend_over_a_stand_in_library(tmp_path: Path) -> None:
    library = build_library(tmp_path, "libdcmi", STAND_IN_DCMI)
    control = ctypes.CDLL(str(library))
    backend = DcmiBackend(str(library), poll_interval_s=0)
    backend.init()
    found = backend.devices()
    # Listed by logic ID (card 1 has logic ID 0); the VDIE die ID in Ascend's spelling.
    assert [(n.index, n.card_id, n.logic_id, n.phy_id, n.chip_name) for n in found] == [
        (0, 1, 0, 4, "910B3"), (1, 0, 1, 5, "910B3")]
    assert found[0].uuid == "00001A2B-00C0FFEE-00000000-00000007-00000001"
    assert all(n.healthy for n in found)
    control.stand_in_set(0, 1, 2)  # a major alarm on card 1
    event = wait_until(lambda: backend.wait_event(0.01), what="health event")
    assert (event.uuid, event.healthy) == (found[0].uuid, False) and "dcmi_get_device_health: 2" in event.reason
    control.stand_in_set(0, 1, 99)  # the query itself fails: still unhealthy, no new event
    assert backend.wait_event(0.01) is None
    control.stand_in_set(0, 1, 0)
    again = wait_until(lambda: backend.wait_event(0.01), what="recovery")
    assert again.healthy
    control.stand_in_set(-8012, 0, 0)
    with pytest.raises(BackendError) as raised:
        DcmiBackend(str(library)).init()
    assert raised.value.code == "DCMI_ERR_CODE_NOT_REDAY" and "dcmi_init failed: not ready (error code -8012)" in str(
        raised.value)


def test_dcmi_backend_without_the_library_says_so() -> None:
    with pytest.raises(BackendError) as raised:
        DcmiBackend("/nonexistent/libdcmi.so").init()
    assert raised.value.code == "LIBRARY_NOT_FOUND" and "Ascend NPU driver" in raised.value.message


@pytest.mark.parametrize(("fake", "message"), [
    ({**npus(1), "initError": "DCMI_ERR_CODE_NOT_REDAY"},
     "device discovery failed: DCMI_ERR_CODE_NOT_REDAY: dcmi_init (fake devices) failed: not ready"),
    (npus(1, chip="910X"), "no vnpus config has chipName '910X'"),
])
def test_command_reports_what_stops_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: dict[str, Any],
                                       message: str) -> None:
    from hami.cli import main

    devices = tmp_path / "npus.yaml"
    devices.write_text(json.dumps(fake))
    pods = tmp_path / "pods.yaml"
    pods.write_text("items: []\n")
    code = main(["device-plugin", "--vendor", "ascend", "--node-name", "n", "--fake-devices", str(devices),
                 "--pods", str(pods), "--device-plugin-path", str(tmp_path / "dp")])
    assert code == 2
    assert message in capsys.readouterr().err
