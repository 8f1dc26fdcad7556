"""Enflame DRS (HAMi's `Enflame`): GCUs cut into hardware slices by named profiles.

Enflame's device plugin writes `enflame.com/gcu-drs-capacity` on the node: each GCU with its
slice capacity, and the profiles the hardware offers (`"3g.20gb": "1"` is profile ID 1: three
slices and 20 GB). A container asks one GCU either directly, by slices (`enflame.com/drs-gcu`),
or by memory and compute (`enflame.com/gcu-memory`, `enflame.com/gcu-core`), which picks the
smallest profile that holds both. The chosen profile's memory and compute share are what the
device gives, and the profile's slices are what it uses of the GCU's slice capacity. The
decision's `enflame.com/gcu-assigned-*` and `assigned-containers` annotations tell Enflame's
own plugin which slice profile to create. The whole-GCU vendor `GCU` is a row in table.py.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.annotations.errors import AnnotationError
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.model.devices import DeviceInfo
from hami.model.requests import NO_PERCENTAGE, ContainerRequest
from hami.scheduler import reasons as R
from hami.vendors.base import (
    INT32_MAX,
    AnnotationKeys,
    BoolArray,
    IntArray,
    LockKind,
    Need,
    NodeSource,
    PodDecisionInput,
    Resources,
    Rows,
    Vendor,
    config_name,
    config_section,
    device_table,
    json_annotation,
    resources_of,
)

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

VENDOR = "Enflame"
DRS_CAPACITY = "enflame.com/gcu-drs-capacity"
ASSIGNED = "enflame.com/gcu-assigned"
ASSIGNED_TIME = "enflame.com/gcu-assigned-time"
ASSIGNED_INDEX = "enflame.com/gcu-assigned-index"
ASSIGNED_ID = "enflame.com/gcu-assigned-id"
ASSIGNED_MINOR = "enflame.com/gcu-assigned-minor"
REQUEST_SIZE = "enflame.com/gcu-request-size"
ASSIGNED_CONTAINERS = "assigned-containers"  # no domain prefix: Enflame's plugin reads it so
DIRECT, SPEC = "direct", "spec"  # asked by slices, or by memory and compute


@dataclass(frozen=True)
class Profile:
    """One DRS profile: `size` slices, `memory_gb` GB and `core_percent` of the GCU's compute."""

    name: str
    id: str
    size: int
    memory_gb: int
    core_percent: int

    @property
    def memory_mib(self) -> int:
        return self.memory_gb * 1024


_INT = re.compile(r"^[+-]?\d+$")


def parse_profile(name: str) -> tuple[int, int]:
    """(slices, GB) of a profile name `"<N>g.<M>gb"`; 0 for a part that does not parse (as HAMi)."""
    parts = name.strip().lower().split(".")
    if len(parts) < 2:
        return 0, 0
    size_text = parts[0].strip().removesuffix("g")
    if not _INT.match(size_text):
        return 0, 0
    memory_text = parts[1].strip().removesuffix("gb")
    return int(size_text), int(memory_text) if _INT.match(memory_text) else 0


