"""Kunlunxin XPUs: whole XPUs (`kunlun`) and vXPU slices (`XPU`), HAMi's device-config `kunlun`.

A Kunlunxin server has 8 XPUs in two groups of 4 (indices 0-3 and 4-7); each XPU links to the
others of its group and to its twin in the other group (`i` and `i + 4`). A multi-XPU ask is
placed by HAMi's `graghSelect` over that topology: the group whose free XPUs best match the
ask, else linked XPUs across groups. Whole XPUs come from node capacity and are exclusive;
vXPUs come from a JSON registration and share an XPU between slices of one size (a quarter,
a half or the whole XPU's 96 GiB).

HAMi runs the topology on the position of each device in a list sorted by the GPU policy's
score and then reads the positions as device indices; we run it on device indices, so the
XPU called 3 is always the one linked to 7, whatever the usage.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.annotations.pod_devices import encode_pod_devices
from hami.annotations.selectors import Policy
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.model.devices import DeviceInfo
from hami.model.requests import NO_PERCENTAGE, ContainerRequest
from hami.quantity import QuantityError, parse_whole
from hami.scheduler import reasons as R
from hami.vendors.base import (
    AnnotationKeys,
    BoolArray,
    FloatArray,
    IntArray,
    LockKind,
    Need,
    NodeSource,
    PodDecisionInput,
    Resources,
    Rows,
    Vendor,
    Walk,
    resources_of,
)

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

KUNLUN = "kunlun"  # whole XPUs
XPU = "XPU"  # vXPU slices
XPU_MEMORY = 98304  # MiB of one XPU (HAMi's KunlunMaxMemory)
SLICE_SIZES = (24576, 49152)  # vXPU memory tiers below the whole XPU
DEVICE_IDX = "BAIDU_COM_DEVICE_IDX"  # pod annotation Kunlunxin's device plugin reads
UUID_PAIRS = (("hami.io/use-xpu-uuid", "hami.io/no-use-xpu-uuid"), ("baidu.com/use-gpuuuid", "baidu.com/nouse-gpuuuid"))

GROUP = 4  # XPUs per group; a server has two
# HAMi's constants (pkg/device/kunlun/device.go).
CROSS_LINKS = ((0, 4), (1, 5), (2, 6), (3, 7))  # InterGroupConnection
LINKED_QUADS = ((0, 1, 4, 5), (2, 3, 6, 7), (0, 2, 4, 6), (1, 3, 5, 7), (0, 3, 4, 7), (1, 2, 5, 6))
GROUP_LINKS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (4, 5), (4, 6), (4, 7), (5, 6), (5, 7), (6, 7))
ODD_ORDER = (1, 3, 2, 4)  # for one XPU: a group with 1 free first, then 3, 2, 4


def graph_select(free: Sequence[int], count: int) -> list[int]:
    """HAMi's graghSelect on the free XPU indices (0-7): the indices to give, [] for none."""
    fits = {i for i in free if 0 <= i < 2 * GROUP}
    left = sum(1 for i in fits if i < GROUP)
    right = len(fits) - left
    if count == 2 * GROUP:
        return list(range(2 * GROUP)) if len(fits) == count else []
    if count not in (1, 2, 4):
        return []
    if left >= count or right >= count:
        # The group whose free XPUs the ask fills most tightly.
        for slots in range(count, GROUP + 1):
            wanted = ODD_ORDER[slots - 1] if count % 2 else slots
            if left == wanted:
                return _pick(fits, 0, count)
            if right == wanted:
                return _pick(fits, GROUP, count)
    return _interconnect(fits, count)


def _pick(fits: set[int], start: int, count: int) -> list[int]:
    """The first `count` free XPUs from index `start` (HAMi's devicepick)."""
    picked = [i for i in range(start, 2 * GROUP) if i in fits][:count]
    return picked if len(picked) == count else []


