"""GPU discovery and XID health events through NVML (the official `nvidia-ml-py` bindings)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from hami.deviceplugin.backend import (
    APPLICATION_XIDS,
    GI_PROFILES_BY_SLICES,
    BackendError,
    GiProfileInfo,
    GpuInfo,
    HealthEvent,
    MigInstance,
    NvLink,
)
from hami.model.mig import MigPlacement

log = logging.getLogger(__name__)

SYSFS_PCI = Path("/sys/bus/pci/devices")


def _nvml() -> Any:
    import pynvml  # type: ignore[import-untyped]  # no stubs; imported late so CPU-only use never loads it

    return pynvml


def _error_name(nvml: Any, exc: Exception) -> str:
    return _code_name(nvml, getattr(exc, "value", None))


def _code_name(nvml: Any, value: Any) -> str:
    for name in dir(nvml):
        if name.startswith("NVML_ERROR_") and getattr(nvml, name) == value:
            return str(name)
    return "NVML_ERROR_UNKNOWN"


# Link queries that mean "no such link here" rather than a failure (HAMi skips them too).
_SKIPPED = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_INVALID_ARGUMENT")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def sysfs_bus_id(nvml_bus_id: str) -> str:
    """NVML's `00000000:3B:00.0` as sysfs names it: `0000:3b:00.0`."""
    bus = nvml_bus_id.strip().lower()
    domain, _, rest = bus.partition(":")
    return f"{domain[-4:]}:{rest}" if rest else bus


