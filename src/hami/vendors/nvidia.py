"""NVIDIA: HAMi's reference vendor (hami-core sharing, `hami.io/node-nvidia-register`).

Requests get HAMi's defaults, those its webhook writes into the pod (a count when only memory
or cores are asked; exclusive cores when a whole card is asked) followed by those its
scheduler applies (default memory, else 100 %; default cores). Applying them again to a pod
that already went through the webhook changes nothing, so the same function serves raw and
admitted pods.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.mig import allocations_of, decode_mig_allocations, encode_mig_allocations
from hami.annotations.node_score import decode_pair_scores
from hami.annotations.selectors import DeviceSelectors, decode_selectors
from hami.config import NvidiaConfig
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice, DevicePart, PodAllocation
from hami.model.devices import MIG_MODE, DeviceInfo
from hami.model.mig import MigPlacement
from hami.model.requests import NO_PERCENTAGE, ContainerRequest, PodRequest
from hami.quantity import QuantityError, parse_whole
from hami.scheduler import reasons as R
from hami.vendors import nvidia_links as links
from hami.vendors import nvidia_mig as mig
from hami.vendors.base import (
    INT32_MAX,
    AnnotationKeys,
    FloatArray,
    IntArray,
    Need,
    NodeSource,
    PodDecisionInput,
    Repeats,
    Resources,
    Rows,
    Vendor,
    Walk,
    generic_usage_codes,
    resources_of,
)

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

log = logging.getLogger(__name__)

VENDOR = "NVIDIA"
# One step of link quality (a pair-score bucket of 10) outweighs HAMi's whole node score (0-30),
# so that the node score only decides between nodes whose best sets are linked alike.
LINK_STEP = 10
LINK_WEIGHT = 100.0
TASK_PRIORITY_ENV = "CUDA_TASK_PRIORITY"
CORE_POLICY_ENV = "GPU_CORE_UTILIZATION_POLICY"


def _whole(container: Mapping[str, Any], name: str, raw: Any) -> int:
    try:
        value = parse_whole(raw)
    except QuantityError as exc:
        raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None
    if value > INT32_MAX:
        raise HamiError(f"container {container.get('name')!r}: {name} is {value}, larger than HAMi's limit {INT32_MAX}")
    return value


def container_request(container: Mapping[str, Any], config: NvidiaConfig) -> ContainerRequest:
    """The container's NVIDIA request (nums == 0 when it asks for none). Raises HamiError."""
    limits, requests = resources_of(container)

    def lookup(name: str) -> int | None:
        if name in limits:
            return _whole(container, name, limits[name])
        if name in requests:
            return _whole(container, name, requests[name])
        return None

    count = lookup(config.resourceCountName)
    memory = lookup(config.resourceMemoryName)
    percentage = lookup(config.resourceMemoryPercentageName)
    cores = lookup(config.resourceCoreName)

    where = f"container {container.get('name')!r}"
    if percentage is not None and percentage > 100:
        raise HamiError(f"{where}: {config.resourceMemoryPercentageName} is {percentage}, over 100")
    if cores is not None and cores > 100:
        raise HamiError(f"{where}: {config.resourceCoreName} is {cores}, over 100")

    # Webhook: only memory or cores asked (in limits) -> the default device count.
    if count is None and config.defaultGPUNum > 0:
        asked_in_limits = any(
            name in limits
            for name in (config.resourceMemoryName, config.resourceMemoryPercentageName, config.resourceCoreName)
        )
        if asked_in_limits:
            count = config.defaultGPUNum
    if not count:
        return ContainerRequest()

    # Webhook: a whole card (no memory asked, or 100 %) without cores -> exclusive cores.
    if cores is None and (percentage == 100 or (percentage is None and memory is None)):
        cores = 100

    memreq = (memory or 0) * max(config.memoryFactor, 1)
    if memreq > INT32_MAX:
        raise HamiError(f"{where}: {config.resourceMemoryName} × memoryFactor is {memreq} MiB, "
                        "larger than HAMi's limit")
    mem_percentage = NO_PERCENTAGE if percentage is None else percentage
    if mem_percentage == NO_PERCENTAGE and memreq == 0:
        if config.defaultMemory:
            memreq = config.defaultMemory
        else:
            mem_percentage = 100
    return ContainerRequest(
        nums=count,
        memreq=memreq,
        mem_percentage=mem_percentage,
        coresreq=config.defaultCores if cores is None else cores,
        vendor=VENDOR,
    )


