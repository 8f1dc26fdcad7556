"""The scheduling engine: a pure function from (cluster state, pod, policy) to a decision.

No clock, no randomness, no I/O: the extender, the simulator, `hami schedule` and the tests
all call `schedule`. Work is vectorised over every device of the cluster where the answer
can be had that way (a pod whose containers do not compete for the same devices); the exact
per-node walk that HAMi does runs for the chosen node, and for every candidate node when the
pod's containers interact (several app containers with devices, or NUMA binding) or when a
vendor's rule is more than "enough devices pass" (a topology).

The engine never names a vendor: each container asks one or more vendors, and each ask is
fitted on the node's devices of that vendor with the vendor's hooks (hami.vendors.base).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hami.annotations import keys
from hami.annotations.selectors import (
    TOPOLOGY_AWARE,
    DeviceSelectors,
    Policy,
    ScoringWeights,
    decode_selectors,
    decode_weights,
    gpu_policy_filters,
    pod_policies,
)
from hami.model.allocation import ContainerDevice, PodAllocation
from hami.model.requests import ContainerRequest, PodRequest
from hami.scheduler import reasons as R
from hami.scheduler.quota import NO_QUOTA, QuotaLeft, QuotaTally
from hami.scheduler.scoring import device_scores, memory_needed, node_scores
from hami.scheduler.state import ClusterState, IntArray
from hami.vendors.base import Vendor, Walk


@dataclass(frozen=True)
class PolicyDefaults:
    """Cluster-wide policies; a pod's annotations override them."""

    node_policy: Policy = Policy.BINPACK
    gpu_policy: Policy = Policy.SPREAD


@dataclass(frozen=True)
class PodContext:
    """Everything about a pod that the per-device checks need, decoded once."""

    pod: PodRequest
    selectors: DeviceSelectors  # NVIDIA's
    node_policy: Policy
    gpu_policy: Policy
    weights: ScoringWeights
    # HAMi's `mutex` GPU policy: only devices nobody uses.
    mutex: bool = False
    # HAMi's `topology-aware` GPU policy: devices chosen by how well they are linked.
    topology: bool = False
    # Other vendors' selectors from their own annotations (only vendors the pod names).
    vendor_selectors: tuple[tuple[str, DeviceSelectors], ...] = ()
    # What the pod's namespace may still take (ResourceQuota); devices beyond it do not fit.
    quota: QuotaLeft = NO_QUOTA

    @property
    def quota_applies(self) -> bool:
        return self.quota.caps(self.pod.vendors)

    def static_codes(self, state: ClusterState) -> IntArray:
        """static_codes() for this pod's selectors, computed once per state."""
        key = (self.selectors, self.vendor_selectors, _static_inputs(state, self.pod.annotations))
        codes = state.static_cache.get(key)
        if codes is None:
            if len(state.static_cache) > 256:  # many distinct selectors: keep the memory bounded
                state.static_cache.clear()
            codes = static_codes(state, self.selectors, self)
            codes.flags.writeable = False  # shared between pods
            state.static_cache[key] = codes
        return codes

    def selectors_for(self, vendor: str) -> DeviceSelectors:
        if vendor == "NVIDIA":
            return self.selectors
        for name, selectors in self.vendor_selectors:
            if name == vendor:
                return selectors
        return _NO_SELECTORS

    @staticmethod
    def of(pod: PodRequest, defaults: PolicyDefaults, quota: QuotaLeft = NO_QUOTA) -> PodContext:
        node_policy, gpu_policy = pod_policies(pod.annotations, defaults.node_policy, defaults.gpu_policy)
        filters = gpu_policy_filters(pod.annotations, defaults.gpu_policy)
        return PodContext(
            pod=pod,
            selectors=decode_selectors(pod.annotations),
            node_policy=node_policy,
            gpu_policy=gpu_policy,
            weights=decode_weights(pod.annotations.get(keys.DEVICE_SCORING_WEIGHTS)),
            mutex="mutex" in filters,
            topology=TOPOLOGY_AWARE in filters,
            vendor_selectors=_vendor_selectors(pod.annotations),
            quota=quota,
        )


