"""The scheduling engine: a pure function from (cluster state, pod, policy) to a decision.

No clock, no randomness, no I/O: the extender, the simulator, `hami schedule` and the tests
all call `schedule`. Work is vectorised over every device of the cluster where the answer
can be had that way (a pod whose containers do not compete for the same devices); the exact
per-node walk that HAMi does runs for the chosen node, and for every candidate node when the
pod's containers interact (several app containers with devices, or NUMA binding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hami.annotations import keys
from hami.annotations.selectors import (
    DeviceSelectors,
    Policy,
    ScoringWeights,
    decode_selectors,
    decode_weights,
    pod_policies,
)
from hami.model.allocation import ContainerDevice, PodAllocation
from hami.model.requests import ContainerRequest, PodRequest
from hami.scheduler import reasons as R
from hami.scheduler.scoring import device_scores, memory_needed, node_scores
from hami.scheduler.state import ClusterState, IntArray


@dataclass(frozen=True)
class PolicyDefaults:
    """Cluster-wide policies; a pod's annotations override them."""

    node_policy: Policy = Policy.BINPACK
    gpu_policy: Policy = Policy.SPREAD


@dataclass(frozen=True)
class PodContext:
    """Everything about a pod that the per-device checks need, decoded once."""

    pod: PodRequest
    selectors: DeviceSelectors
    node_policy: Policy
    gpu_policy: Policy
    weights: ScoringWeights

    def static_codes(self, state: ClusterState) -> IntArray:
        """static_codes() for this pod's selectors, computed once per state."""
        codes = state.static_cache.get(self.selectors)
        if codes is None:
            if len(state.static_cache) > 256:  # many distinct selectors: keep the memory bounded
                state.static_cache.clear()
            codes = static_codes(state, self.selectors)
            codes.flags.writeable = False  # shared between pods
            state.static_cache[self.selectors] = codes
        return codes

    @staticmethod
    def of(pod: PodRequest, defaults: PolicyDefaults) -> PodContext:
        node_policy, gpu_policy = pod_policies(pod.annotations, defaults.node_policy, defaults.gpu_policy)
        return PodContext(
            pod=pod,
            selectors=decode_selectors(pod.annotations),
            node_policy=node_policy,
            gpu_policy=gpu_policy,
            weights=decode_weights(pod.annotations.get(keys.DEVICE_SCORING_WEIGHTS)),
        )


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


