"""What the UI knows about the cluster: the scheduler's own ClusterCache, plus the few facts a
page shows that the engine does not need (node readiness and lock, pod phase, priority, bind phase).

Informer threads write; page handlers read. Only pods that ask for devices are kept. Every change
bumps `version`, so that views computed from the store can be reused until something changes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hami.annotations import keys
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.model.allocation import PodAllocation
from hami.model.requests import PodRequest
from hami.scheduler.cache import ENDED, ClusterCache, Holding, pod_key
from hami.scheduler.state import ClusterState


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ready: bool
    unschedulable: bool
    # HAMi's node lock annotation as written ("<RFC3339>,<namespace>,<pod>"), "" when unlocked.
    lock: str


@dataclass(frozen=True)
class PodInfo:
    key: str
    namespace: str
    name: str
    phase: str
    node: str  # spec.nodeName, "" while unbound
    scheduler: str
    priority: int | None
    priority_class: str
    bind_phase: str
    created: str
    # The engine's view of what the pod asks; None with `error` when its requests are malformed.
    request: PodRequest | None
    error: str
    # kube-scheduler's last word on an unscheduled pod (the PodScheduled condition's message).
    scheduler_message: str

    @property
    def pending(self) -> bool:
        return not self.node


def _node_info(node: dict[str, Any]) -> NodeInfo:
    metadata = node.get("metadata") or {}
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return NodeInfo(
        name=str(metadata.get("name")),
        ready=ready,
        unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
        lock=str((metadata.get("annotations") or {}).get(keys.NODE_LOCK) or ""),
    )


def _pod_info(pod: dict[str, Any], cache: ClusterCache) -> PodInfo | None:
    """The pod as the UI lists it; None when it asks for no device or has ended."""
    status = pod.get("status") or {}
    if status.get("phase") in ENDED:
        return None
    try:
        request: PodRequest | None = cache.request_of(pod)
        error = ""
    except HamiError as exc:  # a device resource that does not parse: show it, with why
        request, error = None, str(exc)
    if request is not None and not request.wants_devices:
        return None
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    message = ""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            message = str(condition.get("message") or condition.get("reason") or "")
    priority = spec.get("priority")
    return PodInfo(
        key=pod_key(pod),
        namespace=str(metadata.get("namespace") or "default"),
        name=str(metadata.get("name")),
        phase=str(status.get("phase") or "Pending"),
        node=str(spec.get("nodeName") or ""),
        scheduler=str(spec.get("schedulerName") or "default-scheduler"),
        priority=int(priority) if isinstance(priority, int) else None,
        priority_class=str(spec.get("priorityClassName") or ""),
        bind_phase=str(annotations.get(keys.BIND_PHASE) or ""),
        created=str(metadata.get("creationTimestamp") or ""),
        request=request,
        error=error,
        scheduler_message=message,
    )


class UiStore:
    def __init__(self, config: HamiConfig):
        self.cache = ClusterCache(config)
        self._lock = threading.RLock()
        self._nodes: dict[str, NodeInfo] = {}
        self._pods: dict[str, PodInfo] = {}
        self.version = 0
        self._namespaces: tuple[int, set[str]] = (-1, set())

    # ---- informer side -----------------------------------------------------------------

    def upsert_node(self, node: dict[str, Any]) -> None:
        info = _node_info(node)
        with self._lock:
            self.cache.upsert_node(node)
            self._nodes[info.name] = info
            self.version += 1

    def delete_node(self, node: dict[str, Any]) -> None:
        name = str((node.get("metadata") or {}).get("name"))
        with self._lock:
            self.cache.delete_node(name)
            self._nodes.pop(name, None)
            self.version += 1

    def replace_nodes(self, nodes: Iterable[dict[str, Any]]) -> None:
        items = list(nodes)
        with self._lock:
            self.cache.replace_nodes(items)
            self._nodes = {info.name: info for info in map(_node_info, items)}
            self.version += 1

    def upsert_pod(self, pod: dict[str, Any]) -> None:
        info = _pod_info(pod, self.cache)
        with self._lock:
            self.cache.upsert_pod(pod)
            if info is None:
                self._pods.pop(pod_key(pod), None)
            else:
                self._pods[info.key] = info
            self.version += 1

    def delete_pod(self, pod: dict[str, Any]) -> None:
        key = pod_key(pod)
        with self._lock:
            self.cache.delete_pod(pod)  # this pod's UID only: one created again under the name stays
            self._pods.pop(key, None)
            self.version += 1

    def replace_pods(self, pods: Iterable[dict[str, Any]]) -> None:
        items = list(pods)
        with self._lock:
            self.cache.replace_pods(items)
            infos = (_pod_info(p, self.cache) for p in items)
            self._pods = {info.key: info for info in infos if info is not None}
            self.version += 1

    # ---- page side ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.cache.ready

    @contextlib.contextmanager
    def reading(self) -> Iterator[StoreView]:
        """Everything a page reads, consistent while the block runs: informers wait meanwhile.
        The engine state in it is shared: read it, never change it (see what_if)."""
        with self._lock, self.cache.lock():
            yield StoreView(
                version=self.version,
                state=self.cache.state(),
                holdings=self.cache.holdings(),
                nodes=dict(self._nodes),
                pods=dict(self._pods),
            )

    def namespaces(self) -> set[str]:
        """Namespaces of the pods that ask for devices (the ones a viewer's access is asked about)."""
        with self._lock:
            if self._namespaces[0] != self.version:
                found = {p.namespace for p in self._pods.values()} | {
                    k.split("/", 1)[0] for k in self.cache.holdings()}
                self._namespaces = (self.version, found)
            return set(self._namespaces[1])

    @contextlib.contextmanager
    def what_if(self, without: str = "") -> Iterator[tuple[ClusterState, dict[str, Allocation]]]:
        """The engine state for what-if questions, with the lock held (informers wait meanwhile), and
        the allocation of every pod counted in it. `without`: a pod whose own decision must not count
        against it (as ClusterCache.decide does). Whoever changes the state must put it back as it was;
        the pod left out is counted again on the way out."""
        with self._lock, self.cache.lock():
            state = self.cache.state()
            holdings = self.cache.holdings()
            own = holdings.pop(without, None) if without else None
            if own is not None:
                state.remove_pod(without)
            try:
                yield state, {k: (h.node, h.allocation, h.init_count, h.sidecars) for k, h in holdings.items()}
            finally:
                if own is not None:
                    state.add_pod(without, own.node, own.allocation, own.init_count, sidecars=own.sidecars)


# (node, devices per container, init container count, sidecars) of a pod counted in the engine state.
Allocation = tuple[str, PodAllocation, int, frozenset[int]]


@dataclass(frozen=True)
class StoreView:
    version: int
    state: ClusterState
    holdings: dict[str, Holding]
    nodes: dict[str, NodeInfo]
    pods: dict[str, PodInfo]

    @property
    def unregistered(self) -> list[str]:
        """Nodes in the cluster that offer no device to the engine."""
        known = set(self.state.node_pos)
        return sorted(name for name in self.nodes if name not in known)
