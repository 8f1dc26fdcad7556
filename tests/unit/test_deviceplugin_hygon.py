"""`hami device-plugin --vendor hygon`: HAMi's colon-separated registration read back by the
scheduler side, handshake, Allocate over real gRPC (device nodes, vdev files and their reuse),
rocm_smi's failures (fake and ctypes)."""

from __future__ import annotations

import ctypes
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hami.annotations.handshake import decode_handshake, encode_reported
from hami.config import HamiConfig
from hami.deviceplugin.allocate import AllocateError
from hami.deviceplugin.backend import BackendError
from hami.deviceplugin.vendors import hygon
from hami.deviceplugin.vendors.hygon import Vdev, pick_cus
from hami.deviceplugin.vendors.rocm_smi import RsmiBackend, pci_bus_id
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.vendors.registry import VendorSet
from tests.unit.test_deviceplugin_support import NODE, wait_until
from tests.unit.vendor_plugin_helpers import (
    allocate,
    build_library,
    device_specs,
    mounts,
    registered,
    running_vendor_plugin,
    vendor_pod,
)

REGISTER = "hami.io/node-dcu-register"
TO_ALLOCATE = "hami.io/dcu-devices-to-allocate"
DCUS: dict[str, Any] = {"devices": [
    {"serial": "A100", "name": "Z100L", "memory": 32752, "computeUnits": 60, "pciBusId": "0000:3B:00.0",
     "card": 1, "render": 128},
    {"serial": "A200", "name": "Z100L", "memory": 32752, "computeUnits": 60, "pciBusId": "0000:5E:00.0",
     "card": 2, "render": 129},
]}


def factory(root: Path, driver: str = "/opt/hygondriver-host") -> Any:
    return lambda found: hygon.node_vendor(HamiConfig(), NODE, str(root / "dcu"), str(root / "vdev"), driver)


def test_registration_is_hamis_colon_form_and_the_scheduler_reads_it_back(tmp_path: Path) -> None:
    with running_vendor_plugin(hygon.fake_backend(data=DCUS), factory(tmp_path)) as h:
        assert h.kubelet.next_registration().resource_name == "hygon.com/dcunum"
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        assert h.source.nodes[NODE][REGISTER] == ("DCU-A100,4,32752,100,DCU-Z100L,0,true,0,hami:"
                                                  "DCU-A200,4,32752,100,DCU-Z100L,0,true,1,hami:")
        handshake = decode_handshake(h.source.nodes[NODE]["hami.io/node-handshake-dcu"])
        assert handshake.state.value == "Reported" and handshake.at is not None
        node = registered(h.node())
        assert [(d.id, d.vendor, d.count, d.devmem, d.devcore, d.type, d.index, d.health) for d in node.devices] == [
            ("DCU-A100", "DCU", 4, 32752, 100, "DCU-Z100L", 0, True),
            ("DCU-A200", "DCU", 4, 32752, 100, "DCU-Z100L", 1, True)]
        assert [d.ID for d in h.plugin.state.kubelet_devices()][:2] == ["DCU-A100-fake-0", "DCU-A100-fake-1"]
        assert VendorSet.from_config(HamiConfig())["DCU"].node_health(h.node(), datetime.now(UTC))
        # An unhealthy DCU reads back as such.
        h.backend.set_health("DCU-A200", False)
        wait_until(lambda: ",false,1,hami:" in h.source.nodes[NODE][REGISTER], what="health in the annotation")
        assert [d.health for d in registered(h.node()).devices] == [True, False]


def decide(h: Any, name: str, uid: str, parts: tuple[tuple[ContainerDevice, ...], ...],
           limits: list[dict[str, Any]]) -> None:
    vendors = VendorSet.from_config(HamiConfig())
    pod = vendor_pod(name, [(f"c{i}", lim) for i, lim in enumerate(limits)], {}, uid=uid)
    pod["metadata"]["annotations"].update(
        vendors.decision_annotations(registered(h.node(), vendors), vendors.pod_request(pod), parts, 0))
    h.source.add_pod(pod)