_NO_SELECTORS = DeviceSelectors()


def _vendor_selectors(annotations: dict[str, str]) -> tuple[tuple[str, DeviceSelectors], ...]:
    """Selectors of the vendors other than NVIDIA whose annotations the pod carries."""
    if not annotations:
        return ()
    from hami.vendors.registry import default_vendors

    found = []
    for vendor in default_vendors():
        if vendor.name != "NVIDIA" and any(k in annotations for k in vendor.keys.selector_keys):
            found.append((vendor.name, vendor.selectors(annotations)))
    return tuple(found)


def _static_inputs(state: ClusterState, annotations: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The pod annotations that the state's vendors' static checks read."""
    if state.single_vendor and state.vendor_names == ["NVIDIA"]:
        return ()
    wanted = {k for name in state.vendor_names if name in state.vendors for k in state.vendors[name].static_keys}
    return tuple(sorted((k, annotations[k]) for k in wanted if k in annotations))


@dataclass(frozen=True)
class Decision:
    pod: str
    node: str | None
    allocation: PodAllocation = ()
    # The registered type of each allocated device, in the same shape as `allocation`.
    device_types: tuple[tuple[str, ...], ...] = ()
    # Every node that did not fit, with HAMi's "N/M Reason" text.
    reasons: dict[str, str] = field(default_factory=dict)
    # HAMi's node score of every node that fits (before placement), when asked for.
    scores: dict[str, float] = field(default_factory=dict)
    # HAMi's node score of the chosen node (before placement).
    score: float | None = None


# A chooser picks the node (and devices) among those that fit; the simulator's policies are
# choosers. It returns (node index, allocation) or None to leave the pod unplaced.
Chooser = Callable[[ClusterState, PodContext, IntArray], "tuple[int, PodAllocation] | None"]


def static_codes(state: ClusterState, selectors: DeviceSelectors, ctx: PodContext | None = None) -> IntArray:
    """Per device, the first failing check that does not depend on usage (0 = passes).

    `selectors` apply to NVIDIA's devices; with `ctx`, every other vendor's devices are checked
    against that vendor's selectors and static rules too.
    """
    if state.single_vendor and (ctx is None or state.vendor_names in ([], ["NVIDIA"])):
        return _static_codes_for(state, selectors, slice(None))
    codes = np.zeros(len(state.uuids), dtype=np.int64)
    for name in state.vendor_names:
        rows = np.flatnonzero(state.vendor_id == state.vendor_names.index(name))
        if name == "NVIDIA":
            chosen = selectors
        elif ctx is not None:
            chosen = ctx.selectors_for(name)
        else:
            chosen = _NO_SELECTORS
        vendor = state.vendors.get(name)
        part = _static_codes_for(state, chosen, rows, vendor.health_reason if vendor else R.CARD_NOT_HEALTH)
        if ctx is not None and vendor is not None:
            extra = vendor.static_codes(state, rows, ctx.pod.annotations)
            if extra is not None:
                part = np.where(part != 0, part, extra)
        codes[rows] = part
    return codes


def _static_codes_for(state: ClusterState, selectors: DeviceSelectors, rows: slice | IntArray,
                      health_reason: str = R.CARD_NOT_HEALTH) -> IntArray:
    type_ok_by_id = np.asarray([selectors.type_allowed(t) for t in state.type_names], dtype=bool)
    mode_ok_by_id = np.asarray([selectors.mode_allowed(m) for m in state.mode_names], dtype=bool)
    type_ok = (type_ok_by_id[state.type_id] & mode_ok_by_id[state.mode_id] if len(state.uuids)
               else type_ok_by_id)[rows]
    uuid_ok = np.ones(len(state.uuids), dtype=bool)
    if selectors.use_uuids:
        uuid_ok[:] = False
        for uuid in selectors.use_uuids:
            uuid_ok[state.uuid_rows.get(uuid, [])] = True
    for uuid in selectors.nouse_uuids:
        uuid_ok[state.uuid_rows.get(uuid, [])] = False
    return np.select(
        [~state.health[rows], state.cordoned[rows], ~type_ok, ~uuid_ok[rows]],
        [R.CODE_OF[health_reason], R.CODE_OF[R.CARD_CORDONED], R.CODE_OF[R.CARD_TYPE_MISMATCH],
         R.CODE_OF[R.CARD_UUID_MISMATCH]],
        0,
    ).astype(np.int64)


def usage_codes(
    request: ContainerRequest,
    used: IntArray,
    count: IntArray,
    usedmem: IntArray,
    totalmem: IntArray,
    usedcores: IntArray,
    totalcore: IntArray,
) -> IntArray:
    """Per device, the first failing usage check of HAMi's generic loop for this request (0 = fits)."""
    mem = memory_needed(request, totalmem)
    cores = request.coresreq
    return np.select(
        [
            used >= count,
            totalmem - usedmem < mem,
            totalcore - usedcores < cores,
            (totalcore == 100) & (cores == 100) & (used > 0),
            (totalcore != 0) & (usedcores == totalcore) & (cores == 0),
        ],
        [R.CODE_OF[name] for name in R.DEVICE_CHECKS[4:]],
        0,
    ).astype(np.int64)


def _device_order(scores: list[float], index: list[int], numa: list[int], policy: Policy, numa_bind: bool) -> list[int]:
    """The order HAMi tries a node's devices in: best score first, ties to the higher index."""
    sign = -1 if policy is Policy.BINPACK else 1
    if numa_bind:
        group = 1 if policy is Policy.BINPACK else -1  # binpack walks NUMA nodes upwards, spread downwards
        return sorted(range(len(scores)), key=lambda j: (group * numa[j], sign * scores[j], -index[j]))
    return sorted(range(len(scores)), key=lambda j: (sign * scores[j], -index[j]))


@dataclass(frozen=True)
class ContainerFit:
    """One ask of one container on one node: the devices chosen (node-relative rows), or why not."""

    chosen: list[int]
    devices: tuple[ContainerDevice, ...] = ()
    reason: str = ""


_EARLY = (R.CODE_OF[R.CARD_NOT_HEALTH], R.CODE_OF[R.CARD_UNHEALTHY], R.CODE_OF[R.CARD_CORDONED],
          R.CODE_OF[R.CARD_TYPE_MISMATCH])
_QUOTA = R.CODE_OF[R.RESOURCE_QUOTA_NOT_FIT]
_SLICING = R.CODE_OF[R.CARD_TIME_SLICING_EXHAUSTED]


def fit_container(
    state: ClusterState,
    node: int,
    request: ContainerRequest,
    ctx: PodContext,
    static: IntArray,
    used: IntArray,
    usedmem: IntArray,
    usedcores: IntArray,
    earlier: tuple[int, ...] = (),
    taken: tuple[ContainerDevice, ...] = (),
    tally: QuotaTally | None = None,
    init: bool = False,
) -> ContainerFit:
    """HAMi's per-node device walk for one vendor ask of one container, on the given usage of the
    node's devices (`static`, `used`, `usedmem`, `usedcores` are the node's, all vendors).

    `earlier` holds the node-relative rows the pod's earlier containers of the same phase (init
    containers, or app containers: HAMi fits the two apart) took of the vendor.
    `taken` holds the devices of the vendor that the pod's earlier containers (of either phase) got.
    `tally` counts the pod's devices so far against its namespace's quota (`init`: this is an
    ordinary init container); a device that would go over fails with ResourceQuotaNotFit.
    """
    node_rows = state.rows_of_node(node)
    if state.single_vendor and state.vendor_names == [request.vendor]:
        vrows = node_rows
    else:
        vrows = state.vendor_rows_of_node(node, request.vendor)
    n = len(vrows)
    if request.nums > n and n == 0:
        return ContainerFit([], reason=f"{n}/{n} {R.NODE_INSUFFICIENT_DEVICE}")
    vendor = state.vendors[request.vendor]
    lo = vrows.start - node_rows.start
    local = slice(lo, lo + n)
    sl = slice(vrows.start, vrows.stop)
    count, totalmem, totalcore = state.count[sl], state.totalmem[sl], state.totalcore[sl]
    u, um, uc = used[local], usedmem[local], usedcores[local]
    usage, need = vendor.usage_codes(request, ctx, state, sl, u, um, uc, tuple(vrows.start + e - lo for e in earlier))
    repeats = need.repeats
    if request.nums > n and (repeats is None or not repeats.mask.any()):
        return ContainerFit([], reason=f"{n}/{n} {R.NODE_INSUFFICIENT_DEVICE}")
    scores = device_scores(request, ctx.weights, u, count, uc, totalcore, um, totalmem).tolist()
    node_static = static[local]
    codes = np.where(node_static != 0, node_static, usage)
    quota = tally if tally is not None and ctx.quota.room(request.vendor) is not None else None
    uuids = state.uuids[sl]
    if quota is not None:
        # HAMi checks the quota after the task count (and mutex) and before memory and cores.
        over = np.asarray([not quota.fits(request.vendor, uuids[j], int(need.mem[j]), int(need.cores[j]), init)
                           for j in range(n)], dtype=bool)
        kept = (usage == _SLICING) | (ctx.mutex & (u > 0))
        codes = np.where(over & (node_static == 0) & ~kept, _QUOTA, codes)
        quota = quota.copy()  # this container's picks, one after another
    numa = state.numa[sl].tolist()
    selectors = ctx.selectors_for(request.vendor)
    order = _device_order(scores, state.index[sl].tolist(), numa, ctx.gpu_policy, selectors.numa_bind)
    chooses = vendor.chooses(request, ctx, need)
    counts: dict[str, int] = {}
    chosen: list[int] = []
    prev_numa: int | None = None
    for j in order:
        code = int(codes[j])
        if code in _EARLY:
            name = R.CHECKS[code - 1]
            counts[name] = counts.get(name, 0) + 1
            continue
        if selectors.numa_bind and numa[j] != prev_numa:
            if chosen:
                counts[R.NUMA_NOT_FIT] = counts.get(R.NUMA_NOT_FIT, 0) + len(chosen)
            chosen = []
            prev_numa = numa[j]
            if quota is not None and tally is not None:
                quota = tally.copy()
        if not code and quota is not None and not chooses:
            if quota.fits(request.vendor, uuids[j], int(need.mem[j]), int(need.cores[j]), init):
                quota.take(request.vendor, uuids[j], int(need.mem[j]), int(need.cores[j]), init)
            else:
                code = _QUOTA
        if code:
            name = R.CHECKS[code - 1]
            counts[name] = counts.get(name, 0) + 1
            continue
        chosen.append(j)
        if len(chosen) == request.nums and not chooses:
            return _devices(state, vendor, request, Walk(vrows, order, codes, need, taken), lo, chosen)
    # How many of the ask the fitting devices can take: one each, or as many as a device repeats.
    room = len(chosen) if repeats is None else int(repeats.copies[chosen].sum())
    if chooses and room >= request.nums:
        walk = Walk(vrows, order, codes, need, taken)
        picked, missing = vendor.choose(request, ctx, state, walk, chosen)
        if picked:
            fit = _devices(state, vendor, request, walk, lo, picked)
            if quota is None or _within(quota, request.vendor, fit.devices, init):
                return fit
            missing = R.RESOURCE_QUOTA_NOT_FIT
        counts[missing] = counts.get(missing, 0) + max(1, len(chosen))
        return ContainerFit([], reason=R.format_reason(counts, n))
    if repeats is not None:
        # HAMi tried each repeating device again until it took no more.
        exhausted = sum(1 for j in chosen if repeats.mask[j])
        if exhausted:
            counts[repeats.reason] = counts.get(repeats.reason, 0) + exhausted
    if room:
        counts[R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST] = room
    return ContainerFit([], reason=R.format_reason(counts, n))


def _within(quota: QuotaTally, vendor: str, devices: tuple[ContainerDevice, ...], init: bool) -> bool:
    """Whether a vendor's choice of devices stays within the pod's quota."""
    for device in devices:
        if not quota.fits(vendor, device.uuid, device.usedmem, device.usedcores, init):
            return False
        quota.take(vendor, device.uuid, device.usedmem, device.usedcores, init)
    return True


def _devices(state: ClusterState, vendor: Vendor, request: ContainerRequest, walk: Walk, lo: int,
             picked: list[int]) -> ContainerFit:
    return ContainerFit([lo + j for j in picked], vendor.placed(request, state, walk, picked))


def fit_pod_on_node(
    state: ClusterState, node: int, ctx: PodContext, static: IntArray
) -> tuple[PodAllocation | None, str]:
    """Place every container of the pod on one node, as HAMi does; (allocation, "") or (None, reason).

    Ordinary init containers are each placed on the node's usage as it is (plus the sidecars
    started before them); sidecars and app containers one after another, each seeing what
    the previous ones took.
    """
    pod = ctx.pod
    rows = state.rows_of_node(node)
    sl = slice(rows.start, rows.stop)
    node_static = static[sl]
    running = [state.used[sl].copy(), state.usedmem[sl].copy(), state.usedcores[sl].copy()]
    plain = state.single_vendor and state.vendor_names == ["NVIDIA"]
    tally = QuotaTally(ctx.quota) if ctx.quota_applies else None
    earlier: dict[tuple[bool, str], list[int]] = {}
    taken: dict[str, list[ContainerDevice]] = {}
    allocation: list[tuple[ContainerDevice, ...]] = []
    for position, request in enumerate(pod.containers):
        if not request.wants_devices:
            allocation.append(())
            continue
        stays = pod.runs_beside_apps(position)
        placed: list[ContainerDevice] = []
        for ask in request.asks:
            phase = (position < pod.init_count, ask.vendor)
            fit = fit_container(state, node, ask, ctx, node_static, running[0], running[1], running[2],
                                tuple(earlier.get(phase, ())), tuple(taken.get(ask.vendor, ())), tally, not stays)
            if not fit.chosen:
                return None, fit.reason
            if tally is not None:
                for device in fit.devices:
                    tally.take(ask.vendor, device.uuid, device.usedmem, device.usedcores, not stays)
            earlier.setdefault(phase, []).extend(fit.chosen)
            taken.setdefault(ask.vendor, []).extend(fit.devices)
            if stays:
                for j, device in zip(fit.chosen, fit.devices, strict=True):
                    slots, mem, cores = (1, device.usedmem, device.usedcores) if plain else state.usage_of(
                        rows.start + j, device)
                    running[0][j] += slots
                    running[1][j] += mem
                    running[2][j] += cores
            placed.extend(fit.devices)
        allocation.append(tuple(placed))
    return tuple(allocation), ""


def _resource_short(state: ClusterState, pod: PodRequest) -> tuple[np.ndarray, np.ndarray]:
    """Per node: too little free CPU, too little free memory for the pod (capacity 0 = not checked)."""
    cpu = (pod.cpu_milli > 0) & (state.node_cpu > 0) & (state.node_cpu - state.node_cpu_used < pod.cpu_milli)
    memory = (
        (pod.memory_mib > 0) & (state.node_memory > 0) & (state.node_memory - state.node_memory_used < pod.memory_mib)
    )
    return cpu, memory


def _independent(pod: PodRequest) -> bool:
    """True when containers cannot compete for devices: at most one container that holds devices
    beside others (app containers and sidecars) asks for any."""
    holding = sum(1 for i, c in enumerate(pod.containers) if c.wants_devices and pod.runs_beside_apps(i))
    return holding <= 1 and not pod.sidecars


def _asked_twice(pod: PodRequest, vendor: str) -> bool:
    """Whether more than one container of the pod asks the vendor."""
    return sum(1 for c in pod.containers if any(a.vendor == vendor for a in c.asks)) > 1


@dataclass
class Feasibility:
    """Which candidate nodes fit the pod, and why the others do not."""

    candidates: IntArray
    fits: np.ndarray  # bool per candidate
    reasons: dict[int, str]


def feasible_nodes(
    state: ClusterState, ctx: PodContext, candidates: IntArray, static: IntArray, explain: bool = True
) -> Feasibility:
    pod = ctx.pod
    fits = np.ones(len(candidates), dtype=bool)
    reasons: dict[int, str] = {}
    cpu_short, memory_short = _resource_short(state, pod)
    short = (cpu_short | memory_short)[candidates]
    if short.any():
        fits &= ~short
        if explain:
            for node in candidates[short].tolist():
                reasons[node] = R.NODE_INSUFFICIENT_CPU if cpu_short[node] else R.NODE_INSUFFICIENT_MEMORY

    # Containers interact, NUMA groups matter or a quota counts the pod's devices: every remaining
    # node is walked.
    pod_walk = not _independent(pod) or ctx.selectors.numa_bind or ctx.quota_applies
    walk = pod_walk
    for request in pod.containers:
        for ask in request.asks:
            vendor = state.vendors.get(ask.vendor)
            if vendor is None or ask.vendor not in state.vendor_names:
                failing = fits.copy()
                if explain and failing.any():
                    for node in candidates[failing].tolist():
                        reasons[node] = f"0/0 {R.NODE_INSUFFICIENT_DEVICE}"
                fits &= ~failing
                continue
            vendor_numa = ctx.selectors_for(ask.vendor).numa_bind
            walk = walk or vendor_numa or (vendor.sees_earlier and _asked_twice(pod, ask.vendor))
            rows = state.vendor_rows(ask.vendor)
            usage, need = vendor.usage_codes(ask, ctx, state, rows, state.used[rows], state.usedmem[rows],
                                             state.usedcores[rows])
            vstatic = static[rows]
            codes = np.where(vstatic != 0, vstatic, usage)
            # What each passing device can take of the ask: one, or as many as it repeats.
            room = (codes == 0).astype(np.int64)
            if need.repeats is not None:
                room *= need.repeats.copies
            if state.single_vendor:
                starts = state.starts[:-1]
                ok_per_node = np.add.reduceat(room, starts) if len(starts) else codes[:0]
                sizes = state.sizes[candidates]
            else:
                node_of = state.dev_node[rows]
                ok_per_node = np.bincount(node_of, weights=room, minlength=len(state.nodes)).astype(np.int64)
                sizes = state.vendor_sizes(ask.vendor)[candidates]
            ok = ok_per_node[candidates]
            too_few_devices = sizes < ask.nums
            deferred = np.zeros(len(candidates), dtype=bool)
            if need.repeats is not None:
                # A node with a device that repeats is not judged by its number of devices (HAMi's
                # isMIGRequest); where too little fits, the walk gives HAMi's reasons.
                mask = need.repeats.mask.astype(np.int64)
                repeating = (np.add.reduceat(mask, state.starts[:-1]) if state.single_vendor and len(state.nodes)
                             else np.bincount(state.dev_node[rows], weights=mask, minlength=len(state.nodes)))
                several = repeating[candidates] > 0
                too_few_devices &= ~several
                deferred = fits & several & (ok < ask.nums)
                walk = walk or bool(deferred.any())
            failing = fits & ((ok < ask.nums) | too_few_devices) & ~deferred
            if explain and failing.any():
                reasons.update(_explain(state, ask.vendor, candidates[failing], codes, ok[failing],
                                        too_few_devices[failing], sizes[failing]))
            if vendor.exact:
                # A topology decides: the vendor's vectorised check when each ask sees the node as
                # it is, else the walk.
                topology = None if pod_walk or vendor_numa else vendor.node_fits(ask, ctx, state, codes)
                if topology is None:
                    walk = True
                else:
                    node_ok, missing = topology
                    unplaced = fits & ~failing & ~node_ok[candidates]
                    if explain and unplaced.any():
                        reasons.update(_explain(state, ask.vendor, candidates[unplaced], codes, ok[unplaced],
                                                too_few_devices[unplaced], sizes[unplaced], missing))
                    failing |= unplaced
            fits &= ~failing

    if walk:
        # Containers interact, NUMA groups matter or a vendor's topology decides: walk each remaining node.
        for k in np.flatnonzero(fits).tolist():
            node = int(candidates[k])
            allocation, reason = fit_pod_on_node(state, node, ctx, static)
            if allocation is None:
                fits[k] = False
                reasons[node] = reason
    return Feasibility(candidates=candidates, fits=fits, reasons=reasons)


def _explain(
    state: ClusterState, vendor: str, nodes: IntArray, codes: IntArray, ok: IntArray, too_few: np.ndarray,
    sizes: IntArray, missing: str = "",
) -> dict[int, str]:
    """Reason texts for failing nodes, formatted once per distinct pattern of counts.

    `missing`: the reason of nodes whose fitting devices hold no choice for a topology (the walk
    counts it once per fitting device); otherwise too few devices fit.
    """
    k = len(R.CHECKS) + 1
    node_of = state.dev_node[state.vendor_rows(vendor)]
    per_node = np.bincount(node_of * k + codes, minlength=len(state.nodes) * k).reshape(-1, k)
    patterns = np.ascontiguousarray(np.column_stack([per_node[nodes, 1:], ok, too_few.astype(np.int64), sizes]))
    # One text per distinct row of counts (a few; thousands of nodes share them), found in C: each
    # row's non-zero columns packed into one exact integer key.
    key = np.zeros(len(patterns), dtype=np.int64)
    scale = 1
    for column in np.flatnonzero(patterns.any(axis=0)).tolist():
        values = patterns[:, column]
        base = int(values.max()) + 1
        scale *= base
        key = key * base + values
    rows: np.ndarray = key
    if scale >= 2**62:  # too many distinct counts to pack: compare whole rows instead
        rows = patterns.view(np.dtype((np.void, patterns.dtype.itemsize * patterns.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    texts = [_reason_text(patterns[i].tolist(), k, missing) for i in first.tolist()]
    return dict(zip(nodes.tolist(), operator.itemgetter(*inverse.tolist())(texts) if len(texts) > 1
                    else [texts[0]] * len(nodes), strict=True))


def _reason_text(row: list[int], k: int, missing: str = "") -> str:
    devices = row[-1]
    if row[-2]:
        return f"{devices}/{devices} {R.NODE_INSUFFICIENT_DEVICE}"
    counts = dict(zip(R.CHECKS, row[: k - 1], strict=True))
    if missing:
        counts[missing] = counts.get(missing, 0) + max(1, row[k - 1])
    else:
        counts[R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST] = row[k - 1]
    return R.format_reason(counts, devices)


def _named(names: list[str], reasons: dict[int, str]) -> dict[str, str]:
    """Reasons keyed by node name (itemgetter does the lookups in C; thousands of nodes fail)."""
    if len(reasons) < 2:
        return {names[i]: text for i, text in reasons.items()}
    return dict(zip(operator.itemgetter(*reasons)(names), reasons.values(), strict=True))


def hami_node_scores(state: ClusterState, nodes: IntArray) -> np.ndarray:
    return node_scores(
        state.node_used[nodes],
        state.node_count_total[nodes],
        state.node_usedcores[nodes],
        state.node_core_total[nodes],
        state.node_usedmem[nodes],
        state.node_mem_total[nodes],
    )


def node_totals(state: ClusterState, ctx: PodContext, nodes: IntArray) -> np.ndarray:
    """HAMi's node score plus the asked vendors' ScoreNode for the pod placed on each node."""
    scores = hami_node_scores(state, nodes)
    scoring = [state.vendors[v] for v in ctx.pod.vendors if v in state.vendors and state.vendors[v].scores(ctx)]
    if not scoring or len(nodes) == 0:
        return scores
    totals = scores.astype(np.float32).copy()
    sign = np.float32(-1 if ctx.node_policy is Policy.SPREAD else 1)
    if _independent(ctx.pod):
        # Each ask sees the node as it is: vendors that can, score every node at once.
        walked = []
        for vendor in scoring:
            plain = not ctx.selectors.numa_bind and not ctx.selectors_for(vendor.name).numa_bind
            values = vendor.node_scores(ctx, state, nodes) if plain else None
            if values is None:
                walked.append(vendor)
            else:
                totals += values * np.float32(10000) * sign if vendor.policy_neutral_score else values
        scoring = walked
    if not scoring:
        return totals
    static = ctx.static_codes(state)
    for k, node in enumerate(nodes.tolist()):
        allocation, _ = fit_pod_on_node(state, node, ctx, static)
        if allocation is None:
            continue
        for vendor in scoring:
            part = [[d for d in c if state.devices[state.row_of[(node, d.uuid)]].vendor == vendor.name]
                    for c in allocation]
            value = np.float32(vendor.score_node(ctx, state, node, part))
            totals[k] += value * np.float32(10000) * sign if vendor.policy_neutral_score else value
    return totals


def best_node(state: ClusterState, nodes: IntArray, scores: np.ndarray, policy: Policy) -> int:
    """The best node: binpack the highest score, spread the lowest; ties go to the first name."""
    best = scores.max() if policy is Policy.BINPACK else scores.min()
    tied = nodes[scores == best]
    return int(tied[np.argmin(state.name_rank[tied])])


def hami_chooser(state: ClusterState, ctx: PodContext, fitting: IntArray) -> tuple[int, PodAllocation] | None:
    """HAMi's choice: the best node by node score, then its devices by the GPU policy."""
    if len(fitting) == 0:
        return None
    best = best_node(state, fitting, node_totals(state, ctx, fitting), ctx.node_policy)
    allocation, _ = fit_pod_on_node(state, best, ctx, ctx.static_codes(state))
    if allocation is None:  # cannot happen when feasibility is exact; kept as a guard
        return None
    return best, allocation


def schedule(
    state: ClusterState,
    pod: PodRequest,
    defaults: PolicyDefaults = PolicyDefaults(),
    nodes: Sequence[str] | None = None,
    explain: bool = True,
    chooser: Chooser = hami_chooser,
    with_scores: bool = False,
    quota: QuotaLeft = NO_QUOTA,
) -> Decision:
    """Decide where `pod` goes among `nodes` (all nodes with devices when None). `quota`: what
    the pod's namespace may still take.

    Raises AnnotationError when the pod's selector or policy annotations are malformed.
    """
    ctx = PodContext.of(pod, defaults, quota)
    candidates = (
        np.arange(len(state.nodes), dtype=np.int64) if nodes is None else state.nodes_named(nodes)
    )
    static = ctx.static_codes(state)
    feasibility = feasible_nodes(state, ctx, candidates, static, explain=explain)
    fitting = candidates[feasibility.fits]
    names = state.names
    reasons = _named(names, feasibility.reasons) if explain else {}
    scores: dict[str, float] = {}
    if with_scores and len(fitting):
        values = node_totals(state, ctx, fitting)
        scores = dict(zip([names[i] for i in fitting.tolist()], values.tolist(), strict=True))
    choice = chooser(state, ctx, fitting)
    if choice is None:
        return Decision(pod=pod.key, node=None, reasons=reasons, scores=scores)
    node, allocation = choice
    rows = state.rows_of_node(node)
    type_of = {state.uuids[r]: state.types[r] for r in rows}
    device_types = tuple(tuple(type_of[d.uuid] for d in container) for container in allocation)
    return Decision(
        pod=pod.key,
        node=state.nodes[node].name,
        allocation=allocation,
        device_types=device_types,
        reasons=reasons,
        scores=scores,
        score=float(node_totals(state, ctx, np.asarray([node], dtype=np.int64))[0]),
    )


def commit(state: ClusterState, pod: PodRequest, decision: Decision) -> None:
    """Count a placed pod in the state, so that the next decision sees it."""
    if decision.node is not None:
        state.add_pod(
            pod.key, decision.node, decision.allocation, pod.init_count, pod.cpu_milli, pod.memory_mib, pod.sidecars,
            pod.annotations,
        )