def _interconnect(fits: set[int], count: int) -> list[int]:
    if count == 2:
        for i in sorted(fits):
            for j in sorted(fits):
                if j != i and ((i, j) in CROSS_LINKS or (j, i) in CROSS_LINKS):
                    return [i, j]
    if count == 4 and len(fits) in (4, 5):
        for quad in LINKED_QUADS:
            if fits.issuperset(quad):
                return list(quad)
    if count == 4 and len(fits) == 6:
        # A quad that leaves a linked pair free; else the last quad that fits.
        chosen: list[int] = []
        for quad in LINKED_QUADS:
            if fits.issuperset(quad):
                chosen = list(quad)
                rest = fits.difference(quad)
                if any(rest.issuperset(pair) for pair in (*CROSS_LINKS, *GROUP_LINKS)):
                    return chosen
        return chosen
    return []


def bubbles(indices: Sequence[int]) -> int:
    """HAMi's countbubble: how many more asks it takes to fill both groups around `indices`."""
    left = sum(1 for i in indices if i < GROUP)
    right = len(indices) - left
    if left == 0 and right == 0:
        return 1
    return _fill(left) + _fill(right)


def _fill(used: int) -> int:
    return 0 if used == GROUP else 2 if used == 1 else 1


def calc_score(previous: Sequence[int], current: Sequence[int]) -> float:
    """HAMi's calcscore: 3000 when the placement removes a bubble, 2000 when it keeps the
    count, 1000 when it adds one, 0 when it adds two."""
    return {-1: 3000.0, 0: 2000.0, 1: 1000.0, 2: 0.0}.get(bubbles(current) - bubbles(previous), 1000.0)


def _whole(container: Mapping[str, Any], name: str, raw: Any) -> int:
    try:
        return parse_whole(raw)
    except QuantityError as exc:
        raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None


@functools.cache
def picks(count: int) -> IntArray:
    """graph_select for every set of free XPUs (a mask of indices 0-7): the mask it picks, 0 for none."""
    table = np.zeros(1 << 2 * GROUP, dtype=np.int64)
    for free in range(len(table)):
        table[free] = sum(1 << i for i in graph_select([i for i in range(2 * GROUP) if free >> i & 1], count))
    table.flags.writeable = False
    return table


def _free_masks(state: ClusterState, vendor: str, ok: BoolArray) -> IntArray:
    """Per node: the mask of the vendor's devices (indices 0-7) for which `ok` holds."""
    rows = state.vendor_rows(vendor)
    index = state.index[rows]
    inside = ok & (index < 2 * GROUP)
    masks = np.zeros(len(state.nodes), dtype=np.int64)
    np.bitwise_or.at(masks, state.dev_node[rows][inside], np.left_shift(1, index[inside]))
    return masks


def _bubbles(left: IntArray, right: IntArray) -> IntArray:
    """bubbles() for many (left, right) counts at once."""
    def fill(used: IntArray) -> IntArray:
        return np.where(used == GROUP, 0, np.where(used == 1, 2, 1))

    return np.where((left == 0) & (right == 0), 1, fill(left) + fill(right))


@dataclass
class _Topology(Vendor):
    """What whole XPUs and vXPUs share: the 8-XPU topology decides the devices."""

    def node_fits(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState,
                  codes: IntArray) -> tuple[BoolArray, str] | None:
        """graph_select on each node's fitting XPUs, from a table of every set of free XPUs."""
        if ask.nums not in (1, 2, GROUP, 2 * GROUP):
            return np.zeros(len(state.nodes), dtype=bool), R.NUMA_NOT_FIT
        return picks(ask.nums)[_free_masks(state, self.name, codes == 0)] != 0, R.NUMA_NOT_FIT

    def choose(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, walk: Walk,
               fitting: list[int]) -> tuple[list[int], str]:
        first = walk.rows.start
        position_of = {int(state.index[first + j]): j for j in fitting}
        picked = graph_select(list(position_of), ask.nums)
        if not picked:
            return [], R.NUMA_NOT_FIT
        return [position_of[i] for i in picked], ""


