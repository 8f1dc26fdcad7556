"""Huawei Ascend NPUs on the node (HAMi's ascend-device-plugin).

One plugin serves the node's chip (910A, 910B2/B3/B4/B4-1, 310P, 910C): its `vnpus.configs`
entry is the one whose `chipName` is what DCMI reports. Each NPU is advertised to kubelet as
VDeviceCount shares `<die UUID>-<i>` (memoryAllocatable / the smallest template's memory) and
registered in `hami.io/node-register-<chip>`; a container gets `ASCEND_VISIBLE_DEVICES` (the
NPUs' physical IDs) and, by the pod's mode, the vNPU template or hami-vnpu-core's limits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from hami.config import HamiConfig
from hami.deviceplugin.allocate import AllocateError, ContainerGrant, Mount
from hami.deviceplugin.pods import Pod
from hami.deviceplugin.vendors.base import (
    Chip,
    NodeFilter,
    NodePods,
    NodeVendor,
    container_name,
    go_device_json,
    pod_annotations,
    pod_uid,
    with_health,
)
from hami.deviceplugin.vendors.fake import FakeChips, LibraryErrors, text, whole
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.model.devices import HAMI_CORE_MODE, DeviceInfo
from hami.vendors import ascend as scheduler_side
from hami.vendors.registry import VendorSet

VENDOR = "ascend"
NODE_HAMI_CORE = scheduler_side.NODE_HAMI_CORE  # node annotation "hami-vnpu-core": "true" | "false"
HAMI_CORE_PERCENT = 100  # devcore in hami-vnpu-core mode: cores are a percentage
# Where hami-vnpu-core lives on the host, and its shared region (HAMi's paths).
VNPU_CORE_PATH = "/usr/local/hami-vnpu-core"
SHARED_REGION_PATH = "/usr/local/hami-shared-region"
# The driver files a hami-vnpu-core container needs, read-only at the same path.
DRIVER_FILES = (
    "/usr/local/bin/npu-smi",
    "/etc/ascend_install.info",
    "/usr/local/Ascend/driver/lib64/driver",
    "/usr/local/Ascend/driver/version.info",
)

# DCMI's return codes (dcmi_interface_api.h) and what they mean.
DCMI_ERRORS = LibraryErrors(
    library="DCMI",
    init_call="dcmi_init",
    codes={
        "DCMI_ERR_CODE_INVALID_PARAMETER": (-8001, "invalid parameter"),
        "DCMI_ERR_CODE_OPER_NOT_PERMITTED": (-8002, "operation not permitted"),
        "DCMI_ERR_CODE_MEM_OPERATE_FAIL": (-8003, "memory operation failed"),
        "DCMI_ERR_CODE_SECURE_FUN_FAIL": (-8004, "secure function failed"),
        "DCMI_ERR_CODE_INNER_ERR": (-8005, "internal error"),
        "DCMI_ERR_CODE_TIME_OUT": (-8006, "timed out"),
        "DCMI_ERR_CODE_INVALID_DEVICE_ID": (-8007, "invalid device ID"),
        "DCMI_ERR_CODE_DEVICE_NOT_EXIST": (-8008, "device does not exist"),
        "DCMI_ERR_CODE_IOCTL_FAIL": (-8009, "ioctl failed"),
        "DCMI_ERR_CODE_SEND_MSG_FAIL": (-8010, "sending the message failed"),
        "DCMI_ERR_CODE_RECV_MSG_FAIL": (-8011, "receiving the message failed"),
        "DCMI_ERR_CODE_NOT_REDAY": (-8012, "not ready"),  # DCMI's spelling
        "DCMI_ERR_CODE_NOT_SUPPORT_IN_CONTAINER": (-8013, "not supported in a container"),
        "DCMI_ERR_CODE_FILE_OPERATE_FAIL": (-8014, "file operation failed"),
        "DCMI_ERR_CODE_RESET_FAIL": (-8015, "reset failed"),
        "DCMI_ERR_CODE_ABORT_OPERATE": (-8016, "operation aborted"),
        "DCMI_ERR_CODE_IS_UPGRADING": (-8017, "the device is upgrading"),
        "DCMI_ERR_CODE_RESOURCE_OCCUPIED": (-8020, "resource occupied"),
        "DCMI_ERR_CODE_PARTITION_NOT_RIGHT": (-8022, "partition not right"),
        "DCMI_ERR_CODE_CONFIG_INFO_NOT_EXIST": (-8023, "configuration does not exist"),
        "DCMI_ERR_CODE_NOT_SUPPORT": (-8255, "not supported"),
    },
)


@dataclass(frozen=True, kw_only=True)
class Npu(Chip):
    """One NPU as DCMI reports it; `uuid` is its VDIE die ID, `index` its position on the node."""

    phy_id: int
    logic_id: int
    card_id: int = 0
    device_id: int = 0
    chip_name: str = ""  # dcmi_get_device_chip_info's chip_name, e.g. 910B3


def network_id(common_word: str, index: int) -> int | None:
    """HAMi's network group of an NPU: 910 NPUs 0-3 and 4-7 (all one group on a 910C)."""
    if not common_word.startswith(scheduler_side.ASCEND910):
        return None
    if common_word == scheduler_side.ASCEND910C:
        return 0
    return 1 if index > 3 else 0


