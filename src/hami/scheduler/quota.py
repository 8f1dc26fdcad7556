"""GPU-memory and GPU-core quotas per namespace, read from ResourceQuota as HAMi (v2.7+) does.

A ResourceQuota's `limits.<memory resource>` (for example `limits.nvidia.com/gpumem: 20000`)
and `limits.<core resource>` (`limits.nvidia.com/gpucores: 200`) cap what the namespace's pods
hold in total, counted per device: a pod that holds 3000 MiB on each of two GPUs counts 6000.
Memory limits are written in the container's unit and scaled by the vendor's memory factor
(Iluvatar's `vMem` counts 256 MiB), as HAMi does.

Three parts, all without I/O:
- `QuotaBook`: limits (fed from ResourceQuota objects) and usage (fed from the scheduler's
  decisions, so it is right after a restart: decisions live on the pods) per namespace;
- `QuotaLeft`: what one pod may still take, handed to the engine, which refuses devices that
  would go over with HAMi's reason `ResourceQuotaNotFit`;
- `QuotaTally`: the engine's running count of one pod's devices while it places the pod.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hami.quantity import QuantityError, parse_quantity

if TYPE_CHECKING:
    from hami.model.allocation import PodAllocation
    from hami.vendors.registry import VendorSet

LIMITS_PREFIX = "limits."
MEMORY = "memory"
CORES = "cores"


@dataclass(frozen=True)
class QuotaResource:
    """A resource a quota may cap: which vendor, memory or cores, and the memory factor."""

    name: str
    vendor: str
    kind: str  # MEMORY or CORES
    factor: int = 1


def quota_resources(vendors: VendorSet) -> dict[str, QuotaResource]:
    """Every resource name a ResourceQuota may cap (HAMi's IsManagedQuota), by name."""
    found: dict[str, QuotaResource] = {}
    for vendor in vendors:
        for name, kind, factor in vendor.quota_resources():
            found.setdefault(name, QuotaResource(name, vendor.name, kind, factor))
    return found


@dataclass(frozen=True)
class VendorRoom:
    """What a pod may still take of one vendor in its namespace: MiB and cores (None: no cap)."""

    vendor: str
    memory: int | None = None
    cores: int | None = None


@dataclass(frozen=True)
class QuotaLeft:
    """Room left for one pod, per vendor with a quota (a vendor not named has no cap)."""

    namespace: str = ""
    rooms: tuple[VendorRoom, ...] = ()
    # Per vendor, the quota entries that cap it, for messages: "limits.nvidia.com/gpumem in q1".
    sources: tuple[tuple[str, str], ...] = ()

    def room(self, vendor: str) -> VendorRoom | None:
        for room in self.rooms:
            if room.vendor == vendor:
                return room
        return None

    def caps(self, vendors: Iterable[str]) -> bool:
        return any(self.room(v) is not None for v in vendors)


NO_QUOTA = QuotaLeft()


class QuotaTally:
    """One pod's quota usage while the engine places it, counted as HAMi does: per device, the
    larger of its biggest init container and the sum of the containers that run together."""

    def __init__(self, left: QuotaLeft):
        self.left = left
        # (vendor, uuid) -> [init memory, running memory, init cores, running cores]
        self._devices: dict[tuple[str, str], list[int]] = {}
        self._totals: dict[str, list[int]] = {}  # vendor -> [memory, cores]

    def copy(self) -> QuotaTally:
        other = QuotaTally(self.left)
        other._devices = {k: list(v) for k, v in self._devices.items()}
        other._totals = {k: list(v) for k, v in self._totals.items()}
        return other

    def _after(self, vendor: str, uuid: str, memory: int, cores: int, init: bool) -> tuple[list[int], int, int]:
        old = self._devices.get((vendor, uuid), [0, 0, 0, 0])
        new = list(old)
        if init:
            new[0], new[2] = max(old[0], memory), max(old[2], cores)
        else:
            new[1], new[3] = old[1] + memory, old[3] + cores
        total = self._totals.get(vendor, [0, 0])
        mem = total[0] - max(old[0], old[1]) + max(new[0], new[1])
        core = total[1] - max(old[2], old[3]) + max(new[2], new[3])
        return new, mem, core

    def fits(self, vendor: str, uuid: str, memory: int, cores: int, init: bool) -> bool:
        """Whether the pod may also take `memory` MiB and `cores` of this device."""
        room = self.left.room(vendor)
        if room is None:
            return True
        _, mem, core = self._after(vendor, uuid, memory, cores, init)
        return (room.memory is None or mem <= room.memory) and (room.cores is None or core <= room.cores)

    def take(self, vendor: str, uuid: str, memory: int, cores: int, init: bool) -> None:
        if self.left.room(vendor) is None:
            return
        new, mem, core = self._after(vendor, uuid, memory, cores, init)
        self._devices[(vendor, uuid)] = new
        self._totals[vendor] = [mem, core]


def pod_usage(allocation: PodAllocation, init_count: int,
              sidecars: frozenset[int] = frozenset()) -> dict[str, list[int]]:
    """Per vendor, [MiB, cores] a decision counts against its namespace's quota (HAMi's
    countPodDevices over the init-collapsed devices)."""
    per_device: dict[tuple[str, str], list[int]] = {}
    for position, container in enumerate(allocation):
        ordinary_init = position < init_count and position not in sidecars
        for device in container:
            u = per_device.setdefault((device.vendor, device.uuid), [0, 0, 0, 0])
            if ordinary_init:
                u[0], u[2] = max(u[0], device.usedmem), max(u[2], device.usedcores)
            else:
                u[1] += device.usedmem
                u[3] += device.usedcores
    totals: dict[str, list[int]] = {}
    for (vendor, _), u in per_device.items():
        t = totals.setdefault(vendor, [0, 0])
        t[0] += max(u[0], u[1])
        t[1] += max(u[2], u[3])
    return totals


class Held(Protocol):
    """What the cache says a pod holds (hami.scheduler.cache.Holding)."""

    @property
    def allocation(self) -> PodAllocation: ...
    @property
    def init_count(self) -> int: ...
    @property
    def sidecars(self) -> frozenset[int]: ...
    @property
    def held(self) -> bool: ...


class QuotaError(ValueError):
    """A quota entry we cannot read: its message says which and why."""


def read_limit(resource: QuotaResource, key: str, value: object) -> int:
    """A quota value as a whole number in the resource's unit. Raises QuotaError."""
    unit = "MiB" if resource.kind == MEMORY and resource.factor == 1 else (
        f"units of {resource.factor} MiB" if resource.kind == MEMORY else "percent of a device")
    try:
        amount = parse_quantity(value)
    except QuantityError:
        raise QuotaError(f"{key}: {value!r} is not a number; {resource.name} is counted in {unit}") from None
    text = str(value).strip()
    if text.endswith(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")):
        raise QuotaError(f"{key}: {text} is a byte-style quantity, but {resource.name} is counted in {unit}; "
                         f"write the number itself (for example {resource.name} 20Gi of memory is 20480)")
    if amount < 0 or amount.denominator != 1:
        raise QuotaError(f"{key}: {text} is not a whole, non-negative number of {unit}")
    return int(amount)


@dataclass
class _Limit:
    value: int  # as written (the container's unit)
    internal: int  # MiB or cores, as decisions count them
    source: str  # "<quota name>"


@dataclass
class NamespaceQuota:
    """A namespace's caps (the smallest over its ResourceQuota objects) and usage."""

    limits: dict[str, _Limit] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)


class QuotaBook:
    """Limits from ResourceQuota objects, usage from decisions; thread-safe."""

    def __init__(self, vendors: VendorSet):
        self.resources = quota_resources(vendors)
        self._by_vendor: dict[str, dict[str, QuotaResource]] = {}
        for resource in self.resources.values():
            self._by_vendor.setdefault(resource.vendor, {})[resource.kind] = resource
        self._lock = threading.Lock()
        # (namespace, quota name) -> resource -> limit, per ResourceQuota object.
        self._objects: dict[tuple[str, str], dict[str, _Limit]] = {}
        self._namespaces: dict[str, NamespaceQuota] = {}
        self._pods: dict[str, tuple[str, dict[str, int]]] = {}  # pod key -> (namespace, usage)
        # Told of every namespace whose limits changed (its name), under the book's lock.
        self.limit_listeners: list[Callable[[str], None]] = []

    # ---- limits ------------------------------------------------------------------------

    def upsert_quota(self, quota: Mapping[str, Any]) -> list[str]:
        """Read a ResourceQuota's caps on our resources; returns a message per entry it ignores."""
        metadata = quota.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or "default"), str(metadata.get("name"))
        hard = ((quota.get("spec") or {}).get("hard")) or {}
        limits: dict[str, _Limit] = {}
        problems = []
        for key, value in hard.items() if isinstance(hard, dict) else ():
            if not str(key).startswith(LIMITS_PREFIX):
                continue
            resource = self.resources.get(str(key)[len(LIMITS_PREFIX):])
            if resource is None:
                continue
            try:
                written = read_limit(resource, str(key), value)
            except QuotaError as exc:
                problems.append(f"ResourceQuota {namespace}/{name}: {exc}; this entry is ignored")
                continue
            factor = resource.factor if resource.kind == MEMORY and resource.factor > 1 else 1
            limits[resource.name] = _Limit(written, written * factor, name)
        with self._lock:
            if limits:
                self._objects[(namespace, name)] = limits
            else:
                self._objects.pop((namespace, name), None)
            self._recompute_limits(namespace)
        return problems

    def delete_quota(self, quota: Mapping[str, Any]) -> None:
        metadata = quota.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or "default"), str(metadata.get("name"))
        with self._lock:
            self._objects.pop((namespace, name), None)
            self._recompute_limits(namespace)

    def replace_quotas(self, quotas: Iterable[Mapping[str, Any]]) -> list[str]:
        """A full list: quotas not in it are gone."""
        problems: list[str] = []
        seen = set()
        for quota in quotas:
            metadata = quota.get("metadata") or {}
            seen.add((str(metadata.get("namespace") or "default"), str(metadata.get("name"))))
            problems += self.upsert_quota(quota)
        with self._lock:
            for gone in set(self._objects) - seen:
                del self._objects[gone]
                self._recompute_limits(gone[0])
        return problems

    def _recompute_limits(self, namespace: str) -> None:
        """Kubernetes enforces every ResourceQuota of a namespace: the smallest cap counts."""
        merged: dict[str, _Limit] = {}
        for (ns, _), limits in sorted(self._objects.items()):
            if ns != namespace:
                continue
            for resource, limit in limits.items():
                if resource not in merged or limit.internal < merged[resource].internal:
                    merged[resource] = limit
        entry = self._namespaces.setdefault(namespace, NamespaceQuota())
        changed = entry.limits != merged
        entry.limits = merged
        if not entry.limits and not entry.used:
            del self._namespaces[namespace]
        if changed:
            for listener in self.limit_listeners:
                listener(namespace)

    # ---- usage -------------------------------------------------------------------------

    def count_pod(self, key: str, allocation: PodAllocation | None, init_count: int = 0,
                  sidecars: frozenset[int] = frozenset()) -> None:
        """The decision a pod holds now (None: it holds nothing); replaces what it held before."""
        namespace = key.split("/", 1)[0]
        usage: dict[str, int] = {}
        if allocation is not None:
            for vendor, (memory, cores) in pod_usage(allocation, init_count, sidecars).items():
                for kind, amount in ((MEMORY, memory), (CORES, cores)):
                    resource = self._by_vendor.get(vendor, {}).get(kind)
                    if resource is not None and amount:
                        usage[resource.name] = usage.get(resource.name, 0) + amount
        with self._lock:
            old = self._pods.pop(key, None)
            if old is not None:
                self._add(old[0], old[1], -1)
            if usage:
                self._pods[key] = (namespace, usage)
                self._add(namespace, usage, +1)

    def on_holding(self, key: str, _before: Held | None, after: Held | None) -> None:
        """The cache's listener: count what a pod holds by its decision (a preemption's hold, not a
        decision yet, is not counted)."""
        if after is None or after.held:
            self.count_pod(key, None)
        else:
            self.count_pod(key, after.allocation, after.init_count, after.sidecars)

    def _add(self, namespace: str, usage: dict[str, int], sign: int) -> None:
        entry = self._namespaces.setdefault(namespace, NamespaceQuota())
        for resource, amount in usage.items():
            total = entry.used.get(resource, 0) + sign * amount
            if total:
                entry.used[resource] = total
            else:
                entry.used.pop(resource, None)
        if not entry.limits and not entry.used:
            del self._namespaces[namespace]

    # ---- questions ---------------------------------------------------------------------

    def limits(self, namespace: str) -> bool:
        """Whether a ResourceQuota caps our resources in the namespace."""
        with self._lock:
            entry = self._namespaces.get(namespace)
            return entry is not None and bool(entry.limits)

    def left_for(self, namespace: str, exclude: str | None = None) -> QuotaLeft:
        """Room left in the namespace for one pod (its own current decision, `exclude`, not counted)."""
        with self._lock:
            entry = self._namespaces.get(namespace)
            if entry is None or not entry.limits:
                return NO_QUOTA
            counted = self._pods.get(exclude) if exclude is not None else None
            own = counted[1] if counted is not None else {}
            rooms: dict[str, dict[str, int]] = {}
            sources = []
            for resource_name, limit in sorted(entry.limits.items()):
                resource = self.resources[resource_name]
                used = entry.used.get(resource_name, 0) - own.get(resource_name, 0)
                rooms.setdefault(resource.vendor, {})[resource.kind] = max(0, limit.internal - used)
                sources.append((resource.vendor, f"{LIMITS_PREFIX}{resource_name} in ResourceQuota {limit.source}"))
        return QuotaLeft(
            namespace=namespace,
            rooms=tuple(VendorRoom(v, r.get(MEMORY), r.get(CORES)) for v, r in sorted(rooms.items())),
            sources=tuple(sources),
        )

    def admits(self, namespace: str, asks: Mapping[str, tuple[int, int]]) -> str | None:
        """HAMi's webhook check: None when the pod's asks ({vendor: (MiB, cores)}) fit the room left
        in the namespace, else why not."""
        left = self.left_for(namespace)
        for vendor, (memory, cores) in sorted(asks.items()):
            room = left.room(vendor)
            if room is None:
                continue
            for kind, amount, free in ((MEMORY, memory, room.memory), (CORES, cores, room.cores)):
                if free is None or amount <= free:
                    continue
                resource = self._by_vendor[vendor][kind]
                unit = "MiB" if kind == MEMORY else "cores"
                return (f"exceeding resource quota: the pod asks {amount} {unit} of {resource.name} in namespace "
                        f"{namespace}, which has {free} left ({self._source(namespace, resource.name)})")
        return None

    def _source(self, namespace: str, resource: str) -> str:
        with self._lock:
            entry = self._namespaces.get(namespace)
            limit = entry.limits.get(resource) if entry is not None else None
        if limit is None:
            return "no limit"
        return f"limits.{resource}: {limit.value} in ResourceQuota {limit.source}"

    def snapshot(self) -> dict[str, dict[str, tuple[int, int | None]]]:
        """Per namespace, per resource: (used, limit as written or None), for metrics."""
        with self._lock:
            result: dict[str, dict[str, tuple[int, int | None]]] = {}
            for namespace, entry in self._namespaces.items():
                row = result.setdefault(namespace, {})
                for resource in entry.used.keys() | entry.limits.keys():
                    limit = entry.limits.get(resource)
                    row[resource] = (entry.used.get(resource, 0), None if limit is None else limit.value)
            return result