def dcu(uuid: str, mem: int, cores: int) -> ContainerDevice:
    return ContainerDevice(uuid, "DCU", mem, cores)


def test_a_part_of_one_dcu_gets_a_vdev_of_its_own(tmp_path: Path) -> None:
    with running_vendor_plugin(hygon.fake_backend(data=DCUS), factory(tmp_path)) as h:
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        decide(h, "p1", "u-1", ((dcu("DCU-A200", 8000, 30),),), [{"hygon.com/dcunum": 1}])
        with h.kubelet.client(h.endpoint) as stub:
            got = allocate(stub, ["DCU-A100-fake-3"]).container_responses[0]
            name = "u-1_c0_1_0_0_000000000003ffff_0000000000000000"  # 30% of 60 CUs: 18, the lowest
            directory = tmp_path / "dcu" / name
            assert device_specs(got) == [("/dev/kfd", "/dev/kfd", "rwm"), ("/dev/mkfd", "/dev/mkfd", "rwm"),
                                         ("/dev/dri/card2", "/dev/dri/card2", "rw"),
                                         ("/dev/dri/renderD129", "/dev/dri/renderD129", "rw")]
            assert mounts(got) == [("/opt/hyhal", "/opt/hyhal", True), ("/etc/vdev/docker/", str(directory), False),
                                   ("/opt/hygondriver", "/opt/hygondriver-host", False)]
            assert dict(got.envs) == {}
            assert (directory / "vdev0.conf").read_text() == (
                "PciBusId: 0000:5E:00.0\ncu_mask: 0x000000000003ffff\ncu_mask: 0x0000000000000000\n"
                "cu_count: 18\nmem: 8000 MiB\ndevice_id: 0\nvdev_id: 0\npipe_id: 0\nenable: 1\n")
            assert "device_id: 1\n" in (tmp_path / "vdev" / "vdev0.conf").read_text()
            assert h.annotations("p1")["hami.io/bind-phase"] == "success"

            # A second pod on the same DCU: the next CUs, pipe and vdev.
            decide(h, "p2", "u-2", ((dcu("DCU-A200", 4000, 50),),), [{"hygon.com/dcunum": 1}])
            allocate(stub, ["DCU-A200-fake-0"])
            assert (tmp_path / "dcu" / "u-2_c0_1_1_1_0000fffffffc0000_0000000000000000").is_dir()

            # Once p1 is gone its vdev is freed (and its files removed) at the next Allocate.
            h.source.pods.pop(("default", "p1"))
            decide(h, "p3", "u-3", ((dcu("DCU-A200", 1000, 10),),), [{"hygon.com/dcunum": 1}])
            allocate(stub, ["DCU-A200-fake-1"])
            assert not directory.exists()
            assert (tmp_path / "dcu" / "u-3_c0_1_0_0_000000000000003f_0000000000000000").is_dir()
            assert "cu_count: 6\n" in (tmp_path / "vdev" / "vdev0.conf").read_text()  # vdev 0 is p3's now


def test_whole_or_several_dcus_get_no_vdev(tmp_path: Path) -> None:
    with running_vendor_plugin(hygon.fake_backend(data=DCUS), factory(tmp_path, driver="")) as h:
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        decide(h, "p1", "u-1", ((dcu("DCU-A100", 32752, 100),), (dcu("DCU-A100", 4000, 20), dcu("DCU-A200", 4000, 20))),
               [{"hygon.com/dcunum": 1}, {"hygon.com/dcunum": 2}])
        with h.kubelet.client(h.endpoint) as stub:
            response = allocate(stub, ["DCU-A100-fake-0"], ["DCU-A100-fake-1", "DCU-A200-fake-1"])
        whole, two = response.container_responses
        assert mounts(whole) == mounts(two) == [("/opt/hyhal", "/opt/hyhal", True)]
        assert [d[0] for d in device_specs(two)] == ["/dev/kfd", "/dev/mkfd", "/dev/dri/card1", "/dev/dri/renderD128",
                                                     "/dev/dri/card2", "/dev/dri/renderD129"]
        assert not (tmp_path / "dcu").exists()


