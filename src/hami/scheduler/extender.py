"""The kube-scheduler extender: /filter, /prioritize and /bind on the wire types of
k8s.io/kube-scheduler/extender/v1 (ExtenderArgs, ExtenderFilterResult, HostPriorityList,
ExtenderBindingArgs, ExtenderBindingResult). Field names are Go's, without JSON tags.

Filter decides with the engine, writes the decision on the pod (HAMi's annotations) and
counts it at once. By default it returns every node that fits, so kube-scheduler can weigh
our /prioritize score with its own plugins; `only_best_node` returns just our choice, as HAMi.
Bind re-decides when kube-scheduler picked another fitting node, then binds under the node lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from lightkube import ApiError

from hami.annotations import keys
from hami.annotations.pod_devices import BindPhase, bind_annotations
from hami.annotations.selectors import Policy
from hami.errors import HamiError
from hami.scheduler import reasons as R
from hami.scheduler.cache import ClusterCache, pod_id, pod_key, sidecars_of
from hami.scheduler.engine import PolicyDefaults
from hami.scheduler.kube import AsyncKubeApi
from hami.scheduler.leader import Leadership
from hami.scheduler.nodelock import NodeLocker, NodeLockError
from hami.scheduler.preemption import Preemptor
from hami.vendors.base import LockKind
from hami.wire import ShapeError, check_pod, node_names

log = logging.getLogger(__name__)
MAX_EXTENDER_PRIORITY = 10


class BadRequest(Exception):
    """A request that is not what its route takes; answered with `status` (400 unless told)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def field(body: dict[str, Any], name: str) -> Any:
    """Go's encoding/json matches field names case-insensitively; so do we."""
    if name in body:
        return body[name]
    lower = name.lower()
    for key, value in body.items():
        if key.lower() == lower:
            return value
    return None


def candidate_names(args: dict[str, Any]) -> list[str]:
    names = field(args, "NodeNames")
    if names is not None:
        if not isinstance(names, list) or not all(map(isinstance, names, itertools.repeat(str))):
            raise BadRequest("NodeNames must be a list of strings")
        return list(names)
    nodes = field(args, "Nodes")
    if nodes is not None:
        try:
            return node_names(nodes)
        except ShapeError as exc:
            raise BadRequest(str(exc)) from None
    raise BadRequest("ExtenderArgs has neither NodeNames nor Nodes")


def pod_of(args: dict[str, Any]) -> dict[str, Any]:
    """The Pod of ExtenderArgs, its fields checked against the API's types (see hami.wire)."""
    pod = field(args, "Pod")
    if not isinstance(pod, dict):
        raise BadRequest("ExtenderArgs has no Pod with metadata.name")
    try:
        check_pod(pod, "Pod")
    except ShapeError as exc:
        raise BadRequest(str(exc)) from None
    if not isinstance((pod.get("metadata") or {}).get("name"), str):
        raise BadRequest("ExtenderArgs has no Pod with metadata.name")
    return pod


class DecisionWriter:
    """Writes decisions on pods in the background, on the event loop, so /filter answers without
    an API round trip; /bind waits for the pod's write before it binds.

    Each write is conditional on the resourceVersion of the pod copy it was decided from. A
    write that /bind stopped waiting for may still reach the API server later; by then the bind
    has changed the pod, so the late write fails instead of putting back a decision that the
    bind replaced (the pod bound to one node, its annotations naming another).
    """

    def __init__(self, api: AsyncKubeApi):
        self.api = api
        # By pod_id: the write (None: not started, the bind writes it), its annotations, and
        # `namespace/name` for messages. Only touched on the event loop's thread.
        self._pending: dict[str, tuple[asyncio.Task[str] | None, dict[str, str | None], str]] = {}

    def submit(self, key: str, namespace: str, name: str, annotations: dict[str, str | None],
               resource_version: str | None) -> None:
        task: asyncio.Task[str] | None = None
        with contextlib.suppress(RuntimeError):  # no event loop here: the bind writes the decision
            task = asyncio.get_running_loop().create_task(
                self.api.patch_pod_annotations(namespace, name, annotations, resource_version or None))
            task.add_done_callback(_retrieve)
        self._pending[key] = (task, annotations, f"{namespace}/{name}")

    async def take(self, key: str, timeout: float = 10.0) -> WriteOutcome:
        """The outcome of the pod's latest write, waiting for it if it is running."""
        pending = self._pending.pop(key, None)
        if pending is None:
            return WriteOutcome(pending=False)
        task, annotations, pod = pending
        if task is None:
            return WriteOutcome(pending=True, unwritten=annotations)
        try:
            return WriteOutcome(pending=True, version=await asyncio.wait_for(asyncio.shield(task), timeout))
        except ApiError as exc:
            return WriteOutcome(pending=True, error=f"writing the decision on pod {pod} failed: {exc.status.message}")
        except Exception as exc:  # noqa: BLE001 - a timeout or transport error: report, bind decides again
            return WriteOutcome(pending=True,
                                error=f"writing the decision on pod {pod} failed: {type(exc).__name__}: {exc}")


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a background task's failure as seen: the bind that needs it reports it."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class WriteOutcome:
    pending: bool  # whether a write was queued for the pod
    error: str = ""
    # Annotations the caller must write itself: the write had not started and was withdrawn.
    unwritten: dict[str, str | None] = dataclass_field(default_factory=dict)
    version: str = ""  # the pod's resourceVersion after the write