@dataclass
class KunlunXPU(_Topology):
    """Whole XPUs from node capacity `kunlunxin.com/xpu`; each is taken by one container."""

    @staticmethod
    def of(count: str) -> KunlunXPU:
        return KunlunXPU(
            name=KUNLUN,
            resources=Resources(count=count),
            keys=AnnotationKeys(allocated="hami.io/kunlun-allocated", uuid_pairs=UUID_PAIRS),
            source=NodeSource.CAPACITY,
            lock=LockKind.NONE,
            exact=True,
            topology=True,
            scores_nodes=True,
        )

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        count = self.quantity(container, self.resources.count)
        if not count:
            return None
        return ContainerRequest(nums=count, memreq=0, mem_percentage=100, coresreq=0, vendor=self.name)

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        """HAMi's MutateAdmission: the count in limits (a count of 0 asks for nothing)."""
        limits, _ = resources_of(container)
        return _whole(container, self.resources.count, limits.get(self.resources.count, 0)) > 0

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        """One XPU per unit of capacity; the second half is NUMA node 1 (HAMi's rule)."""
        name = str((node.get("metadata") or {}).get("name"))
        raw = ((node.get("status") or {}).get("capacity") or {}).get(self.resources.count)
        if raw is None:
            return []
        try:
            cards = parse_whole(raw)
        except QuantityError:
            return []
        return [
            DeviceInfo(id=f"{name}-kunlun-{i}", count=100, devmem=XPU_MEMORY, devcore=100, type=KUNLUN,
                       numa=1 if i >= cards // 2 else 0, index=i, vendor=self.name)
            for i in range(cards)
        ]

    def need(self, ask: ContainerRequest, state: ClusterState, rows: Rows, used: IntArray, usedmem: IntArray,
             usedcores: IntArray) -> Need:
        # A whole XPU: all its memory and cores.
        ones = np.ones(len(used), dtype=np.int64)
        return Need(slots=ones, mem=state.totalmem[rows].copy(), cores=state.totalcore[rows].copy())

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        busy = R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT]
        return np.where(used > 0, busy, 0).astype(np.int64), need

    def score_node(self, ctx: PodContext, state: ClusterState, node: int,
                   allocation: Sequence[Sequence[ContainerDevice]]) -> float:
        """HAMi's ScoreNode (calcscore on the XPUs in use before and the XPUs this pod takes);
        its sign is turned under the spread node policy, so a tight fit helps either way."""
        rows = state.vendor_rows_of_node(node, self.name)
        previous = [int(state.index[r]) for r in rows if state.used[r] > 0]
        current: list[int] = []
        for container in allocation:
            for placed in container:
                index = int(state.index[state.row_of[(node, placed.uuid)]])
                if index not in current:
                    current.append(index)
        value = calc_score(previous, current)
        return -value if ctx.node_policy is Policy.SPREAD else value

    def node_scores(self, ctx: PodContext, state: ClusterState, nodes: IntArray) -> FloatArray | None:
        """score_node for every node at once: the XPUs picked from a table, their bubbles against
        those of the XPUs in use."""
        rows = state.vendor_rows(self.name)
        index, node_of, n_nodes = state.index[rows], state.dev_node[rows], len(state.nodes)
        busy = state.used[rows] > 0
        before = _bubbles(np.bincount(node_of[busy & (index < GROUP)], minlength=n_nodes),
                          np.bincount(node_of[busy & (index >= GROUP)], minlength=n_nodes))
        static = ctx.static_codes(state)[rows]
        taken = np.zeros(n_nodes, dtype=np.int64)
        for container in ctx.pod.containers:
            for ask in container.asks:
                if ask.vendor != self.name:
                    continue
                if ask.nums not in (1, 2, GROUP, 2 * GROUP):
                    return None
                usage, _ = self.usage_codes(ask, ctx, state, rows, state.used[rows], state.usedmem[rows],
                                            state.usedcores[rows])
                taken |= picks(ask.nums)[_free_masks(state, self.name, (static == 0) & (usage == 0))]
        left = np.bitwise_count(taken & 0xF).astype(np.int64)
        right = np.bitwise_count(taken >> GROUP).astype(np.int64)
        change = (_bubbles(left, right) - before)[nodes]
        value = np.select([change == -1, change == 0, change == 1, change == 2], [3000, 2000, 1000, 0], 1000)
        value = value.astype(np.float32)
        return -value if ctx.node_policy is Policy.SPREAD else value

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        """`hami.io/kunlun-allocated`, and `BAIDU_COM_DEVICE_IDX`: the XPU indices of the last
        container that got any (as HAMi writes it)."""
        result = {self.keys.allocated or "": encode_pod_devices(pod.allocation)}
        for container in pod.allocation:
            if container:
                result[DEVICE_IDX] = ",".join(str(pod.device(d.uuid).index) for d in container)
        return result

    def decision_keys(self) -> tuple[str, ...]:
        return (*super().decision_keys(), DEVICE_IDX)


