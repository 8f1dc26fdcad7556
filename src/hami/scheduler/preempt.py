"""Preemption that understands device shares: which pods to evict so that a pod fits. Pure.

`plan_preemption(state, pod, priority, evictable, …)` answers "on which node, and by evicting
which lower-priority pods, would this pod fit", per device and for every vendor, by asking the
engine itself (`fit_pod_on_node`) with pods taken out of the state (`ClusterState.without`).
Nothing here evicts or reads the cluster: the shell (hami.scheduler.preemption) does.

The victims are the best set by these rules, in order:
1. the lowest highest priority among the victims (evict the least important pods);
2. the fewest pods;
3. the least GPU share lost: per victim device, the mean of its memory and compute fractions,
   summed over the victims' devices;
4. then the lowest sum of priorities, then the node name and the victims' keys (determinism).
A pod is never evicted unless the preemptor then fits: every set returned was checked with the
engine. Pods of equal or higher priority are never victims.

How the best set is found on a node: first the lowest priority level that suffices (removing
every candidate up to a level; more removed never hurts). Then, when the pod's fit decomposes
into independent devices (one container holds devices, no NUMA binding, no topology vendor:
the usual case), an exact search: per device, every inclusion-minimal set of its pods whose
removal makes the device fit; then the cheapest union over the devices the pod needs. Other
pods (interacting containers, topologies) search subsets by size when the candidates are few,
and otherwise remove every candidate and give back, one at a time, those not needed — the
highest priority and largest share first (as kube-scheduler does), which leaves a set where no
victim can be spared.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hami.model.allocation import PodAllocation
from hami.model.requests import ContainerRequest, PodRequest
from hami.scheduler.engine import PodContext, PolicyDefaults, _independent, fit_pod_on_node
from hami.scheduler.state import ClusterState, IntArray

# Exact searches stop after this much work; the best set found so far is used (`exact` False).
MAX_DEVICE_PODS = 16  # pods on one device whose subsets are enumerated
MAX_UNIONS = 200_000  # device-set combinations tried per node
MAX_SUBSET_SEARCH = 10  # candidates up to which interacting pods search subsets by size


@dataclass(frozen=True, order=True)
class VictimKey:
    """The rules as a sort key: smaller is better."""

    highest_priority: int
    count: int
    share: float
    priority_sum: int
    node: str
    victims: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Evict `victims` from `node`; the preemptor then fits there with `allocation`."""

    node: str
    victims: tuple[str, ...]
    allocation: PodAllocation
    key: VictimKey
    # The search proved that no better set exists (False when a budget cut it short).
    exact: bool = True


@dataclass
class Outcome:
    plan: Plan | None
    # Why each node examined cannot help, for the Event when there is no plan.
    reasons: dict[str, str] = field(default_factory=dict)


NO_PRIORITY = -(2**63)  # the key's priority when nothing is evicted


def plan_preemption(
    state: ClusterState,
    pod: PodRequest,
    priority: int,
    evictable: Mapping[str, int],
    defaults: PolicyDefaults | None = None,
    nodes: Sequence[str] | None = None,
    gone: Iterable[str] = (),
    forced: Mapping[str, Collection[str]] | None = None,
) -> Outcome:
    """The best node and victims for `pod` (of `priority`), or why there are none.

    `evictable`: pod key -> priority of the pods that may be evicted (bound, not protected by a
    disruption budget); only those of lower priority than the preemptor are. `gone`: pods to
    count as already gone (terminating pods, holds that yield to this pod). `forced`: per node,
    pods already chosen as victims (by kube-scheduler) that are evicted in any case there.
    `nodes`: where the pod may go (all nodes when None). The state is left as it was.
    """
    ctx = PodContext.of(pod, defaults or PolicyDefaults())
    static = ctx.static_codes(state)
    candidates = np.arange(len(state.nodes), dtype=np.int64) if nodes is None else state.nodes_named(nodes)
    forced = forced or {}
    outcome = Outcome(plan=None)
    with state.without(gone):
        by_node: dict[int, list[str]] = {}
        for key, level in sorted(evictable.items()):
            footprint = state.pods.get(key)
            if level < priority and footprint is not None:
                by_node.setdefault(footprint.node, []).append(key)
        search = _Search(state, ctx, static, evictable)
        thresholds: dict[int, int] = {}
        for node in sorted(candidates.tolist(), key=lambda i: state.names[i]):
            name = state.names[node]
            with state.without(forced.get(name, ())):
                pool = [k for k in by_node.get(node, []) if k not in forced.get(name, ()) and search.relevant(k)]
                found, reason = search.threshold(node, pool)
            if found is None:
                outcome.reasons[name] = reason
            else:
                thresholds[node] = found
        if not thresholds:
            return outcome
        lowest = min(thresholds.values())
        best: Plan | None = None
        for node, level in sorted(thresholds.items(), key=lambda item: state.names[item[0]]):
            if level != lowest:
                continue
            name = state.names[node]
            forced_here = tuple(sorted(forced.get(name, ())))
            with state.without(forced_here):
                pool = [k for k in by_node.get(node, []) if k not in forced_here and search.relevant(k)
                        and evictable[k] <= level]
                plan = search.best_on(node, pool, best.key if best is not None else None)
                if plan is not None and forced_here:
                    victims = tuple(sorted(set(plan.victims) | set(forced_here)))
                    plan = Plan(plan.node, victims, plan.allocation, search.key(node, victims), plan.exact)
            if plan is not None and (best is None or plan.key < best.key):
                best = plan
        outcome.plan = best
    return outcome


