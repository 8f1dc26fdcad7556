"""The kube-scheduler extender: /filter, /prioritize and /bind on the wire types of
k8s.io/kube-scheduler/extender/v1 (ExtenderArgs, ExtenderFilterResult, HostPriorityList,
ExtenderBindingArgs, ExtenderBindingResult). Field names are Go's, without JSON tags.

Filter decides with the engine and counts the decision at once (no API call). By default it
returns every node that fits, so kube-scheduler can weigh our /prioritize score with its own
plugins; `only_best_node` returns just our choice, as HAMi. Bind re-decides when kube-scheduler
picked another fitting node, then binds with one API call: a Binding that carries the
decision's annotations, applied by the API server together with the node name, or not at all.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
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
from hami.scheduler.requeue import Requeuer
from hami.vendors.base import LockKind, Vendor
from hami.wire import ShapeError, check_pod, node_names

log = logging.getLogger(__name__)
MAX_EXTENDER_PRIORITY = 10
REMEMBERED_SCORES = 1000  # /filter answers whose /prioritize has not come yet


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


@dataclass
class ExtenderOptions:
    defaults: PolicyDefaults = PolicyDefaults()
    only_best_node: bool = False
    hold_lock_until_allocated: bool = False


class Extender:
    def __init__(self, cache: ClusterCache, api: AsyncKubeApi | None, locker: NodeLocker | None,
                 options: ExtenderOptions | None = None):
        self.cache = cache
        self.api = api
        self.locker = locker
        self.options = options or ExtenderOptions()
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
        self._background: set[asyncio.Task[Any]] = set()
        # Plans preemptions for pods that fit nowhere (hami.scheduler.preemption); None: off.
        self.preemptor: Preemptor | None = None
        # Asks kube-scheduler to retry refused pods once room appears (hami.scheduler.requeue).
        self.requeuer: Requeuer | None = None
        # By pod_id, from the pod's last /filter: our choice and the node scores (for /prioritize),
        # and the decision's annotations (for /bind).
        self._scores: OrderedDict[str, tuple[str | None, dict[str, float]]] = OrderedDict()
        self._decided: OrderedDict[str, tuple[str, dict[str, str]]] = OrderedDict()

    @property
    def decide_lock(self) -> threading.Lock:
        """Held while a pod is decided: others that change accounting (resizes) take it too."""
        return self._decide_lock

    # ---- /filter -----------------------------------------------------------------------

    def filter(self, args: dict[str, Any]) -> dict[str, Any]:
        pod = pod_of(args)
        names = candidate_names(args)
        try:
            request = self.cache.request_of(pod)
        except HamiError as exc:
            if not self.cache.vendors.names_managed_resource(pod):
                return {"NodeNames": names, "FailedNodes": {}, "Error": ""}
            return {"NodeNames": [], "FailedNodes": {}, "Error": str(exc)}
        if not request.wants_devices:
            return {"NodeNames": names, "FailedNodes": {}, "Error": ""}
        if not self.is_leader.is_set():
            return {"NodeNames": [], "FailedNodes": {}, "Error": "this hami-scheduler replica is not the leader"}
        key = pod_id(pod)
        with self._decide_lock:
            try:
                decision = self.cache.decide(pod, names, self.options.defaults, with_scores=True, request=request)
            except HamiError as exc:
                return {"NodeNames": [], "FailedNodes": {}, "Error": str(exc)}
            failed = dict(decision.reasons)
            known = self.cache.state().node_pos
            for name in names:
                if name not in known:
                    failed[name] = R.NODE_UNREGISTERED
            if decision.node is None:
                self._event(pod, "FilteringFailed", _summary(failed))
                if self.requeuer is not None:
                    self.requeuer.refused(pod, names)
                if self.preemptor is not None:
                    self.preemptor.request(pod, names)
                return {"NodeNames": [], "FailedNodes": failed, "Error": ""}
            now = datetime.now(UTC)
            metadata = pod.get("metadata") or {}
            if not self.cache.assume(key, decision, len((pod.get("spec") or {}).get("initContainers") or []),
                                     str(metadata.get("uid") or ""), int(now.timestamp()), sidecars_of(pod),
                                     metadata.get("annotations")):
                return {"NodeNames": [], "FailedNodes": {}, "Error": f"pod {pod_key(pod)} was deleted"}
            # kube-scheduler asks /prioritize next, over the nodes that passed: answered from these.
            self._scores[key] = (decision.node, decision.scores or {})
            self._decided[key] = (decision.node, dict(self.cache.decision_annotations(pod, decision, now, request)))
            for remembered in (self._scores, self._decided):
                while len(remembered) > REMEMBERED_SCORES:
                    remembered.popitem(last=False)
        fitting = [decision.node] if self.options.only_best_node else [n for n in names if n not in failed]
        return {"NodeNames": fitting, "FailedNodes": failed, "Error": ""}

    # ---- /prioritize -------------------------------------------------------------------

    def prioritize(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        pod = pod_of(args)
        names = candidate_names(args)
        key = pod_id(pod)
        remembered = self._scores.pop(key, None)
        holding = self.cache.holding(key)
        if remembered is not None and holding is not None and holding.node == remembered[0] \
                and all(n in remembered[1] for n in names):
            # The scores our /filter computed for this pod, on the state it decided on.
            chosen, scores = remembered
        else:
            try:
                request = self.cache.request_of(pod)
                if not request.wants_devices:
                    return [{"Host": n, "Score": 0} for n in names]
                decision = self.cache.decide(pod, names, self.options.defaults, with_scores=True, explain=False,
                                             request=request)
            except HamiError:
                return [{"Host": n, "Score": 0} for n in names]
            chosen = holding.node if holding is not None else decision.node
            scores = decision.scores or {}
        wanted = [n for n in names if n in scores]
        # Our node score mapped linearly onto 0..9 over the fitting nodes; our own choice gets 10.
        points: dict[str, int] = {}
        if wanted:
            values = np.fromiter((scores[n] for n in wanted), dtype=np.float64, count=len(wanted))
            low, high = values.min(), values.max()
            if high > low:
                fraction = (values - low) / (high - low)
                if self.options.defaults.node_policy is Policy.SPREAD:
                    fraction = 1 - fraction
                scaled = np.rint(fraction * (MAX_EXTENDER_PRIORITY - 1)).astype(np.int64)
                points = dict(zip(wanted, scaled.tolist(), strict=True))
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
        """HAMi's shared node lock is needed unless, for every vendor the pod asks that uses it,
        the node's device plugin tells pods apart without it: it asks kubelet which pod it is
        starting (see docs/device-plugin.md). Vendors with their own lock or none never need it.
        Without the pod: unless the node's plugin does so for some vendor."""
        if pod is None:
            return self.options.hold_lock_until_allocated or not self.cache.matched_by_kubelet(node)
        vendors = self._asked_vendors(pod)
        if vendors is None:
            return True
        matched = frozenset() if self.options.hold_lock_until_allocated else self.cache.matched_by_kubelet(node)
        return any(v is None or (v.lock is LockKind.SHARED and v.resources.count not in matched) for v in vendors)

    def _own_locks(self, pod: dict[str, Any]) -> list[str]:
        """The node annotations of the vendors' own locks the pod needs (Cambricon's), sorted:
        every scheduler takes them in one order."""
        return sorted({v.lock_key for v in self._asked_vendors(pod) or []
                       if v is not None and v.lock is LockKind.OWN and v.lock_key})

    def _asked_vendors(self, pod: dict[str, Any]) -> list[Vendor | None] | None:
        """The vendors the pod asks (None for one this scheduler does not know); None for a pod
        whose request cannot be read."""
        try:
            request = self.cache.request_of(pod)
        except HamiError:
            return None
        asked = {ask.vendor for container in request.containers for ask in container.asks}
        return [self.cache.vendors.get(name) for name in sorted(asked)]

    async def _release_locks(self, node: str, namespace: str, name: str, shared: bool, version: str,
                             own: Sequence[str]) -> None:
        if self.locker is None:
            return
        if shared:
            await self.locker.release(node, namespace, name, version or None)
        for key in own:
            await self.locker.release_own(node, key)

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
        pid = self.cache.id_for(namespace, name)
        # The watch's copy of the pod saves a GET. It may lag (a bind whose answer was lost may
        # have bound the pod since), so the binding is made only if the pod is still at the
        # copy's resourceVersion; otherwise the bind starts again from a fresh read.
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
        annotations: dict[str, str] = {}
        if managed:
            error, annotations = self._settle_decision(pod, pid, node)
            if error:
                self._event(pod, "BindFailed", error)
                return {"Error": error}
            annotations.update(bind_annotations(BindPhase.ALLOCATING, datetime.now(UTC)))
        lock_version = ""
        if locking:
            try:
                lock_version = await self.locker.lock(node, namespace, name, in_flight=self._bind_running)
            except Exception as exc:  # noqa: BLE001 - NodeLockError, API trouble: nothing written yet
                message = _reason(exc)
                self._event(pod, "BindFailed", message)
                return {"Error": message}
        own_locks: list[str] = []
        for lock_key in self._own_locks(pod) if managed else []:
            try:
                await self.locker.lock_own(node, lock_key)
            except Exception as exc:  # noqa: BLE001 - NodeLockError, API trouble: nothing bound yet
                await self._release_locks(node, namespace, name, locking, lock_version, own_locks)
                message = _reason(exc)
                self._event(pod, "BindFailed", message)
                return {"Error": message}
            own_locks.append(lock_key)
        if not self.is_leader.is_set():
            # Leadership ran out while we waited: leave the pod to the new leader untouched.
            await self._release_locks(node, namespace, name, locking, lock_version, own_locks)
            return {"Error": "this hami-scheduler replica is no longer the leader"}
        try:
            # One call: the API server sets the node name and our annotations together, only
            # if the pod is still the one we read (UID, and resourceVersion for a watch copy).
            version = str((pod.get("metadata") or {}).get("resourceVersion") or "") if from_watch else ""
            await self.api.bind(namespace, name, uid if isinstance(uid, str) else None, node,
                                annotations=annotations, resource_version=version or None)
        except ApiError as exc:
            if exc.status.code == 409 and from_watch:
                # The pod changed since the watch's copy: bound meanwhile, or only touched.
                bound_to = await self._bound_node(namespace, name)
                if bound_to == node:
                    return {"Error": ""}  # an earlier attempt whose answer was lost went through
                await self._release_locks(node, namespace, name, locking, lock_version, own_locks)
                if bound_to:
                    return {"Error": f"pod {key} is already bound to {bound_to}"}
                return await self._bind(args, name, namespace, node, use_watch_copy=False)
            return await self._bind_failed(pod, node, managed, str(exc.status.message), locking, own_locks,
                                           certain=True)
        except Exception as exc:  # noqa: BLE001 - a lost answer: the binding may or may not have happened
            return await self._bind_failed(pod, node, managed, f"{type(exc).__name__}: {exc}", locking,
                                           own_locks, certain=False)
        self._decided.pop(pid, None)
        if self.preemptor is not None:
            # A preemption's hold written on the pod is over now that it is placed (a Binding can
            # set annotations, not remove them: one more write, for preempting pods only).
            cleared = self.preemptor.cleared(pod)
            if cleared:
                self._spawn(self.api.patch_pod_annotations(namespace, name, cleared))
        # A node lock stays until the device plugin has allocated the pod: it tells HAMi's plugin
        # (or ours without kubelet's pod-resources API) which pod kubelet is starting. A vendor's
        # own lock is the vendor's plugin's to delete (Cambricon's does), as under HAMi.
        return {"Error": ""}

    async def _bind_failed(self, pod: dict[str, Any], node: str, managed: bool, detail: str, locked: bool,
                           own_locks: Sequence[str], certain: bool) -> dict[str, Any]:
        """After a binding that failed. `certain`: the API server refused it, so nothing was
        written; otherwise (no answer) it may have gone through."""
        metadata = pod.get("metadata") or {}
        namespace, name = str(metadata.get("namespace") or "default"), str(metadata.get("name"))
        current: dict[str, Any] | None = None
        try:
            current = await self.api.get_pod(namespace, name) if self.api is not None else None
        except Exception:  # noqa: BLE001 - the API server does not answer
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
        if managed and not bound_to:
            # Not bound: nothing of ours is on the pod; free its devices (a retry decides again).
            await self._release_locks(node, namespace, name, locked, "", own_locks)
            self.cache.forget(pod_id(pod))
        message = f"binding pod {pod_key(pod)} to {node} failed: {detail}"
        self._event(pod, "BindFailed", message)
        return {"Error": message}

    def _settle_decision(self, pod: dict[str, Any], pid: str, node: str) -> tuple[str, dict[str, str]]:
        """Make sure the pod's decision is for `node` (kube-scheduler may pick another fitting node).

        Returns an error text (or "") and the decision's annotations to bind with.
        """
        holding = self.cache.holding(pid)
        decided = self._decided.get(pid)
        if holding is not None and holding.node == node:
            if decided is not None and decided[0] == node:
                return "", dict(decided[1])
            if ((pod.get("metadata") or {}).get("annotations") or {}).get(keys.VGPU_NODE) == node:
                return "", {}  # the pod carries this decision already
        with self._decide_lock:
            try:
                decision = self.cache.decide(pod, [node], self.options.defaults)
            except HamiError as exc:
                return str(exc), {}
            if decision.node is None:
                reason = decision.reasons.get(node, "unknown node")
                return f"pod {pod_key(pod)} no longer fits node {node}: {reason}", {}
            now = datetime.now(UTC)
            if not self.cache.assume(pid, decision, len((pod.get("spec") or {}).get("initContainers") or []),
                                     str((pod.get("metadata") or {}).get("uid") or ""), int(now.timestamp()),
                                     sidecars_of(pod), (pod.get("metadata") or {}).get("annotations")):
                return f"pod {pod_key(pod)} was deleted", {}
        return "", dict(self.cache.decision_annotations(pod, decision, now))

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

    def _event(self, pod: dict[str, Any], reason: str, message: str) -> None:
        """Log, and record an Event on the pod in the background (when an event loop runs here)."""
        log.info("pod %s: %s: %s", pod_key(pod), reason, message)
        if self.api is None:
            return
        self._spawn(self.api.event(pod, reason, message))

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in the background on the event loop (dropped when no loop runs here); a
        failure is logged."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:
            work.close()
            return
        self._background.add(task)  # kept until done (the loop holds tasks weakly)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_settled)


def _settled(task: asyncio.Task[Any]) -> None:
    failure = None if task.cancelled() else task.exception()
    if isinstance(failure, Exception):
        log.warning("background API call failed: %s", _reason(failure))


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