@dataclass
class ExtenderOptions:
    defaults: PolicyDefaults = PolicyDefaults()
    only_best_node: bool = False
    hold_lock_until_allocated: bool = False
    # How long /bind waits for the background write of the pod's decision before deciding again.
    decision_write_wait: float = 10.0


class Extender:
    def __init__(self, cache: ClusterCache, api: AsyncKubeApi | None, locker: NodeLocker | None,
                 options: ExtenderOptions | None = None):
        self.cache = cache
        self.api = api
        self.locker = locker
        self.options = options or ExtenderOptions()
        self.writer = DecisionWriter(api) if api is not None else None
        # Told how long each bind held its node (the bind's own work, without queueing).
        self.on_bind_held: Callable[[float], None] | None = None
        # Leading until told otherwise; with --leader-elect, the elector grants it with a deadline.
        self.is_leader = Leadership()
        self.is_leader.set()
        # Pods are decided one at a time, so that two decisions never count the same free share.
        self._decide_lock = threading.Lock()
        # Binds run on the event loop (so do these, without further locking): per node needing
        # HAMi's lock, a queue; the binds running now by (namespace, name); background tasks.
        self._node_locks: dict[str, asyncio.Lock] = {}
        self._binding: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()
        # Plans preemptions for pods that fit nowhere (hami.scheduler.preemption); None: off.
        self.preemptor: Preemptor | None = None

    @property
    def decide_lock(self) -> threading.Lock:
        """Held while a pod is decided: others that change accounting (resizes) take it too."""
        return self._decide_lock

    # ---- /filter -----------------------------------------------------------------------

    def filter(self, args: dict[str, Any]) -> dict[str, Any]:
        pod = pod_of(args)
        names = candidate_names(args)
        if not self.cache.vendors.wants_devices(pod):
            return {"NodeNames": names, "FailedNodes": {}, "Error": ""}
        if not self.is_leader.is_set():
            return {"NodeNames": [], "FailedNodes": {}, "Error": "this hami-scheduler replica is not the leader"}
        key = pod_id(pod)
        with self._decide_lock:
            try:
                decision = self.cache.decide(pod, names, self.options.defaults)
            except HamiError as exc:
                return {"NodeNames": [], "FailedNodes": {}, "Error": str(exc)}
            failed = dict(decision.reasons)
            known = self.cache.state().node_pos
            for name in names:
                if name not in known:
                    failed[name] = R.NODE_UNREGISTERED
            if decision.node is None:
                self._event(pod, "FilteringFailed", _summary(failed))
                if self.preemptor is not None:
                    self.preemptor.request(pod, names)
                return {"NodeNames": [], "FailedNodes": failed, "Error": ""}
            now = datetime.now(UTC)
            metadata = pod.get("metadata") or {}
            if not self.cache.assume(key, decision, len((pod.get("spec") or {}).get("initContainers") or []),
                                     str(metadata.get("uid") or ""), int(now.timestamp()), sidecars_of(pod),
                                     metadata.get("annotations")):
                return {"NodeNames": [], "FailedNodes": {}, "Error": f"pod {pod_key(pod)} was deleted"}
            if self.writer is not None:
                cleared = self.preemptor.cleared(pod) if self.preemptor is not None else {}
                version = metadata.get("resourceVersion")
                self.writer.submit(key, str(metadata.get("namespace") or "default"), str(metadata.get("name")),
                                   {**self.cache.decision_annotations(pod, decision, now), **cleared},
                                   str(version) if version else None)
        fitting = [decision.node] if self.options.only_best_node else [n for n in names if n not in failed]
        return {"NodeNames": fitting, "FailedNodes": failed, "Error": ""}

    # ---- /prioritize -------------------------------------------------------------------

    def prioritize(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        pod = pod_of(args)
        names = candidate_names(args)
        if not self.cache.vendors.wants_devices(pod):
            return [{"Host": n, "Score": 0} for n in names]
        holding = self.cache.holding(pod_id(pod))
        try:
            decision = self.cache.decide(pod, names, self.options.defaults, with_scores=True, explain=False)
        except HamiError:
            return [{"Host": n, "Score": 0} for n in names]
        chosen = holding.node if holding is not None else decision.node
        # Our node score mapped linearly onto 0..9 over the fitting nodes; our own choice gets 10.
        points: dict[str, int] = {}
        if decision.scores:
            values = np.fromiter(decision.scores.values(), dtype=np.float64, count=len(decision.scores))
            low, high = values.min(), values.max()
            if high > low:
                fraction = (values - low) / (high - low)
                if self.options.defaults.node_policy is Policy.SPREAD:
                    fraction = 1 - fraction
                scaled = np.rint(fraction * (MAX_EXTENDER_PRIORITY - 1)).astype(np.int64)
                points = dict(zip(decision.scores, scaled.tolist(), strict=True))
        if chosen is not None:
            points[chosen] = MAX_EXTENDER_PRIORITY
        return [{"Host": name, "Score": points.get(name, 0)} for name in names]

    # ---- /bind -------------------------------------------------------------------------

    async def bind(self, args: dict[str, Any]) -> dict[str, Any]:
        name, namespace, node = field(args, "PodName"), field(args, "PodNamespace"), field(args, "Node")
        if not all(isinstance(v, str) and v for v in (name, namespace, node)):
            raise BadRequest("ExtenderBindingArgs needs PodName, PodNamespace and Node")
        if not self._uses_node_lock(node):
            return await self._timed_bind(args, name, namespace, node)
        # Binds to a node that needs HAMi's lock queue here first, so the API lock (which guards
        # against other replicas and the device plugin) is rarely contended.
        async with self._node_locks.setdefault(node, asyncio.Lock()):
            return await self._timed_bind(args, name, namespace, node)

    def _uses_node_lock(self, node: str, pod: dict[str, Any] | None = None) -> bool:
        """HAMi's node lock is needed unless, for every vendor the pod asks (that has a lock),
        the node's device plugin tells pods apart without it: it asks kubelet which pod it is
        starting (see docs/device-plugin.md). Without the pod: unless the node's plugin does so
        for some vendor."""
        if self.options.hold_lock_until_allocated:
            return True
        matched = self.cache.matched_by_kubelet(node)
        if pod is None or not matched:
            return not matched
        try:
            request = self.cache.request_of(pod)
        except HamiError:
            return True
        asked = {ask.vendor for container in request.containers for ask in container.asks}
        vendors = [self.cache.vendors.get(name) for name in asked]
        return any(v is None or (v.lock is not LockKind.NONE and v.resources.count not in matched) for v in vendors)

    async def _timed_bind(self, args: dict[str, Any], name: str, namespace: str, node: str) -> dict[str, Any]:
        started = time.perf_counter()
        self._binding.add((namespace, name))
        try:
            return await self._bind(args, name, namespace, node)
        finally:
            self._binding.discard((namespace, name))
            if self.on_bind_held is not None:
                self.on_bind_held(time.perf_counter() - started)

    async def _bind(self, args: dict[str, Any], name: str, namespace: str, node: str,
                    use_watch_copy: bool = True) -> dict[str, Any]:
        uid = field(args, "PodUID")
        if not self.is_leader.is_set():
            return {"Error": "this hami-scheduler replica is not the leader"}
        if self.api is None or self.locker is None:
            return {"Error": "binding needs a Kubernetes API connection"}
        key = f"{namespace}/{name}"
        pid = self.cache.id_for(namespace, name, uid if isinstance(uid, str) else "")
        # The watch's copy of the pod saves a GET. It may lag (a bind whose answer was lost may
        # have bound the pod since), so the phase is then written only if the pod is still at
        # the copy's version; otherwise the bind starts again from a fresh read.
        pod = self.cache.unbound_pod(pid) if use_watch_copy else None
        if pod is not None and uid and (pod.get("metadata") or {}).get("uid") != uid:
            pod = None
        from_watch = pod is not None
        if pod is None:
            try:
                pod = await self.api.get_pod(namespace, name)
            except Exception as exc:  # noqa: BLE001 - nothing was written yet: kube-scheduler retries
                return {"Error": f"reading pod {key}: {_reason(exc)}"}
        if pod is None:
            self.cache.forget(pid)
            return {"Error": f"pod {key} not found"}
        if uid and (pod.get("metadata") or {}).get("uid") not in (None, uid):
            return {"Error": f"pod {key} was replaced (uid changed)"}
        pid = pod_id(pod)
        bound_to = (pod.get("spec") or {}).get("nodeName")
        if bound_to:
            # A retry of a bind that went through (its answer was lost, e.g. we restarted):
            # done if it is the same node; never undo the decision of a bound pod.
            return {"Error": "" if bound_to == node else f"pod {key} is already bound to {bound_to}"}
        managed = self.cache.vendors.wants_devices(pod)
        locking = managed and self._uses_node_lock(node, pod)
        lock_version = ""
        decision_to_write: dict[str, str | None] = {}
        expected_version = str((pod.get("metadata") or {}).get("resourceVersion") or "") if from_watch else ""
        if managed:
            error, decision_to_write, written_version = await self._settle_decision(pod, pid, node)
            if error:
                self._event(pod, "BindFailed", error)
                return {"Error": error}
            if from_watch and written_version:
                expected_version = written_version  # our own write is newer than the watch's copy
        if locking:
            try:
                lock_version = await self.locker.lock(node, namespace, name, in_flight=self._bind_running)
            except Exception as exc:  # noqa: BLE001 - NodeLockError, API trouble: nothing written yet
                message = _reason(exc)
                self._event(pod, "BindFailed", message)
                return {"Error": message}
        if not self.is_leader.is_set():
            # Leadership ran out while we waited: leave the pod to the new leader untouched.
            if locking:
                await self.locker.release(node, namespace, name, lock_version)
            return {"Error": "this hami-scheduler replica is no longer the leader"}
        try:
            if managed:
                # One PATCH: the decision (when its background write had not run yet) and the phase.
                await self.api.patch_pod_annotations(
                    namespace, name, {**decision_to_write, **bind_annotations(BindPhase.ALLOCATING, datetime.now(UTC))},
                    resource_version=expected_version or None,
                )
            await self.api.bind(namespace, name, uid if isinstance(uid, str) else None, node)
        except ApiError as exc:
            if managed and from_watch and exc.status.code == 409 and not await self._bound_node(namespace, name):
                # The pod changed since the watch's copy (and nothing was bound): read it and redo.
                if locking:
                    await self.locker.release(node, namespace, name, lock_version)
                return await self._bind(args, name, namespace, node, use_watch_copy=False)
            return await self._bind_failed(pod, node, managed, str(exc.status.message), locking, certain=True)
        except Exception as exc:  # noqa: BLE001 - a lost answer: the binding may or may not have happened
            return await self._bind_failed(pod, node, managed, f"{type(exc).__name__}: {exc}", locking,
                                           certain=False)
        # A node lock stays until the device plugin has allocated the pod: it tells HAMi's plugin
        # (or ours without kubelet's pod-resources API) which pod kubelet is starting.
        return {"Error": ""}

    async def _bind_failed(self, pod: dict[str, Any], node: str, managed: bool, detail: str, locked: bool,
                           certain: bool) -> dict[str, Any]:
        """After a failed write or binding. `certain`: the API server answered with an error,
        so the binding did not happen; otherwise (no answer) it may have."""
        metadata = pod.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or "default"), str(metadata.get("name"))
        try:
            current = await self.api.get_pod(namespace, name) if self.api is not None else None
        except Exception:  # noqa: BLE001 - the API server does not answer
            current = None
            if not certain:
                # Whether the pod got bound is unknown: keep counting its devices (and the lock)
                # until the watch shows it, or the pod is retried, or its decision expires unbound.
                message = f"binding pod {pod_key(pod)} to {node}: no answer from the API server ({detail})"
                log.warning("%s", message)
                return {"Error": message}
        if current is not None:
            self.cache.upsert_pod(current)
        bound_to = ((current or {}).get("spec") or {}).get("nodeName")
        if bound_to == node:
            return {"Error": ""}  # bound already (a retry whose first answer was lost): done
        if managed and not bound_to and current is not None:
            await self._undo(pod, node, locked)
        message = f"binding pod {pod_key(pod)} to {node} failed: {detail}"
        self._event(pod, "BindFailed", message)
        return {"Error": message}

    async def _settle_decision(self, pod: dict[str, Any], pid: str,
                               node: str) -> tuple[str, dict[str, str | None], str]:
        """Make sure the pod's decision is for `node` (kube-scheduler may pick another fitting node).

        Returns an error text (or ""), the decision annotations still to be written, and the
        pod's resourceVersion after our background write of the decision (or "").
        """
        write = (await self.writer.take(pid, self.options.decision_write_wait) if self.writer is not None
                 else WriteOutcome(pending=False))
        holding = self.cache.holding(pid)
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        on_pod = write.pending or annotations.get(keys.VGPU_NODE) == node
        if not write.error and holding is not None and holding.node == node and on_pod:
            return "", write.unwritten, write.version
        with self._decide_lock:
            try:
                decision = self.cache.decide(pod, [node], self.options.defaults)
            except HamiError as exc:
                return str(exc), {}, ""
            if decision.node is None:
                reason = decision.reasons.get(node, "unknown node")
                return f"pod {pod_key(pod)} no longer fits node {node}: {reason}", {}, ""
            now = datetime.now(UTC)
            if not self.cache.assume(pid, decision, len((pod.get("spec") or {}).get("initContainers") or []),
                                     str((pod.get("metadata") or {}).get("uid") or ""), int(now.timestamp()),
                                     sidecars_of(pod), (pod.get("metadata") or {}).get("annotations")):
                return f"pod {pod_key(pod)} was deleted", {}, ""
        return "", dict(self.cache.decision_annotations(pod, decision, now)), write.version

    def _bind_running(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self._binding

    async def _bound_node(self, namespace: str, name: str) -> str | None:
        """Where the pod is bound now (read from the API server); its copy refreshes our cache."""
        try:
            current = await self.api.get_pod(namespace, name) if self.api is not None else None
        except Exception:  # noqa: BLE001 - unknown: treated as not bound
            return None
        if current is None:
            return None
        self.cache.upsert_pod(current)
        return (current.get("spec") or {}).get("nodeName")

    async def _undo(self, pod: dict[str, Any], node: str, locked: bool) -> None:
        """After a bind that did not happen: release the lock, clear what we wrote, free its devices."""
        metadata = pod.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        assert self.api is not None and self.locker is not None
        if locked:
            await self.locker.release(node, namespace, metadata["name"])
        try:
            await self.api.patch_pod_annotations(
                namespace, metadata["name"],
                {**dict.fromkeys(self.cache.decision_keys()), keys.BIND_PHASE: BindPhase.FAILED.value,
                 keys.BIND_TIME: str(int(datetime.now(UTC).timestamp()))},
            )
        except Exception as exc:  # noqa: BLE001 - the decision expires unbound if it stays
            log.warning("pod %s: could not clear the decision after a failed bind: %s", pod_key(pod), _reason(exc))
        self.cache.forget(pod_id(pod))

    def _event(self, pod: dict[str, Any], reason: str, message: str) -> None:
        """Log, and record an Event on the pod in the background (when an event loop runs here)."""
        log.info("pod %s: %s: %s", pod_key(pod), reason, message)
        if self.api is None:
            return
        with contextlib.suppress(RuntimeError):  # no event loop here: the log line has it
            task = asyncio.get_running_loop().create_task(self.api.event(pod, reason, message))
            self._background.add(task)
            task.add_done_callback(self._background.discard)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return str(exc.status.message)
    return str(exc) if isinstance(exc, NodeLockError) else f"{type(exc).__name__}: {exc}"


def _summary(failed: dict[str, str]) -> str:
    """`0/3 nodes are available: 2 CardInsufficientMemory, 1 node unregistered.`"""
    counts: dict[str, int] = {}
    for text in failed.values():
        for part in text.split(", "):
            reason = part.split(" ", 1)[1] if "/" in part.split(" ", 1)[0] else part
            counts[reason] = counts.get(reason, 0) + 1
    detail = ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda x: (-x[1], x[0])))
    return f"0/{len(failed)} nodes are available: {detail}."