def numa_node(bus_id: str, root: Path = SYSFS_PCI) -> int:
    """The GPU's NUMA node from sysfs; 0 when the machine has none (sysfs says -1) or it is unreadable."""
    try:
        value = int((root / sysfs_bus_id(bus_id) / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return 0
    return max(value, 0)


class NvmlBackend:
    """Backend over libnvidia-ml. Errors come out as BackendError named like NVML's codes."""

    def __init__(self, sysfs_root: Path = SYSFS_PCI) -> None:
        self._sysfs = sysfs_root
        self._nvml: Any = None
        self._events: Any = None
        self._by_handle: dict[int, str] = {}

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._nvml.NVMLError as exc:
            raise BackendError(_error_name(self._nvml, exc), f"{what}: {exc}") from None

    def init(self) -> None:
        try:
            nvml = _nvml()
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
            raise BackendError("NVML_ERROR_LIBRARY_NOT_FOUND", str(exc)) from None
        self._nvml = nvml
        self._call("nvmlInit", nvml.nvmlInit)

    def devices(self) -> list[GpuInfo]:
        nvml = self._nvml
        if nvml is None:
            raise BackendError("NVML_ERROR_UNINITIALIZED", "init() was not called")
        count = self._call("nvmlDeviceGetCount", nvml.nvmlDeviceGetCount)
        handles = [self._call(f"device {i}", nvml.nvmlDeviceGetHandleByIndex, i) for i in range(count)]
        bus_to_uuid: dict[str, str] = {}
        basics = []
        for index, handle in enumerate(handles):
            uuid = _text(self._call(f"device {index} UUID", nvml.nvmlDeviceGetUUID, handle))
            bus_id = _text(self._call(f"device {index} PCI info", nvml.nvmlDeviceGetPciInfo, handle).busId)
            bus_to_uuid[sysfs_bus_id(bus_id)] = uuid
            basics.append((index, handle, uuid, bus_id))
        found = []
        for index, handle, uuid, bus_id in basics:
            healthy = True
            try:
                name = _text(self._call(f"{uuid} name", nvml.nvmlDeviceGetName, handle))
                memory = self._call(f"{uuid} memory", nvml.nvmlDeviceGetMemoryInfo, handle)
                memory_mib = int(memory.total) // (1024 * 1024)
            except BackendError as exc:
                # A GPU that answers its UUID but not its memory is listed, unhealthy, as NVIDIA's plugin does.
                log.warning("GPU %s: %s; reporting it unhealthy", uuid, exc)
                name, memory_mib, healthy = "unknown", 0, False
            found.append(
                GpuInfo(
                    uuid=uuid,
                    index=index,
                    name=name,
                    memory_mib=memory_mib,
                    sm_count=self._sm_count(handle),
                    numa=numa_node(bus_id, self._sysfs),
                    nvlink_peers=self._nvlink_peers(handle, bus_to_uuid),
                    healthy=healthy,
                    pci_bus_id=bus_id,
                )
            )
            self._by_handle[self._handle_key(handle)] = uuid
        return found

    @staticmethod
    def _handle_key(handle: Any) -> int:
        value = getattr(handle, "value", None)
        return int(value) if value is not None else id(handle)

    def _sm_count(self, handle: Any) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetAttributes(handle).multiprocessorCount)
        except self._nvml.NVMLError:
            return 0  # not every driver answers this for a whole GPU

    def _nvlink_peers(self, handle: Any, bus_to_uuid: dict[str, str]) -> tuple[str, ...]:
        nvml = self._nvml
        peers = []
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            try:
                if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                    continue
                remote = _text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
            except nvml.NVMLError:
                continue  # no such link, or NVLink not supported at all
            peer = bus_to_uuid.get(sysfs_bus_id(remote))
            if peer is not None and peer not in peers:
                peers.append(peer)
        return tuple(peers)

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        nvml = self._nvml
        if self._events is None:
            self._events = self._call("nvmlEventSetCreate", nvml.nvmlEventSetCreate)
            for i in range(self._call("nvmlDeviceGetCount", nvml.nvmlDeviceGetCount)):
                handle = self._call(f"device {i}", nvml.nvmlDeviceGetHandleByIndex, i)
                try:
                    nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, self._events)
                except nvml.NVMLError as exc:
                    log.warning("device %d: XID events not available (%s); its health is not watched", i, exc)
        try:
            data = nvml.nvmlEventSetWait_v2(self._events, int(timeout_s * 1000))
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) == nvml.NVML_ERROR_TIMEOUT:
                return None
            raise BackendError(_error_name(nvml, exc), f"nvmlEventSetWait: {exc}") from None
        if data.eventType != nvml.nvmlEventTypeXidCriticalError:
            return None
        xid = int(data.eventData)
        if xid in APPLICATION_XIDS:
            log.info("XID %d is an application error; GPU health unchanged", xid)
            return None
        uuid = self._by_handle.get(self._handle_key(data.device))
        if uuid is None:
            uuid = _text(self._call("event device UUID", nvml.nvmlDeviceGetUUID, data.device))
        return HealthEvent(uuid=uuid, healthy=False, reason=f"XID {xid}")

    # ---- links ------------------------------------------------------------------------

    def _handle(self, uuid: str) -> Any:
        if self._nvml is None:
            raise BackendError("NVML_ERROR_UNINITIALIZED", "init() was not called")
        return self._call(f"{uuid} handle", self._nvml.nvmlDeviceGetHandleByUUID, uuid)

    def _optional(self, what: str, fn: Any, *args: Any) -> Any:
        """A link query; None where the driver says the link or the query does not exist."""
        try:
            return self._call(what, fn, *args)
        except BackendError as exc:
            if exc.code in _SKIPPED:
                return None
            raise

    def nvlinks(self, uuid: str) -> list[NvLink]:
        nvml = self._nvml
        handle = self._handle(uuid)
        found = []
        for link in range(nvml.NVML_NVLINK_MAX_LINKS):
            state = self._optional(f"{uuid} NVLink {link} state", nvml.nvmlDeviceGetNvLinkState, handle, link)
            if state != nvml.NVML_FEATURE_ENABLED:
                continue
            pci = self._optional(f"{uuid} NVLink {link} remote PCI", nvml.nvmlDeviceGetNvLinkRemotePciInfo, handle,
                                 link)
            kind = self._optional(f"{uuid} NVLink {link} remote type", nvml.nvmlDeviceGetNvLinkRemoteDeviceType,
                                  handle, link)
            found.append(NvLink(_text(pci.busId) if pci is not None else None,
                                int(kind) if kind is not None else None))
        return found

    def common_ancestor(self, uuid: str, peer: str) -> int:
        return int(self._call(f"{uuid}/{peer} common ancestor", self._nvml.nvmlDeviceGetTopologyCommonAncestor,
                              self._handle(uuid), self._handle(peer)))

    # ---- MIG --------------------------------------------------------------------------

    def mig_mode(self, uuid: str) -> tuple[bool, bool]:
        current, pending = self._call(f"{uuid} MIG mode", self._nvml.nvmlDeviceGetMigMode, self._handle(uuid))
        enable = self._nvml.NVML_DEVICE_MIG_ENABLE
        return current == enable, pending == enable

    def set_mig_mode(self, uuid: str, enabled: bool) -> None:
        nvml = self._nvml
        mode = nvml.NVML_DEVICE_MIG_ENABLE if enabled else nvml.NVML_DEVICE_MIG_DISABLE
        activation = self._call(f"{uuid} set MIG mode", nvml.nvmlDeviceSetMigMode, self._handle(uuid), mode)
        if activation != nvml.NVML_SUCCESS:
            raise BackendError(_code_name(nvml, activation), f"{uuid}: MIG mode change is pending (a GPU reset)")

    def _gi_info(self, handle: Any, uuid: str, index: int) -> Any:
        return self._call(f"{uuid} GPU instance profile {index}", self._nvml.nvmlDeviceGetGpuInstanceProfileInfo,
                          handle, index)

    def gi_profile(self, uuid: str, index: int) -> GiProfileInfo:
        info = self._gi_info(self._handle(uuid), uuid, index)
        name = _text(getattr(info, "name", b"")) if hasattr(info, "name") else ""
        return GiProfileInfo(index, int(info.id), name, int(info.sliceCount), int(info.instanceCount),
                             int(info.multiprocessorCount), int(info.memorySizeMB))

    def gi_placements(self, uuid: str, index: int) -> list[MigPlacement]:
        nvml = self._nvml
        handle = self._handle(uuid)
        info = self._gi_info(handle, uuid, index)
        placements = (nvml.c_nvmlGpuInstancePlacement_t * max(int(info.instanceCount), 8))()
        count = nvml.c_uint(len(placements))
        self._call(f"{uuid} placements of profile {index}", nvml.nvmlDeviceGetGpuInstancePossiblePlacements, handle,
                   info.id, placements, nvml.byref(count))
        return [MigPlacement(int(p.start), int(p.size)) for p in placements[: count.value]]

    def create_gpu_instance(self, uuid: str, index: int, placement: MigPlacement) -> int:
        nvml = self._nvml
        handle = self._handle(uuid)
        info = self._gi_info(handle, uuid, index)
        wanted = nvml.c_nvmlGpuInstancePlacement_t(placement.start, placement.size)
        gi = self._call(f"{uuid} create GPU instance {index}@{placement.start}",
                        nvml.nvmlDeviceCreateGpuInstanceWithPlacement, handle, info.id, nvml.byref(wanted))
        return int(self._call(f"{uuid} GPU instance info", nvml.nvmlGpuInstanceGetInfo, gi).id)

    def _gi(self, uuid: str, gpu_instance: int) -> Any:
        return self._call(f"{uuid} GPU instance {gpu_instance}", self._nvml.nvmlDeviceGetGpuInstanceById,
                          self._handle(uuid), gpu_instance)

    def create_compute_instance(self, uuid: str, gpu_instance: int, ci_index: int) -> int:
        nvml = self._nvml
        gi = self._gi(uuid, gpu_instance)
        info = self._call(f"{uuid} compute profile {ci_index}", nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo, gi,
                          ci_index, nvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
        ci = self._call(f"{uuid} create compute instance in {gpu_instance}", nvml.nvmlGpuInstanceCreateComputeInstance,
                        gi, info.id)
        return int(self._call(f"{uuid} compute instance info", nvml.nvmlComputeInstanceGetInfo, ci).id)

    def destroy_compute_instance(self, uuid: str, gpu_instance: int, compute_instance: int) -> None:
        nvml = self._nvml
        ci = self._call(f"{uuid} compute instance {gpu_instance}/{compute_instance}",
                        nvml.nvmlGpuInstanceGetComputeInstanceById, self._gi(uuid, gpu_instance), compute_instance)
        self._call(f"{uuid} destroy compute instance {gpu_instance}/{compute_instance}",
                   nvml.nvmlComputeInstanceDestroy, ci)

    def destroy_gpu_instance(self, uuid: str, gpu_instance: int) -> None:
        self._call(f"{uuid} destroy GPU instance {gpu_instance}", self._nvml.nvmlGpuInstanceDestroy,
                   self._gi(uuid, gpu_instance))

    def gpu_instances(self, uuid: str) -> list[MigInstance]:
        nvml = self._nvml
        handle = self._handle(uuid)
        mig_uuids = self._mig_devices(handle)
        found = []
        for index in sorted({i for indexes in GI_PROFILES_BY_SLICES.values() for i in indexes}):
            try:
                info = self._gi_info(handle, uuid, index)
            except BackendError:
                continue  # a profile this GPU does not have
            handles = (nvml.c_nvmlGpuInstance_t * max(int(info.instanceCount), 1))()
            count = nvml.c_uint(len(handles))
            self._call(f"{uuid} GPU instances of profile {index}", nvml.nvmlDeviceGetGpuInstances, handle, info.id,
                       handles, nvml.byref(count))
            for gi in handles[: count.value]:
                gi_info = self._call(f"{uuid} GPU instance info", nvml.nvmlGpuInstanceGetInfo, gi)
                found.append(MigInstance(int(gi_info.id), int(gi_info.profileId),
                                         MigPlacement(int(gi_info.placement.start), int(gi_info.placement.size)),
                                         self._compute_ids(gi), mig_uuids.get(int(gi_info.id), "")))
        return sorted(found, key=lambda m: m.gpu_instance_id)

    def _compute_ids(self, gi: Any) -> tuple[int, ...]:
        nvml = self._nvml
        ids = []
        for ci_index in range(nvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            try:
                info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    gi, ci_index, nvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
                handles = (nvml.c_nvmlComputeInstance_t * max(int(info.instanceCount), 1))()
                count = nvml.c_uint(len(handles))
                nvml.nvmlGpuInstanceGetComputeInstances(gi, info.id, handles, nvml.byref(count))
            except nvml.NVMLError:
                continue
            ids += [int(nvml.nvmlComputeInstanceGetInfo(ci).id) for ci in handles[: count.value]]
        return tuple(sorted(ids))

    def _mig_devices(self, handle: Any) -> dict[int, str]:
        """MIG device UUIDs by GPU-instance ID (HAMi's findMigUUIDForGI)."""
        nvml = self._nvml
        found: dict[int, str] = {}
        try:
            most = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except nvml.NVMLError:
            return found
        for i in range(most):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
                found[int(nvml.nvmlDeviceGetGpuInstanceId(mig))] = _text(nvml.nvmlDeviceGetUUID(mig))
            except nvml.NVMLError:
                continue
        return found

    def busy(self, uuid: str) -> bool:
        """HAMi's nvmlBusyGPUs for one GPU: its MIG devices when MIG is on, else the GPU itself;
        a failed query counts as busy."""
        nvml = self._nvml
        try:
            handle = self._handle(uuid)
        except BackendError:
            return True
        try:
            mig_on = self.mig_mode(uuid)[0]
        except BackendError as exc:
            if exc.code != "NVML_ERROR_NOT_SUPPORTED":
                return True
            mig_on = False
        targets = [] if mig_on else [handle]
        if mig_on:
            try:
                most = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
            except nvml.NVMLError:
                return True
            for i in range(most):
                try:
                    targets.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i))
                except nvml.NVMLError:
                    continue  # no MIG device at this index
        for target in targets:
            try:
                if (nvml.nvmlDeviceGetComputeRunningProcesses(target)
                        or nvml.nvmlDeviceGetGraphicsRunningProcesses(target)):
                    return True
            except nvml.NVMLError:
                return True
        return False

    def shutdown(self) -> None:
        if self._nvml is None:
            return
        if self._events is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlEventSetFree(self._events)
            self._events = None
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()
        self._nvml = None