@dataclass
class KunlunVXPU(_Topology):
    """vXPU slices of 24, 48 or 96 GiB; an XPU is shared only between slices of one size."""

    @staticmethod
    def of(count: str, memory: str) -> KunlunVXPU:
        return KunlunVXPU(
            name=XPU,
            resources=Resources(count=count, memory=memory),
            keys=AnnotationKeys(
                register="hami.io/node-register-xpu",
                handshake="hami.io/node-handshake-xpu",
                to_allocate="hami.io/xpu-devices-to-allocate",
                allocated="hami.io/xpu-devices-allocated",
                uuid_pairs=UUID_PAIRS,
            ),
            source=NodeSource.JSON,
            exact=True,
            topology=True,
        )

    @staticmethod
    def trim_memory(memory: int) -> int:
        """HAMi's vXPU tiers: the smallest slice holding `memory` MiB, else the whole XPU."""
        for size in SLICE_SIZES:
            if memory <= size:
                return size
        return XPU_MEMORY

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        r = self.resources
        count = self.quantity(container, r.count)
        if not count:
            return None
        memory = self.quantity(container, r.memory)
        if memory is None:  # no memory asked: a whole XPU
            return ContainerRequest(nums=count, memreq=XPU_MEMORY, mem_percentage=100, coresreq=100,
                                    vendor=self.name)
        slice_mib = self.trim_memory(memory)  # even 0 asks the smallest slice, as in HAMi
        return ContainerRequest(nums=count, memreq=slice_mib, mem_percentage=NO_PERCENTAGE,
                                coresreq=slice_mib * 100 // XPU_MEMORY, vendor=self.name)

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        """HAMi's MutateAdmission: the memory limit rounded up to a slice, in limits and requests."""
        limits, _ = resources_of(container)
        r = self.resources
        if not _whole(container, r.count, limits.get(r.count, 0)):  # a count of 0 asks for nothing
            return False
        if r.memory and r.memory in limits:
            slice_mib = str(self.trim_memory(_whole(container, r.memory, limits[r.memory])))
            limits[r.memory] = slice_mib
            resources = container["resources"]
            if resources.get("requests") is None:
                resources["requests"] = {}
            resources["requests"][r.memory] = slice_mib
        return True

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        """HAMi's FitVXPU: the slice fits the free memory, and a used XPU holds slices of this size."""
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        slice_of_used = np.where(used > 0, usedmem // np.maximum(used, 1), ask.memreq)
        codes = np.select(
            [ctx.mutex & (used > 0), ask.memreq + usedmem > state.totalmem[rows], slice_of_used != ask.memreq],
            [R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT], R.CODE_OF[R.CARD_INSUFFICIENT_MEMORY],
             R.CODE_OF[R.CARD_NOT_FOUND_CUSTOM_FILTER_RULE]],
            0,
        )
        return codes.astype(np.int64), need


def vendors(raw: Any) -> list[Vendor]:
    """Whole XPUs and vXPUs from device-config's `kunlun` section (HAMi's chart names when absent)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HamiError("config: 'kunlun' must be a mapping")

    def name(key: str, default: str) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            raise HamiError(f"config: kunlun.{key} must be a non-empty string")
        return value

    return [
        KunlunXPU.of(name("resourceCountName", "kunlunxin.com/xpu")),
        KunlunVXPU.of(name("resourceVCountName", "kunlunxin.com/vxpu"),
                      name("resourceVMemoryName", "kunlunxin.com/vxpu-memory")),
    ]
