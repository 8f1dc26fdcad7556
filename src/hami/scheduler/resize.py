"""Live resizing: a running container's GPU memory or cores changed without a restart.

The user asks with a pod annotation; the scheduler, the only writer of accounting, checks
that the new size fits on the same devices and rewrites the pod's allocated-devices
annotation (or refuses with an Event); the node monitor then writes the new limits into the
container's shared region, which libvgpu obeys from its next allocation or launch.

    hami.io/vgpu-resize: "train:gpumem=6000,gpucores=50;sidecar:gpumem=1000"
    hami.io/vgpu-resize: "gpumem-percentage=50"      # the pod's only GPU container

Per container (the name may be left out when one container has GPUs): `gpumem` (MiB per
device), or `gpumem-percentage` (of each device's memory), and/or `gpucores` (percent of
each device's SMs). The outcome is written to `hami.io/vgpu-resize-status` as JSON
(`{"request": …, "result": "Applied" | "Refused" | "Invalid", "message": …, "time": …}`);
a request equal to the status's is done and is not looked at again.

`plan_resize` is pure (the engine's state in, a plan out); `Resizer` does the I/O.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError

from hami.annotations import keys
from hami.annotations.pod_devices import encode_pod_devices
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice, PodAllocation
from hami.scheduler import reasons as R
from hami.scheduler.cache import ClusterCache, pod_key
from hami.scheduler.engine import Decision
from hami.scheduler.kube import KubeApi
from hami.scheduler.state import ClusterState, footprint_of

log = logging.getLogger(__name__)

RESIZE = "hami.io/vgpu-resize"
RESIZE_STATUS = "hami.io/vgpu-resize-status"
# Vendors whose in-container library reads its limits from the region the monitor writes.
LIVE_RESIZE_VENDORS = frozenset({"NVIDIA"})
FIELDS = ("gpumem", "gpumem-percentage", "gpucores")


class ResizeError(HamiError):
    """A resize request that cannot be read."""


@dataclass(frozen=True)
class ResizeAsk:
    container: str | None  # None: the pod's only container with GPUs
    memory_mib: int | None = None
    memory_percentage: int | None = None
    cores: int | None = None


def parse_resize(text: str) -> tuple[ResizeAsk, ...]:
    """The asks of a `hami.io/vgpu-resize` value; ResizeError saying what is wrong."""
    asks: list[ResizeAsk] = []
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        name, sep, rest = entry.partition(":")
        container = name.strip() if sep else None
        body = rest if sep else entry
        if sep and not container:
            raise ResizeError(f"{entry!r}: empty container name before ':'")
        values: dict[str, int] = {}
        for pair in (p.strip() for p in body.split(",")):
            field_name, eq, raw = pair.partition("=")
            field_name = field_name.strip()
            if not eq or field_name not in FIELDS:
                raise ResizeError(f"{pair!r}: expected one of {', '.join(f + '=N' for f in FIELDS)}")
            if field_name in values:
                raise ResizeError(f"{entry!r}: {field_name} given twice")
            try:
                value = int(raw.strip())
            except ValueError:
                raise ResizeError(f"{pair!r}: {field_name} must be a whole number") from None
            values[field_name] = value
        if "gpumem" in values and "gpumem-percentage" in values:
            raise ResizeError(f"{entry!r}: give gpumem or gpumem-percentage, not both")
        if values.get("gpumem", 1) < 1:
            raise ResizeError(f"{entry!r}: gpumem must be at least 1 (MiB)")
        if not 1 <= values.get("gpumem-percentage", 1) <= 100:
            raise ResizeError(f"{entry!r}: gpumem-percentage must be 1 to 100")
        if not 0 <= values.get("gpucores", 0) <= 100:
            raise ResizeError(f"{entry!r}: gpucores must be 0 to 100")
        if any(a.container == container for a in asks):
            raise ResizeError(f"container {container or '(the only one)'} is named twice")
        asks.append(ResizeAsk(container, values.get("gpumem"), values.get("gpumem-percentage"),
                              values.get("gpucores")))
    if not asks:
        raise ResizeError("empty request")
    if len(asks) > 1 and any(a.container is None for a in asks):
        raise ResizeError("name the container of every entry when there are several")
    return tuple(asks)


@dataclass(frozen=True)
class ResizePlan:
    allocation: PodAllocation | None  # the new allocation; None when refused
    reason: str = ""  # why it was refused
    changes: tuple[str, ...] = ()  # what changes, one line per device


def _position(names: Sequence[str], allocation: PodAllocation, container: str | None) -> int | str:
    """The container's index in the allocation, or an error text."""
    if container is None:
        with_devices = [i for i, devices in enumerate(allocation) if devices]
        if len(with_devices) != 1:
            return f"the pod has {len(with_devices)} containers with GPUs: name the one to resize"
        return with_devices[0]
    if container not in names:
        return f"the pod has no container {container!r}"
    return list(names).index(container)


