"""AMD GPUs on the node (HAMi's amd-device-plugin).

Each GPU registers in `hami.io/node-amd-register` with its AMD SMI UUID, its VRAM and its
compute units (CUs) as `devcore`; kubelet sees `<PCI address>#<i>`, 10 per GPU. The scheduler
decides a CU count per GPU; the plugin chooses which CUs: the lowest free ones, free meaning in
no `hami.io/amd-cu-allocated` of a pod running on the node. A container gets its GPUs by ROCr
UUID, those CUs as `HSA_CU_MASK`, a memory limit, and libamvgpu.so (through `LD_AUDIT`); the
pod records its CUs in `hami.io/amd-cu-allocated`, so the next pod sees them taken.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from hami.config import HamiConfig
from hami.deviceplugin.allocate import AllocateError, ContainerGrant, DeviceSpec, Mount, pod_name
from hami.deviceplugin.pods import Pod
from hami.deviceplugin.vendors.base import (
    Chip,
    NodeFilter,
    NodePods,
    NodeVendor,
    container_name,
    go_device_json,
    pod_annotations,
    terminated,
    with_health,
)
from hami.deviceplugin.vendors.fake import FakeChips, LibraryErrors, text, whole
from hami.model.allocation import ContainerDevice
from hami.model.devices import DeviceInfo

log = logging.getLogger(__name__)

VENDOR = "amd"
SPLIT_COUNT = 10  # HAMi's plugin: 10 tasks per GPU
DEVICE_VENDOR = "amd"  # the registration's devicevendor
DEFAULT_TYPE = "amd-gpu"  # the type of a GPU whose product name AMD SMI does not give
# HAMi's fixed names (the AMD plugin takes none of them from the device config).
REGISTER_KEY = "hami.io/node-amd-register"
TO_ALLOCATE_KEY = "hami.io/amd-devices-to-allocate"
CU_ALLOCATED = "hami.io/amd-cu-allocated"  # pod: {"<GPU UUID>": "<CU list, e.g. 0-3,8>"}
LIBRARY = "libamvgpu.so"
CONTAINER_LIBRARY = "/usr/local/vgpu/libamvgpu.so"

# AMD SMI's status codes (amdsmi_status_t) with the messages of its Python bindings.
AMDSMI_ERRORS = LibraryErrors(
    library="AMD SMI",
    init_call="amdsmi_init",
    codes={
        "AMDSMI_STATUS_INVAL": (1, "Invalid parameters"),
        "AMDSMI_STATUS_NOT_SUPPORTED": (2, "Feature not supported"),
        "AMDSMI_STATUS_NOT_YET_IMPLEMENTED": (3, "Feature not yet implemented"),
        "AMDSMI_STATUS_FAIL_LOAD_MODULE": (4, "Fail to load lib"),
        "AMDSMI_STATUS_FAIL_LOAD_SYMBOL": (5, "Fail to load symbol"),
        "AMDSMI_STATUS_DRM_ERROR": (6, "Error when called libdrm"),
        "AMDSMI_STATUS_API_FAILED": (7, "API call failed"),
        "AMDSMI_STATUS_TIMEOUT": (8, "Timeout in API call"),
        "AMDSMI_STATUS_RETRY": (9, "Retry operation"),
        "AMDSMI_STATUS_NO_PERM": (10, "Permission Denied"),
        "AMDSMI_STATUS_INTERRUPT": (11, "Interrupt ocurred during execution"),  # AMD's spelling
        "AMDSMI_STATUS_IO": (12, "I/O Error"),
        "AMDSMI_STATUS_ADDRESS_FAULT": (13, "Bad address"),
        "AMDSMI_STATUS_FILE_ERROR": (14, "Error opening file"),
        "AMDSMI_STATUS_OUT_OF_RESOURCES": (15, "Not enough memory"),
        "AMDSMI_STATUS_INTERNAL_EXCEPTION": (16, "Internal error"),
        "AMDSMI_STATUS_INPUT_OUT_OF_BOUNDS": (17, "Out of bounds"),
        "AMDSMI_STATUS_INIT_ERROR": (18, "Initialization error"),
        "AMDSMI_STATUS_REFCOUNT_OVERFLOW": (19, "Internal reference counter exceeded INT32_MAX"),
        "AMDSMI_STATUS_DIRECTORY_NOT_FOUND": (20, "Error when a directory is not found, maps to ENOTDIR"),
        "AMDSMI_STATUS_BUSY": (30, "Device busy"),
        "AMDSMI_STATUS_NOT_FOUND": (31, "Device Not found"),
        "AMDSMI_STATUS_NOT_INIT": (32, "Device not initialized"),
        "AMDSMI_STATUS_NO_SLOT": (33, "No more free slot"),
        "AMDSMI_STATUS_DRIVER_NOT_LOADED": (34, "Driver not loaded"),
        "AMDSMI_STATUS_NO_DATA": (40, "No data was found for given input"),
        "AMDSMI_STATUS_INSUFFICIENT_SIZE": (41, "Insufficient size for operation"),
        "AMDSMI_STATUS_UNEXPECTED_SIZE": (42, "unexpected size of data was read"),
        "AMDSMI_STATUS_UNEXPECTED_DATA": (43, "The data read or provided was unexpected"),
        "AMDSMI_STATUS_FILE_NOT_FOUND": (52, "File or directory not found"),
        "AMDSMI_STATUS_ARG_PTR_NULL": (53, "Parsed argument is invalid"),
        "AMDSMI_STATUS_AMDGPU_RESTART_ERR": (54, "AMDGPU restart failed, please check dmsg for errors"),
        "AMDSMI_STATUS_SETTING_UNAVAILABLE": (55, "Setting is not available"),
        "AMDSMI_STATUS_UNKNOWN_ERROR": (0xFFFFFFFF, "An unknown error occurred"),
    },
)


@dataclass(frozen=True, kw_only=True)
class AmdGpu(Chip):
    """One GPU; `uuid` is its AMD SMI UUID and `index` its DRM card number."""

    product: str  # the registered type: AMD SMI's market name, or amd-gpu
    memory_mib: int
    compute_units: int
    pci_bdf: str  # 0000:c1:00.0
    rocr_uuid: str  # how ROCR_VISIBLE_DEVICES names it: GPU-<unique id>
    card: int  # /dev/dri/card<N>
    render: int  # /dev/dri/renderD<N>


def cu_list(cus: Sequence[int]) -> str:
    """CU numbers as HSA_CU_MASK's ID list: ranges, `0-3,8,10-12`."""
    parts: list[str] = []
    ordered = sorted(set(cus))
    start = 0
    for i, cu in enumerate(ordered):
        if i + 1 < len(ordered) and ordered[i + 1] == cu + 1:
            continue
        first = ordered[start]
        parts.append(str(cu) if first == cu else f"{first}-{cu}")
        start = i + 1
    return ",".join(parts)


