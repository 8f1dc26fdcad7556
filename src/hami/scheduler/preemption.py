"""Preemption for device shares: the shell around the pure victim search (hami.scheduler.preempt).

kube-scheduler cannot preempt for GPU shares: the extender tells it to ignore our resources,
so its own preemption finds no victim when only devices are short. So:

- When /filter finds no node for a pod, the extender hands the pod to `Preemptor.request`; a
  worker thread plans (the lowest-priority, fewest, smallest victims on one node of the nodes
  kube-scheduler offered), holds the devices the pod will take (a `held` holding in the cache,
  also written on the pod so that a restart or the other replica keeps it), and evicts the
  victims through the Eviction API, which refuses what a PodDisruptionBudget forbids. When the
  victims are gone kube-scheduler retries the pod (a pod deletion requeues it) and it takes the
  held devices: no other pod of equal or lower priority can, since the hold counts as used.
- When kube-scheduler's own preemption runs (DefaultPreemption on, the extender's
  `preemptVerb: preempt`), it proposes victims for CPU and memory; `/preempt` keeps a node only
  if the pod then fits per device, adding the device victims it needs, and returns one node.

No loops: only pods of strictly lower priority are victims; a pod whose victims are still
terminating does not preempt again; holds yield only to pods of higher priority. A pod with
`preemptionPolicy: Never`, or whose PriorityClass is gone, preempts nothing (an Event says why).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from lightkube import ApiError
from lightkube.models.meta_v1 import DeleteOptions, ObjectMeta, Preconditions
from lightkube.resources.core_v1 import Pod
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.scheduling_v1 import PriorityClass

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.pod_devices import decode_pod_devices, encode_pod_devices
from hami.errors import HamiError
from hami.model.allocation import PodAllocation
from hami.model.requests import PodRequest
from hami.scheduler.cache import ClusterCache, Holding, pod_key, sidecars_of
from hami.scheduler.engine import PodContext, PolicyDefaults, fit_pod_on_node
from hami.scheduler.kube import KubeApi
from hami.scheduler.preempt import Outcome, Plan, plan_preemption
from hami.scheduler.quota import QuotaBook, pod_usage
from hami.scheduler.state import ClusterState
from hami.wire import ShapeError, check_pod

log = logging.getLogger(__name__)

HOLD_KEYS = (keys.PREEMPTION_NODE, keys.PREEMPTION_DEVICES, keys.PREEMPTION_VICTIMS, keys.PREEMPTION_TIME)
PREEMPT_NEVER = "Never"
PLAN_ATTEMPTS = 3  # plans made on a copy of the state, then found stale, before giving up for now


@dataclass(frozen=True)
class PodFacts:
    """What preemption needs to know of a pod."""

    key: str
    uid: str
    namespace: str
    priority: int
    labels: Mapping[str, str]
    terminating: bool
    phase: str = ""


    @property
    def budgeted(self) -> bool:
        """Whether disruption budgets guard the pod: the Eviction API evicts a pod that is not
        running yet (Pending) without asking them."""
        return self.phase not in ("Pending", "Succeeded", "Failed")


def facts_of(pod: Mapping[str, Any]) -> PodFacts:
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    priority = spec.get("priority")
    return PodFacts(
        key=pod_key(dict(pod)),
        uid=str(metadata.get("uid") or ""),
        namespace=str(metadata.get("namespace") or "default"),
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
        labels={str(k): str(v) for k, v in (metadata.get("labels") or {}).items()},
        terminating=bool(metadata.get("deletionTimestamp")),
        phase=str((pod.get("status") or {}).get("phase") or ""),
    )


@dataclass
class Hold:
    """Devices kept for a preempting pod until it is placed, or its victims are gone and it did
    not come within the hold's time."""

    key: str
    uid: str
    node: str
    allocation: PodAllocation
    priority: int
    victims: tuple[str, ...]
    waits_for: tuple[str, ...]  # victims and pods that were terminating already
    made_at: float
    restored: bool = False  # read back from the pod's annotations (not made by this replica)
    gone_at: float | None = None  # when the last pod it waits for went


@dataclass(frozen=True)
class Budget:
    """A PodDisruptionBudget as the Eviction API will judge it."""

    name: str
    namespace: str
    selector: Mapping[str, Any] | None
    allowed: int


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector; a null selector selects nothing, an empty one everything."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def guards(budget: Budget, pod: PodFacts) -> bool:
    """Whether the Eviction API asks this budget before evicting the pod."""
    return pod.budgeted and budget.namespace == pod.namespace and selector_matches(budget.selector, pod.labels)