def plan_resize(state: ClusterState, key: str, node: str, allocation: PodAllocation, names: Sequence[str],
                asks: Iterable[ResizeAsk], init_count: int = 0, sidecars: frozenset[int] = frozenset()) -> ResizePlan:
    """The pod's allocation with the asks applied, if it fits the same devices; else why not.

    `state` must count the pod's current allocation (as the scheduler's cache does)."""
    node_index = state.node_pos.get(node)
    if node_index is None:
        return ResizePlan(None, f"node {node} has no registered devices")
    if key not in state.pods:
        return ResizePlan(None, f"the scheduler does not count pod {key} on node {node}")
    new = list(allocation)
    changes: list[str] = []
    resized: set[tuple[int, str]] = set()
    for ask in asks:
        position = _position(names, allocation, ask.container)
        if isinstance(position, str):
            return ResizePlan(None, position)
        name = names[position] if position < len(names) else f"#{position}"
        devices = allocation[position] if position < len(allocation) else ()
        if not devices:
            return ResizePlan(None, f"container {name} has no GPUs to resize")
        resized_devices: list[ContainerDevice] = []
        for d in devices:
            row = state.row_of.get((node_index, d.uuid))
            if row is None:
                return ResizePlan(None, f"GPU {d.uuid} of container {name} is no longer registered on {node}")
            vendor = state.devices[row].vendor
            if vendor not in LIVE_RESIZE_VENDORS:
                return ResizePlan(None, f"container {name}: {vendor} devices cannot be resized while running")
            if d.part is not None:  # a MIG instance: its size is the hardware's
                return ResizePlan(None, f"container {name}: {d.uuid} is a MIG instance ({d.part.profile}); "
                                        "its size cannot change")
            memory = d.usedmem
            if ask.memory_mib is not None:
                memory = ask.memory_mib
            elif ask.memory_percentage is not None:
                memory = int(state.totalmem[row]) * ask.memory_percentage // 100
            cores = d.usedcores if ask.cores is None else ask.cores
            if (memory, cores) != (d.usedmem, d.usedcores):
                changes.append(f"{name} {d.uuid}: {d.usedmem} -> {memory} MiB, {d.usedcores} -> {cores} % cores")
            resized_devices.append(replace(d, usedmem=memory, usedcores=cores))
            resized.add((position, d.uuid))
        new[position] = tuple(resized_devices)
    result = tuple(new)
    before = footprint_of(allocation, init_count, sidecars)
    after = footprint_of(result, init_count, sidecars)
    problems: list[str] = []
    for uuid, (tasks, memory, cores) in sorted(after.items()):
        row = state.row_of[(node_index, uuid)]
        old_tasks, old_memory, old_cores = before.get(uuid, (0, 0, 0))
        other_memory = int(state.usedmem[row]) - old_memory
        other_cores = int(state.usedcores[row]) - old_cores
        other_tasks = int(state.used[row]) - old_tasks
        if memory > old_memory and other_memory + memory > int(state.totalmem[row]):
            problems.append(f"{R.CARD_INSUFFICIENT_MEMORY}: GPU {uuid} has {int(state.totalmem[row]) - other_memory} "
                            f"MiB for this pod, {memory} asked")
        if cores > old_cores and other_cores + cores > int(state.totalcore[row]):
            problems.append(f"{R.CARD_INSUFFICIENT_CORE}: GPU {uuid} has {int(state.totalcore[row]) - other_cores} "
                            f"% cores for this pod, {cores} asked")
        exclusive = any(d.usedcores >= 100 and d.uuid == uuid and (p, uuid) in resized
                        for p, devices in enumerate(result) for d in devices)
        if exclusive and old_cores < 100 and other_tasks + tasks > 1:
            problems.append(f"{R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT}: GPU {uuid} is shared by "
                            f"{other_tasks + tasks} tasks; 100 % cores needs it alone")
    if problems:
        return ResizePlan(None, "; ".join(problems))
    return ResizePlan(result, changes=tuple(changes))


