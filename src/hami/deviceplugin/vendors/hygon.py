"""Hygon DCUs on the node (HAMi's dcu-vgpu-device-plugin).

Each DCU registers in `hami.io/node-dcu-register` (HAMi's colon-separated form) as
`DCU-<serial>`, shared by 4 tasks, and kubelet sees `DCU-<serial>-fake-<i>`. A container gets
`/dev/kfd`, `/dev/mkfd` and its DCUs' `/dev/dri` nodes; one that asks part of a single DCU also
gets a vdev file: its memory, a compute-unit mask of its own and a pipe, which Hygon's driver
reads from `/etc/vdev/docker/vdev0.conf` in the container.

The vdev files live in `<vdev-root>/<pod uid>_<container>_<dcu>_<pipe>_<vdev>_<mask0>_<mask1>/`
(HAMi's layout), so that the plugin finds the masks and pipes in use again after a restart;
those of pods gone from the node are removed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from hami.annotations.handshake import encode_reported
from hami.config import HamiConfig
from hami.deviceplugin.allocate import AllocateError, ContainerGrant, DeviceSpec, HostFile, Mount
from hami.deviceplugin.pods import Pod
from hami.deviceplugin.vendors.base import (
    Chip,
    NodeFilter,
    NodePods,
    NodeVendor,
    container_name,
    pod_uid,
    terminated,
    with_health,
)
from hami.deviceplugin.vendors.fake import FakeChips, LibraryErrors, text, whole
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.vendors.registry import VendorSet

log = logging.getLogger(__name__)

VENDOR = "hygon"
SCHEDULER_VENDOR = "DCU"
SPLIT_COUNT = 4  # HAMi's plugin: 4 tasks per DCU
REGISTER_MODE = "hami"  # the mode field HAMi's DCU plugin writes
VDEV_ROOT = "/usr/local/vgpu/dcu"
NODE_VDEV_DIR = "/etc/vdev"  # one vdev<N>.conf per vdev on the node, for Hygon's exporter
HYHAL_PATH = "/opt/hyhal"
MASK_BITS = 64  # CUs per mask; a vdev has two masks
MAX_VDEVS = 200  # vdev IDs on a node (HAMi's limit)
MAX_PIPES = 20  # pipes per DCU (HAMi's limit)

# rocm_smi's status codes (rsmi_status_t in Hygon's rocm_smi.h) and their meaning.
RSMI_ERRORS = LibraryErrors(
    library="rocm_smi",
    init_call="rsmi_init",
    codes={
        "RSMI_STATUS_INVALID_ARGS": (1, "passed in arguments are not valid"),
        "RSMI_STATUS_NOT_SUPPORTED": (2, "the requested information or action is not available"),
        "RSMI_STATUS_FILE_ERROR": (3, "problem accessing a file"),
        "RSMI_STATUS_PERMISSION": (4, "permission denied"),
        "RSMI_STATUS_OUT_OF_RESOURCES": (5, "unable to acquire memory or other resource"),
        "RSMI_STATUS_INTERNAL_EXCEPTION": (6, "an internal exception was caught"),
        "RSMI_STATUS_INPUT_OUT_OF_BOUNDS": (7, "the provided input is out of allowable or safe range"),
        "RSMI_STATUS_INIT_ERROR": (8, "an error occurred when rsmi initializing internal data structures"),
        "RSMI_STATUS_NOT_YET_IMPLEMENTED": (9, "not yet implemented"),
        "RSMI_STATUS_NOT_FOUND": (10, "an item was searched for but not found"),
        "RSMI_STATUS_INSUFFICIENT_SIZE": (11, "not enough resources were available for the operation"),
        "RSMI_STATUS_INTERRUPT": (12, "an interrupt occurred during execution of function"),
        "RSMI_STATUS_UNEXPECTED_SIZE": (13, "an unexpected amount of data was read"),
        "RSMI_STATUS_NO_DATA": (14, "no data was found for a given input"),
        "RSMI_STATUS_UNEXPECTED_DATA": (15, "the data read or provided to function is not what was expected"),
        "RSMI_STATUS_BUSY": (16, "a resource or mutex could not be acquired"),
        "RSMI_STATUS_REFCOUNT_OVERFLOW": (17, "an internal reference counter exceeded INT32_MAX"),
        "RSMI_STATUS_SETTING_UNAVAILABLE": (18, "requested setting is unavailable for the current device"),
        "RSMI_STATUS_AMDGPU_RESTART_ERR": (19, "could not successfully restart the amdgpu driver"),
        "RSMI_STATUS_UNKNOWN_ERROR": (0xFFFFFFFF, "an unknown error occurred"),
    },
)


@dataclass(frozen=True, kw_only=True)
class Dcu(Chip):
    """One DCU; `uuid` is `DCU-<serial>`, `index` rocm_smi's device index."""

    name: str  # the model, e.g. Z100L (registers as type DCU-<name>)
    memory_mib: int
    compute_units: int
    pci_bus_id: str  # as rocm_smi formats it: 0000:3B:00.0
    card: int  # /dev/dri/card<N>
    render: int  # /dev/dri/renderD<N>


