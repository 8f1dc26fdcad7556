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

import functools
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
    # When there is no plan: why, for the first few nodes (by name), and how many more.
    reasons: dict[str, str] = field(default_factory=dict)
    unexplained: int = 0


EXPLAINED_NODES = 5


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
    order = sorted(candidates.tolist(), key=lambda i: state.names[i])
    forced = forced or {}
    outcome = Outcome(plan=None)
    with state.without(gone):
        search = _Search(state, ctx, static, evictable)
        lower = sorted(k for k, level in evictable.items() if level < priority and k in state.pods)
        by_node: dict[int, list[str]] = {}
        for key, relevant in zip(lower, search.relevant(lower), strict=True):
            if relevant:
                by_node.setdefault(state.pods[key].node, []).append(key)

        def pool_of(node: int, at_most: int | None = None) -> list[str]:
            here = forced.get(state.names[node], ())
            return [k for k in by_node.get(node, []) if k not in here and (at_most is None or evictable[k] <= at_most)]

        if search.decomposable and not forced:
            thresholds = search.thresholds(order, by_node)
        else:
            thresholds = {}
            for node in order:
                with state.without(forced.get(state.names[node], ())):
                    found = search.threshold(node, pool_of(node))
                if found is not None:
                    thresholds[node] = found
        if not thresholds:
            for node in order[:EXPLAINED_NODES]:  # the Event names a few
                with state.without(forced.get(state.names[node], ())):
                    pool = pool_of(node)
                    _, reason = search.fits(node, pool)
                outcome.reasons[state.names[node]] = (f"does not fit even without its {len(pool)} lower-priority "
                                                      f"pods: {reason}")
            outcome.unexplained = max(0, len(order) - EXPLAINED_NODES)
            return outcome
        lowest = min(thresholds.values())
        best: list[tuple[VictimKey, int, bool]] = []  # per node: its best key (not checked yet)
        for node in order:
            if thresholds.get(node) != lowest:
                continue
            with state.without(forced.get(state.names[node], ())):
                bound = min(best)[0] if best else None
                victims, exact = search.best_on(node, pool_of(node, lowest), bound, lowest == NO_PRIORITY)
            if victims is not None:
                best.append((search.key(node, victims), node, exact))
        # The best, checked with the engine (a set the engine refuses falls back to the walk).
        for candidate, node, exact in sorted(best):
            forced_here = tuple(sorted(forced.get(state.names[node], ())))
            with state.without(forced_here):
                plan = search.check(node, candidate.victims, exact)
                if plan is None:
                    plan = search.fallback(node, pool_of(node, lowest))
            if plan is not None:
                if forced_here:
                    victims = tuple(sorted(set(plan.victims) | set(forced_here)))
                    plan = Plan(plan.node, victims, plan.allocation, search.key(node, victims), plan.exact)
                outcome.plan = plan
                break
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