def test_compute_units_are_picked_lowest_first_and_never_shared() -> None:
    assert pick_cus((0, 0), 18, 60) == (0x3FFFF, 0)
    assert pick_cus((0b1011, 0), 3, 60) == (0b110100, 0)  # CUs 2, 4 and 5
    full = (1 << 64) - 1
    assert pick_cus((full, 0), 2, 120) == (0, 0b11)  # past 64 CUs: the second mask
    with pytest.raises(AllocateError, match="2 free compute units, 3 asked"):
        pick_cus(((1 << 58) - 1, 0), 3, 60)
    vdev = Vdev("u-1", "main", 1, 2, 3, (0x3F, 0))
    assert Vdev.parse(vdev.dirname) == vdev
    assert Vdev.parse("not_a_vdev") is None


def test_fake_fails_like_rocm_smi() -> None:
    backend = hygon.fake_backend(data={**DCUS, "initError": "RSMI_STATUS_INIT_ERROR"})
    with pytest.raises(BackendError) as raised:
        backend.init()
    assert raised.value.code == "RSMI_STATUS_INIT_ERROR" and "rsmi_init (fake devices) failed" in str(raised.value)
    with pytest.raises(HamiError, match="not a rocm_smi error"):
        hygon.fake_backend(data={"devices": [{"serial": "x", "memory": 1, "error": "NVML_ERROR_GPU_IS_LOST"}]})
    with pytest.raises(HamiError, match="'memory' must be a whole number"):
        hygon.fake_backend(data={"devices": [{"serial": "x"}]})
    with pytest.raises(HamiError, match="appears twice"):
        hygon.fake_backend(data={"devices": [{"serial": "x", "memory": 1}, {"serial": "x", "memory": 1}]})


STAND_IN_RSMI = r"""
#include <stdint.h>
#include <string.h>
static uint32_t init_error = 0, lost = 99;
void stand_in_set(uint32_t err, uint32_t lost_device) { init_error = err; lost = lost_device; }
uint32_t rsmi_init(uint64_t flags) { return init_error; }
uint32_t rsmi_shut_down(void) { return 0; }
uint32_t rsmi_num_monitor_devices(uint32_t *n) { *n = 2; return 0; }
uint32_t rsmi_dev_serial_number_get(uint32_t i, char *s, uint32_t len) { strcpy(s, i ? "SN-B" : "SN-A"); return 0; }
uint32_t rsmi_dev_id_get(uint32_t i, uint16_t *id) { *id = i ? 0x6210 : 0x55b7; return 0; }
uint32_t rsmi_dev_memory_total_get(uint32_t i, int type, uint64_t *total) {
    if (i == lost) return 10;
    *total = (uint64_t)(i ? 65536 : 32768) * 1024 * 1024; return 0;
}
uint32_t rsmi_dev_pci_id_get(uint32_t i, uint64_t *bdf) { *bdf = i ? 0x5e00 : 0x3b00; return 0; }
"""


