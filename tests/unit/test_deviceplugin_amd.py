"""`hami device-plugin --vendor amd`: HAMi's JSON registration (read back by the scheduler side),
Allocate over real gRPC (ROCr UUIDs, CU masks from the node's free CUs, memory limit,
libamvgpu.so, hami.io/amd-cu-allocated), AMD SMI's failures (fake, stand-in bindings, absent library)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from hami.config import HamiConfig
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.backend import BackendError
from hami.deviceplugin.vendors import amd
from hami.deviceplugin.vendors.amd import CU_ALLOCATED, cu_list, parse_cu_list
from hami.deviceplugin.vendors.amd_smi import AmdSmiBackend, rocr_uuids
from hami.errors import HamiError
from hami.vendors.registry import VendorSet
from tests.unit.test_deviceplugin_support import NODE, wait_until
from tests.unit.vendor_plugin_helpers import (
    allocate,
    device_specs,
    mounts,
    registered,
    running_vendor_plugin,
    vendor_pod,
)

G1, G2 = "6aff74a1-0000-1000-8035-6bf3b2c4e7a1", "6aff74a1-0000-1000-8035-6bf3b2c4e7a2"
MI300X = "AMD Instinct MI300X"
GPUS: dict[str, Any] = {"devices": [
    {"uuid": G1, "product": MI300X, "memory": 196592, "computeUnits": 304, "pciBDF": "0000:05:00.0",
     "rocrUuid": "GPU-aaaa", "card": 1, "render": 128},
    {"uuid": G2, "product": MI300X, "memory": 196592, "computeUnits": 304, "pciBDF": "0000:26:00.0",
     "rocrUuid": "GPU-bbbb", "card": 2, "render": 129, "numa": 1},
]}
REGISTER = "hami.io/node-amd-register"
TO_ALLOCATE = "hami.io/amd-devices-to-allocate"


def factory(hook: str = "/usr/local/vgpu") -> Any:
    return lambda found: amd.node_vendor(HamiConfig(), NODE, hook)


def gpu_pod(name: str, decision: str, counts: list[int], uid: str = "uid-1", **annotations: str) -> dict[str, Any]:
    return vendor_pod(name, [(f"c{i}", {"amd.com/gpu": n}) for i, n in enumerate(counts)],
                      {TO_ALLOCATE: decision, "hami.io/amd-devices-allocated": decision, **annotations}, uid=uid)


def test_registration_is_hamis_json() -> None:
    with running_vendor_plugin(amd.fake_backend(data=GPUS), factory()) as h:
        assert h.kubelet.next_registration().resource_name == "amd.com/gpu"
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        assert json.loads(h.source.nodes[NODE][REGISTER]) == [
            {"id": G1, "index": 1, "count": 10, "devmem": 196592, "devcore": 304, "type": MI300X, "health": True,
             "devicevendor": "amd", "custominfo": {"pciBDF": "0000:05:00.0"}},
            {"id": G2, "index": 2, "count": 10, "devmem": 196592, "devcore": 304, "type": MI300X, "numa": 1,
             "health": True, "devicevendor": "amd", "custominfo": {"pciBDF": "0000:26:00.0"}},
        ]
        assert h.source.nodes[NODE][REGISTER].startswith(f'[{{"id":"{G1}","index":1,"count":10,')  # Go's order
        assert not any("handshake" in k for k in h.source.nodes[NODE])  # AMD has none: capacity says it all
        assert [d.ID for d in h.plugin.state.kubelet_devices()][:2] == ["0000:05:00.0#0", "0000:05:00.0#1"]


@pytest.mark.skipif("AMD" not in VendorSet.from_config(HamiConfig()),
                    reason="the scheduler side's AMD vendor (hami.vendors.amd) is not in this build")
def test_the_scheduler_reads_the_registration_back() -> None:
    with running_vendor_plugin(amd.fake_backend(data=GPUS), factory()) as h:
        wait_until(lambda: REGISTER in h.source.nodes[NODE], what="registration")
        node = registered(h.node())
        assert [(d.id, d.vendor, d.index, d.count, d.devmem, d.devcore, d.type, d.numa, d.health)
                for d in node.devices] == [(G1, "AMD", 1, 10, 196592, 304, MI300X, 0, True),
                                           (G2, "AMD", 2, 10, 196592, 304, MI300X, 1, True)]


def test_allocate_gives_free_cus_and_records_them() -> None:
    first = gpu_pod("p1", f"{G1},{MI300X},8000,76:;", [1], uid="u-1")
    with running_vendor_plugin(amd.fake_backend(data=GPUS), factory("/host/hook"), pods=[first]) as h, \
            h.kubelet.client(h.endpoint) as stub:
        got = allocate(stub, ["0000:26:00.0#4"]).container_responses[0]
        assert dict(got.envs) == {"HSA_CU_MASK": "0:0-75", "ROCR_VISIBLE_DEVICES": "GPU-aaaa",
                                  "HIP_DEVICE_MEMORY_LIMIT": "8000m", "LD_AUDIT": "/usr/local/vgpu/libamvgpu.so"}
        assert mounts(got) == [("/usr/local/vgpu/libamvgpu.so", "/host/hook/libamvgpu.so", True)]
        assert device_specs(got) == [("/dev/kfd", "/dev/kfd", "rw"), ("/dev/dri/card1", "/dev/dri/card1", "rw"),
                                     ("/dev/dri/renderD128", "/dev/dri/renderD128", "rw")]
        done = h.annotations("p1")
        assert done[CU_ALLOCATED] == f'{{"{G1}":"0-75"}}'
        assert done[TO_ALLOCATE] == ";" and done["hami.io/bind-phase"] == "success"

        # The next pod sees p1's CUs taken; its two containers (one on both GPUs) get theirs.
        h.source.add_pod(gpu_pod("p2", f"{G1},{MI300X},4000,10:;{G2},{MI300X},4000,2:{G1},{MI300X},4000,3:;",
                                 [1, 2], uid="u-2"))
        a, b = allocate(stub, ["0000:05:00.0#1"], ["0000:26:00.0#0", "0000:05:00.0#2"]).container_responses
        assert a.envs["HSA_CU_MASK"] == "0:76-85"
        assert b.envs["HSA_CU_MASK"] == "0:0-1;1:86-88" and b.envs["ROCR_VISIBLE_DEVICES"] == "GPU-bbbb,GPU-aaaa"
        assert json.loads(h.annotations("p2")[CU_ALLOCATED]) == {G1: "76-88", G2: "0-1"}

        # A finished pod's CUs are free again.
        h.source.pods[("default", "p1")]["status"] = {"phase": "Succeeded"}
        h.source.add_pod(gpu_pod("p3", f"{G1},{MI300X},1000,80:;", [1], uid="u-3"))
        again = allocate(stub, ["0000:05:00.0#3"]).container_responses[0]
        assert again.envs["HSA_CU_MASK"] == "0:0-75,89-92"


def test_conflicting_cu_records_fail_the_bind_instead_of_guessing() -> None:
    holders = [gpu_pod(f"h{i}", f"{G1},{MI300X},1000,4:;", [1], uid=f"u-h{i}",
                       **{CU_ALLOCATED: json.dumps({G1: "0-3"})}) for i in range(2)]
    for pod in holders:
        pod["metadata"]["annotations"]["hami.io/bind-phase"] = "success"
    waiting = gpu_pod("p", f"{G1},{MI300X},1000,4:;", [1], uid="u-p")
    with running_vendor_plugin(amd.fake_backend(data=GPUS), factory(), pods=[*holders, waiting]) as h, \
            h.kubelet.client(h.endpoint) as stub:
        with pytest.raises(grpc.RpcError) as raised:
            allocate(stub, ["0000:05:00.0#0"])
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CU 0 of GPU" in raised.value.details() and "default/h0" in raised.value.details()
        assert h.annotations("p")["hami.io/bind-phase"] == "failed"


def test_a_container_cannot_have_more_cus_than_are_free() -> None:
    pod = gpu_pod("p", f"{G1},{MI300X},1000,300:;", [1], **{CU_ALLOCATED: json.dumps({G1: "0-9"})})
    with running_vendor_plugin(amd.fake_backend(data=GPUS), factory(), pods=[pod]) as h, \
            h.kubelet.client(h.endpoint) as stub:
        with pytest.raises(grpc.RpcError) as raised:
            allocate(stub, ["0000:05:00.0#0"])
        assert "300 CUs asked, 294 of 304 free" in raised.value.details()


def test_cu_lists() -> None:
    assert cu_list([0, 1, 2, 3, 8, 10, 11, 12]) == "0-3,8,10-12"
    assert cu_list([5]) == "5" and cu_list([]) == ""
    assert parse_cu_list("0-3,8,10-12", 16) == {0, 1, 2, 3, 8, 10, 11, 12}
    with pytest.raises(ValueError, match="out of bounds"):
        parse_cu_list("0-16", 16)
    with pytest.raises(ValueError, match="not a CU number"):
        parse_cu_list("a-b", 16)


def test_fake_fails_like_amd_smi() -> None:
    backend = amd.fake_backend(data={**GPUS, "initError": "AMDSMI_STATUS_DRIVER_NOT_LOADED"})
    with pytest.raises(BackendError) as raised:
        backend.init()
    assert raised.value.code == "AMDSMI_STATUS_DRIVER_NOT_LOADED" and "Driver not loaded (error code 34)" in str(
        raised.value)
    with pytest.raises(HamiError, match="not a AMD SMI error"):
        amd.fake_backend(data={"devices": [{"uuid": "u", "memory": 1, "computeUnits": 1, "error": "DCMI_X"}]})


class StandInError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code

    def get_error_code(self) -> int:
        return self.code


def stand_in_bindings(lost: set[str]) -> Any:
    """What the backend calls of the `amdsmi` package, answering like it for two GPUs."""
    handles = ["h1", "h2"]
    info = {"h1": (G1, "0000:05:00.0", 1, 128, MI300X, 304, 196592, 0),
            "h2": (G2, "0000:26:00.0", 2, 129, "N/A", 228, 131072, 1)}

    def uuid(h: str) -> str:
        if h in lost:
            raise StandInError(31)
        return info[h][0]

    return SimpleNamespace(
        AmdSmiLibraryException=StandInError, AmdSmiException=StandInError,
        AmdSmiInitFlags=SimpleNamespace(INIT_AMD_GPUS=2), amdsmi_init=lambda flag: None,
        amdsmi_shut_down=lambda: None, amdsmi_get_processor_handles=lambda: handles,
        amdsmi_get_gpu_device_uuid=uuid, amdsmi_get_gpu_device_bdf=lambda h: info[h][1],
        amdsmi_get_gpu_enumeration_info=lambda h: {"drm_card": info[h][2], "drm_render": info[h][3]},
        amdsmi_get_gpu_asic_info=lambda h: {"market_name": info[h][4], "num_compute_units": info[h][5]},
        amdsmi_get_gpu_vram_info=lambda h: {"vram_size": info[h][6]},
        amdsmi_topo_get_numa_node_number=lambda h: info[h][7],
    )


def test_amd_smi_backend_over_stand_in_bindings(tmp_path: Path) -> None:
    for node, render, unique in ((1, 128, 0x4B1F9E2A1C3D5E7F), (2, 129, 0x7C2E)):
        (tmp_path / str(node)).mkdir()
        (tmp_path / str(node) / "properties").write_text(f"cpu_cores_count 0\ndrm_render_minor {render}\n"
                                                         f"unique_id {unique}\n")
    assert rocr_uuids(tmp_path) == {128: "GPU-4b1f9e2a1c3d5e7f", 129: "GPU-0000000000007c2e"}
    lost: set[str] = set()
    backend = AmdSmiBackend(tmp_path, poll_interval_s=0, bindings=stand_in_bindings(lost))
    backend.init()
    found = backend.devices()
    assert [(g.uuid, g.index, g.product, g.compute_units, g.memory_mib, g.pci_bdf, g.rocr_uuid, g.render, g.numa)
            for g in found] == [(G1, 1, MI300X, 304, 196592, "0000:05:00.0", "GPU-4b1f9e2a1c3d5e7f", 128, 0),
                                (G2, 2, "amd-gpu", 228, 131072, "0000:26:00.0", "GPU-0000000000007c2e", 129, 1)]
    lost.add("h2")
    event = wait_until(lambda: backend.wait_event(0.01), what="health event")
    assert (event.uuid, event.healthy) == (G2, False) and "AMDSMI_STATUS_NOT_FOUND" in event.reason


def test_amd_smi_backend_without_the_library_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROCM_PATH", str(tmp_path))  # no libamd_smi.so there, nor on this machine
    with pytest.raises(BackendError) as raised:
        AmdSmiBackend().init()
    assert raised.value.code == "LIBRARY_NOT_FOUND" and "libamd_smi.so" in raised.value.message


def test_preferred_allocation_and_health_use_hamis_device_ids() -> None:
    pod = gpu_pod("p", f"{G2},{MI300X},1000,8:;", [1], **{CU_ALLOCATED: json.dumps({"GONE-GPU": "0-3"})})
    with running_vendor_plugin(amd.fake_backend(data=GPUS), factory(), pods=[pod]) as h, \
            h.kubelet.client(h.endpoint) as stub:
        ids = [f"0000:05:00.0#{i}" for i in range(10)] + [f"0000:26:00.0#{i}" for i in range(10)]
        request = api_pb2.PreferredAllocationRequest(container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=ids, allocation_size=1)])
        preferred = stub.GetPreferredAllocation(request, timeout=5).container_responses[0]
        assert list(preferred.deviceIDs) == ["0000:26:00.0#0"]  # a share of the GPU the scheduler chose
        stream = stub.ListAndWatch(api_pb2.Empty(), timeout=10)
        assert {d.health for d in next(stream).devices} == {"Healthy"}
        h.backend.set_health(G1, False)
        health = {d.ID: d.health for d in next(stream).devices}
        assert health["0000:05:00.0#3"] == "Unhealthy" and health["0000:26:00.0#3"] == "Healthy"
        stream.cancel()
        # A record of a GPU this node does not serve does not block the node.
        assert allocate(stub, ["0000:26:00.0#0"]).container_responses[0].envs["HSA_CU_MASK"] == "0:0-7"