def _runtime_entries(pod: Pod, key: str) -> list[dict[str, Any]]:
    """The scheduler's `huawei.com/<chip>` list (UUID, temp, memory, core); [] when absent."""
    raw = pod_annotations(pod).get(key)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AllocateError("FAILED_PRECONDITION", f"pod annotation {key}: invalid JSON: {exc.msg}") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise AllocateError("FAILED_PRECONDITION", f"pod annotation {key}: expected a list of objects")
    return value


@dataclass
class AscendSession:
    vendor: AscendNode
    pod: Pod
    npus: Mapping[str, Npu]

    def _npu(self, container: str, uuid: str) -> Npu:
        npu = self.npus.get(uuid)
        if npu is None:
            raise AllocateError("FAILED_PRECONDITION", f"container {container!r}: NPU {uuid} of the scheduler's "
                                                       "decision is not an NPU this plugin serves")
        return npu

    def _template(self, device: ContainerDevice, runtime: list[dict[str, Any]]) -> str:
        """The vNPU template the scheduler chose for this device (its runtime entry), else the
        one the chip's config gives for its memory."""
        for entry in runtime:
            if entry.get("UUID") == device.uuid and entry.get("memory", 0) == device.usedmem:
                return str(entry.get("temp") or "")
        return self.vendor.chip.trim_memory(device.usedmem)[1]

    def grant(self, container: Mapping[str, Any], devices: tuple[ContainerDevice, ...]) -> ContainerGrant:
        name = container_name(container)
        npus = [self._npu(name, d.uuid) for d in devices]
        envs = {"ASCEND_VISIBLE_DEVICES": ",".join(str(n.phy_id) for n in npus)}
        mounts: list[Mount] = []
        host_dirs: tuple[str, ...] = ()
        if pod_annotations(self.pod).get(scheduler_side.VNPU_MODE) == HAMI_CORE_MODE:
            core = PurePosixPath(self.vendor.vnpu_core_path)
            shmem = str(core / "containers" / f"{pod_uid(self.pod)}_{name}")
            mounts += [Mount(path, path, True) for path in DRIVER_FILES]
            mounts += [
                Mount("/hami-vnpu-core", str(core), True),
                Mount("/etc/ld.so.preload", str(core / "ld.so.preload"), True),
                Mount("/hami-shared-region", self.vendor.shared_region_path, False),
                Mount("/hami-vnpu-shmem", shmem, False),
            ]
            host_dirs = (shmem,)
            if devices[0].usedmem:
                envs["NPU_MEM_QUOTA"] = str(devices[0].usedmem)
            if devices[0].usedcores:
                envs["NPU_PRIORITY"] = str(devices[0].usedcores)
            envs["NPU_GLOBAL_SHM_PATH"] = f"/hami-shared-region/{npus[0].phy_id}_global_registry"
            envs["NPU_LOCAL_SHM_PATH"] = "/hami-vnpu-shmem/vnpu_local_shmem"
        else:
            runtime = _runtime_entries(self.pod, self.vendor.runtime_key)
            template = next((t for t in (self._template(d, runtime) for d in devices) if t), "")
            if template:
                envs["ASCEND_VNPU_SPECS"] = template
        return ContainerGrant(container=name, devices=devices, envs=envs, mounts=tuple(mounts), host_dirs=host_dirs)

    def annotations(self) -> dict[str, str]:
        return {}


