"""A backend that reads GPUs from a YAML file and behaves like NVML, errors included.

    initError: NVML_ERROR_DRIVER_NOT_LOADED   # optional: init() fails like nvmlInit
    devices:
      - uuid: GPU-0aa…                       # required, unique
        name: NVIDIA A100-SXM4-80GB          # NVML's device name (MIG-capable models: see below)
        memory: 81920                        # MiB
        smCount: 108
        numa: 0
        nvlink: [GPU-1bb…, GPU-1bb…, switch] # one entry per enabled NVLink: the peer GPU, or an NVSwitch
        topology: {GPU-2cc…: SYSTEM}         # PCIe common ancestor with a peer (INTERNAL, SINGLE,
                                             # MULTIPLE, HOSTBRIDGE, NODE, SYSTEM); default NODE on
                                             # the same NUMA node, else SYSTEM
        nvlinkError: NVML_ERROR_UNKNOWN      # optional: NVLink queries fail
        healthy: true
        error: NVML_ERROR_GPU_IS_LOST        # optional: memory queries fail; listed unhealthy
        xids: [79]                           # optional: XID events raised once the plugin watches
        migMode: enabled                     # MIG-capable models: enabled or disabled (default)
        migResetRequired: true               # enabling MIG stays pending (the GPU needs a reset)
        migInstances:                        # instances present from the start (an earlier run's)
          - {profile: 2g.10gb, start: 2, busy: true}   # busy: a process runs on it

MIG-capable models (hami.deviceplugin.mig_geometry): A100 40GB and 80GB, H100 80GB, H200 141GB,
with NVIDIA's profiles and placements. GPU and compute instances are created and destroyed
with NVML's rules and return codes: NVML_ERROR_NOT_SUPPORTED (no MIG, MIG mode off, a profile
the model lacks), NVML_ERROR_INVALID_ARGUMENT (a placement NVML does not list),
NVML_ERROR_INSUFFICIENT_RESOURCES (overlap, or the profile's instances used up),
NVML_ERROR_IN_USE (a compute instance with a process, a GPU instance with compute instances),
NVML_ERROR_NOT_FOUND (an instance that is gone).

The file is read again when it changes, so flipping `healthy` (or adding `xids`) by hand
pushes a health change to kubelet, as an XID would on a real GPU. Tests can also call
inject_xid(), set_health(), set_busy() and fail_next().
"""

from __future__ import annotations

import queue
import threading
import uuid as uuidlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from hami.deviceplugin.backend import (
    APPLICATION_XIDS,
    CI_PROFILE_BY_SLICES,
    NVLINK_DEVICE_GPU,
    NVLINK_DEVICE_SWITCH,
    TOPOLOGY_HOSTBRIDGE,
    TOPOLOGY_INTERNAL,
    TOPOLOGY_MULTIPLE,
    TOPOLOGY_NODE,
    TOPOLOGY_SINGLE,
    TOPOLOGY_SYSTEM,
    BackendError,
    GiProfileInfo,
    GpuInfo,
    HealthEvent,
    MigInstance,
    NvLink,
)
from hami.deviceplugin.mig_geometry import Geometry, GeometryProfile, geometry_for
from hami.errors import HamiError
from hami.model.mig import MigPlacement

TOPOLOGY_LEVELS = {"INTERNAL": TOPOLOGY_INTERNAL, "SINGLE": TOPOLOGY_SINGLE, "MULTIPLE": TOPOLOGY_MULTIPLE,
                   "HOSTBRIDGE": TOPOLOGY_HOSTBRIDGE, "NODE": TOPOLOGY_NODE, "SYSTEM": TOPOLOGY_SYSTEM}
SWITCH = "switch"
SWITCH_BUS_ID = "00000000:F0:00.0"
GI_PROFILE_COUNT = 0x12  # NVML_GPU_INSTANCE_PROFILE_COUNT


def _where(path: Path | None, position: int) -> str:
    return f"{path or 'fake devices'}: devices[{position}]"


@dataclass
class _GpuInstance:
    id: int
    profile: GeometryProfile
    placement: MigPlacement
    compute: dict[int, bool] = field(default_factory=dict)  # compute instance -> a process runs on it
    generation: int = 0

    def mig_uuid(self, gpu: str) -> str:
        return "MIG-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_OID, f"{gpu}/{self.id}/{self.placement}/{self.generation}"))


