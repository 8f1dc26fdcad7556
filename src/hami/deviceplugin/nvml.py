"""GPU discovery and XID health events through NVML (the official `nvidia-ml-py` bindings)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from hami.deviceplugin.backend import APPLICATION_XIDS, BackendError, GpuInfo, HealthEvent

log = logging.getLogger(__name__)

SYSFS_PCI = Path("/sys/bus/pci/devices")


def _nvml() -> Any:
    import pynvml  # type: ignore[import-untyped]  # no stubs; imported late so CPU-only use never loads it

    return pynvml


def _error_name(nvml: Any, exc: Exception) -> str:
    value = getattr(exc, "value", None)
    for name in dir(nvml):
        if name.startswith("NVML_ERROR_") and getattr(nvml, name) == value:
            return str(name)
    return "NVML_ERROR_UNKNOWN"


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