@dataclass
class AscendNode(NodeVendor[Npu]):
    chip: scheduler_side.Chip = field(default_factory=lambda: scheduler_side.CHART_CHIPS[0])
    register_key: str = ""
    runtime_key: str = ""
    hami_core: bool = False
    vnpu_core_path: str = VNPU_CORE_PATH
    shared_region_path: str = SHARED_REGION_PATH

    def share_ids(self, chip: Npu) -> list[str]:
        return [f"{chip.uuid}-{i}" for i in range(self.split_count)]

    def describe(self, chip: Npu) -> str:
        return (f"NPU {chip.index} {chip.uuid} ({chip.chip_name}, physical ID {chip.phy_id}, logic ID "
                f"{chip.logic_id}){'' if chip.healthy else ', UNHEALTHY'}")

    def registration(self, chips: Sequence[Npu], health: Mapping[str, bool]) -> dict[str, str]:
        word = self.chip.common_word
        devices = []
        for i, (npu, healthy) in enumerate(with_health(chips, health)):
            group = network_id(word, i)
            devices.append(DeviceInfo(
                id=npu.uuid, index=i, count=self.split_count, devmem=self.chip.memory_allocatable,
                devcore=HAMI_CORE_PERCENT if self.hami_core else self.chip.ai_core, type=word, health=healthy,
                custom={} if group is None else {scheduler_side.NETWORK_ID: group},
            ))
        return {self.register_key: go_device_json(devices), NODE_HAMI_CORE: "true" if self.hami_core else "false"}

    def handshake(self, now: datetime) -> str:
        """`Reported_<2006.01.02 15:04:05>` in the node's local time, as HAMi's plugin writes it."""
        return "Reported_" + now.astimezone().strftime("%Y.%m.%d %H:%M:%S")

    def session(self, pod: Pod, chips: Mapping[str, Npu], node_pods: NodePods) -> AscendSession:
        return AscendSession(self, pod, chips)


def node_vendor(config: HamiConfig, node: str, npus: Sequence[Npu], hami_core: bool | None = None,
                vnpu_core_path: str = VNPU_CORE_PATH) -> AscendNode:
    """The node side for the chip DCMI found, from the device config's `vnpus` entry with that chipName."""
    names = sorted({n.chip_name for n in npus})
    if len(names) > 1:
        raise HamiError(f"node {node} has NPUs of several chips ({', '.join(names)}); one plugin serves one chip")
    chips = [v for v in VendorSet.from_config(config) if isinstance(v, scheduler_side.Ascend)]
    if not names:
        raise HamiError(f"node {node}: DCMI found no NPU")
    match = [v for v in chips if v.chip.chip_name == names[0]]
    if not match:
        known = ", ".join(sorted(v.chip.chip_name for v in chips)) or "none"
        raise HamiError(f"no vnpus config has chipName {names[0]!r} (the chip DCMI reports); configured: {known}")
    vendor = match[0]
    chip = vendor.chip
    node_filter = NodeFilter.of(config, node)
    smallest = chip.templates[0].memory if chip.templates else 0
    split = node_filter.split_count or (chip.memory_allocatable // smallest if smallest else 1)
    assert vendor.keys.to_allocate and vendor.keys.register  # every Ascend chip has them
    return AscendNode(
        name=VENDOR, noun="NPU", resource_name=chip.resource_name, to_allocate_key=vendor.keys.to_allocate,
        split_count=max(split, 1), handshake_key=vendor.keys.handshake, node_filter=node_filter, chip=chip,
        register_key=vendor.keys.register, runtime_key=vendor.runtime_key,
        hami_core=vendor.hami_core_nodes if hami_core is None else hami_core, vnpu_core_path=vnpu_core_path,
    )


def _fake_npu(item: dict[str, Any], position: int, where: str, top: dict[str, Any]) -> Npu:
    chip_name = text(item, "chipName", where, top.get("chipName", "910B3"))
    return Npu(
        uuid=text(item, "uuid", where), index=position, numa=whole(item, "numa", where, 0),
        phy_id=whole(item, "phyId", where, position), logic_id=whole(item, "logicId", where, position),
        card_id=whole(item, "cardId", where, position), device_id=whole(item, "deviceId", where, 0),
        chip_name=chip_name,
    )


def fake_backend(path: str | None = None, data: Any = None) -> FakeChips[Npu]:
    """NPUs from YAML (`chipName` at the top or per NPU; `phyId`, `logicId`, `cardId`, `deviceId`)."""
    return FakeChips(DCMI_ERRORS, _fake_npu, path, data)