@functools.lru_cache(maxsize=256)
def profile_table(profiles: tuple[tuple[str, str], ...], max_slice: int) -> tuple[Profile, ...]:
    """A GCU's usable profiles, smallest first (by slices, then memory), as HAMi orders them."""
    if max_slice <= 0:
        max_slice = max((parse_profile(name)[0] for name, _ in profiles), default=0)
    if max_slice <= 0:
        return ()
    table = []
    for name, profile_id in profiles:
        size, memory_gb = parse_profile(name)
        if size <= 0 or memory_gb <= 0:
            continue
        table.append(Profile(name, profile_id, size, memory_gb, -(-size * 100 // max_slice)))
    return tuple(sorted(table, key=lambda p: (p.size, p.memory_gb)))


def _profiles_of(device: DeviceInfo) -> tuple[tuple[str, str], ...] | None:
    raw = device.custom.get("profiles")
    if not isinstance(raw, dict):
        return None
    return tuple(sorted((str(k), v) for k, v in raw.items() if isinstance(v, str)))


def _custom_count(value: Any) -> int:
    """HAMi's readCustomInfoInt: an int, a whole float in int32 range or a decimal string; else 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and -(2**31) <= value <= INT32_MAX else 0
    if isinstance(value, str) and _INT.match(value.strip()):
        return int(value.strip())
    return 0


def device_profiles(device: DeviceInfo) -> tuple[Profile, ...]:
    profiles = _profiles_of(device)
    if profiles is None:
        return ()
    return profile_table(profiles, _custom_count(device.custom.get("maxSlice")))


def select_profile(table: Sequence[Profile], ask: ContainerRequest) -> Profile | None:
    """HAMi's selectProfileByRequest; None when no profile fits (ModeNotFit)."""
    if not table:
        return None
    chosen: Profile | None = None
    if ask.variant == DIRECT:
        chosen = next((p for p in table if p.size == ask.memreq), None)
    else:
        largest = table[-1].memory_gb
        memory_gb = normalize_memory_gb(ask.memreq, largest)
        for profile in table:
            if memory_gb > 0 and profile.memory_gb < memory_gb:
                continue
            if ask.coresreq > 0 and profile.core_percent < ask.coresreq:
                continue
            chosen = profile
            break
    # A profile too large for HAMi's 32-bit counters does not fit (HAMi's guards).
    if chosen is None or chosen.size > INT32_MAX or chosen.memory_gb > INT32_MAX // 1024 \
            or chosen.core_percent > INT32_MAX:
        return None
    return chosen


def normalize_memory_gb(memory: int, largest_gb: int) -> int:
    """gcu-memory in GB: a value over twice the largest profile's GB is taken as MiB (rounded up)."""
    if memory <= 0:
        return 0
    if largest_gb <= 0:
        return memory
    if memory > largest_gb * 2:
        return -(-memory // 1024)
    return memory


def placed_profile(device: DeviceInfo, placed: ContainerDevice) -> Profile | None:
    """The profile a placed device was given, found again from its memory and compute share."""
    table = device_profiles(device)
    for profile in table:
        if profile.memory_mib == placed.usedmem and profile.core_percent == placed.usedcores:
            return profile
    return next((p for p in table if p.core_percent == placed.usedcores), None)


@dataclass
class EnflameDrs(Vendor):
    """HAMi's EnflameDevices (DRS slices) with the chart's resource names (device-config `enflame:`)."""

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        r = self.resources
        slices = self.quantity(container, r.count)
        if slices == 0:  # a count of 0 asks for nothing (HAMi's webhook denies it)
            return None
        if slices:
            return ContainerRequest(nums=1, memreq=slices, mem_percentage=0, coresreq=0, vendor=self.name,
                                    variant=DIRECT)
        memory = self.quantity(container, r.memory)
        cores = self.quantity(container, r.cores)
        if memory is None and cores is None:
            return None
        return ContainerRequest(nums=1, memreq=memory or 0, mem_percentage=NO_PERCENTAGE, coresreq=cores or 0,
                                vendor=self.name, variant=SPEC)

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        r = self.resources
        assert r.memory is not None and r.cores is not None
        limits, requests = resources_of(container)
        if r.count in limits or r.count in requests:
            raw = limits.get(r.count, requests.get(r.count))
            if self.quantity(container, r.count) == 0:  # asks for nothing (HAMi denies it: compatibility.md)
                return False
            _copy_to_both(container, r.count, raw)
            return True
        memory = self.quantity(container, r.memory)
        cores = self.quantity(container, r.cores)
        if memory is None and cores is None:
            return False
        if memory is not None and memory <= 0:
            raise HamiError(f"{r.memory} must be greater than 0")
        if cores is not None and not 0 < cores <= 100:
            raise HamiError(f"{r.cores} must be in range (0,100]")
        for name in (r.memory, r.cores):
            if name in limits or name in requests:
                _copy_to_both(container, name, limits.get(name, requests.get(name)))
        return True

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        metadata = node.get("metadata") or {}
        spec = json_annotation(metadata.get("annotations") or {}, DRS_CAPACITY)
        if spec is None:
            return []
        return decode_drs_capacity(str(metadata.get("name")), spec)

    def need(self, ask: ContainerRequest, state: ClusterState, rows: Rows, used: IntArray, usedmem: IntArray,
             usedcores: IntArray) -> Need:
        return self._need(ask, state, rows)[0]

    def _need(self, ask: ContainerRequest, state: ClusterState, rows: Rows) -> tuple[Need, BoolArray]:
        """What the profile each row's GCU would give the ask takes, and where no profile fits."""
        codes, tables = device_table(state, "enflame-profiles", lambda d: device_profiles(d) or None)
        chosen = [select_profile(table, ask) for table in tables] + [None]  # code -1: not a DRS GCU
        which = codes[rows]
        size = np.asarray([p.size if p else 1 for p in chosen], dtype=np.int64)[which]
        mem = np.asarray([p.memory_mib if p else 0 for p in chosen], dtype=np.int64)[which]
        cores = np.asarray([p.core_percent if p else 0 for p in chosen], dtype=np.int64)[which]
        missing = np.asarray([p is None for p in chosen], dtype=bool)[which]
        return Need(slots=size, mem=mem, cores=cores), missing

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need, no_profile = self._need(ask, state, rows)
        count, totalmem, totalcore = state.count[rows], state.totalmem[rows], state.totalcore[rows]
        codes = np.select(
            [
                no_profile,
                used >= count,
                ctx.mutex & (used > 0),
                totalmem - usedmem < need.mem,
                (totalcore > 0) & (totalcore - usedcores < need.cores),
            ],
            [R.CODE_OF[R.MODE_NOT_FIT], R.CODE_OF[R.CARD_TIME_SLICING_EXHAUSTED],
             R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT], R.CODE_OF[R.CARD_INSUFFICIENT_MEMORY],
             R.CODE_OF[R.CARD_INSUFFICIENT_CORE]],
            0,
        ).astype(np.int64)
        return codes, need

    def usage(self, device: DeviceInfo, placed: ContainerDevice) -> tuple[int, int, int]:
        # A profile takes its slices of the GCU's capacity. HAMi reads the slices from the in-memory
        # allocation, so after a restart it counts every pod as one slice; the profile says it again.
        profile = placed_profile(device, placed)
        return (profile.size if profile else 1), placed.usedmem, placed.usedcores

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        result = super().decision_annotations(pod)  # only `-allocated`: HAMi writes no to-allocate key
        result[ASSIGNED] = "false"
        result[ASSIGNED_TIME] = str(pod.now_ns)
        assigned: dict[str, dict[str, Any]] = {}
        for position, container in enumerate(pod.allocation):
            if not container:
                continue
            first = container[0]
            device = pod.device(first.uuid)
            profile = placed_profile(device, first)
            size = profile.size if profile else 1
            name = pod.container_names[position] if position < len(pod.container_names) else f"container-{position}"
            entry: dict[str, Any] = {"allocated": False, "request": size}
            if profile and profile.id:
                entry["profileID"] = profile.id
            if profile and profile.name:
                entry["profileName"] = profile.name
            assigned[name] = entry
            index, minor = str(device.custom.get("index", "")), str(device.custom.get("minor", ""))
            if index and ASSIGNED_INDEX not in result:
                result[ASSIGNED_INDEX] = result[ASSIGNED_ID] = index
            if minor and ASSIGNED_MINOR not in result:
                result[ASSIGNED_MINOR] = minor
            result.setdefault(REQUEST_SIZE, str(size))
        result[ASSIGNED_CONTAINERS] = json.dumps(dict(sorted(assigned.items())), separators=(",", ":"))
        return result

    def decision_keys(self) -> tuple[str, ...]:
        return (*super().decision_keys(), ASSIGNED, ASSIGNED_TIME, ASSIGNED_INDEX, ASSIGNED_ID, ASSIGNED_MINOR,
                REQUEST_SIZE, ASSIGNED_CONTAINERS)


def _copy_to_both(container: dict[str, Any], name: str, value: Any) -> None:
    """HAMi's webhook writes a DRS quantity into both limits and requests (where it is missing)."""
    resources = container.setdefault("resources", {})
    for part in ("limits", "requests"):
        resources.setdefault(part, {}).setdefault(name, value)


def _capacity(raw: Any) -> int | None:
    """A GCU's slice capacity as HAMi reads it (JSON number or decimal string); None when invalid."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return min(raw, INT32_MAX)
    if isinstance(raw, float):
        return int(raw) if raw == raw and -(2**31) <= raw <= INT32_MAX else None
    if isinstance(raw, str) and _INT.match(raw.strip()):
        return min(int(raw.strip()), INT32_MAX)
    return None


def decode_drs_capacity(node: str, spec: Any) -> list[DeviceInfo]:
    """The GCUs of `enflame.com/gcu-drs-capacity`. Raises AnnotationError."""
    if not isinstance(spec, dict):
        raise AnnotationError(f"{DRS_CAPACITY}: not a JSON object")
    devices, profiles = spec.get("devices") or [], spec.get("profiles") or {}
    if not isinstance(devices, list) or not isinstance(profiles, dict):
        raise AnnotationError(f"{DRS_CAPACITY}: 'devices' must be a list and 'profiles' an object")
    if not all(isinstance(v, str) for v in profiles.values()):
        raise AnnotationError(f"{DRS_CAPACITY}: profile IDs must be strings")
    parsed = [parse_profile(name) for name in profiles]
    max_slice = max((size for size, _ in parsed), default=0)
    if max_slice <= 0:
        raise AnnotationError(f"{DRS_CAPACITY}: no valid DRS profile (names look like \"3g.20gb\")")
    max_memory_gb = max((gb for _, gb in parsed), default=0) or max_slice
    result = []
    for position, entry in enumerate(devices):
        if not isinstance(entry, dict):
            raise AnnotationError(f"{DRS_CAPACITY}: device {position} is not an object")
        index_text, minor = entry.get("index", ""), entry.get("minor", "")
        if not isinstance(index_text, str) or not isinstance(minor, str):
            raise AnnotationError(f"{DRS_CAPACITY}: device {position}: 'index' and 'minor' must be strings")
        index = int(index_text) if _INT.match(index_text) else position
        capacity = _capacity(entry.get("capacity"))
        if capacity is None or capacity <= 0:
            raise AnnotationError(f"{DRS_CAPACITY}: device {position}: invalid slice capacity "
                                  f"{entry.get('capacity')!r}")
        result.append(DeviceInfo(
            id=f"{node}-enflame-drs-{index}", count=capacity, devmem=max_memory_gb * 1024, devcore=100,
            type=VENDOR, index=index, vendor=VENDOR,
            custom={"minor": minor.strip() or str(index), "index": str(index), "profiles": dict(profiles),
                    "maxSlice": max_slice},
        ))
    return result


def encode_drs_capacity(devices: Sequence[DeviceInfo]) -> str:
    """`enflame.com/gcu-drs-capacity` for these GCUs, as Enflame's plugin writes it (tests, tools)."""
    profiles = devices[0].custom.get("profiles", {}) if devices else {}
    gcus = [{"index": str(d.custom.get("index", d.index)), "minor": str(d.custom.get("minor", "")),
             "capacity": d.count} for d in devices]
    return json.dumps({"devices": gcus, "profiles": profiles}, separators=(",", ":"))


def enflame_drs(raw: Any) -> list[Vendor]:
    section = config_section(raw, "enflame")
    legacy = section.get("resourceNameVGCU") or "enflame.com/drs-gcu"
    return [EnflameDrs(
        name=VENDOR,
        resources=Resources(
            count=config_name(section, "resourceNameDRSGCU", str(legacy), "enflame"),
            memory=config_name(section, "resourceNameGCUMemory", "enflame.com/gcu-memory", "enflame"),
            cores=config_name(section, "resourceNameGCUCore", "enflame.com/gcu-core", "enflame"),
        ),
        keys=AnnotationKeys(
            register=DRS_CAPACITY,
            allocated="hami.io/enflame-vgpu-devices-allocated",
            uuid_pairs=(("enflame.com/use-gpuuuid", "enflame.com/nouse-gpuuuid"),),
        ),
        source=NodeSource.VENDOR_JSON,
        lock=LockKind.NONE,
    )]