def _has_mig(state: ClusterState, vendor: str) -> bool:
    mig = [i for i, mode in enumerate(state.mode_names.tolist()) if mode == "mig"]
    return bool(np.isin(state.mode_id[state.vendor_rows(vendor)], mig).any())


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
        # The device search models a device by its task count, memory and cores alone: vendors
        # whose fit also reads marks left by pods (usage_keys), MIG partitions or links
        # (topology-aware) go through the engine's walk instead.
        mig = "mig" in set(state.mode_names.tolist())
        self.decomposable = (
            _independent(pod) and not ctx.selectors.numa_bind and not ctx.topology
            and all(v is not None and not v.exact and not v.topology and not v.usage_keys
                    and not ctx.selectors_for(v.name).numa_bind and not (mig and _has_mig(state, v.name))
                    for v in vendors)
        )
        asked = set(pod.vendors)
        # Rows the pod could use at all: of a vendor it asks, passing its static checks.
        self.usable = np.asarray([d.vendor in asked for d in state.devices], dtype=bool) & (static == 0)

    # ---- the engine as the judge -------------------------------------------------------

    def fits(self, node: int, removed: Iterable[str] = ()) -> tuple[PodAllocation | None, str]:
        with self.state.without(removed):
            return fit_pod_on_node(self.state, node, self.ctx, self.static)

    def relevant(self, keys: Sequence[str]) -> list[bool]:
        """Per pod, whether removing it could help: it holds a device the preemptor could use."""
        if not keys:
            return []
        footprints = [self.state.pods[k] for k in keys]
        sizes = np.asarray([len(f.rows) for f in footprints], dtype=np.int64)
        hits = self.usable[np.concatenate([f.rows for f in footprints])].astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        counts = np.add.reduceat(hits, starts) if len(hits) else np.zeros(len(keys), dtype=np.int64)
        return [bool(c) for c in (np.where(sizes > 0, counts, 0) > 0)]

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

    def threshold(self, node: int, pool: list[str]) -> int | None:
        """The lowest priority level L such that evicting every candidate up to L makes the pod
        fit (NO_PRIORITY: it fits already); None when nothing does."""
        if self.fits(node)[0] is not None:
            return NO_PRIORITY
        if self.fits(node, pool)[0] is None:
            return None
        levels = sorted({self.priorities[k] for k in pool})
        low, high = 0, len(levels) - 1  # levels[high] suffices
        while low < high:
            middle = (low + high) // 2
            if self.fits(node, [k for k in pool if self.priorities[k] <= levels[middle]])[0] is not None:
                high = middle
            else:
                low = middle + 1
        return levels[high]

    def thresholds(self, nodes: list[int], by_node: Mapping[int, list[str]]) -> dict[int, int]:
        """threshold() of every node at once, for pods whose fit decomposes into devices: per
        level, the usage left when every candidate up to it is gone, checked on every device."""
        state = self.state
        entries = [(key, self.priorities[key]) for node in nodes for key in by_node.get(node, ())]
        if entries:
            footprints = [state.pods[key] for key, _ in entries]
            rows = np.concatenate([f.rows for f in footprints])
            freed = np.stack([np.concatenate([f.used for f in footprints]), np.concatenate([f.mem for f in footprints]),
                              np.concatenate([f.cores for f in footprints])])
            levels_of = np.repeat(np.asarray([p for _, p in entries], dtype=np.int64),
                                  [len(f.rows) for f in footprints])
        else:
            rows, freed, levels_of = np.zeros(0, np.int64), np.zeros((3, 0), np.int64), np.zeros(0, np.int64)
        wanted = np.zeros(len(state.nodes), dtype=bool)
        wanted[nodes] = True
        found: dict[int, int] = {}
        for level in [NO_PRIORITY, *sorted({p for _, p in entries})]:
            taken = levels_of <= level
            minus = [np.bincount(rows[taken], weights=freed[k][taken], minlength=len(state.uuids)).astype(np.int64)
                     for k in range(3)]
            fitting = wanted.copy()
            for ask in self.asks:
                vrows = state.vendor_rows(ask.vendor)
                codes, _ = state.vendors[ask.vendor].usage_codes(
                    ask, self.ctx, state, vrows, state.used[vrows] - minus[0][vrows],
                    state.usedmem[vrows] - minus[1][vrows], state.usedcores[vrows] - minus[2][vrows])
                codes = np.where(self.static[vrows] != 0, self.static[vrows], codes)
                ok = np.bincount(state.dev_node[vrows][codes == 0], minlength=len(state.nodes))
                fitting &= ok >= ask.nums
            for node in np.flatnonzero(fitting).tolist():
                found[node] = level
            wanted &= ~fitting
            if not wanted.any():
                break
        return found

    # ---- step 2: the fewest pods, then the least share ---------------------------------

    def best_on(self, node: int, pool: list[str], bound: VictimKey | None,
                fits_already: bool = False) -> tuple[tuple[str, ...] | None, bool]:
        """The best victims among `pool` (all at or below the node's level) on the node, and whether
        the search was exhaustive; None when it has none better than `bound` (the best so far, at
        the same level). Sets from the device search are not checked with the engine yet."""
        if fits_already:
            return (), True
        if self.decomposable:
            victims, exact = self._by_devices(node, pool, bound)
            if victims is not None or exact:
                return (None if victims is None else tuple(victims)), exact
        plan = self.fallback(node, pool)
        return (None, True) if plan is None else (plan.victims, plan.exact)

    def fallback(self, node: int, pool: list[str]) -> Plan | None:
        """The engine walked on candidate sets: by size when few, else by reprieve."""
        if len(pool) <= MAX_SUBSET_SEARCH:
            return self._by_subsets(node, pool)
        return self._by_reprieve(node, pool)

    def check(self, node: int, victims: Sequence[str], exact: bool = True) -> Plan | None:
        """The plan for these victims when the engine agrees that the pod then fits."""
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
                return self.check(node, min(found).victims)
        return None

    def _by_reprieve(self, node: int, pool: list[str]) -> Plan | None:
        victims = list(pool)
        order = sorted(pool, key=lambda k: (-self.priorities[k], -self.share([k]), k))
        for key in order:
            trial = [k for k in victims if k != key]
            if self.fits(node, trial)[0] is not None:
                victims = trial
        return self.check(node, victims, exact=False)

    def _by_devices(self, node: int, pool: list[str], bound: VictimKey | None) -> tuple[list[str] | None, bool]:
        """The exact search for pods whose fit decomposes into independent devices: the best union,
        over the devices each ask needs, of a minimal set per device. (None, True): none better
        than `bound`; False: a budget cut the search short."""
        state = self.state
        on_row: dict[int, list[tuple[str, int, int, int]]] = {}
        for key in pool:
            f = state.pods[key]
            for row, used, mem, cores in zip(f.rows.tolist(), f.used.tolist(), f.mem.tolist(), f.cores.tolist(),
                                             strict=True):
                on_row.setdefault(row, []).append((key, used, mem, cores))
        cap = bound.count if bound is not None else len(pool)
        exact = True
        choices: list[tuple[int, list[list[frozenset[str]]]]] = []  # per ask: nums, options per device
        for ask in self.asks:
            rows = [r for r in state.vendor_rows_of_node(node, ask.vendor) if self.usable[r]]
            per_row, complete = self._device_options(rows, ask, on_row, cap)
            exact &= complete
            options = [found for found in per_row if found]
            if len(options) < ask.nums:
                return None, exact
            choices.append((ask.nums, options))
        best: list[tuple[VictimKey, frozenset[str]]] = []
        tried = 0

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
            if cap is not None and (len(union), self.share(union)) > cap:
                return
            if ask == len(choices):
                key = self.key(node, sorted(union))
                if not best or key < best[0][0]:
                    best[:] = [(key, union)]
                return
            if left == 0:
                walk(ask + 1, choices[ask + 1][0] if ask + 1 < len(choices) else 0, 0, union)
                return
            options = choices[ask][1]
            for position in range(start, len(options) - left + 1):
                for option in options[position]:
                    walk(ask, left - 1, position + 1, union | option)

        walk(0, choices[0][0], 0, frozenset())
        if not best:
            return None, exact
        return sorted(best[0][1]), exact

    def _device_options(self, rows: list[int], ask: ContainerRequest,
                        on_row: Mapping[int, list[tuple[str, int, int, int]]],
                        cap: int) -> tuple[list[list[frozenset[str]]], bool]:
        """Per device: every inclusion-minimal set (of at most `cap` pods) of the pods on it whose
        removal lets the ask take it, cheapest first; and whether every such set was looked at.
        One engine check for every subset of every device."""
        state = self.state
        complete = True
        parts = []
        for row in rows:
            here = on_row.get(row, [])
            if len(here) > MAX_DEVICE_PODS:  # the pods holding most of the device first
                complete = False
                here = sorted(here, key=lambda p: (-p[2], -p[3], p[0]))[:MAX_DEVICE_PODS]
            masks, bits = _subsets(len(here), cap)
            freed = bits @ np.asarray([p[1:] for p in here], dtype=np.int64).reshape(len(here), 3)
            parts.append((row, here, masks, freed))
        if not parts:
            return [], complete
        every_row = np.concatenate([np.full(len(masks), row, dtype=np.int64) for row, _, masks, _ in parts])
        freed_all = np.concatenate([freed for *_, freed in parts])
        codes, _ = state.vendors[ask.vendor].usage_codes(
            ask, self.ctx, state, every_row, state.used[every_row] - freed_all[:, 0],
            state.usedmem[every_row] - freed_all[:, 1], state.usedcores[every_row] - freed_all[:, 2])
        result = []
        start = 0
        for _, here, masks, _ in parts:
            fitting = masks[codes[start:start + len(masks)] == 0].tolist()  # smallest sets first
            start += len(masks)
            minimal: list[int] = []
            for mask in fitting:
                if not any(mask & kept == kept for kept in minimal):
                    minimal.append(mask)
            options = [frozenset(here[i][0] for i in range(len(here)) if mask >> i & 1) for mask in minimal]
            options.sort(key=lambda o: (len(o), self.share(o), sorted(o)))
            result.append(options)
        return result, complete


def _subsets(m: int, cap: int) -> tuple[IntArray, IntArray]:
    """Every subset of m items with at most `cap` of them, as bit masks by size, and their bits."""
    masks, bits, sizes = _all_subsets(m)
    end = int(np.searchsorted(sizes, cap, side="right"))
    return masks[:end], bits[:end]


@functools.cache
def _all_subsets(m: int) -> tuple[IntArray, IntArray, IntArray]:
    masks = np.arange(2**m, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(m, dtype=np.int64)) & 1).astype(np.int64)
    sizes = bits.sum(axis=1)
    order = np.argsort(sizes, kind="stable")
    return masks[order], bits[order], sizes[order]