@dataclass(frozen=True)
class Vdev:
    """A vdev of a running container, as its directory name records it."""

    uid: str
    container: str
    dcu: int
    pipe: int
    vdev: int
    masks: tuple[int, int]  # CUs 0-63 and 64-127 as bit masks

    @property
    def dirname(self) -> str:
        return (f"{self.uid}_{self.container}_{self.dcu}_{self.pipe}_{self.vdev}_"
                f"{self.masks[0]:016x}_{self.masks[1]:016x}")

    @staticmethod
    def parse(name: str) -> Vdev | None:
        parts = name.split("_")  # pod UIDs and container names have no `_`
        if len(parts) != 7:
            return None
        try:
            return Vdev(parts[0], parts[1], int(parts[2]), int(parts[3]), int(parts[4]),
                        (int(parts[5], 16), int(parts[6], 16)))
        except ValueError:
            return None


def pick_cus(used: tuple[int, int], count: int, total: int) -> tuple[int, int]:
    """The `count` lowest free CUs of a DCU with `total` CUs, as two masks; AllocateError when short."""
    free = [cu for cu in range(min(total, 2 * MASK_BITS)) if not (used[cu // MASK_BITS] >> (cu % MASK_BITS)) & 1]
    if len(free) < count:
        raise AllocateError("FAILED_PRECONDITION", f"the DCU has {len(free)} free compute units, {count} asked")
    masks = [0, 0]
    for cu in free[:count]:
        masks[cu // MASK_BITS] |= 1 << (cu % MASK_BITS)
    return masks[0], masks[1]


def vdev_conf(dcu: Dcu, vdev: Vdev, cu_count: int, memory: int, device_id: int) -> str:
    """A vdev file as HAMi's plugin writes it."""
    return (f"PciBusId: {dcu.pci_bus_id}\ncu_mask: 0x{vdev.masks[0]:016x}\ncu_mask: 0x{vdev.masks[1]:016x}\n"
            f"cu_count: {cu_count}\nmem: {memory} MiB\ndevice_id: {device_id}\nvdev_id: {vdev.vdev}\n"
            f"pipe_id: {vdev.pipe}\nenable: 1\n")


@dataclass
class HygonSession:
    vendor: HygonNode
    pod: Pod
    dcus: Mapping[str, Dcu]
    vdevs: list[Vdev]  # in use on the node

    def _vdev(self, name: str, dcu: Dcu, cu_count: int) -> Vdev:
        mine = [v for v in self.vdevs if v.dcu == dcu.index]
        used = (0, 0)
        for v in mine:
            used = (used[0] | v.masks[0], used[1] | v.masks[1])
        try:
            masks = pick_cus(used, cu_count, dcu.compute_units)
        except AllocateError as exc:
            raise AllocateError(exc.code, f"container {name!r}: DCU {dcu.uuid}: {exc.message}") from None
        pipe = next((p for p in range(MAX_PIPES) if p not in {v.pipe for v in mine}), None)
        number = next((n for n in range(MAX_VDEVS) if n not in {v.vdev for v in self.vdevs}), None)
        if pipe is None or number is None:
            what = f"all {MAX_PIPES} pipes of DCU {dcu.uuid}" if pipe is None else f"all {MAX_VDEVS} vdevs"
            raise AllocateError("RESOURCE_EXHAUSTED", f"container {name!r}: {what} are in use")
        vdev = Vdev(pod_uid(self.pod), name, dcu.index, pipe, number, masks)
        self.vdevs.append(vdev)
        return vdev

    def grant(self, container: Mapping[str, Any], devices: tuple[ContainerDevice, ...]) -> ContainerGrant:
        name = container_name(container)
        specs = [DeviceSpec("/dev/kfd", "/dev/kfd", "rwm"), DeviceSpec("/dev/mkfd", "/dev/mkfd", "rwm")]
        dcus = []
        for device in devices:
            dcu = self.dcus.get(device.uuid)
            if dcu is None:
                raise AllocateError("FAILED_PRECONDITION", f"container {name!r}: DCU {device.uuid} of the "
                                                           "scheduler's decision is not a DCU this plugin serves")
            dcus.append(dcu)
            specs += [DeviceSpec(f"/dev/dri/card{dcu.card}", f"/dev/dri/card{dcu.card}", "rw"),
                      DeviceSpec(f"/dev/dri/renderD{dcu.render}", f"/dev/dri/renderD{dcu.render}", "rw")]
        mounts = [Mount(HYHAL_PATH, HYHAL_PATH, True)]
        dirs: tuple[str, ...] = ()
        files: tuple[HostFile, ...] = ()
        if len(devices) == 1 and devices[0].usedmem < dcus[0].memory_mib:
            dcu, device = dcus[0], devices[0]
            cu_count = device.usedcores * dcu.compute_units // 100
            vdev = self._vdev(name, dcu, cu_count)
            directory = str(PurePosixPath(self.vendor.vdev_root) / vdev.dirname)
            dirs = (directory,)
            files = (
                HostFile(f"{directory}/vdev0.conf", vdev_conf(dcu, vdev, cu_count, device.usedmem, 0)),
                HostFile(f"{self.vendor.node_vdev_dir}/vdev{vdev.vdev}.conf",
                         vdev_conf(dcu, vdev, cu_count, device.usedmem, dcu.index)),
            )
            mounts.append(Mount("/etc/vdev/docker/", directory, False))
            if self.vendor.driver_path:
                mounts.append(Mount("/opt/hygondriver", self.vendor.driver_path, False))
        return ContainerGrant(container=name, devices=devices, envs={}, mounts=tuple(mounts),
                              device_specs=tuple(specs), host_dirs=dirs, host_files=files)

    def annotations(self) -> dict[str, str]:
        return {}


@dataclass
class HygonNode(NodeVendor[Dcu]):
    register_key: str = ""
    vdev_root: str = VDEV_ROOT
    node_vdev_dir: str = NODE_VDEV_DIR
    driver_path: str = ""  # mounted at /opt/hygondriver for a vdev (HAMi: $HYGONPATH)

    def share_ids(self, chip: Dcu) -> list[str]:
        return [f"{chip.uuid}-fake-{i}" for i in range(self.split_count)]

    def describe(self, chip: Dcu) -> str:
        return (f"DCU {chip.index} {chip.uuid} ({chip.name}, {chip.memory_mib} MiB, {chip.compute_units} CUs, "
                f"{chip.pci_bus_id}, card{chip.card}){'' if chip.healthy else ', UNHEALTHY'}")

    def registration(self, chips: Sequence[Dcu], health: Mapping[str, bool]) -> dict[str, str]:
        """HAMi's legacy form, `id,count,devmem,devcore,type,numa,health,index,mode:` per DCU
        (a DCU that reports no memory is left out, as HAMi does)."""
        value = "".join(
            f"{d.uuid},{self.split_count},{d.memory_mib},100,DCU-{d.name},{d.numa},{str(ok).lower()},"
            f"{d.index},{REGISTER_MODE}:"
            for d, ok in with_health(chips, health) if d.memory_mib > 0
        )
        return {self.register_key: value}

    def handshake(self, now: datetime) -> str:
        return encode_reported(now)

    def vdevs_in_use(self, node_pods: NodePods) -> list[Vdev]:
        """The vdevs recorded under vdev-root whose pods still run; the others' files are removed."""
        root = Path(self.vdev_root)
        try:
            names = sorted(p.name for p in root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AllocateError("INTERNAL", f"cannot list {root}: {exc.strerror}") from None
        found = [(n, Vdev.parse(n)) for n in names]
        vdevs = [v for _, v in found if v is not None]
        if not vdevs:
            return []
        live = {pod_uid(p) for p in node_pods() if not terminated(p)}
        kept = []
        for vdev in vdevs:
            if vdev.uid in live:
                kept.append(vdev)
                continue
            log.info("vdev %d of pod %s (container %r) is no longer used; removing its files", vdev.vdev,
                     vdev.uid, vdev.container)
            shutil.rmtree(root / vdev.dirname, ignore_errors=True)
            (Path(self.node_vdev_dir) / f"vdev{vdev.vdev}.conf").unlink(missing_ok=True)
        return kept

    def session(self, pod: Pod, chips: Mapping[str, Dcu], node_pods: NodePods) -> HygonSession:
        return HygonSession(self, pod, chips, self.vdevs_in_use(node_pods))


def node_vendor(config: HamiConfig, node: str, vdev_root: str = VDEV_ROOT, node_vdev_dir: str = NODE_VDEV_DIR,
                driver_path: str = "") -> HygonNode:
    vendor = VendorSet.from_config(config).get(SCHEDULER_VENDOR)
    if vendor is None or not vendor.keys.to_allocate or not vendor.keys.register:
        raise HamiError("this build has no Hygon DCU vendor on the scheduler side")
    node_filter = NodeFilter.of(config, node)
    return HygonNode(
        name=VENDOR, noun="DCU", resource_name=vendor.resources.count, to_allocate_key=vendor.keys.to_allocate,
        split_count=node_filter.split_count or SPLIT_COUNT, handshake_key=vendor.keys.handshake,
        node_filter=node_filter, register_key=vendor.keys.register, vdev_root=vdev_root,
        node_vdev_dir=node_vdev_dir, driver_path=driver_path,
    )


# Compute units of the models rocm_smi does not count for us (HAMi's dcu-dcgm table).
MODEL_CUS = {"K100_AI": 120, "K100_LC_AI": 120, "K100_LC_E_AI": 128, "K100": 120, "Z100": 60, "Z100L": 60}


def _fake_dcu(item: dict[str, Any], position: int, where: str, top: dict[str, Any]) -> Dcu:
    serial = text(item, "serial", where)
    name = text(item, "name", where, "Z100L")
    return Dcu(
        uuid=f"DCU-{serial}", index=position, numa=whole(item, "numa", where, 0), name=name,
        memory_mib=whole(item, "memory", where), compute_units=whole(item, "computeUnits", where,
                                                                     MODEL_CUS.get(name, 60)),
        pci_bus_id=text(item, "pciBusId", where, f"0000:{position + 1:02X}:00.0"),
        card=whole(item, "card", where, position), render=whole(item, "render", where, 128 + position),
    )


def fake_backend(path: str | None = None, data: Any = None) -> FakeChips[Dcu]:
    """DCUs from YAML (`serial`, `name`, `memory` MiB, `computeUnits`, `pciBusId`, `card`, `render`)."""
    return FakeChips(RSMI_ERRORS, _fake_dcu, path, data)