def budget_of(pdb: Mapping[str, Any]) -> Budget:
    metadata = pdb.get("metadata") or {}
    status = pdb.get("status") or {}
    # The API server refuses evictions until the disruption controller has seen this generation.
    seen = int(status.get("observedGeneration") or 0) >= int(metadata.get("generation") or 0)
    allowed = int(status.get("disruptionsAllowed") or 0) if seen else 0
    return Budget(str(metadata.get("name")), str(metadata.get("namespace") or "default"),
                  (pdb.get("spec") or {}).get("selector"), allowed)


@dataclass
class PreemptionOptions:
    defaults: PolicyDefaults = PolicyDefaults()
    # Seconds a hold waits for its pod after the victims are gone.
    hold_seconds: float = 60.0
    # Seconds between two Events of the same reason on the same pod.
    event_interval: float = 300.0


@dataclass
class _Job:
    pod: dict[str, Any]
    nodes: list[str]


@dataclass
class _Events:
    sent: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)


class Preemptor:
    def __init__(self, cache: ClusterCache, api: KubeApi | None, decide_lock: threading.Lock,
                 is_leader: threading.Event, options: PreemptionOptions | None = None,
                 quota: QuotaBook | None = None, clock: Callable[[], float] = time.monotonic):
        self.cache = cache
        self.api = api
        self.decide_lock = decide_lock
        self.is_leader = is_leader
        self.options = options or PreemptionOptions()
        self.quota = quota
        self.clock = clock
        self._lock = threading.Lock()
        self._facts: dict[str, PodFacts] = {}
        self._by_uid: dict[str, str] = {}
        self._holds: dict[str, Hold] = {}
        self._evicting: set[str] = set()
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._queued: set[str] = set()
        self._events = _Events()
        self._classes: dict[str, tuple[bool, float]] = {}

    # ---- the pod informer's view ------------------------------------------------------

    def upsert_hook(self, upsert: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        def hooked(pod: dict[str, Any]) -> None:
            upsert(pod)
            self.observe(pod)
        return hooked

    def replace_hook(self, replace_all: Callable[..., None]) -> Callable[..., None]:
        def hooked(pods: Iterable[dict[str, Any]], *more: Any) -> None:
            listed = list(pods)
            replace_all(listed, *more)
            with self._lock:
                self._facts.clear()
                self._by_uid.clear()
            for pod in listed:
                self.observe(pod)
        return hooked

    def delete_hook(self, delete: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        def hooked(pod: dict[str, Any]) -> None:
            # Forgotten here first: a plan finishing meanwhile then holds nothing for the pod, or
            # holds under the cache's lock before `delete` drops it.
            facts = facts_of(pod)
            with self._lock:
                if self._facts.get(facts.key, facts).uid == facts.uid:
                    self._facts.pop(facts.key, None)
                self._by_uid.pop(facts.uid, None)
            delete(pod)
        return hooked

    def observe(self, pod: dict[str, Any]) -> None:
        facts = facts_of(pod)
        with self._lock:
            self._facts[facts.key] = facts
            if facts.uid:
                self._by_uid[facts.uid] = facts.key
        self._restore(pod, facts)

    def _restore(self, pod: dict[str, Any], facts: PodFacts) -> None:
        """Keep a hold written on the pod (by us before a restart, or by the other replica)."""
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        node = annotations.get(keys.PREEMPTION_NODE)
        if (pod.get("spec") or {}).get("nodeName"):
            return
        with self._lock:
            mine = self._holds.get(facts.key)
        if not node:
            if mine is not None and mine.restored:
                self._drop(mine.key)  # released by the replica that made it
            return
        if mine is not None:
            return
        try:
            allocation = decode_pod_devices(str(annotations.get(keys.PREEMPTION_DEVICES) or ""))
        except AnnotationError as exc:
            log.warning("pod %s: malformed %s (%s); no devices held", facts.key, keys.PREEMPTION_DEVICES, exc)
            return
        with self.cache.lock():
            current = self.cache.holding(facts.key)
            if current is not None and not current.held:
                return  # decided since
            victims = tuple(v for v in str(annotations.get(keys.PREEMPTION_VICTIMS) or "").split(",") if v)
            hold = Hold(facts.key, facts.uid, str(node), allocation, facts.priority, victims, victims, self.clock(),
                        restored=True)
            with self._lock:
                self._holds[facts.key] = hold
            self.cache.hold(facts.key, hold.node, allocation, len((pod.get("spec") or {}).get("initContainers") or []),
                            facts.uid, sidecars=sidecars_of(pod), annotations=annotations)

    def facts(self, key: str) -> PodFacts | None:
        with self._lock:
            return self._facts.get(key)

    def holds(self) -> dict[str, Hold]:
        with self._lock:
            return dict(self._holds)

    def cleared(self, pod: Mapping[str, Any]) -> dict[str, str | None]:
        """The hold's annotations to remove in the pod's decision write (it is placed now)."""
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        with self._lock:
            held = pod_key(dict(pod)) in self._holds
        # The copy of the pod kube-scheduler sent may predate our hold's annotations.
        return dict.fromkeys(HOLD_KEYS) if held or any(k in annotations for k in HOLD_KEYS) else {}

    # ---- the worker: /filter found no node --------------------------------------------

    def request(self, pod: dict[str, Any], nodes: list[str]) -> None:
        """Plan a preemption for a pod that fits nowhere (runs in the worker, not the caller)."""
        key = pod_key(pod)
        with self._lock:
            if key in self._queued:
                return
            self._queued.add(key)
        self._jobs.put(_Job(pod, list(nodes)))

    def run(self, stop: threading.Event, tick: float = 2.0) -> None:
        last = 0.0
        while not stop.is_set():
            try:
                job = self._jobs.get(timeout=tick)
            except queue.Empty:
                job = None
            if job is not None:
                with self._lock:
                    self._queued.discard(pod_key(job.pod))
                try:
                    self.preempt(job.pod, job.nodes)
                except Exception:  # noqa: BLE001 - one pod's trouble must not stop preemption for others
                    log.exception("preemption for pod %s failed", pod_key(job.pod))
            if self.clock() - last >= tick:
                last = self.clock()
                try:
                    self.maintain()
                except Exception:  # noqa: BLE001
                    log.exception("preemption: keeping holds failed")

    def preempt(self, pod: dict[str, Any], nodes: list[str]) -> Plan | None:
        """Plan for the pod and carry the plan out: hold its devices, evict its victims."""
        if not self.is_leader.is_set() or self.api is None:
            return None
        facts = facts_of(pod)
        key = facts.key
        current = self.cache.holding(key)
        if current is not None and not current.held:
            return None  # placed meanwhile
        with self._lock:
            hold = self._holds.get(key)
        if hold is not None and self._waiting(hold):
            return None  # its victims are still terminating: no second preemption
        spec = pod.get("spec") or {}
        if spec.get("preemptionPolicy") == PREEMPT_NEVER:
            self._event(pod, "NotPreempting", "preemptionPolicy is Never: this pod waits for free devices and "
                        "evicts no other pod", warning=False)
            return None
        class_name = spec.get("priorityClassName")
        if class_name and not self._class_exists(str(class_name)):
            self._event(pod, "NotPreempting", f"PriorityClass {class_name} no longer exists: its priority "
                        f"({facts.priority}) is not trusted to evict other pods; nothing was evicted")
            return None
        try:
            budgets = self._budgets()
        except ApiError as exc:
            log.warning("pod %s: cannot read PodDisruptionBudgets (%s); not preempting", key, exc.status.message)
            return None
        try:
            request = self.cache.request_of(pod)
        except HamiError as exc:
            self._event(pod, "NotPreempting", str(exc))
            return None
        for _ in range(PLAN_ATTEMPTS):
            with self.decide_lock, self.cache.lock():
                # The job may be stale: the pod was placed, or fits now (its victims left).
                current = self.cache.holding(key)
                if current is not None and not current.held:
                    return None
                if self.facts(key) is None:
                    return None  # deleted
                try:
                    if self.cache.decide(pod, nodes, self.options.defaults, explain=False).node is not None:
                        return None  # kube-scheduler's next try places it
                except HamiError:
                    return None
                # The search runs on a copy, without the locks: decisions go on meanwhile.
                state, holdings = self.cache.state().snapshot(), self.cache.holdings()
            outcome, blocked = self._plan(facts, request, nodes, budgets, state, holdings)
            plan = outcome.plan
            if plan is None:
                self._explain(pod, outcome, blocked)
                return None
            refusal = self._over_quota(facts, request, plan)
            if refusal:
                self._event(pod, "NotPreempting", refusal)
                return None
            with self.decide_lock:
                with self.cache.lock():
                    if self.facts(key) is None:
                        return None  # deleted while we searched
                    if not self._still_holds(facts, request, plan):
                        continue  # the cluster moved while we searched: plan again
                    released = self._take(pod, facts, plan)
                # Written before any decision for the pod can be (they wait for this lock), so the
                # decision's write, which removes these annotations, always comes after.
                self._write_hold(facts, plan)
            self._announce(pod, facts, plan, released)
            self._evict(pod, facts, plan)
            return plan
        log.info("pod %s: the cluster kept changing while a preemption was planned; trying again later", key)
        return None

    def _still_holds(self, facts: PodFacts, request: PodRequest, plan: Plan) -> bool:
        """Whether a plan made on a copy is still good: its victims may still be evicted, and the
        pod fits on the live state once they (and the pods already leaving) are gone."""
        gone, evictable = self._sides(facts, self.cache.holdings())
        if any(v not in evictable for v in plan.victims):
            return False
        state = self.cache.state()
        node = state.node_pos.get(plan.node)
        if node is None:
            return False
        ctx = PodContext.of(request, self.options.defaults)
        with state.without([*gone, *plan.victims]):
            return fit_pod_on_node(state, node, ctx, ctx.static_codes(state))[0] is not None

    def _plan(self, facts: PodFacts, request: PodRequest, nodes: list[str], budgets: list[Budget],
              state: ClusterState, holdings: Mapping[str, Holding]) -> tuple[Outcome, list[str]]:
        """The plan, with pods that a disruption budget protects left out; and, when there is no
        plan only because of them, the budgets and pods to name."""
        gone, evictable = self._sides(facts, holdings)
        protected: dict[str, str] = {}
        for victim in evictable:
            victim_facts = self.facts(victim)
            for budget in budgets:
                if budget.allowed <= 0 and victim_facts is not None and guards(budget, victim_facts):
                    protected[victim] = f"{budget.namespace}/{budget.name}"
        for _ in range(len(budgets) + 1):
            allowed = {k: p for k, p in evictable.items() if k not in protected}
            outcome = plan_preemption(state, request, facts.priority, allowed, self.options.defaults, nodes, gone)
            if outcome.plan is None:
                break
            over = self._over_budget(outcome.plan, budgets)
            if not over:
                return outcome, []
            for victim, budget_name in over.items():
                protected[victim] = budget_name
        if protected:
            unprotected = plan_preemption(state, request, facts.priority, evictable, self.options.defaults, nodes,
                                          gone)
            if unprotected.plan is not None:
                names = sorted({f"{v} (PodDisruptionBudget {protected[v]})" for v in unprotected.plan.victims
                                if v in protected})
                return Outcome(None, outcome.reasons), names
        return outcome, []

    def _over_budget(self, plan: Plan, budgets: list[Budget]) -> dict[str, str]:
        """Victims beyond what a budget allows (it allows some, but not this many)."""
        over: dict[str, str] = {}
        for budget in budgets:
            covered = []
            for victim in plan.victims:
                victim_facts = self.facts(victim)
                if victim_facts is not None and guards(budget, victim_facts):
                    covered.append(victim)
            if len(covered) > budget.allowed:
                for victim in covered:
                    over[victim] = f"{budget.namespace}/{budget.name}"
        return over

    def _sides(self, facts: PodFacts, holdings: Mapping[str, Holding]) -> tuple[list[str], dict[str, int]]:
        """(pods to count as gone, pods that may be evicted with their priorities)."""
        gone = []
        evictable: dict[str, int] = {}
        with self._lock:
            holds = dict(self._holds)
            evicting = set(self._evicting)
        for key, holding in holdings.items():
            if key == facts.key:
                gone.append(key)  # its own hold
                continue
            if holding.held:
                hold = holds.get(key)
                if hold is not None and hold.priority < facts.priority:
                    gone.append(key)  # a lower-priority pod's hold yields
                continue
            other = self.facts(key)
            if key in evicting or (other is not None and other.terminating):
                gone.append(key)
                continue
            if holding.bound and other is not None:
                evictable[key] = other.priority
        return gone, evictable

    def _over_quota(self, facts: PodFacts, request: PodRequest, plan: Plan) -> str:
        if self.quota is None:
            return ""
        left = self.quota.left_for(facts.namespace, exclude=facts.key)
        for vendor, (memory, cores) in pod_usage(plan.allocation, request.init_count, request.sidecars).items():
            room = left.room(vendor)
            if room is None:
                continue
            if (room.memory is not None and memory > room.memory) or (room.cores is not None and cores > room.cores):
                return (f"namespace {facts.namespace} has no {vendor} quota left for this pod "
                        f"({memory} MiB, {cores} cores asked): evicting other pods would not help")
        return ""

    def _take(self, pod: dict[str, Any], facts: PodFacts, plan: Plan) -> list[Hold]:
        """Hold the plan's devices (lower-priority holds there yield); under the cache's lock."""
        uuids = {d.uuid for c in plan.allocation for d in c}
        released = []
        holdings = self.cache.holdings()
        with self._lock:
            for other in list(self._holds.values()):
                if other.key != facts.key and other.node == plan.node and other.priority < facts.priority and \
                        uuids & {d.uuid for c in other.allocation for d in c}:
                    released.append(self._holds.pop(other.key))
        for other in released:
            self.cache.forget(other.key)
        spec = pod.get("spec") or {}
        waits_for = set(plan.victims)
        with self._lock:
            evicting = set(self._evicting)
        for key, holding in holdings.items():
            leaving = self.facts(key)
            if holding.node == plan.node and not holding.held and key != facts.key and \
                    (key in evicting or (leaving is not None and leaving.terminating)):
                waits_for.add(key)
        hold = Hold(facts.key, facts.uid, plan.node, plan.allocation, facts.priority, plan.victims,
                    tuple(sorted(waits_for)), self.clock())
        with self._lock:
            self._holds[facts.key] = hold
            self._evicting |= set(plan.victims)
        self.cache.hold(facts.key, plan.node, plan.allocation, len(spec.get("initContainers") or []), facts.uid,
                        int(time.time()), sidecars_of(pod), (pod.get("metadata") or {}).get("annotations"))
        return released

    def _write_hold(self, facts: PodFacts, plan: Plan) -> None:
        """The hold on the pod, so that a restarted scheduler or the other replica keeps it."""
        if self.api is None:
            return
        try:
            self.api.patch_pod_annotations(facts.namespace, facts.key.split("/", 2)[1], {
                keys.PREEMPTION_NODE: plan.node,
                keys.PREEMPTION_DEVICES: encode_pod_devices(plan.allocation),
                keys.PREEMPTION_VICTIMS: ",".join(plan.victims),
                keys.PREEMPTION_TIME: str(int(time.time())),
            })
        except ApiError as exc:
            log.warning("pod %s: could not write its hold (%s); it is kept in memory", facts.key, exc.status.message)

    def _announce(self, pod: dict[str, Any], facts: PodFacts, plan: Plan, released: list[Hold]) -> None:
        devices = ", ".join(sorted({f"{d.uuid}" for c in plan.allocation for d in c}))
        if plan.victims:
            message = (f"evicting {len(plan.victims)} lower-priority pod(s) from node {plan.node}: "
                       f"{', '.join(plan.victims)}; devices {devices} are held for this pod until they are gone")
        else:
            message = f"devices {devices} on node {plan.node} are held for this pod until the pods leaving them go"
        self._event(pod, "Preempting", message, warning=False, once=False)
        for other in released:
            self._event(_ref(other.key, other.uid), "PreemptionHoldReleased",
                        f"the devices held for this pod on node {other.node} were given to {facts.key} "
                        f"(priority {facts.priority} > {other.priority})", once=False)

    def _evict(self, pod: dict[str, Any], facts: PodFacts, plan: Plan) -> None:
        assert self.api is not None
        for victim in plan.victims:
            victim_facts = self.facts(victim)
            namespace, name = victim.split("/", 2)[:2]
            self._event(_ref(victim, victim_facts.uid if victim_facts else ""), "Preempted",
                        f"evicted for {facts.key} (priority {facts.priority} > "
                        f"{victim_facts.priority if victim_facts else '?'}), which needs its devices on node "
                        f"{plan.node}", warning=False, once=False)
            try:
                evict(self.api, namespace, name, victim_facts.uid if victim_facts else "")
            except ApiError as exc:
                if exc.status.code in (404, 409):
                    continue  # gone already, or replaced by another pod of that name
                why = str(exc.status.message)
                log.warning("pod %s: evicting %s for %s failed: %s", facts.key, victim, plan.node, why)
                self._event(pod, "PreemptionBlocked", f"evicting {victim} was refused ({why}); the devices held "
                            f"on node {plan.node} are released", once=False)
                self.release(facts.key)
                return

    def _explain(self, pod: dict[str, Any], outcome: Outcome, blocked: list[str]) -> None:
        if blocked:
            self._event(pod, "NotPreempting", "the pods this pod would need evicted are protected by a "
                        f"PodDisruptionBudget that allows no more disruption: {', '.join(blocked)}; nothing was "
                        "evicted")
            return
        if not outcome.reasons:
            message = "no node has lower-priority pods whose eviction would let this pod fit; nothing was evicted"
        else:
            parts = [f"{node}: {why}" for node, why in sorted(outcome.reasons.items())]
            more = outcome.unexplained
            message = ("evicting lower-priority pods would not let this pod fit on any node; nothing was evicted ("
                       + "; ".join(parts) + (f"; {more} more nodes" if more > 0 else "") + ")")
        self._event(pod, "NotPreempting", message)

    # ---- holds ------------------------------------------------------------------------

    def _waiting(self, hold: Hold) -> bool:
        """Whether any pod the hold waits for is still there."""
        holdings = self.cache.holdings()
        return any(k in holdings for k in hold.waits_for)

    def maintain(self) -> None:
        """Forget holds whose pod was placed or went; release those that waited too long."""
        now = self.clock()
        holdings = self.cache.holdings()
        with self._lock:
            holds = list(self._holds.values())
            self._evicting = {k for k in self._evicting if k in holdings}
        for said, (_, at) in list(self._events.sent.items()):
            if now - at > self.options.event_interval:
                del self._events.sent[said]
        for hold in holds:
            current = holdings.get(hold.key)
            if current is None or not current.held:
                with self._lock:
                    self._holds.pop(hold.key, None)  # placed, or gone (the cache dropped the hold)
                continue
            if self.facts(hold.key) is None:
                self._drop(hold.key)  # the pod went while its plan was being made
                continue
            if any(k in holdings for k in hold.waits_for):
                continue
            if hold.gone_at is None:
                hold.gone_at = now
            elif now - hold.gone_at > self.options.hold_seconds and self.is_leader.is_set():
                self._event(_ref(hold.key, hold.uid), "PreemptionHoldReleased",
                            f"the devices held on node {hold.node} are released: the pod was not placed within "
                            f"{self.options.hold_seconds:.0f}s after its victims left", warning=False, once=False)
                self.release(hold.key)

    def release(self, key: str) -> None:
        """Give a hold's devices back and remove it from the pod."""
        self._drop(key)
        if self.api is not None and self.is_leader.is_set():
            namespace, name = key.split("/", 2)[:2]
            try:
                self.api.patch_pod_annotations(namespace, name, dict.fromkeys(HOLD_KEYS))
            except ApiError as exc:
                if exc.status.code != 404:
                    log.warning("pod %s: could not remove its hold: %s", key, exc.status.message)

    def _drop(self, key: str) -> None:
        with self._lock:
            self._holds.pop(key, None)
        with self.cache.lock():
            current = self.cache.holding(key)
            if current is not None and current.held:
                self.cache.forget(key)

    # ---- kube-scheduler's preempt verb --------------------------------------------------

    def preempt_verb(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """ExtenderPreemptionArgs -> ExtenderPreemptionResult (NodeNameToMetaVictims): the one node,
        of those kube-scheduler proposes, where its victims plus the fewest device victims let
        the pod fit; none when there is no such node. Holds the devices there."""
        pod = _field(args, "Pod")
        if not isinstance(pod, dict):
            raise HamiError("ExtenderPreemptionArgs has no Pod")
        try:
            check_pod(pod, "Pod")
        except ShapeError as exc:
            raise HamiError(str(exc)) from None
        proposed = _proposed(args)
        if not self.cache.vendors.wants_devices(pod):
            return {"NodeNameToMetaVictims": {n: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": v}
                                              for n, (uids, v) in proposed.items()}}
        if not self.is_leader.is_set():
            return {"NodeNameToMetaVictims": {}}
        facts = facts_of(pod)
        request = self.cache.request_of(pod)
        with self._lock:
            by_uid = dict(self._by_uid)
        forced = {node: [by_uid.get(uid, f"uid:{uid}") for uid in uids] for node, (uids, _) in proposed.items()}
        with self.decide_lock, self.cache.lock():
            holdings = self.cache.holdings()
            gone, evictable = self._sides(facts, holdings)
            outcome = plan_preemption(self.cache.state(), request, facts.priority, evictable, self.options.defaults,
                                      sorted(proposed), gone, forced)
            plan = outcome.plan
            if plan is None:
                log.info("pod %s: kube-scheduler's victims leave it without devices on every node proposed", facts.key)
                return {"NodeNameToMetaVictims": {}}
            self._take(pod, facts, plan)
            self._write_hold(facts, plan)
        uids = []
        for victim in plan.victims:
            if victim.startswith("uid:"):
                uids.append(victim[4:])
            else:
                victim_facts = self.facts(victim)
                if victim_facts is not None:
                    uids.append(victim_facts.uid)
        self._announce(pod, facts, plan, [])
        return {"NodeNameToMetaVictims": {plan.node: {"Pods": [{"UID": u} for u in uids],
                                                      "NumPDBViolations": proposed[plan.node][1]}}}

    # ---- API reads and Events -----------------------------------------------------------

    def _class_exists(self, name: str) -> bool:
        now = self.clock()
        cached = self._classes.get(name)
        if cached is not None and now - cached[1] < 30:
            return cached[0]
        assert self.api is not None
        try:
            self.api.client.get(PriorityClass, name=name)
            exists = True
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            exists = False
        self._classes[name] = (exists, now)
        return exists

    def _budgets(self) -> list[Budget]:
        assert self.api is not None
        return [budget_of(p.to_dict()) for p in self.api.client.list(PodDisruptionBudget, namespace="*")]

    def _event(self, pod: Mapping[str, Any], reason: str, message: str, warning: bool = True,
               once: bool = True) -> None:
        """An Event on the pod; `once`: the same message again only after `event_interval`."""
        key = pod_key(dict(pod))
        now = self.clock()
        if once:
            last = self._events.sent.get((key, reason))
            if last is not None and last[0] == message and now - last[1] < self.options.event_interval:
                return
            self._events.sent[(key, reason)] = (message, now)
        log.info("pod %s: %s: %s", key, reason, message)
        if self.api is not None:
            self.api.event(dict(pod), reason, message, warning=warning)


def _ref(key: str, uid: str) -> dict[str, Any]:
    namespace, name = key.split("/", 2)[:2]
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid}}


def _field(body: Mapping[str, Any], name: str) -> Any:
    if name in body:
        return body[name]
    for key, value in body.items():
        if key.lower() == name.lower():
            return value
    return None


def _proposed(args: Mapping[str, Any]) -> dict[str, tuple[list[str], int]]:
    """kube-scheduler's candidates: node -> (victim UIDs, PDB violations)."""
    meta = _field(args, "NodeNameToMetaVictims")
    full = _field(args, "NodeNameToVictims")
    result: dict[str, tuple[list[str], int]] = {}
    for source, full_pods in ((meta, False), (full, True)):
        if not isinstance(source, dict):
            continue
        for node, victims in source.items():
            if not isinstance(victims, dict):
                raise HamiError(f"victims of node {node} are not an object")
            pods = _field(victims, "Pods") or []
            if not isinstance(pods, list):
                raise HamiError(f"victims of node {node}: Pods is not a list")
            uids = [(p.get("metadata") or {}).get("uid") if full_pods else _field(p, "UID")
                    for p in pods if isinstance(p, dict)]
            result[str(node)] = ([str(u) for u in uids if u], int(_field(victims, "NumPDBViolations") or 0))
    return result


def evict(api: KubeApi, namespace: str, name: str, uid: str) -> None:
    """The Eviction API (policy/v1): refused with 429 while a PodDisruptionBudget forbids it."""
    eviction = Pod.Eviction(
        metadata=ObjectMeta(name=name, namespace=namespace),
        deleteOptions=DeleteOptions(preconditions=Preconditions(uid=uid) if uid else None),
    )
    # The API server answers with a Status, which lightkube tries to read as an Eviction; an
    # error status would have raised ApiError before, so this is a success.
    with contextlib.suppress(msgspec.ValidationError):
        api.client.create(eviction, name=name, namespace=namespace)
