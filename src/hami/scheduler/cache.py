"""The scheduler's view of the cluster, fed by informers and by its own decisions.

Holds node registrations and the pods that carry a decision; builds the engine's
ClusterState from them. Thread-safe: informer threads write, HTTP handlers read.
Only pods with a decision count; a pod that ends (Succeeded, Failed) or is deleted frees
its devices at once.

Pods are kept under `namespace/name` (at most one pod has a name at a time in the API server)
and every event is matched on the pod's UID: a pod deleted and created again under the same name
is another pod, and a late event about the old one must not touch the new one's decision.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.model.allocation import PodAllocation
from hami.model.devices import NodeDevices
from hami.model.requests import PodRequest
from hami.scheduler.engine import Decision, PolicyDefaults, schedule
from hami.scheduler.nodelock import ALLOCATE_BY_POD_RESOURCES
from hami.scheduler.quota import NO_QUOTA, QuotaBook
from hami.scheduler.state import ClusterState
from hami.snapshot import pod_decision
from hami.vendors.registry import VendorSet

log = logging.getLogger(__name__)
ENDED = ("Succeeded", "Failed")


# Deleted pods remembered, so that a late /filter for one of them holds nothing.
REMEMBERED_DELETIONS = 10_000


def sidecars_of(pod: dict[str, Any]) -> frozenset[int]:
    """Positions of the init containers that keep running beside the app containers."""
    init = (pod.get("spec") or {}).get("initContainers") or []
    return frozenset(i for i, c in enumerate(init) if isinstance(c, dict) and c.get("restartPolicy") == "Always")


def pod_key(pod: dict[str, Any]) -> str:
    """`namespace/name`, for messages and API calls."""
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace') or 'default'}/{metadata.get('name')}"


def _names(pod: dict[str, Any]) -> tuple[str, str]:
    metadata = pod.get("metadata") or {}
    return str(metadata.get("namespace") or "default"), str(metadata.get("name"))


def pod_id(pod: dict[str, Any]) -> str:
    """The cache's (and the engine state's) key of a pod: `namespace/name`."""
    return pod_key(pod)


def _uid(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")


def _other_pod(uid: str, than: str) -> bool:
    """Whether two UIDs name two pods (an empty one, from a caller that had none, matches any)."""
    return bool(uid and than and uid != than)


@dataclass(frozen=True)
class Holding:
    """A pod that holds devices: where, what, and its container order (init first)."""

    node: str
    allocation: PodAllocation
    init_count: int
    uid: str
    namespace: str = ""
    name: str = ""
    # Init containers that keep running beside the app containers (restartPolicy: Always).
    sidecars: frozenset[int] = frozenset()
    # Bound pods hold their devices until they end; a decision on a pod that was never
    # bound expires (see expire_unbound), so a pod kube-scheduler gave up on frees its share.
    bound: bool = False
    decided_at: int = 0
    # Our own decision, not yet seen on the pod through the watch. Until it is, an older copy
    # of the pod (without it, or with an earlier decision) must not free or move its devices.
    assumed: bool = False
    # The pod annotations its vendors mark devices with (MetaX sGPU: app class, QoS).
    annotations: tuple[tuple[str, str], ...] = ()
    assumed_at: float = 0.0  # time.monotonic() of the assumption
    # Not a decision: devices kept for a preempting pod while its victims terminate
    # (hami.scheduler.preemption). Counted like a decision; its own expiry.
    held: bool = False

    def same_place(self, other: Holding) -> bool:
        return self.node == other.node and self.allocation == other.allocation


class ClusterCache:
    def __init__(self, config: HamiConfig):
        self.config = config
        self.vendors = VendorSet.from_config(config)
        self._lock = threading.RLock()
        self._nodes: dict[str, NodeDevices] = {}
        self._node_sources: dict[str, tuple[Any, ...]] = {}
        # The latest Node objects, for the handshake's periodic health check.
        self._node_objects: dict[str, dict[str, Any]] = {}
        # Per node, the resources whose pods its device plugin tells apart without HAMi's lock.
        self._matched_by_kubelet: dict[str, frozenset[str]] = {}
        self._holdings: dict[str, Holding] = {}  # by pod_id
        # The latest copy of each pod still waiting for a node, so that /bind needs no GET.
        self._unbound: dict[str, dict[str, Any]] = {}
        # UIDs of deleted pods (the last REMEMBERED_DELETIONS).
        self._deleted: OrderedDict[str, None] = OrderedDict()
        self._state: ClusterState | None = None
        # Told of every change of what a pod holds: (key, before, after), under the cache's lock.
        self.listeners: list[Callable[[str, Holding | None, Holding | None], None]] = []
        # Told of every node whose registered devices changed (its name), under the cache's lock.
        self.node_listeners: list[Callable[[str], None]] = []
        # Namespaces' GPU quotas (ResourceQuota), checked by every decision when set.
        self.quota: QuotaBook | None = None
        self.nodes_synced = False
        self.pods_synced = False

    # ---- nodes -------------------------------------------------------------------------

    def upsert_node(self, node: dict[str, Any]) -> None:
        metadata = node.get("metadata") or {}
        name = str(metadata.get("name"))
        now = datetime.now(UTC)
        source = self.vendors.node_inputs(node, now)
        matched = frozenset(r for r in ((metadata.get("annotations") or {}).get(ALLOCATE_BY_POD_RESOURCES) or "")
                            .split(",") if r)
        with self._lock:
            self._node_objects[name] = node
            if matched:
                self._matched_by_kubelet[name] = matched
            else:
                self._matched_by_kubelet.pop(name, None)
            if name in self._node_sources and self._node_sources[name] == source:
                return  # only the handshake or other annotations changed
            self._node_sources[name] = source
            registered, warnings = self.vendors.registered_node(node, now)
            for warning in warnings:
                log.warning("%s", warning)
            if registered is not None:
                self._nodes[name] = registered
            else:
                self._nodes.pop(name, None)
            self._state = None
            for listener in self.node_listeners:
                listener(name)

    def delete_node(self, name: str) -> None:
        with self._lock:
            self._node_objects.pop(name, None)
            self._node_sources.pop(name, None)
            self._matched_by_kubelet.pop(name, None)
            if self._nodes.pop(name, None) is not None:
                self._state = None

    def replace_nodes(self, nodes: Iterable[dict[str, Any]], listed_at: float | None = None) -> None:
        """A full list (first sync or a relist): nodes not in it are gone."""
        with self._lock:
            seen = set()
            for node in nodes:
                seen.add(str((node.get("metadata") or {}).get("name")))
                self.upsert_node(node)
            for name in set(self._node_sources) - seen:
                self.delete_node(name)
            self.nodes_synced = True

    # ---- pods --------------------------------------------------------------------------

    def upsert_pod(self, pod: dict[str, Any]) -> None:
        key = pod_id(pod)
        metadata = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        holding = None
        ended = (pod.get("status") or {}).get("phase") in ENDED
        if not ended:  # a pod being deleted holds until it is gone
            try:
                decision = pod_decision(pod, self.vendors)
            except AnnotationError as exc:
                log.warning("pod %s: malformed decision annotation (%s); not counted", pod_key(pod), exc)
                decision = None
            if decision is not None:
                try:
                    decided_at = int((metadata.get("annotations") or {}).get(keys.VGPU_TIME, "0"))
                except ValueError:
                    decided_at = 0
                holding = Holding(decision[0], decision[1], len(spec.get("initContainers") or []),
                                  str(metadata.get("uid") or ""), *_names(pod), sidecars=sidecars_of(pod),
                                  bound=bool(spec.get("nodeName")), decided_at=decided_at,
                                  annotations=self.vendors.usage_annotations(metadata.get("annotations")))
        uid = _uid(pod)
        with self._lock:
            if uid in self._deleted:
                return  # a copy read before the deletion we saw: the pod is gone
            current = self._holdings.get(key)
            if current is not None and current.assumed and _other_pod(current.uid, uid):
                # Our decision for a newer pod of the name: the watch brings the events of the one
                # deleted before it (its deletion last) before any event of the new one.
                return
            # Our own decision for this very pod, not yet seen on it: an older copy must not undo it.
            behind = current is not None and current.assumed and (holding is None or not holding.same_place(current))
            if ended or not behind:
                self._set_holding(key, holding)
            if ended or spec.get("nodeName"):
                self._unbound.pop(key, None)
            else:
                self._unbound[key] = pod

    def delete_pod(self, pod: dict[str, Any]) -> None:
        """The pod (this UID) is gone; another pod of the same name is not touched."""
        key, uid = pod_id(pod), _uid(pod)
        with self._lock:
            holding = self._holdings.get(key)
            if holding is not None and not _other_pod(holding.uid, uid):
                self._set_holding(key, None)
            unbound = self._unbound.get(key)
            if unbound is not None and not _other_pod(_uid(unbound), uid):
                del self._unbound[key]
            if uid:
                self._deleted[uid] = None
                while len(self._deleted) > REMEMBERED_DELETIONS:
                    self._deleted.popitem(last=False)

    def _forget_pod(self, key: str) -> None:
        self._set_holding(key, None)
        self._unbound.pop(key, None)

    def replace_pods(self, pods: Iterable[dict[str, Any]], listed_at: float | None = None) -> None:
        """A full list (first sync or a relist): pods not in it are gone, except those we
        decided after the list was asked for (`listed_at`, time.monotonic()): they may have been
        created since."""
        with self._lock:
            seen = set()
            for pod in pods:
                seen.add(pod_id(pod))
                self.upsert_pod(pod)
            for key in (set(self._holdings) | set(self._unbound)) - seen:
                holding = self._holdings.get(key)
                if holding is not None and holding.assumed and listed_at is not None \
                        and holding.assumed_at >= listed_at:
                    continue
                self._forget_pod(key)
            self.pods_synced = True

    def assume(self, key: str, decision: Decision, init_count: int, uid: str = "", now: int = 0,
               sidecars: frozenset[int] = frozenset(), annotations: dict[str, Any] | None = None) -> bool:
        """Count a decision at once, before the watch brings the annotated pod back. It stays
        counted until the watch shows it, the pod ends or goes, it is forgotten, or it expires.
        False (nothing counted) for a pod that was deleted already."""
        if decision.node is None:
            return False
        namespace, _, name = key.partition("/")
        with self._lock:
            if uid in self._deleted:
                return False
            self._set_holding(key, Holding(decision.node, decision.allocation, init_count, uid, namespace, name,
                                           sidecars=sidecars, decided_at=now, assumed=True,
                                           annotations=self.vendors.usage_annotations(annotations),
                                           assumed_at=time.monotonic()))
            return True

    def hold(self, key: str, node: str, allocation: PodAllocation, init_count: int, uid: str = "", now: int = 0,
             sidecars: frozenset[int] = frozenset(), annotations: Mapping[str, str] | None = None) -> None:
        """Keep devices for a pod that has no decision yet (a preemption's hold), until the pod
        is decided, ends or goes, or the hold is forgotten."""
        with self._lock:
            self._set_holding(key, Holding(node, allocation, init_count, uid, sidecars=sidecars, decided_at=now,
                                           assumed=True, held=True,
                                           annotations=self.vendors.usage_annotations(annotations)))

    def expire_unbound(self, now: int, ttl: int) -> list[str]:
        """Stop counting decisions older than `ttl` seconds on pods that were never bound."""
        with self._lock:
            stale = [k for k, h in self._holdings.items()
                     if not h.bound and not h.held and h.decided_at and now - h.decided_at > ttl]
            for key in stale:
                self._set_holding(key, None)
            return stale

    def forget(self, key: str) -> None:
        with self._lock:
            self._set_holding(key, None)

    def id_for(self, namespace: str, name: str) -> str:
        """The key of the pod `namespace/name`."""
        return f"{namespace}/{name}"

    def deleted(self, uid: str) -> bool:
        """Whether the pod with this UID was deleted (as far as we remember)."""
        with self._lock:
            return uid in self._deleted

    def _set_holding(self, key: str, holding: Holding | None) -> None:
        old = self._holdings.get(key)
        if old == holding:
            return
        if holding is None:
            self._holdings.pop(key, None)
        else:
            self._holdings[key] = holding
        for listener in self.listeners:
            listener(key, old, holding)
        if self._state is not None:
            self._state.remove_pod(key)
            if holding is not None:
                self._add(self._state, key, holding)

    def _add(self, state: ClusterState, key: str, holding: Holding) -> None:
        for problem in state.add_pod(key, holding.node, holding.allocation, holding.init_count,
                                     sidecars=holding.sidecars, annotations=dict(holding.annotations)):
            log.warning("%s", problem)

    # ---- reads -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.nodes_synced and self.pods_synced

    def state(self) -> ClusterState:
        """The engine's state (rebuilt after node changes). Call with the lock held for a consistent view."""
        with self._lock:
            if self._state is None:
                state = ClusterState(sorted(self._nodes.values(), key=lambda n: n.name), self.vendors)
                for key, holding in self._holdings.items():
                    self._add(state, key, holding)
                self._state = state
                # The cluster's objects live as long as this state: keep them out of the cyclic
                # garbage collector's full passes, which otherwise stall a decision for tens of ms.
                gc.freeze()
            return self._state

    def node_objects(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._node_objects.values())

    def holdings(self) -> dict[str, Holding]:
        with self._lock:
            return dict(self._holdings)

    def matched_by_kubelet(self, node: str) -> frozenset[str]:
        """The resources whose pods the node's device plugin tells apart through kubelet."""
        with self._lock:
            return self._matched_by_kubelet.get(node, frozenset())

    def unbound_pod(self, key: str) -> dict[str, Any] | None:
        """The watch's latest copy of a pod that had no node then (it may lag the API server)."""
        with self._lock:
            return self._unbound.get(key)

    def holding(self, key: str) -> Holding | None:
        with self._lock:
            return self._holdings.get(key)

    def request_of(self, pod: dict[str, Any]) -> PodRequest:
        return self.vendors.pod_request(pod)

    def decision_annotations(self, pod: dict[str, Any], decision: Decision, now: datetime,
                             request: PodRequest | None = None) -> dict[str, str]:
        """Every annotation of a decision: where and when, and each vendor's devices (HAMi's keys).
        `request`: the pod's request when the caller has read it already."""
        assert decision.node is not None
        with self._lock:
            node = self._nodes.get(decision.node)
        annotations = {keys.VGPU_NODE: decision.node, keys.VGPU_TIME: str(int(now.timestamp()))}
        if node is not None:
            request = request if request is not None else self.request_of(pod)
            annotations.update(self.vendors.decision_annotations(node, request, decision.allocation,
                                                                 int(now.timestamp() * 1e9)))
        return annotations

    def decision_keys(self) -> tuple[str, ...]:
        """Every pod annotation a decision may write, for clearing one."""
        return (keys.VGPU_NODE, keys.VGPU_TIME, *self.vendors.decision_keys())

    def decide(self, pod: dict[str, Any], node_names: Sequence[str] | None, defaults: PolicyDefaults,
               with_scores: bool = False, explain: bool = True, request: PodRequest | None = None) -> Decision:
        """Schedule a pod on the current state. Its own earlier decision does not count against it.

        `request`: the pod's request when the caller has read it already. Raises HamiError for a
        pod whose requests or annotations are malformed.
        """
        request = request if request is not None else self.request_of(pod)
        key = pod_id(pod)
        with self._lock:
            previous = self._holdings.get(key)
            state = self.state()
            if previous is not None:
                state.remove_pod(key)
            quota = NO_QUOTA if self.quota is None else self.quota.left_for(key.split("/", 1)[0], exclude=key)
            try:
                decision = schedule(state, request, defaults, nodes=node_names, explain=explain,
                                    with_scores=with_scores, quota=quota)
            except AnnotationError as exc:
                raise HamiError(f"pod {pod_key(pod)}: {exc}") from None
            finally:
                if previous is not None:
                    self._add(state, key, previous)
            return decision

    def lock(self) -> threading.RLock:
        return self._lock