def parse_cu_list(value: str, total: int) -> set[int]:
    """The inverse of cu_list; ValueError naming the part that is wrong or out of 0..total-1."""
    found: set[int] = set()
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        first, sep, last = part.partition("-")
        try:
            low, high = int(first), int(last) if sep else int(first)
        except ValueError:
            raise ValueError(f"{part!r} is not a CU number or range") from None
        if low < 0 or high < low or high >= total:
            raise ValueError(f"{part!r} is out of bounds for {total} CUs")
        found.update(range(low, high + 1))
    return found


def occupied_cus(pods: Sequence[Pod], gpus: Mapping[str, AmdGpu]) -> dict[str, set[int]]:
    """The CUs of each GPU that the node's running pods hold; AllocateError when two pods claim
    the same CU or a record cannot be read (as HAMi, the plugin then refuses to guess)."""
    taken: dict[str, dict[int, str]] = {}
    for pod in pods:
        raw = pod_annotations(pod).get(CU_ALLOCATED, "").strip()
        if not raw or terminated(pod):
            continue
        who = pod_name(pod)
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            for uuid, listing in record.items():
                gpu = gpus.get(uuid)
                if gpu is None:  # a GPU this plugin does not serve (gone, or filtered out): no conflict here
                    log.warning("pod %s: %s names GPU %s, not one of this node's; ignored", who, CU_ALLOCATED, uuid)
                    continue
                for cu in parse_cu_list(str(listing), gpu.compute_units):
                    owner = taken.setdefault(uuid, {}).setdefault(cu, who)
                    if owner != who:
                        raise AllocateError("FAILED_PRECONDITION",
                                            f"CU {cu} of GPU {uuid} is held by both {owner} and {who}")
        except (ValueError, json.JSONDecodeError) as exc:
            raise AllocateError("FAILED_PRECONDITION", f"pod {who}: {CU_ALLOCATED}: {exc}") from None
    return {uuid: set(cus) for uuid, cus in taken.items()}


