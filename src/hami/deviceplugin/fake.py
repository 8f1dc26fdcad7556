"""A backend that reads GPUs from a YAML file and behaves like NVML, errors included.

    initError: NVML_ERROR_DRIVER_NOT_LOADED   # optional: init() fails like nvmlInit
    devices:
      - uuid: GPU-0aa…                       # required, unique
        name: NVIDIA A100-SXM4-80GB          # NVML's device name
        memory: 81920                        # MiB
        smCount: 108
        numa: 0
        nvlink: [GPU-1bb…]                   # peers over NVLink
        healthy: true
        error: NVML_ERROR_GPU_IS_LOST        # optional: memory queries fail; listed unhealthy
        xids: [79]                           # optional: XID events raised once the plugin watches

The file is read again when it changes, so flipping `healthy` (or adding `xids`) by hand
pushes a health change to kubelet, as an XID would on a real GPU. Tests can also call
inject_xid() and set_health().
"""

from __future__ import annotations

import queue
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from hami.deviceplugin.backend import APPLICATION_XIDS, BackendError, GpuInfo, HealthEvent
from hami.errors import HamiError


def _where(path: Path | None, position: int) -> str:
    return f"{path or 'fake devices'}: devices[{position}]"


FakeDevices = tuple[str | None, list[GpuInfo], dict[str, str], dict[str, tuple[int, ...]]]


def parse_fake_devices(raw: Any, path: Path | None = None) -> FakeDevices:
    """(init error, GPUs, per-GPU query errors, per-GPU XIDs) from the YAML value; HamiError on bad input."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HamiError(f"{path or 'fake devices'}: expected a mapping with a 'devices' list")
    init_error = raw.get("initError")
    if init_error is not None and not isinstance(init_error, str):
        raise HamiError(f"{path or 'fake devices'}: initError must be an NVML error name")
    items = raw.get("devices") or []
    if not isinstance(items, list):
        raise HamiError(f"{path or 'fake devices'}: 'devices' must be a list")
    gpus: list[GpuInfo] = []
    errors: dict[str, str] = {}
    xids: dict[str, tuple[int, ...]] = {}
    for position, item in enumerate(items):
        where = _where(path, position)
        if not isinstance(item, dict):
            raise HamiError(f"{where}: not a mapping")
        uuid = item.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise HamiError(f"{where}: missing 'uuid'")
        if any(g.uuid == uuid for g in gpus):
            raise HamiError(f"{where}: uuid {uuid} appears twice")
        values: dict[str, int] = {}
        for key, default in (("memory", None), ("smCount", 0), ("numa", 0)):
            value = item.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise HamiError(f"{where} ({uuid}): '{key}' must be a whole number >= 0, got {value!r}")
            values[key] = value
        healthy = item.get("healthy", True)
        if not isinstance(healthy, bool):
            raise HamiError(f"{where} ({uuid}): 'healthy' must be true or false")
        peers = item.get("nvlink") or []
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers):
            raise HamiError(f"{where} ({uuid}): 'nvlink' must be a list of UUIDs")
        error = item.get("error")
        if error is not None:
            if not isinstance(error, str):
                raise HamiError(f"{where} ({uuid}): 'error' must be an NVML error name")
            errors[uuid] = error
        raw_xids = item.get("xids") or []
        if not isinstance(raw_xids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw_xids):
            raise HamiError(f"{where} ({uuid}): 'xids' must be a list of numbers")
        xids[uuid] = tuple(raw_xids)
        gpus.append(
            GpuInfo(
                uuid=uuid,
                index=position,
                name=str(item.get("name", "NVIDIA Fake GPU")),
                memory_mib=values["memory"],
                sm_count=values["smCount"],
                numa=values["numa"],
                nvlink_peers=tuple(peers),
                healthy=healthy and uuid not in errors,
                pci_bus_id=f"00000000:{position + 1:02X}:00.0",
            )
        )
    known = {g.uuid for g in gpus}
    for gpu in gpus:
        for peer in gpu.nvlink_peers:
            if peer not in known:
                raise HamiError(f"{path or 'fake devices'}: {gpu.uuid} has an NVLink peer {peer} that is not listed")
    return init_error, gpus, errors, xids


class FakeBackend:
    """GPUs from a YAML file (or a parsed mapping), with NVML's failure modes."""

    def __init__(self, path: str | Path | None = None, data: Any = None) -> None:
        self._path = Path(path) if path is not None else None
        self._mtime: int | None = None
        self._initialized = False
        self._events: queue.Queue[HealthEvent] = queue.Queue()
        self._xids_sent: dict[str, tuple[int, ...]] = {}
        self._init_error: str | None = None
        self._gpus: list[GpuInfo] = []
        self._errors: dict[str, str] = {}
        self._xids: dict[str, tuple[int, ...]] = {}
        self._load(data if self._path is None else None)

    def _load(self, data: Any = None) -> None:
        if self._path is not None:
            try:
                stat = self._path.stat()
                text = self._path.read_text()
            except OSError as exc:
                raise HamiError(f"cannot read fake devices {self._path}: {exc.strerror}") from None
            self._mtime = stat.st_mtime_ns
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise HamiError(f"fake devices {self._path} is not valid YAML: {exc}") from None
        self._init_error, self._gpus, self._errors, self._xids = parse_fake_devices(data, self._path)

    def init(self) -> None:
        if self._init_error:
            raise BackendError(self._init_error, "nvmlInit failed (fake devices)")
        self._initialized = True

    def devices(self) -> list[GpuInfo]:
        if not self._initialized:
            raise BackendError("NVML_ERROR_UNINITIALIZED", "init() was not called")
        return list(self._gpus)

    def inject_xid(self, uuid: str, xid: int) -> None:
        """Raise an XID on a GPU, as the driver would; application XIDs are ignored like NVML's watcher does."""
        if xid not in APPLICATION_XIDS:
            self._events.put(HealthEvent(uuid=uuid, healthy=False, reason=f"XID {xid}"))

    def set_health(self, uuid: str, healthy: bool, reason: str = "set by test") -> None:
        self._gpus = [replace(g, healthy=healthy) if g.uuid == uuid else g for g in self._gpus]
        self._events.put(HealthEvent(uuid=uuid, healthy=healthy, reason=reason))

    def _queue_file_xids(self) -> None:
        for uuid, xids in self._xids.items():
            sent = self._xids_sent.get(uuid, ())
            for xid in xids[len(sent) :]:
                self.inject_xid(uuid, xid)
            self._xids_sent[uuid] = xids

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        before = {g.uuid: g.healthy for g in self._gpus}
        try:
            self._load()
        except HamiError:
            self._mtime = mtime  # a half-written file: keep the old view, try again on the next change
            return
        for gpu in self._gpus:
            if gpu.uuid in before and before[gpu.uuid] != gpu.healthy:
                said = "healthy" if gpu.healthy else "unhealthy"
                reason = self._errors.get(gpu.uuid, f"{said} in the fake devices file")
                self._events.put(HealthEvent(uuid=gpu.uuid, healthy=gpu.healthy, reason=reason))

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        if not self._initialized:
            raise BackendError("NVML_ERROR_UNINITIALIZED", "init() was not called")
        self._reload_if_changed()
        self._queue_file_xids()
        try:
            return self._events.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None

    def shutdown(self) -> None:
        self._initialized = False