def test_rocm_smi_backend_over_a_stand_in_library(tmp_path: Path) -> None:
    library = build_library(tmp_path, "librocm_smi64", STAND_IN_RSMI)
    control = ctypes.CDLL(str(library))
    sysfs = tmp_path / "sys"
    for bdf, card, render, numa in (("0000:3b:00.0", 1, 128, 0), ("0000:5e:00.0", 2, 129, 1)):
        (sysfs / bdf / "drm" / f"card{card}").mkdir(parents=True)
        (sysfs / bdf / "drm" / f"renderD{render}").mkdir()
        (sysfs / bdf / "numa_node").write_text(f"{numa}\n")
    backend = RsmiBackend(str(library), sysfs_root=sysfs, poll_interval_s=0)
    backend.init()
    found = backend.devices()
    assert [(d.uuid, d.name, d.memory_mib, d.compute_units, d.pci_bus_id, d.card, d.render, d.numa)
            for d in found] == [("DCU-SN-A", "Z100L", 32768, 60, "0000:3B:00.0", 1, 128, 0),
                                ("DCU-SN-B", "K100_AI", 65536, 120, "0000:5E:00.0", 2, 129, 1)]
    control.stand_in_set(0, 1)
    event = wait_until(lambda: backend.wait_event(0.01), what="health event")
    assert (event.uuid, event.healthy) == ("DCU-SN-B", False) and "RSMI_STATUS_NOT_FOUND" in event.reason
    backend.shutdown()
    control.stand_in_set(8, 99)
    with pytest.raises(BackendError) as raised:
        RsmiBackend(str(library), sysfs_root=sysfs).init()
    assert raised.value.code == "RSMI_STATUS_INIT_ERROR"
    with pytest.raises(BackendError, match="LIBRARY_NOT_FOUND.*hyhal"):
        RsmiBackend("/nonexistent/librocm_smi64.so").init()
    assert pci_bus_id((1 << 32) | 0x3B08 | 0x1) == "0001:3B:01.1"


def test_example_file_loads() -> None:
    backend = hygon.fake_backend(str(Path(__file__).parents[2] / "examples" / "fake-hygon.yaml"))
    backend.init()
    assert [d.uuid for d in backend.devices()] == ["DCU-A2C0713000123", "DCU-A2C0713000456"]
    assert json.dumps(backend.top)  # plain data


def test_a_pod_of_two_vendors_is_done_when_both_plugins_served_it(tmp_path: Path) -> None:
    lock = "2024-05-01T10:00:00Z,default,both"
    pod = vendor_pod("both", [("main", {"hygon.com/dcunum": 1, "nvidia.com/gpu": 1})], {
        TO_ALLOCATE: "DCU-A100,DCU,32752,100:;", "hami.io/vgpu-devices-to-allocate": "GPU-x,NVIDIA,1000,0:;"})
    with running_vendor_plugin(hygon.fake_backend(data=DCUS), factory(tmp_path), pods=[pod],
                               node_annotations={"hami.io/mutex.lock": lock}) as h, \
            h.kubelet.client(h.endpoint) as stub:
        allocate(stub, ["DCU-A100-fake-0"])
        after = h.annotations("both")
        # The DCU part is served; NVIDIA's plugin has not served its part yet: not done, lock kept.
        assert after[TO_ALLOCATE] == ";" and after["hami.io/bind-phase"] == "allocating"
        assert h.source.nodes[NODE]["hami.io/mutex.lock"] == lock


def test_agent_writes_a_vendors_annotations_only_on_change() -> None:
    from hami.deviceplugin.agent import NodeAgent
    from hami.deviceplugin.pods import InMemoryPodSource

    source = InMemoryPodSource(nodes={"n": {"old": "x"}})
    agent = NodeAgent(source, "n", now=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    wanted = {REGISTER: "DCU-A,4,1,100,DCU-Z100,0,true,0,hami:", "old": None}  # None: remove
    assert agent.sync_annotations(wanted, "hami.io/node-handshake-dcu", encode_reported)
    assert source.nodes["n"] == {REGISTER: wanted[REGISTER],
                                 "hami.io/node-handshake-dcu": "Reported 2026-01-02 03:04:05.000000 +0000 UTC"}
    assert not agent.sync_annotations(wanted, "hami.io/node-handshake-dcu", encode_reported)
    source.patch_node_annotations("n", {"hami.io/node-handshake-dcu": "Requesting_2026-01-02 03:05:00"})
    assert agent.sync_annotations(wanted, "hami.io/node-handshake-dcu", encode_reported)  # the scheduler asked
    assert source.nodes["n"]["hami.io/node-handshake-dcu"].startswith("Reported ")