def pod_request(pod: dict[str, Any], config: NvidiaConfig, check_node_resources: bool = False) -> PodRequest:
    """A pod's NVIDIA requests alone (every vendor: hami.vendors.registry.VendorSet.pod_request)."""
    from hami.vendors.registry import vendor_set

    return vendor_set(config).pod_request(pod, check_node_resources)


@dataclass
class Nvidia(Vendor):
    """NVIDIA with HAMi's device-config (`nvidia:` key)."""

    config: NvidiaConfig = NvidiaConfig()

    @staticmethod
    def of(config: NvidiaConfig) -> Nvidia:
        return Nvidia(
            name=VENDOR,
            resources=Resources(
                count=config.resourceCountName,
                memory=config.resourceMemoryName,
                percentage=config.resourceMemoryPercentageName,
                cores=config.resourceCoreName,
                priority=config.resourcePriorityName,
                memory_factor=max(config.memoryFactor, 1),
            ),
            keys=AnnotationKeys(
                register=keys.NODE_NVIDIA_REGISTER,
                to_allocate=keys.DEVICES_TO_ALLOCATE,
                allocated=keys.DEVICES_ALLOCATED,
                use_type=keys.USE_GPUTYPE,
                nouse_type=keys.NOUSE_GPUTYPE,
                uuid_pairs=((keys.USE_GPUUUID, keys.NOUSE_GPUUUID),),
            ),
            source=NodeSource.JSON,
            type_word="NVIDIA",
            config=config,
        )

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        request = container_request(container, self.config)
        return request if request.nums > 0 else None

    def selectors(self, annotations: Mapping[str, str]) -> DeviceSelectors:
        return decode_selectors(dict(annotations))

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        """HAMi's webhook defaults for one container, in place. Raises HamiError to deny."""
        config = self.config
        limits, requests = resources_of(container)
        request = container_request(container, config)  # validates every quantity and range
        if request.nums == 0:
            return False
        resources = container.setdefault("resources", {})
        limits = resources.setdefault("limits", {})
        if config.resourceCountName not in limits and config.resourceCountName not in requests:
            limits[config.resourceCountName] = config.defaultGPUNum
        if config.resourceCoreName not in limits and config.resourceCoreName not in requests:
            percentage = limits.get(config.resourceMemoryPercentageName)
            memory = limits.get(config.resourceMemoryName, requests.get(config.resourceMemoryName))
            if (percentage is not None and parse_whole(percentage) == 100) or (percentage is None and memory is None):
                limits[config.resourceCoreName] = 100
        priority = limits.get(config.resourcePriorityName)
        if priority is not None:
            level = _whole(container, config.resourcePriorityName, priority)
            if level > 1:
                raise HamiError(f"container {container.get('name')!r}: {config.resourcePriorityName} must be "
                                "0 (high) or 1 (low)")
            set_env(container, TASK_PRIORITY_ENV, str(level))
        if config.gpuCorePolicy != "default":
            set_env(container, CORE_POLICY_ENV, config.gpuCorePolicy)
        return True

    def managed_resources(self) -> tuple[str, ...]:
        return (*self.resources.names, self.config.resourcePriorityName)

    # ---- nodes: registration plus link scores -------------------------------------------

    def node_inputs(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        return (annotations.get(keys.NODE_NVIDIA_REGISTER), annotations.get(keys.NODE_NVIDIA_SCORE))

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        """The registered GPUs, each with its link scores from hami.io/node-nvidia-score (HAMi's
        GetNodeDevices: a malformed score annotation fails the node, as a malformed registration does)."""
        devices = super().node_devices(node)
        raw = ((node.get("metadata") or {}).get("annotations") or {}).get(keys.NODE_NVIDIA_SCORE)
        if not devices or raw is None:
            return devices
        try:
            scores = decode_pair_scores(str(raw))
        except AnnotationError as exc:
            raise AnnotationError(f"{keys.NODE_NVIDIA_SCORE}: {exc}") from None
        return [replace(d, pair_scores=scores[d.id]) if d.id in scores else d for d in devices]

    # ---- fit: MIG rows -------------------------------------------------------------------

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        codes = generic_usage_codes(state, rows, used, usedmem, usedcores, need, ctx.mutex)
        mig_rows = _mig_rows(state)[rows]
        if not mig_rows.any() and not state.parts:
            return codes, need
        absolute = np.arange(len(state.uuids), dtype=np.int64)[rows]
        copies = np.ones(len(absolute), dtype=np.int64)
        unhealthy = R.CODE_OF[R.CARD_NOT_HEALTH]
        infeasible = R.CODE_OF[R.CARD_MIG_TOPOLOGY_INFEASIBLE]
        codes = codes.copy()
        for k in np.flatnonzero(mig_rows | np.isin(absolute, list(state.parts))).tolist():
            row = int(absolute[k])
            held = state.parts_of(row)
            if not mig_rows[k]:
                codes[k] = unhealthy  # a MIG reservation on a hami-core GPU: HAMi fails it closed
                continue
            if int(state.used[row]) > len(held):
                codes[k] = unhealthy  # a pod uses this MIG GPU without a reservation: fail closed
                continue
            copies[k] = mig.instances_that_fit(state.devices[row].mig_profiles, mig.placements_of(held),
                                               int(need.mem[k]), max(ask.nums, 1))
            if codes[k] == 0 and copies[k] == 0:
                codes[k] = infeasible
        if mig_rows.any() and _mig_request(ctx):
            need = replace(need, repeats=Repeats(mask=mig_rows, copies=np.where(mig_rows, copies, 1),
                                                 reason=R.CARD_MIG_TOPOLOGY_INFEASIBLE))
        return codes, need

    def chooses(self, ask: ContainerRequest, ctx: PodContext, need: Need) -> bool:
        return ctx.topology or need.repeats is not None

    def choose(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, walk: Walk,
               fitting: list[int]) -> tuple[list[int], str]:
        """MIG GPUs as HAMi walks them (each filled before the next); shares by their links under
        topology-aware, else the first that fit. A container gets MIG instances or shares, not both:
        the kind of the first fitting device that can give all it asks."""
        repeats = walk.need.repeats
        groups: dict[bool, list[int]] = {}
        for j in fitting:
            groups.setdefault(bool(repeats is not None and repeats.mask[j]), []).append(j)
        for is_mig, group in groups.items():
            if is_mig:
                picked = self._mig_walk(ask, state, walk, group)
            elif len(group) < ask.nums:
                picked = []
            elif ctx.topology:
                picked = self._linked(ask, state, walk, group)
            else:
                picked = group[: ask.nums]
            if picked:
                return picked, ""
        if True in groups:
            return [], R.CARD_MIG_TOPOLOGY_INFEASIBLE
        return [], R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST

    def _linked(self, ask: ContainerRequest, state: ClusterState, walk: Walk, group: list[int]) -> list[int]:
        uuids = [state.uuids[walk.rows[j]] for j in group]
        scores = {state.uuids[walk.rows[j]]: state.devices[walk.rows[j]].pair_scores for j in group}
        if len(group) == ask.nums:
            return group
        if ask.nums == 1:
            return [group[links.worst_single(scores, uuids)]]
        return [group[i] for i in links.best_set(scores, uuids, ask.nums)]

    def _occupied(self, state: ClusterState, row: int, walk: Walk) -> list[MigPlacement]:
        uuid = state.uuids[row]
        earlier = [d.part for d in walk.earlier if d.uuid == uuid and d.part is not None]
        return mig.placements_of([*state.parts_of(row), *earlier])

    def _mig_walk(self, ask: ContainerRequest, state: ClusterState, walk: Walk, group: list[int]) -> list[int]:
        picked: list[int] = []
        for j in group:
            row = walk.rows[j]
            occupied = self._occupied(state, row, walk)
            while len(picked) < ask.nums:
                found = mig.select_candidate(state.devices[row].mig_profiles, occupied, int(walk.need.mem[j]))
                if found is None:
                    break
                occupied.append(found[1])
                picked.append(j)
            if len(picked) == ask.nums:
                return picked
        return []

    def placed(self, ask: ContainerRequest, state: ClusterState, walk: Walk,
               picked: Sequence[int]) -> tuple[ContainerDevice, ...]:
        """HAMi's AddResourceUsage: a MIG device records its profile's memory and cores and the
        placement (re-selected in pick order against what is in use)."""
        plain = super().placed(ask, state, walk, picked)
        repeats = walk.need.repeats
        if repeats is None:
            return plain
        occupied: dict[int, list[MigPlacement]] = {}
        devices = []
        for j, device in zip(picked, plain, strict=True):
            if not repeats.mask[j]:
                devices.append(device)
                continue
            row = walk.rows[j]
            taken = occupied.setdefault(row, self._occupied(state, row, walk))
            found = mig.select_candidate(state.devices[row].mig_profiles, taken, int(walk.need.mem[j]))
            if found is None:  # choose() checked the same sequence; kept as a guard
                raise HamiError(f"MIG placement on {device.uuid} vanished between choice and placement")
            profile, placement = found
            taken.append(placement)
            devices.append(ContainerDevice(device.uuid, device.vendor, profile.memory, profile.core,
                                           DevicePart(profile.name, placement.start, placement.size)))
        return tuple(devices)

    # ---- node score: links ---------------------------------------------------------------

    def scores(self, ctx: PodContext) -> bool:
        """Ours: topology-aware pods with a multi-GPU container score nodes by their links too."""
        return ctx.topology and any(a.vendor == VENDOR and a.nums > 1 for c in ctx.pod.containers for a in c.asks)

    def score_node(self, ctx: PodContext, state: ClusterState, node: int,
                   allocation: Sequence[Sequence[ContainerDevice]]) -> float:
        """The weakest link of the sets the pod gets here, in steps that outweigh HAMi's node
        score: binpack prefers the best-linked node, spread too (the sign follows the policy)."""
        from hami.annotations.selectors import Policy

        quality = link_quality(state, node, allocation)
        if quality is None:
            return 0.0
        value = (quality // LINK_STEP) * LINK_WEIGHT
        return -value if ctx.node_policy is Policy.SPREAD else value

    def node_scores(self, ctx: PodContext, state: ClusterState, nodes: IntArray) -> FloatArray | None:
        """score_node of every candidate at once, for a pod with one NVIDIA ask: per node, the set
        HAMi's rule picks among the GPUs that fit, in the walk's order (cached per node, order and
        count: the links of a state never change). None where the walk is needed (MIG)."""
        from hami.annotations.selectors import Policy
        from hami.scheduler.scoring import device_scores

        asks = [a for c in ctx.pod.containers for a in c.asks if a.vendor == VENDOR]
        if len(asks) != 1:
            return None
        ask = asks[0]
        rows = state.vendor_rows(VENDOR)
        used, usedmem, usedcores = state.used[rows], state.usedmem[rows], state.usedcores[rows]
        usage, need = self.usage_codes(ask, ctx, state, rows, used, usedmem, usedcores)
        if need.repeats is not None:
            return None
        static = ctx.static_codes(state)[rows]
        fits = np.zeros(len(state.uuids), dtype=bool)
        fits[rows] = (static == 0) & (usage == 0)
        order_key = np.zeros(len(state.uuids), dtype=np.float64)
        sign = -1.0 if ctx.gpu_policy is Policy.BINPACK else 1.0
        order_key[rows] = sign * device_scores(ask, ctx.weights, used, state.count[rows], usedcores,
                                               state.totalcore[rows], usedmem, state.totalmem[rows])
        cache = _link_cache(state)
        values = np.zeros(len(nodes), dtype=np.float32)
        for k, fitting in enumerate(_walk_orders(state, nodes, fits, order_key)):
            if len(fitting) < ask.nums:
                continue
            key = (fitting.tobytes(), ask.nums)
            quality = cache.get(key)
            if quality is None:
                uuids = [state.uuids[r] for r in fitting.tolist()]
                scores = {u: state.devices[r].pair_scores for u, r in zip(uuids, fitting.tolist(), strict=True)}
                chosen = [uuids[i] for i in links.best_set(scores, uuids, ask.nums)]
                quality = cache[key] = links.weakest_link(scores, chosen)
            values[k] = (quality // LINK_STEP) * LINK_WEIGHT
        return -values if ctx.node_policy is Policy.SPREAD else values

    # ---- decision and restart ------------------------------------------------------------

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        result = super().decision_annotations(pod)
        reservations = allocations_of(pod.allocation)
        if reservations:
            result[keys.MIG_ALLOCATIONS] = encode_mig_allocations(reservations)
        return result

    def decision_keys(self) -> tuple[str, ...]:
        return (*super().decision_keys(), keys.MIG_ALLOCATIONS)

    def held(self, annotations: Mapping[str, str], allocation: PodAllocation) -> PodAllocation:
        """The decision with each MIG device's reservation, matched as HAMi's getNodesUsage does:
        per GPU, the reservations in their listed order go to that GPU's devices in container order.

        Fail-closed (HAMi's rules, applied by usage_codes): a device without a reservation on a
        MIG GPU makes that GPU unhealthy while the pod holds it; so do reservations this pod's
        devices do not consume (we drop the parts of that GPU rather than restore free-floating
        ones), and a malformed annotation (no part at all).
        """
        raw = annotations.get(keys.MIG_ALLOCATIONS)
        if not raw:
            return allocation
        try:
            reservations = decode_mig_allocations(raw)
        except AnnotationError as exc:
            log.warning("%s: %s; the pod's MIG GPUs are held as unhealthy", keys.MIG_ALLOCATIONS, exc)
            return allocation
        queue: dict[str, list[DevicePart]] = {}
        for r in reservations:
            queue.setdefault(r.gpu_uuid, []).append(DevicePart(r.profile, r.placement.start, r.placement.size))
        result = []
        for container in allocation:
            devices = []
            for device in container:
                waiting = queue.get(device.uuid)
                devices.append(replace(device, part=waiting.pop(0)) if waiting else device)
            result.append(tuple(devices))
        leftover = {uuid for uuid, waiting in queue.items() if waiting}
        if leftover:
            log.warning("%s names more MIG instances on %s than the pod holds; those GPUs are held as unhealthy",
                        keys.MIG_ALLOCATIONS, ", ".join(sorted(leftover)))
            result = [tuple(replace(d, part=None) if d.uuid in leftover else d for d in c) for c in result]
        return tuple(result)


_LINK_CACHES: weakref.WeakKeyDictionary[ClusterState, dict[tuple[bytes, int], int]] = weakref.WeakKeyDictionary()


def _walk_orders(state: ClusterState, nodes: IntArray, fits: np.ndarray, order_key: np.ndarray) -> list[IntArray]:
    """Per node, its NVIDIA rows that fit in the order HAMi's walk tries them (best device score
    first, ties to the higher index); at once for nodes of one size."""
    sizes = state.vendor_sizes(VENDOR)[nodes]
    if len(nodes) == 0:
        return []
    if state.single_vendor and bool((sizes == sizes[0]).all()):
        rows = state.starts[nodes][:, None] + np.arange(int(sizes[0]), dtype=np.int64)[None, :]
        order = np.lexsort((-state.index[rows], order_key[rows]), axis=1)
        rows = np.take_along_axis(rows, order, axis=1)
        ok = fits[rows]
        return [row[mask] for row, mask in zip(rows, ok, strict=True)]
    found = []
    for node in nodes.tolist():
        span = np.asarray(state.vendor_rows_of_node(node, VENDOR), dtype=np.int64)
        span = span[np.lexsort((-state.index[span], order_key[span]))]
        found.append(span[fits[span]])
    return found


def _link_cache(state: ClusterState) -> dict[tuple[bytes, int], int]:
    """Per state: the weakest link of the set HAMi's rule picks among fitting rows in walk order."""
    cache = _LINK_CACHES.get(state)
    if cache is None or len(cache) > 200_000:
        cache = _LINK_CACHES[state] = {}
    return cache


def _mig_rows(state: ClusterState) -> np.ndarray:
    """Per device row of the state: whether it is a GPU in MIG mode (computed once per state)."""
    key = ("NVIDIA", "mig-rows")
    cached = state.static_cache.get(key)
    if cached is None:
        mig_ids = [i for i, mode in enumerate(state.mode_names) if mode == MIG_MODE]
        cached = np.isin(state.mode_id, mig_ids) & (state.vendor_id == _vendor_code(state)) if len(state.uuids) \
            else np.zeros(0, dtype=bool)
        cached.flags.writeable = False
        state.static_cache[key] = cached
    return cached


def _vendor_code(state: ClusterState) -> int:
    return state.vendor_names.index(VENDOR) if VENDOR in state.vendor_names else -1


def _mig_request(ctx: PodContext) -> bool:
    """HAMi's isMIGRequest (for the pod): no vgpu-mode annotation, or one that names mig."""
    mode = ctx.selectors.mode
    return mode is None or MIG_MODE in mode


def link_quality(state: ClusterState, node: int, allocation: Sequence[Sequence[ContainerDevice]]) -> int | None:
    """The weakest link over the multi-GPU containers of an allocation on a node; None when no
    container holds two GPUs or more."""
    scores = {state.devices[r].id: state.devices[r].pair_scores for r in state.rows_of_node(node)}
    found = [links.weakest_link(scores, [d.uuid for d in container]) for container in allocation
             if len({d.uuid for d in container}) > 1]
    return min(found) if found else None


def set_env(container: dict[str, Any], name: str, value: str) -> None:
    """Set one environment variable of a container (replacing an earlier value)."""
    env = [e for e in container.get("env") or [] if e.get("name") != name]
    env.append({"name": name, "value": value})
    container["env"] = env