@dataclass
class AmdSession:
    vendor: AmdNode
    pod: Pod
    gpus: Mapping[str, AmdGpu]
    taken: dict[str, set[int]]
    mine: dict[str, set[int]] = field(default_factory=dict)

    def grant(self, container: Mapping[str, Any], devices: tuple[ContainerDevice, ...]) -> ContainerGrant:
        name = container_name(container)
        specs = [DeviceSpec("/dev/kfd", "/dev/kfd", "rw")]
        masks, rocr = [], []
        for i, device in enumerate(devices):
            gpu = self.gpus.get(device.uuid)
            if gpu is None:
                raise AllocateError("FAILED_PRECONDITION", f"container {name!r}: GPU {device.uuid} of the "
                                                           "scheduler's decision is not a GPU this plugin serves")
            specs += [DeviceSpec(f"/dev/dri/card{gpu.card}", f"/dev/dri/card{gpu.card}", "rw"),
                      DeviceSpec(f"/dev/dri/renderD{gpu.render}", f"/dev/dri/renderD{gpu.render}", "rw")]
            rocr.append(gpu.rocr_uuid)
            taken = self.taken.setdefault(gpu.uuid, set())
            free = [cu for cu in range(gpu.compute_units) if cu not in taken]
            if device.usedcores <= 0 or len(free) < device.usedcores:
                raise AllocateError("FAILED_PRECONDITION", f"container {name!r}: GPU {gpu.uuid}: {device.usedcores} "
                                                           f"CUs asked, {len(free)} of {gpu.compute_units} free")
            cus = free[: device.usedcores]
            taken.update(cus)
            self.mine.setdefault(gpu.uuid, set()).update(cus)
            # HSA_CU_MASK counts GPUs as ROCr renumbers them: by position in ROCR_VISIBLE_DEVICES.
            masks.append(f"{i}:{cu_list(cus)}")
        envs = {
            "HSA_CU_MASK": ";".join(masks),
            "ROCR_VISIBLE_DEVICES": ",".join(rocr),
            "HIP_DEVICE_MEMORY_LIMIT": f"{devices[0].usedmem}m",
            "LD_AUDIT": CONTAINER_LIBRARY,
        }
        mounts = (Mount(CONTAINER_LIBRARY, str(PurePosixPath(self.vendor.hook_path) / LIBRARY), True),)
        return ContainerGrant(container=name, devices=devices, envs=envs, mounts=mounts, device_specs=tuple(specs))

    def annotations(self) -> dict[str, str]:
        """The pod's CUs: those of earlier Allocate calls for it, and this call's."""
        if not self.mine:
            return {}
        merged = {uuid: set(cus) for uuid, cus in self.mine.items()}
        raw = pod_annotations(self.pod).get(CU_ALLOCATED, "").strip()
        if raw:
            earlier = json.loads(raw)  # read without error by occupied_cus
            for uuid, listing in earlier.items():
                gpu = self.gpus.get(uuid)
                if gpu is not None:
                    merged.setdefault(uuid, set()).update(parse_cu_list(str(listing), gpu.compute_units))
        return {CU_ALLOCATED: json.dumps({u: cu_list(sorted(c)) for u, c in merged.items()}, sort_keys=True,
                                         separators=(",", ":"))}


@dataclass
class AmdNode(NodeVendor[AmdGpu]):
    register_key: str = REGISTER_KEY
    hook_path: str = "/usr/local/vgpu"  # host directory holding libamvgpu.so

    def share_ids(self, chip: AmdGpu) -> list[str]:
        return [f"{chip.pci_bdf}#{i}" for i in range(self.split_count)]

    def describe(self, chip: AmdGpu) -> str:
        return (f"GPU card{chip.card} {chip.uuid} ({chip.product}, {chip.memory_mib} MiB, {chip.compute_units} CUs, "
                f"{chip.pci_bdf}, ROCr {chip.rocr_uuid}){'' if chip.healthy else ', UNHEALTHY'}")

    def registration(self, chips: Sequence[AmdGpu], health: Mapping[str, bool]) -> dict[str, str]:
        devices = [
            DeviceInfo(id=g.uuid, index=g.index, count=self.split_count, devmem=g.memory_mib, devcore=g.compute_units,
                       type=g.product, numa=g.numa, health=ok, custom={"pciBDF": g.pci_bdf.lower()})
            for g, ok in with_health(chips, health)
        ]
        return {self.register_key: go_device_json(devices, DEVICE_VENDOR)}

    def session(self, pod: Pod, chips: Mapping[str, AmdGpu], node_pods: NodePods) -> AmdSession:
        return AmdSession(self, pod, chips, occupied_cus(node_pods(), chips))


def node_vendor(config: HamiConfig, node: str, hook_path: str = "/usr/local/vgpu") -> AmdNode:
    section = config.sections.get("amd") or {}
    resource = section.get("resourceCountName", "amd.com/gpu") if isinstance(section, dict) else "amd.com/gpu"
    node_filter = NodeFilter.of(config, node)
    return AmdNode(name=VENDOR, noun="GPU", resource_name=str(resource), to_allocate_key=TO_ALLOCATE_KEY,
                   split_count=node_filter.split_count or SPLIT_COUNT, node_filter=node_filter, hook_path=hook_path)


def _fake_gpu(item: dict[str, Any], position: int, where: str, top: dict[str, Any]) -> AmdGpu:
    card = whole(item, "card", where, position + 1)
    return AmdGpu(
        uuid=text(item, "uuid", where), index=card, numa=whole(item, "numa", where, 0),
        product=text(item, "product", where, DEFAULT_TYPE), memory_mib=whole(item, "memory", where),
        compute_units=whole(item, "computeUnits", where), pci_bdf=text(item, "pciBDF", where,
                                                                      f"0000:{0xc1 + position:02x}:00.0"),
        rocr_uuid=text(item, "rocrUuid", where, f"GPU-{position + 1:016x}"), card=card,
        render=whole(item, "render", where, 128 + position),
    )


def fake_backend(path: str | None = None, data: Any = None) -> FakeChips[AmdGpu]:
    """GPUs from YAML (`uuid`, `product`, `memory` MiB, `computeUnits`, `pciBDF`, `rocrUuid`, `card`, `render`)."""
    return FakeChips(AMDSMI_ERRORS, _fake_gpu, path, data)