@dataclass
class _Mig:
    geometry: Geometry
    current: bool = False
    pending: bool = False
    reset_required: bool = False
    instances: dict[int, _GpuInstance] = field(default_factory=dict)
    created: int = 0


@dataclass
class FakeSpec:
    """A parsed fake-devices file."""

    init_error: str | None = None
    gpus: list[GpuInfo] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    xids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    links: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per GPU: a peer UUID or "switch" per link
    topology: dict[str, dict[str, int]] = field(default_factory=dict)
    link_errors: dict[str, str] = field(default_factory=dict)
    mig: dict[str, dict[str, Any]] = field(default_factory=dict)  # per MIG-capable GPU: its raw MIG keys


def _whole(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HamiError(f"{where}: '{key}' must be a whole number >= 0, got {value!r}")
    return value


def parse_fake_devices(raw: Any, path: Path | None = None) -> FakeSpec:
    """The fake GPUs from the YAML value; HamiError naming the entry on bad input."""
    name = str(path or "fake devices")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HamiError(f"{name}: expected a mapping with a 'devices' list")
    spec = FakeSpec()
    init_error = raw.get("initError")
    if init_error is not None and not isinstance(init_error, str):
        raise HamiError(f"{name}: initError must be an NVML error name")
    spec.init_error = init_error
    items = raw.get("devices") or []
    if not isinstance(items, list):
        raise HamiError(f"{name}: 'devices' must be a list")
    for position, item in enumerate(items):
        where = _where(path, position)
        if not isinstance(item, dict):
            raise HamiError(f"{where}: not a mapping")
        uuid = item.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise HamiError(f"{where}: missing 'uuid'")
        if any(g.uuid == uuid for g in spec.gpus):
            raise HamiError(f"{where}: uuid {uuid} appears twice")
        where = f"{where} ({uuid})"
        if item.get("memory") is None:
            raise HamiError(f"{where}: 'memory' must be a whole number >= 0, got None")
        memory = _whole(where, "memory", item.get("memory"))
        sm_count = _whole(where, "smCount", item.get("smCount", 0))
        numa = _whole(where, "numa", item.get("numa", 0))
        healthy = item.get("healthy", True)
        if not isinstance(healthy, bool):
            raise HamiError(f"{where}: 'healthy' must be true or false")
        links = item.get("nvlink") or []
        if not isinstance(links, list) or not all(isinstance(p, str) for p in links):
            raise HamiError(f"{where}: 'nvlink' must be a list of UUIDs (or '{SWITCH}')")
        spec.links[uuid] = tuple(links)
        topology = item.get("topology") or {}
        if not isinstance(topology, dict):
            raise HamiError(f"{where}: 'topology' must map peer UUIDs to levels")
        levels = {}
        for peer, level in topology.items():
            if level not in TOPOLOGY_LEVELS:
                raise HamiError(f"{where}: topology level {level!r} of {peer} is not one of "
                                f"{', '.join(TOPOLOGY_LEVELS)}")
            levels[str(peer)] = TOPOLOGY_LEVELS[level]
        spec.topology[uuid] = levels
        for key, target in (("error", spec.errors), ("nvlinkError", spec.link_errors)):
            error = item.get(key)
            if error is not None:
                if not isinstance(error, str):
                    raise HamiError(f"{where}: '{key}' must be an NVML error name")
                target[uuid] = error
        raw_xids = item.get("xids") or []
        if not isinstance(raw_xids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw_xids):
            raise HamiError(f"{where}: 'xids' must be a list of numbers")
        spec.xids[uuid] = tuple(raw_xids)
        gpu_name = str(item.get("name", "NVIDIA Fake GPU"))
        mig_keys = {k: item[k] for k in ("migMode", "migResetRequired", "migInstances") if k in item}
        if geometry_for(gpu_name) is not None:
            spec.mig[uuid] = mig_keys
        elif mig_keys:
            raise HamiError(f"{where}: {gpu_name} has no MIG (MIG models: A100 40GB/80GB, H100 80GB, H200)")
        spec.gpus.append(
            GpuInfo(
                uuid=uuid,
                index=position,
                name=gpu_name,
                memory_mib=memory,
                sm_count=sm_count,
                numa=numa,
                nvlink_peers=tuple(dict.fromkeys(p for p in links if p != SWITCH)),
                healthy=healthy and uuid not in spec.errors,
                pci_bus_id=f"00000000:{position + 1:02X}:00.0",
            )
        )
    known = {g.uuid for g in spec.gpus}
    for gpu in spec.gpus:
        for peer in (*gpu.nvlink_peers, *spec.topology[gpu.uuid]):
            if peer not in known:
                raise HamiError(f"{name}: {gpu.uuid} names a peer {peer} that is not listed")
    return spec


def _mig_state(gpu: GpuInfo, raw: dict[str, Any], where: str) -> _Mig:
    geometry = geometry_for(gpu.name)
    assert geometry is not None
    mode = raw.get("migMode", "disabled")
    if mode not in ("enabled", "disabled"):
        raise HamiError(f"{where}: migMode must be enabled or disabled")
    state = _Mig(geometry=geometry, current=mode == "enabled", pending=mode == "enabled",
                 reset_required=bool(raw.get("migResetRequired", False)))
    for position, item in enumerate(raw.get("migInstances") or []):
        what = f"{where}: migInstances[{position}]"
        if not state.current:
            raise HamiError(f"{what}: instances need migMode: enabled")
        if not isinstance(item, dict):
            raise HamiError(f"{what}: expected {{profile, start}}")
        profile = next((p for p in geometry.profiles if p.name == item.get("profile")), None)
        if profile is None:
            names = ", ".join(p.name for p in geometry.profiles)
            raise HamiError(f"{what}: profile {item.get('profile')!r} is not one of {geometry.model}'s: {names}")
        placement = next((p for p in profile.placements if p.start == item.get("start")), None)
        if placement is None:
            raise HamiError(f"{what}: {profile.name} cannot start at {item.get('start')!r}")
        try:
            gi = _create_gi(state, profile, placement)
        except BackendError as exc:
            raise HamiError(f"{what}: {exc}") from None
        gi.compute[0] = bool(item.get("busy", False))
    return state


def _create_gi(state: _Mig, profile: GeometryProfile, placement: MigPlacement) -> _GpuInstance:
    same = [g for g in state.instances.values() if g.profile.index == profile.index]
    if len(same) >= profile.instances or any(placement.overlaps(g.placement) for g in state.instances.values()):
        raise BackendError("NVML_ERROR_INSUFFICIENT_RESOURCES", f"{profile.name} at {placement.start} does not fit")
    gi_id = 0 if profile.slices >= 7 else min(set(range(1, 16)) - set(state.instances))
    state.created += 1
    gi = _GpuInstance(gi_id, profile, placement, generation=state.created)
    state.instances[gi_id] = gi
    return gi


class FakeBackend:
    """GPUs from a YAML file (or a parsed mapping), with NVML's failure modes."""

    def __init__(self, path: str | Path | None = None, data: Any = None) -> None:
        self._path = Path(path) if path is not None else None
        self._mtime: int | None = None
        self._initialized = False
        self._lock = threading.RLock()
        self._events: queue.Queue[HealthEvent] = queue.Queue()
        self._xids_sent: dict[str, tuple[int, ...]] = {}
        self._spec = FakeSpec()
        self._mig: dict[str, _Mig] = {}
        self._failures: dict[str, list[str]] = {}
        self._load(data if self._path is None else None)
        self._mig = {g.uuid: _mig_state(g, self._spec.mig[g.uuid], f"{self._path or 'fake devices'} ({g.uuid})")
                     for g in self._spec.gpus if g.uuid in self._spec.mig}

    @property
    def _gpus(self) -> list[GpuInfo]:
        return self._spec.gpus

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
        self._spec = parse_fake_devices(data, self._path)

    def init(self) -> None:
        if self._spec.init_error:
            raise BackendError(self._spec.init_error, "nvmlInit failed (fake devices)")
        self._initialized = True

    def _ready(self) -> None:
        if not self._initialized:
            raise BackendError("NVML_ERROR_UNINITIALIZED", "init() was not called")

    def devices(self) -> list[GpuInfo]:
        self._ready()
        return list(self._gpus)

    def _gpu(self, uuid: str) -> GpuInfo:
        self._ready()
        for gpu in self._gpus:
            if gpu.uuid == uuid:
                return gpu
        raise BackendError("NVML_ERROR_NOT_FOUND", f"no GPU {uuid}")

    # ---- health -----------------------------------------------------------------------

    def inject_xid(self, uuid: str, xid: int) -> None:
        """Raise an XID on a GPU, as the driver would; application XIDs are ignored like NVML's watcher does."""
        if xid not in APPLICATION_XIDS:
            self._events.put(HealthEvent(uuid=uuid, healthy=False, reason=f"XID {xid}"))

    def set_health(self, uuid: str, healthy: bool, reason: str = "set by test") -> None:
        self._spec.gpus = [replace(g, healthy=healthy) if g.uuid == uuid else g for g in self._gpus]
        self._events.put(HealthEvent(uuid=uuid, healthy=healthy, reason=reason))

    def _queue_file_xids(self) -> None:
        for uuid, xids in self._spec.xids.items():
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
                reason = self._spec.errors.get(gpu.uuid, f"{said} in the fake devices file")
                self._events.put(HealthEvent(uuid=gpu.uuid, healthy=gpu.healthy, reason=reason))

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        self._ready()
        self._reload_if_changed()
        self._queue_file_xids()
        try:
            return self._events.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None

    def shutdown(self) -> None:
        self._initialized = False

    # ---- links ------------------------------------------------------------------------

    def nvlinks(self, uuid: str) -> list[NvLink]:
        self._gpu(uuid)
        error = self._spec.link_errors.get(uuid)
        if error:
            raise BackendError(error, f"nvmlDeviceGetNvLinkState({uuid})")
        bus = {g.uuid: g.pci_bus_id for g in self._gpus}
        return [NvLink(SWITCH_BUS_ID, NVLINK_DEVICE_SWITCH) if peer == SWITCH else NvLink(bus[peer], NVLINK_DEVICE_GPU)
                for peer in self._spec.links.get(uuid, ())]

    def common_ancestor(self, uuid: str, peer: str) -> int:
        a, b = self._gpu(uuid), self._gpu(peer)
        given = self._spec.topology.get(uuid, {}).get(peer, self._spec.topology.get(peer, {}).get(uuid))
        if given is not None:
            return given
        return TOPOLOGY_NODE if a.numa == b.numa else TOPOLOGY_SYSTEM

    # ---- MIG --------------------------------------------------------------------------

    def fail_next(self, operation: str, code: str) -> None:
        """Make the next call of a MIG operation (a method name, e.g. create_compute_instance) fail."""
        with self._lock:
            self._failures.setdefault(operation, []).append(code)

    def _check(self, operation: str) -> None:
        waiting = self._failures.get(operation)
        if waiting:
            code = waiting.pop(0)
            raise BackendError(code, f"{operation} (injected)")

    def _mig_of(self, uuid: str, operation: str, enabled: bool = True) -> _Mig:
        gpu = self._gpu(uuid)
        self._check(operation)
        state = self._mig.get(uuid)
        if state is None:
            raise BackendError("NVML_ERROR_NOT_SUPPORTED", f"{gpu.name} has no MIG")
        if enabled and not state.current:
            raise BackendError("NVML_ERROR_NOT_SUPPORTED", f"MIG mode is disabled on {uuid}")
        return state

    def mig_mode(self, uuid: str) -> tuple[bool, bool]:
        with self._lock:
            state = self._mig_of(uuid, "mig_mode", enabled=False)
            return state.current, state.pending

    def set_mig_mode(self, uuid: str, enabled: bool) -> None:
        with self._lock:
            state = self._mig_of(uuid, "set_mig_mode", enabled=False)
            if not enabled and state.instances:
                raise BackendError("NVML_ERROR_IN_USE", f"{uuid} still has GPU instances")
            state.pending = enabled
            if not state.reset_required:
                state.current = enabled

    def _profile(self, state: _Mig, index: int) -> GeometryProfile:
        if not 0 <= index < GI_PROFILE_COUNT:
            raise BackendError("NVML_ERROR_INVALID_ARGUMENT", f"GPU instance profile {index}")
        profile = state.geometry.profile(index)
        if profile is None:
            raise BackendError("NVML_ERROR_NOT_SUPPORTED", f"{state.geometry.model} has no profile {index}")
        return profile

    def gi_profile(self, uuid: str, index: int) -> GiProfileInfo:
        with self._lock:
            p = self._profile(self._mig_of(uuid, "gi_profile"), index)
            return GiProfileInfo(p.index, p.id, f"MIG {p.name}", p.slices, p.instances, p.sm_count, p.memory_mib)

    def gi_placements(self, uuid: str, index: int) -> list[MigPlacement]:
        with self._lock:
            return list(self._profile(self._mig_of(uuid, "gi_placements"), index).placements)

    def create_gpu_instance(self, uuid: str, index: int, placement: MigPlacement) -> int:
        with self._lock:
            state = self._mig_of(uuid, "create_gpu_instance")
            profile = self._profile(state, index)
            if placement not in profile.placements:
                raise BackendError("NVML_ERROR_INVALID_ARGUMENT", f"{profile.name} has no placement {placement}")
            return _create_gi(state, profile, placement).id

    def _instance(self, uuid: str, gpu_instance: int, operation: str) -> _GpuInstance:
        gi = self._mig_of(uuid, operation).instances.get(gpu_instance)
        if gi is None:
            raise BackendError("NVML_ERROR_NOT_FOUND", f"no GPU instance {gpu_instance} on {uuid}")
        return gi

    def create_compute_instance(self, uuid: str, gpu_instance: int, ci_index: int) -> int:
        with self._lock:
            gi = self._instance(uuid, gpu_instance, "create_compute_instance")
            if CI_PROFILE_BY_SLICES.get(gi.profile.slices) != ci_index:
                raise BackendError("NVML_ERROR_NOT_SUPPORTED", f"compute profile {ci_index} in a {gi.profile.name}")
            if gi.compute:
                raise BackendError("NVML_ERROR_INSUFFICIENT_RESOURCES", f"GPU instance {gpu_instance} is full")
            gi.compute[0] = False
            return 0

    def destroy_compute_instance(self, uuid: str, gpu_instance: int, compute_instance: int) -> None:
        with self._lock:
            gi = self._instance(uuid, gpu_instance, "destroy_compute_instance")
            if compute_instance not in gi.compute:
                raise BackendError("NVML_ERROR_NOT_FOUND", f"no compute instance {compute_instance}")
            if gi.compute[compute_instance]:
                raise BackendError("NVML_ERROR_IN_USE", f"a process runs on {gi.mig_uuid(uuid)}")
            del gi.compute[compute_instance]

    def destroy_gpu_instance(self, uuid: str, gpu_instance: int) -> None:
        with self._lock:
            gi = self._instance(uuid, gpu_instance, "destroy_gpu_instance")
            if gi.compute:
                raise BackendError("NVML_ERROR_IN_USE", f"GPU instance {gpu_instance} has compute instances")
            del self._mig_of(uuid, "destroy_gpu_instance").instances[gpu_instance]

    def gpu_instances(self, uuid: str) -> list[MigInstance]:
        with self._lock:
            state = self._mig_of(uuid, "gpu_instances", enabled=False)
            return [MigInstance(gi.id, gi.profile.id, gi.placement, tuple(gi.compute),
                                gi.mig_uuid(uuid) if gi.compute else "")
                    for gi in sorted(state.instances.values(), key=lambda g: g.id)]

    def busy(self, uuid: str) -> bool:
        with self._lock:
            state = self._mig.get(uuid)
            return state is not None and any(busy for gi in state.instances.values() for busy in gi.compute.values())

    def set_busy(self, mig_uuid: str, busy: bool = True) -> None:
        """Start (or end) a process on a MIG device, as a container would."""
        with self._lock:
            for gpu, state in self._mig.items():
                for gi in state.instances.values():
                    if gi.compute and gi.mig_uuid(gpu) == mig_uuid:
                        gi.compute = dict.fromkeys(gi.compute, busy)
                        return
        raise KeyError(mig_uuid)