def pod_share(state: ClusterState, key: str) -> float:
    """The GPU share a counted pod holds: per device, the mean of its memory fraction and compute
    fraction (the terms the device has), summed over its devices."""
    f = state.pods.get(key)
    if f is None:
        return 0.0
    total = 0.0
    for row, mem, cores in zip(f.rows.tolist(), f.mem.tolist(), f.cores.tolist(), strict=True):
        terms = [used / int(whole) for used, whole in ((mem, state.totalmem[row]), (cores, state.totalcore[row]))
                 if whole > 0]
        total += sum(terms) / len(terms) if terms else 0.0
    return total


class _Search:
    def __init__(self, state: ClusterState, ctx: PodContext, static: IntArray, priorities: Mapping[str, int]):
        self.state = state
        self.ctx = ctx
        self.static = static
        self.priorities = priorities
        pod = ctx.pod
        self.asks: list[ContainerRequest] = [ask for container in pod.containers for ask in container.asks]
        self._shares: dict[str, float] = {}
        vendors = [state.vendors.get(v) for v in pod.vendors]
        self.decomposable = (
            _independent(pod) and not ctx.selectors.numa_bind
            and all(v is not None and not v.exact and not v.topology and not ctx.selectors_for(v.name).numa_bind
                    for v in vendors)
        )
        asked = set(pod.vendors)
        # Rows the pod could use at all: of a vendor it asks, passing its static checks.
        self.usable = np.asarray([d.vendor in asked for d in state.devices], dtype=bool) & (static == 0)

    # ---- the engine as the judge -------------------------------------------------------

    def fits(self, node: int, removed: Iterable[str] = ()) -> tuple[PodAllocation | None, str]:
        with self.state.without(removed):
            return fit_pod_on_node(self.state, node, self.ctx, self.static)

    def relevant(self, key: str) -> bool:
        """Whether removing the pod could help: it holds a device the preemptor could use."""
        footprint = self.state.pods[key]
        return bool(self.usable[footprint.rows].any())

    def share(self, victims: Iterable[str]) -> float:
        """GPU share the victims hold: per device, the mean of the memory and compute fractions."""
        return round(sum(self._share(key) for key in victims), 9)  # summation order must not break ties

    def _share(self, key: str) -> float:
        value = self._shares.get(key)
        if value is None:
            value = self._shares[key] = pod_share(self.state, key)
        return value

    def key(self, node: int, victims: Sequence[str]) -> VictimKey:
        levels = [self.priorities[k] for k in victims if k in self.priorities]
        ordered = tuple(sorted(victims))
        return VictimKey(max(levels) if levels else NO_PRIORITY, len(ordered), self.share(ordered),
                         sum(levels), self.state.names[node], ordered)

    # ---- step 1: the lowest priority level that suffices -------------------------------

    def threshold(self, node: int, pool: list[str]) -> tuple[int | None, str]:
        """The lowest priority level L such that evicting every candidate up to L makes the pod
        fit (NO_PRIORITY: it fits already); None and the engine's reason when nothing does."""
        if self.fits(node)[0] is not None:
            return NO_PRIORITY, ""
        allocation, reason = self.fits(node, pool)
        if allocation is None:
            return None, f"does not fit even without its {len(pool)} lower-priority pods: {reason}"
        levels = sorted({self.priorities[k] for k in pool})
        low, high = 0, len(levels) - 1  # levels[high] suffices
        while low < high:
            middle = (low + high) // 2
            if self.fits(node, [k for k in pool if self.priorities[k] <= levels[middle]])[0] is not None:
                high = middle
            else:
                low = middle + 1
        return levels[high], ""

    # ---- step 2: the fewest pods, then the least share ---------------------------------

    def best_on(self, node: int, pool: list[str], bound: VictimKey | None) -> Plan | None:
        """The best victims among `pool` (all at or below the node's level) on the node."""
        if self.fits(node)[0] is not None:
            return self._plan(node, ())
        if self.decomposable:
            found = self._by_devices(node, pool, bound)
            if found is not None:
                victims, exact = found
                plan = self._plan(node, victims, exact)
                if plan is not None:
                    return plan
        if len(pool) <= MAX_SUBSET_SEARCH:
            return self._by_subsets(node, pool)
        return self._by_reprieve(node, pool)

    def _plan(self, node: int, victims: Sequence[str], exact: bool = True) -> Plan | None:
        allocation, _ = self.fits(node, victims)
        if allocation is None:
            return None
        key = self.key(node, victims)
        return Plan(self.state.names[node], key.victims, allocation, key, exact)

    def _by_subsets(self, node: int, pool: list[str]) -> Plan | None:
        for size in range(1, len(pool) + 1):
            found = [self.key(node, combo) for combo in itertools.combinations(pool, size)
                     if self.fits(node, combo)[0] is not None]
            if found:
                return self._plan(node, min(found).victims)
        return None

    def _by_reprieve(self, node: int, pool: list[str]) -> Plan | None:
        victims = list(pool)
        order = sorted(pool, key=lambda k: (-self.priorities[k], -self.share([k]), k))
        for key in order:
            trial = [k for k in victims if k != key]
            if self.fits(node, trial)[0] is not None:
                victims = trial
        return self._plan(node, victims, exact=False)

    def _by_devices(self, node: int, pool: list[str], bound: VictimKey | None) -> tuple[list[str], bool] | None:
        """The exact search for pods whose fit decomposes into independent devices."""
        state = self.state
        exact = True
        choices: list[tuple[int, list[list[frozenset[str]]]]] = []  # per ask: nums, options per device
        for ask in self.asks:
            rows = [r for r in state.vendor_rows_of_node(node, ask.vendor) if self.usable[r]]
            options = []
            for row in rows:
                found, complete = self._device_options(row, ask, pool)
                exact &= complete
                if found:
                    options.append(found)
            if len(options) < ask.nums:
                return None
            choices.append((ask.nums, options))
        best: list[tuple[VictimKey, frozenset[str]]] = []
        tried = 0

        def lower(union: frozenset[str]) -> tuple[int, float]:
            return len(union), self.share(union)

        def limit() -> tuple[int, float] | None:
            if best:
                return best[0][0].count, best[0][0].share
            if bound is not None:
                return bound.count, bound.share
            return None

        def walk(ask: int, left: int, start: int, union: frozenset[str]) -> None:
            nonlocal tried, exact
            tried += 1
            if tried > MAX_UNIONS:
                exact = False
                return
            cap = limit()
            if cap is not None and lower(union) > cap:
                return
            if ask == len(choices):
                key = self.key(node, sorted(union))
                if not best or key < best[0][0]:
                    best[:] = [(key, union)]
                return
            nums, options = choices[ask]
            if left == 0:
                walk(ask + 1, choices[ask + 1][0] if ask + 1 < len(choices) else 0, 0, union)
                return
            for position in range(start, len(options) - left + 1):
                for option in options[position]:
                    walk(ask, left - 1, position + 1, union | option)

        walk(0, choices[0][0], 0, frozenset())
        if not best:
            return None
        return sorted(best[0][1]), exact

    def _device_options(self, row: int, ask: ContainerRequest, pool: list[str]) -> tuple[list[frozenset[str]], bool]:
        """Every inclusion-minimal set of pool pods on this device whose removal lets the ask take
        it, cheapest first; and whether every subset was looked at."""
        state = self.state
        on_row: list[tuple[str, int, int, int]] = []
        for key in pool:
            f = state.pods[key]
            where = np.flatnonzero(f.rows == row)
            if len(where):
                i = int(where[0])
                on_row.append((key, int(f.used[i]), int(f.mem[i]), int(f.cores[i])))
        complete = len(on_row) <= MAX_DEVICE_PODS
        if not complete:  # the pods holding most of the device first
            on_row = sorted(on_row, key=lambda p: (-p[2], -p[3], p[0]))[:MAX_DEVICE_PODS]
        m = len(on_row)
        masks = np.arange(2**m, dtype=np.int64)
        bits = ((masks[:, None] >> np.arange(m, dtype=np.int64)) & 1).astype(np.int64)
        freed = bits @ np.asarray([p[1:] for p in on_row], dtype=np.int64).reshape(m, 3)
        rows = np.full(len(masks), row, dtype=np.int64)
        vendor = state.vendors[ask.vendor]
        codes, _ = vendor.usage_codes(ask, self.ctx, state, rows, state.used[rows] - freed[:, 0],
                                      state.usedmem[rows] - freed[:, 1], state.usedcores[rows] - freed[:, 2])
        fitting = masks[codes == 0]
        sizes = bits.sum(axis=1)[codes == 0]
        minimal: list[int] = []
        for mask in fitting[np.argsort(sizes, kind="stable")].tolist():
            if not any(mask & kept == kept for kept in minimal):
                minimal.append(mask)
        options = [frozenset(on_row[i][0] for i in range(m) if mask >> i & 1) for mask in minimal]
        options.sort(key=lambda o: (len(o), self.share(o), sorted(o)))
        return options, complete
