"""Asks kube-scheduler to try a refused pod again once our cache sees room for it.

kube-scheduler retries a pod that an extender refused on any cluster event (a pod deleted, a
node updated), but it learns of that event from its own watch, which may run ahead of ours.
It then calls /filter at once, our cache has not yet seen the room, the pod is refused again,
and kube-scheduler parks it until the next event: up to 5 minutes (its flush of unschedulable
pods) in a quiet cluster. A ResourceQuota change requeues no pod at all.

So /filter remembers the pods it refused (`refused`). When our cache sees room appear (a pod's
devices released, a node's devices changed, a GPU quota changed), a worker lets a second
pass from the first sign of room (kube-scheduler's own retry usually places the pod meanwhile;
room seen later in that second waits less), re-decides each refused pod
whose nodes or namespace gained room, and writes `hami.io/scheduling-retry` on those that fit
now. kube-scheduler takes any update of an unscheduled pod as a reason to try it again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hami.annotations import keys
from hami.errors import HamiError
from hami.scheduler.cache import ClusterCache, Holding, pod_key
from hami.scheduler.engine import PolicyDefaults
from hami.scheduler.kube import KubeApi
from hami.scheduler.quota import QuotaBook

log = logging.getLogger(__name__)
REMEMBERED_REFUSALS = 10_000
# Seconds between seeing room and re-deciding: kube-scheduler, told of the same event, usually
# retries the pod itself within this time; then nothing needs writing.
GRACE_S = 1.0


@dataclass
class Refusal:
    """A pod /filter refused, and the nodes kube-scheduler offered it."""

    key: str
    pod: dict[str, Any]
    nodes: list[str]
    uid: str
    # Derived once, read every round: the pod's namespace and its offered nodes as a set.
    namespace: str = field(init=False)
    node_set: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.namespace = self.key.split("/", 1)[0]
        self.node_set = frozenset(self.nodes)


class Requeuer:
    def __init__(self, cache: ClusterCache, api: KubeApi | None, decide_lock: threading.Lock,
                 is_leader: threading.Event, defaults: PolicyDefaults | None = None,
                 grace: float = GRACE_S, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.cache = cache
        self.api = api
        self.decide_lock = decide_lock
        self.is_leader = is_leader
        self.defaults = defaults or PolicyDefaults()
        self.grace = grace
        self.now = now
        self._lock = threading.Lock()
        self._refused: OrderedDict[str, Refusal] = OrderedDict()  # by pod key, latest refusal last
        self._room_nodes: set[str] = set()  # seen gaining room since the last round
        self._room_namespaces: set[str] = set()  # freed quota (or may have) since the last round
        self._wake = threading.Event()
        self.quota: QuotaBook | None = None  # set by listen: a freed quota share makes room on any node
        self.asked = 0  # retry requests written (the metric's count)

    # ---- told by /filter and by the cache ----------------------------------------------

    def listen(self, quota: QuotaBook | None = None) -> None:
        """Be told of room by the cache (and of changed limits by the quota book)."""
        self.cache.listeners.append(self.on_holding)
        self.cache.node_listeners.append(self.on_node)
        self.quota = quota
        if quota is not None:
            quota.limit_listeners.append(self.on_quota)

    def refused(self, pod: dict[str, Any], nodes: Iterable[str]) -> None:
        """/filter found no node for the pod among `nodes`."""
        metadata = pod.get("metadata") or {}
        key = pod_key(pod)
        refusal = Refusal(key, pod, list(nodes), str(metadata.get("uid") or ""))
        with self._lock:
            self._refused[key] = refusal
            self._refused.move_to_end(key)
            while len(self._refused) > REMEMBERED_REFUSALS:
                self._refused.popitem(last=False)

    def on_holding(self, key: str, before: Holding | None, after: Holding | None) -> None:
        """The cache's listener (called under the cache's lock): a pod's devices moved."""
        freed = before is not None and (after is None or not after.same_place(before))
        namespace = key.split("/", 1)[0]
        # Asked before taking our lock: the quota book calls on_quota under its own.
        quota_freed = freed and self.quota is not None and self.quota.limits(namespace)
        with self._lock:
            if after is not None and not after.held:
                self._refused.pop(key, None)  # decided: nothing to retry
            if freed and before is not None:
                self._room_nodes.add(before.node)
                if quota_freed:
                    self._room_namespaces.add(namespace)  # its quota share: any node may do now
                self._wake.set()

    def on_node(self, name: str) -> None:
        """The cache's node listener: the node's registered devices changed."""
        with self._lock:
            self._room_nodes.add(name)
            self._wake.set()

    def on_quota(self, namespace: str) -> None:
        """The quota book's listener: the namespace's GPU quota limits changed."""
        with self._lock:
            self._room_namespaces.add(namespace)
            self._wake.set()

    def waiting(self) -> list[str]:
        """The refused pods remembered, oldest refusal first."""
        with self._lock:
            return list(self._refused)

    # ---- the worker --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._wake.wait(timeout=1.0):
                continue
            if stop.wait(self.grace):
                return
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a failed round must not stop the next ones
                log.exception("asking kube-scheduler to retry refused pods failed")

    def tick(self) -> list[str]:
        """One round over the room seen since the last: returns the pods asked for again."""
        if self.api is None or not self.is_leader.is_set():
            self._take_room()  # a replica that does not lead writes nothing; the room is used up
            return []
        return [refusal.key for refusal in self.fitting() if self._ask_again(refusal)]

    def fitting(self) -> list[Refusal]:
        """The refused pods that fit now, among those whose nodes or namespace gained room since
        the last round (which this ends). Pods placed, held or deleted since are forgotten."""
        nodes, namespaces = self._take_room()
        with self._lock:
            # A pod refused on every node it was offered can fit now only where room appeared since
            # (all its nodes when its namespace's quota changed): only those are decided again.
            due = [(r, r.nodes if r.namespace in namespaces else sorted(r.node_set & nodes))
                   for r in self._refused.values()]
        return [refusal for refusal, where in due if where and self._fits_now(refusal, where)]

    def _take_room(self) -> tuple[set[str], set[str]]:
        """The nodes and namespaces that gained room since the last round; the next starts empty."""
        with self._lock:
            self._wake.clear()
            taken = self._room_nodes, self._room_namespaces
            self._room_nodes, self._room_namespaces = set(), set()
            return taken

    def _fits_now(self, refusal: Refusal, nodes: list[str]) -> bool:
        with self.decide_lock:
            if self.cache.holding(refusal.key) is not None or self.cache.deleted(refusal.uid):
                self._forget(refusal)  # placed (or held by a preemption) since, or gone
                return False
            try:
                return self.cache.decide(refusal.pod, nodes, self.defaults, explain=False).node is not None
            except HamiError:
                self._forget(refusal)
                return False

    def _ask_again(self, refusal: Refusal) -> bool:
        assert self.api is not None
        key = refusal.key
        namespace, _, name = key.partition("/")
        stamp = self.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self.api.patch_pod_annotations(namespace, name, {keys.SCHEDULING_RETRY: stamp})
        except ApiError as exc:
            if exc.status.code == 404:
                self._forget(refusal)  # gone
            else:  # kept: asked again on the next room
                log.warning("pod %s: could not ask kube-scheduler to retry it: %s", key, exc.status.message)
            return False
        except Exception as exc:  # noqa: BLE001 - the API server unreachable: kept, as above
            log.warning("pod %s: could not ask kube-scheduler to retry it: %s: %s", key, type(exc).__name__, exc)
            return False
        self._forget(refusal)
        with self._lock:
            self.asked += 1
        log.info("pod %s: room appeared after /filter refused it; asked kube-scheduler to try it again", key)
        return True

    def _forget(self, refusal: Refusal) -> None:
        """Drop this refusal, not a newer one /filter recorded meanwhile."""
        with self._lock:
            if self._refused.get(refusal.key) is refusal:
                del self._refused[refusal.key]


class RequeueCollector(Collector):
    """How many refused pods wait, and how many retry requests were written."""

    def __init__(self, requeuer: Requeuer):
        self.requeuer = requeuer

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        waiting = GaugeMetricFamily("hami_scheduler_refused_pods", "Pods /filter refused that wait for room")
        waiting.add_metric([], float(len(self.requeuer.waiting())))
        asked = CounterMetricFamily("hami_scheduler_retry_requests",
                                    "Refused pods that kube-scheduler was asked to try again once room appeared")
        asked.add_metric([], float(self.requeuer.asked))
        return [waiting, asked]