# ---- the scheduler side -------------------------------------------------------------------


def _annotations(pod: dict[str, Any]) -> dict[str, str]:
    return dict((pod.get("metadata") or {}).get("annotations") or {})


def pending_request(pod: dict[str, Any]) -> str | None:
    """The pod's resize request when it has not been handled yet."""
    annotations = _annotations(pod)
    request = annotations.get(RESIZE)
    if not request:
        return None
    try:
        status = json.loads(annotations.get(RESIZE_STATUS) or "{}")
    except ValueError:
        status = {}
    return None if isinstance(status, dict) and status.get("request") == request else request


def status_annotation(request: str, result: str, message: str, now: datetime) -> str:
    return json.dumps({"request": request, "result": result, "message": message,
                       "time": now.strftime("%Y-%m-%dT%H:%M:%SZ")}, separators=(",", ":"))


class Resizer:
    """Handles resize requests one at a time, in its own thread, as the informer reports pods.

    Under the extender's decide lock (when given) and the cache's lock, so that no decision
    counts a share that a resize is taking; the new allocation is counted at once
    (`ClusterCache.assume`), before the watch brings the patched pod back."""

    def __init__(self, cache: ClusterCache, api: KubeApi, decide_lock: threading.Lock | None = None,
                 is_leader: threading.Event | None = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.cache = cache
        self.api = api
        self.decide_lock = decide_lock
        self.is_leader = is_leader
        self.clock = clock
        self._queue: queue.Queue[str] = queue.Queue()
        self._queued: set[str] = set()
        self._guard = threading.Lock()

    # ---- hooks for the informer ---------------------------------------------------------

    def observe(self, pod: dict[str, Any]) -> None:
        if pending_request(pod) is None:
            return
        key = pod_key(pod)
        with self._guard:
            if key in self._queued:
                return
            self._queued.add(key)
        self._queue.put(key)

    def upsert_hook(self, upsert: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """Wrap the cache's upsert: the cache first (the resize sees the pod's decision), then us."""
        def hooked(pod: dict[str, Any]) -> None:
            upsert(pod)
            self.observe(pod)
        return hooked

    def replace_hook(self, replace_all: Callable[..., None]) -> Callable[..., None]:
        def hooked(pods: Iterable[dict[str, Any]], *more: Any) -> None:
            listed = list(pods)
            replace_all(listed, *more)
            for pod in listed:
                self.observe(pod)
        return hooked

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                key = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            with self._guard:
                self._queued.discard(key)
            try:
                self.handle(key)
            except Exception:  # noqa: BLE001 - one pod's trouble must not stop the others
                log.exception("resizing pod %s failed", key)

    # ---- one request --------------------------------------------------------------------

    def handle(self, key: str) -> str:
        """Handle the pod's pending request; returns what happened (for logs and tests)."""
        if self.is_leader is not None and not self.is_leader.is_set():
            return "not the leader"
        namespace, _, name = key.partition("/")
        pod = self.api.get_pod(namespace, name)
        request = pending_request(pod) if pod is not None else None
        if pod is None or request is None:
            return "nothing to do"
        try:
            return self._handle(key, pod, request)
        except ApiError as exc:
            # Nothing written (a 409: the pod changed since we read it). Count what the pod
            # really holds again, and look at its request again.
            log.info("pod %s: resize not written (%s); asking again", key, exc.status.message)
            fresh = self.api.get_pod(namespace, name)
            if fresh is not None:
                self.cache.upsert_pod(fresh)
                self.observe(fresh)
            return "conflict; asked again"

    def _handle(self, key: str, pod: dict[str, Any], request: str) -> str:
        annotations = _annotations(pod)
        if not (pod.get("spec") or {}).get("nodeName") or annotations.get(keys.BIND_PHASE) != "success":
            return "waiting for the pod to be allocated"  # asked again when the bind phase changes
        try:
            asks = parse_resize(request)
        except ResizeError as exc:
            return self._finish(pod, request, "Invalid", f"{RESIZE}: {exc}")
        holding = self.cache.holding(key)
        if holding is None:
            return self._finish(pod, request, "Refused", "the scheduler holds no decision for this pod")
        spec = pod.get("spec") or {}
        names = [str(c.get("name")) for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
        now = self.clock()
        assumed = False
        with self.decide_lock or contextlib.nullcontext(), self.cache.lock():
            plan = plan_resize(self.cache.state(), key, holding.node, holding.allocation, names, asks,
                               holding.init_count, holding.sidecars)
            if plan.allocation is not None and plan.allocation != holding.allocation:
                self.cache.assume(key, Decision(pod=key, node=holding.node, allocation=plan.allocation),
                                  holding.init_count, holding.uid, int(now.timestamp()), holding.sidecars)
                assumed = True
        if plan.allocation is None:
            return self._finish(pod, request, "Refused", plan.reason)
        message = "; ".join(plan.changes) or "the sizes asked are the sizes held"
        try:
            return self._finish(pod, request, "Applied", message,
                                self._allocated_annotations(holding.node, plan.allocation))
        except ApiError:
            if assumed:
                with self.cache.lock():
                    self.cache.forget(key)
                    self.cache.upsert_pod(pod)
            raise

    def _allocated_annotations(self, node: str, allocation: PodAllocation) -> dict[str, str | None]:
        """Each resizable vendor's allocated-devices annotation with its part of the new allocation."""
        with self.cache.lock():
            state = self.cache.state()
            node_index = state.node_pos[node]
            vendor_of = {d.uuid: state.devices[state.row_of[(node_index, d.uuid)]].vendor
                         for container in allocation for d in container}
        patch: dict[str, str | None] = {}
        for vendor in self.cache.vendors:
            if vendor.name in LIVE_RESIZE_VENDORS and vendor.keys.allocated:
                part = tuple(tuple(d for d in c if vendor_of[d.uuid] == vendor.name) for c in allocation)
                if any(part):
                    patch[vendor.keys.allocated] = encode_pod_devices(part)
        return patch

    def _finish(self, pod: dict[str, Any], request: str, result: str, message: str,
                patch: dict[str, str | None] | None = None) -> str:
        """Write the status (with the new allocation when applied) and record an Event."""
        metadata = pod.get("metadata") or {}
        annotations = dict(patch or {})
        annotations[RESIZE_STATUS] = status_annotation(request, result, message, self.clock())
        self.api.patch_pod_annotations(str(metadata.get("namespace")), str(metadata.get("name")), annotations,
                                       resource_version=str(metadata.get("resourceVersion") or "") or None)
        applied = result == "Applied"
        log.info("pod %s: resize %s: %s", pod_key(pod), result.lower(), message)
        self.api.event(pod, "Resized" if applied else "ResizeRefused", f"{result}: {message}", warning=not applied)
        return result