def static_codes(state: ClusterState, selectors: DeviceSelectors) -> IntArray:
    """Per device, the first failing check that does not depend on usage (0 = passes)."""
    type_ok_by_id = np.asarray([selectors.type_allowed(t) for t in state.type_names], dtype=bool)
    mode_ok_by_id = np.asarray([selectors.mode_allowed(m) for m in state.mode_names], dtype=bool)
    type_ok = type_ok_by_id[state.type_id] & mode_ok_by_id[state.mode_id] if len(state.uuids) else type_ok_by_id
    uuid_ok = np.ones(len(state.uuids), dtype=bool)
    if selectors.use_uuids:
        uuid_ok[:] = False
        for uuid in selectors.use_uuids:
            uuid_ok[state.uuid_rows.get(uuid, [])] = True
    for uuid in selectors.nouse_uuids:
        uuid_ok[state.uuid_rows.get(uuid, [])] = False
    return np.select(
        [~state.health, state.cordoned, ~type_ok, ~uuid_ok],
        [R.CODE_OF[R.CARD_NOT_HEALTH], R.CODE_OF[R.CARD_CORDONED], R.CODE_OF[R.CARD_TYPE_MISMATCH],
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
    """Per device, the first failing usage check for this request (0 = fits)."""
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


def fit_container(
    state: ClusterState,
    node: int,
    request: ContainerRequest,
    ctx: PodContext,
    static: IntArray,
    used: IntArray,
    usedmem: IntArray,
    usedcores: IntArray,
) -> tuple[list[int], str]:
    """HAMi's per-node device walk for one container on the given usage of the node's devices.

    Returns the chosen rows (relative to the node) and "" on success, or [] and the reason.
    """
    rows = state.rows_of_node(node)
    sl = slice(rows.start, rows.stop)
    n = len(rows)
    if request.nums > n:
        return [], f"{n}/{n} {R.NODE_INSUFFICIENT_DEVICE}"
    count, totalmem, totalcore = state.count[sl], state.totalmem[sl], state.totalcore[sl]
    scores = device_scores(request, ctx.weights, used, count, usedcores, totalcore, usedmem, totalmem).tolist()
    codes = np.where(static != 0, static, usage_codes(request, used, count, usedmem, totalmem, usedcores, totalcore))
    numa = state.numa[sl].tolist()
    order = _device_order(scores, state.index[sl].tolist(), numa, ctx.gpu_policy, ctx.selectors.numa_bind)
    counts: dict[str, int] = {}
    chosen: list[int] = []
    prev_numa: int | None = None
    early = (R.CODE_OF[R.CARD_NOT_HEALTH], R.CODE_OF[R.CARD_CORDONED], R.CODE_OF[R.CARD_TYPE_MISMATCH])
    for j in order:
        code = int(codes[j])
        if code in early:
            name = R.DEVICE_CHECKS[code - 1]
            counts[name] = counts.get(name, 0) + 1
            continue
        if ctx.selectors.numa_bind and numa[j] != prev_numa:
            if chosen:
                counts[R.NUMA_NOT_FIT] = counts.get(R.NUMA_NOT_FIT, 0) + len(chosen)
            chosen = []
            prev_numa = numa[j]
        if code:
            name = R.DEVICE_CHECKS[code - 1]
            counts[name] = counts.get(name, 0) + 1
            continue
        chosen.append(j)
        if len(chosen) == request.nums:
            return chosen, ""
    if chosen:
        counts[R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST] = len(chosen)
    return [], R.format_reason(counts, n)


def fit_pod_on_node(
    state: ClusterState, node: int, ctx: PodContext, static: IntArray
) -> tuple[PodAllocation | None, str]:
    """Place every container of the pod on one node, as HAMi does; (allocation, "") or (None, reason).

    Init containers are each placed on the node's usage as it is; app containers one after
    another, each seeing what the previous ones took.
    """
    pod = ctx.pod
    rows = state.rows_of_node(node)
    sl = slice(rows.start, rows.stop)
    node_static = static[sl]
    base = (state.used[sl], state.usedmem[sl], state.usedcores[sl])
    app = [a.copy() for a in base]
    uuids = state.uuids[sl]
    totalmem = state.totalmem[sl]
    allocation: list[tuple[ContainerDevice, ...]] = []
    for position, request in enumerate(pod.containers):
        if not request.wants_devices:
            allocation.append(())
            continue
        is_init = position < pod.init_count
        used, usedmem, usedcores = base if is_init else app
        chosen, reason = fit_container(state, node, request, ctx, node_static, used, usedmem, usedcores)
        if not chosen:
            return None, reason
        mem = memory_needed(request, totalmem)
        if not is_init:
            for j in chosen:
                app[0][j] += 1
                app[1][j] += mem[j]
                app[2][j] += request.coresreq
        allocation.append(
            tuple(ContainerDevice(uuids[j], request.vendor, int(mem[j]), request.coresreq) for j in chosen)
        )
    return tuple(allocation), ""


def _resource_short(state: ClusterState, pod: PodRequest) -> tuple[np.ndarray, np.ndarray]:
    """Per node: too little free CPU, too little free memory for the pod (capacity 0 = not checked)."""
    cpu = (pod.cpu_milli > 0) & (state.node_cpu > 0) & (state.node_cpu - state.node_cpu_used < pod.cpu_milli)
    memory = (
        (pod.memory_mib > 0) & (state.node_memory > 0) & (state.node_memory - state.node_memory_used < pod.memory_mib)
    )
    return cpu, memory


def _independent(pod: PodRequest) -> bool:
    """True when containers cannot compete for devices: at most one app container asks for any."""
    app_with_devices = sum(1 for c in pod.containers[pod.init_count :] if c.wants_devices)
    return app_with_devices <= 1


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

    sizes = state.sizes[candidates]
    starts = state.starts[:-1]
    for request in pod.containers:
        if not request.wants_devices:
            continue
        codes = np.where(
            static != 0,
            static,
            usage_codes(request, state.used, state.count, state.usedmem, state.totalmem, state.usedcores,
                        state.totalcore),
        )
        ok_per_node = np.add.reduceat((codes == 0).astype(np.int64), starts) if len(starts) else codes[:0]
        ok = ok_per_node[candidates]
        too_few_devices = sizes < request.nums
        failing = fits & ((ok < request.nums) | too_few_devices)
        if explain and failing.any():
            reasons.update(_explain(state, candidates[failing], codes, ok[failing], too_few_devices[failing]))
        fits &= ~failing

    if not _independent(pod) or ctx.selectors.numa_bind:
        # Containers interact (or NUMA groups matter): walk each remaining node exactly.
        for k in np.flatnonzero(fits).tolist():
            node = int(candidates[k])
            allocation, reason = fit_pod_on_node(state, node, ctx, static)
            if allocation is None:
                fits[k] = False
                reasons[node] = reason
    return Feasibility(candidates=candidates, fits=fits, reasons=reasons)


def _explain(
    state: ClusterState, nodes: IntArray, codes: IntArray, ok: IntArray, too_few: np.ndarray
) -> dict[int, str]:
    """Reason texts for failing nodes, formatted once per distinct pattern of counts."""
    k = len(R.DEVICE_CHECKS) + 1
    per_node = np.bincount(state.dev_node * k + codes, minlength=len(state.nodes) * k).reshape(-1, k)
    patterns = np.column_stack([per_node[nodes, 1:], ok, too_few.astype(np.int64), state.sizes[nodes]]).tolist()
    texts: dict[tuple[int, ...], str] = {}
    result: dict[int, str] = {}
    for node, row in zip(nodes.tolist(), patterns, strict=True):
        key = tuple(row)
        text = texts.get(key)
        if text is None:
            text = texts[key] = _reason_text(row, k)
        result[node] = text
    return result


def _reason_text(row: list[int], k: int) -> str:
    devices = row[-1]
    if row[-2]:
        return f"{devices}/{devices} {R.NODE_INSUFFICIENT_DEVICE}"
    counts = dict(zip(R.DEVICE_CHECKS, row[: k - 1], strict=True))
    counts[R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST] = row[k - 1]
    return R.format_reason(counts, devices)


def hami_node_scores(state: ClusterState, nodes: IntArray) -> np.ndarray:
    return node_scores(
        state.node_used[nodes],
        state.node_count_total[nodes],
        state.node_usedcores[nodes],
        state.node_core_total[nodes],
        state.node_usedmem[nodes],
        state.node_mem_total[nodes],
    )


def best_node(state: ClusterState, nodes: IntArray, scores: np.ndarray, policy: Policy) -> int:
    """The best node: binpack the highest score, spread the lowest; ties go to the first name."""
    best = scores.max() if policy is Policy.BINPACK else scores.min()
    tied = nodes[scores == best]
    return int(tied[np.argmin(state.name_rank[tied])])


def hami_chooser(state: ClusterState, ctx: PodContext, fitting: IntArray) -> tuple[int, PodAllocation] | None:
    """HAMi's choice: the best node by node score, then its devices by the GPU policy."""
    if len(fitting) == 0:
        return None
    best = best_node(state, fitting, hami_node_scores(state, fitting), ctx.node_policy)
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
) -> Decision:
    """Decide where `pod` goes among `nodes` (all nodes with devices when None).

    Raises AnnotationError when the pod's selector or policy annotations are malformed.
    """
    ctx = PodContext.of(pod, defaults)
    candidates = (
        np.arange(len(state.nodes), dtype=np.int64) if nodes is None else state.nodes_named(nodes)
    )
    static = ctx.static_codes(state)
    feasibility = feasible_nodes(state, ctx, candidates, static, explain=explain)
    fitting = candidates[feasibility.fits]
    names = state.names
    reasons = {names[i]: text for i, text in feasibility.reasons.items()} if explain else {}
    scores: dict[str, float] = {}
    if with_scores and len(fitting):
        values = hami_node_scores(state, fitting)
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
        score=float(hami_node_scores(state, np.asarray([node], dtype=np.int64))[0]),
    )


def commit(state: ClusterState, pod: PodRequest, decision: Decision) -> None:
    """Count a placed pod in the state, so that the next decision sees it."""
    if decision.node is not None:
        state.add_pod(
            pod.key, decision.node, decision.allocation, pod.init_count, pod.cpu_milli, pod.memory_mib
        )
