"""MetaX: whole GPUs (`Metax-GPU`) and shared sGPUs with QoS classes (`Metax-SGPU`).

`Metax-GPU` devices come from node capacity (`metax-tech.com/gpu`), one task each; the node
score reads MetaX's topology annotations (`metax-tech.com/gpu.topology.losses` under binpack,
`.scores` under spread), looked up by how many GPUs the pod takes.

`Metax-SGPU` devices come from MetaX's own node annotation `metax-tech.com/node-gpu-devices`.
A pod may carry an app class (`online` / `offline`: latency-critical work and the batch work
that yields to it) and a QoS policy (`best-effort`, `fixed-share`, `burst-share`; the webhook
writes `best-effort` when a non-online pod names none). A device runs one QoS at a time and
never mixes classed and unclassed pods. HAMi learns a device's QoS from the node annotation
and, until the node reports a change, from an in-process cache of what it last placed there.
Here the same fact comes from the state's pods: each pod leaves its class and QoS as marks
on the devices it holds (`Vendor.marks`), so the answer is the same after a restart and in
`hami schedule`. Whole-device (100-core) requests prefer devices linked by MetaLink
(`linkZone`), and the node score (policy-neutral, ×±10000) favours MetaLink pairs and, for
online pods, devices with few online pods.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.annotations.errors import AnnotationError
from hami.annotations.selectors import Policy
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.model.devices import DeviceInfo
from hami.model.requests import ContainerRequest
from hami.quantity import QuantityError, parse_whole
from hami.scheduler import reasons as R
from hami.vendors.base import (
    INT32_MAX,
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
    capacity_int,
    config_bool,
    config_name,
    config_section,
    custom_int,
    device_table,
    generic_usage_codes,
    json_annotation,
    resources_of,
    rounded_up,
    row_ids,
    same_device_rule,
    writable_annotations,
)

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

GPU = "Metax-GPU"
SGPU = "Metax-SGPU"
GPU_MEMORY = 65536  # HAMi's fixed memory of a whole MetaX GPU
TOPOLOGY_LOSSES = "metax-tech.com/gpu.topology.losses"
TOPOLOGY_SCORES = "metax-tech.com/gpu.topology.scores"
TOPOLOGY_BASE = 2000  # the node score is 2000 - loss (binpack) or 2000 - score (spread)

NODE_DEVICES = "metax-tech.com/node-gpu-devices"
ALLOCATED_DEVICES = "metax-tech.com/gpu-devices-allocated"
PREDICATE_TIME = "metax-tech.com/predicate-time"
QOS_POLICY = "metax-tech.com/sgpu-qos-policy"
TOPOLOGY_AWARE = "metax-tech.com/sgpu-topology-aware"
APP_CLASS = "metax-tech.com/sgpu-app-class"
ONLINE, OFFLINE = "online", "offline"
BEST_EFFORT, FIXED_SHARE, BURST_SHARE = "best-effort", "fixed-share", "burst-share"
QOS_POLICIES = (BEST_EFFORT, FIXED_SHARE, BURST_SHARE)
SGPU_MEMORY_UNIT = 1024  # a bare vmemory number is GiB
LINK_SCORE = 10  # per pair of devices in one MetaLink zone
QOS_MARK = "qos="  # a mark "qos=<policy>": the QoS a pod expects of its device ("" for a whole device)


# ---- Metax-GPU ------------------------------------------------------------------------------


@dataclass
class MetaxGpu(Vendor):
    """HAMi's MetaxDevices: whole GPUs from node capacity, node score from MetaX's topology."""

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        count = self.quantity(container, self.resources.count)
        if not count:
            return None
        return ContainerRequest(nums=count, memreq=0, mem_percentage=100, coresreq=100, vendor=self.name)

    def node_inputs(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        return (*super().node_inputs(node), annotations.get(TOPOLOGY_LOSSES), annotations.get(TOPOLOGY_SCORES))

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        metadata = node.get("metadata") or {}
        name = str(metadata.get("name"))
        count = capacity_int((node.get("status") or {}).get("capacity") or {}, self.resources.count)
        annotations = metadata.get("annotations") or {}
        # The node's topology tables ride on each device: the node score needs them.
        custom = {key: str(annotations[key]) for key in (TOPOLOGY_LOSSES, TOPOLOGY_SCORES) if key in annotations}
        return [
            DeviceInfo(id=f"{name}-metax-{i}", count=1, devmem=GPU_MEMORY, devcore=100, type=GPU, index=i,
                       vendor=GPU, custom=dict(custom))
            for i in range(count)
        ]

    sees_earlier: bool = True

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        codes = generic_usage_codes(state, rows, used, usedmem, usedcores, need, ctx.mutex)
        return same_device_rule(codes, state, rows, earlier), need

    scores_nodes: bool = True

    def node_scores(self, ctx: PodContext, state: ClusterState, nodes: IntArray) -> FloatArray | None:
        """`score_node` of many nodes at once: it depends only on the node's table and how many GPUs
        the pod takes, which is what it asks."""
        taken = sum(a.nums for c in ctx.pod.containers for a in c.asks if a.vendor == self.name)
        key = TOPOLOGY_LOSSES if ctx.node_policy is Policy.BINPACK else TOPOLOGY_SCORES
        codes, tables = device_table(state, key, lambda d: d.custom.get(key) if d.vendor == self.name else None)
        values = np.asarray([TOPOLOGY_BASE - topology_table(t).get(taken, 0) for t in tables] + [0], dtype=np.float32)
        rows = row_ids(state, state.vendor_rows(self.name))
        per_node = np.zeros(len(state.nodes), dtype=np.float32)
        per_node[state.dev_node[rows]] = values[codes[rows]]  # a node's devices carry the same table
        result: FloatArray = per_node[nodes]
        return result

    def score_node(self, ctx: PodContext, state: ClusterState, node: int,
                   allocation: Sequence[Sequence[ContainerDevice]]) -> float:
        taken = sum(len(c) for c in allocation)
        rows = state.vendor_rows_of_node(node, self.name)
        if not rows:
            return 0.0
        custom = state.devices[rows.start].custom
        key = TOPOLOGY_LOSSES if ctx.node_policy is Policy.BINPACK else TOPOLOGY_SCORES
        if key not in custom:
            return 0.0
        return float(TOPOLOGY_BASE - topology_table(custom[key]).get(taken, 0))


@functools.lru_cache(maxsize=256)
def topology_table(value: str) -> dict[int, int]:
    """MetaX's `{"<devices>": <loss or score>}`; {} when malformed (HAMi then counts 0)."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    table: dict[int, int] = {}
    for key, number in data.items():
        if isinstance(number, bool) or not isinstance(number, int):
            return {}
        try:
            table[int(key)] = number
        except ValueError:
            return {}
    return table


# ---- Metax-SGPU -----------------------------------------------------------------------------


@dataclass
class MetaxSgpu(Vendor):
    """HAMi's MetaxSDevices: shared sGPUs with app classes, QoS policies and MetaLink zones."""

    topology_aware: bool = False  # device-config `sgpuTopologyAware`: the default of the pod annotation

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        r = self.resources
        count = self.quantity(container, r.count, limits_only=True)
        if not count:
            return None
        cores = self.quantity(container, r.cores, limits_only=True)
        memory = self._memory_mib(container)
        return ContainerRequest(nums=count, memreq=memory, mem_percentage=0 if memory else 100,
                                coresreq=100 if cores is None else cores, vendor=self.name)

    def _memory_mib(self, container: Mapping[str, Any]) -> int:
        """vmemory in MiB: a bare number is GiB, a number with a unit is bytes (HAMi's rule)."""
        name = self.resources.memory
        limits, _ = resources_of(container)
        if not name or name not in limits:
            return 0
        raw = limits[name]
        try:
            value = parse_whole(raw)
        except QuantityError as exc:
            raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None
        has_unit = any(c.isalpha() for c in str(raw))
        mib = value // 2**20 if has_unit else value * SGPU_MEMORY_UNIT
        if mib > INT32_MAX:
            raise HamiError(f"container {container.get('name')!r}: {name} is {raw}, larger than HAMi's limit")
        return mib

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        limits, _ = resources_of(container)
        if not self.quantity(container, self.resources.count, limits_only=True):
            return False  # not asked, or a count of 0: nothing asked (compatibility.md)
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        app_class = annotations.get(APP_CLASS)
        if app_class is not None:
            if app_class not in (ONLINE, OFFLINE):
                raise HamiError(f"{APP_CLASS} must be set one of [{ONLINE}, {OFFLINE}]")
            if rounded_up(container, self.resources.count, limits[self.resources.count]) != 1:
                raise HamiError("app-class pod must request single device")
        if app_class != ONLINE:
            qos = annotations.get(QOS_POLICY)
            if qos is None:
                writable_annotations(pod)[QOS_POLICY] = BEST_EFFORT
            elif qos not in QOS_POLICIES:
                raise HamiError(f"{QOS_POLICY} must be set one of [{', '.join(QOS_POLICIES)}]")
        return True

    def node_inputs(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        return (annotations.get(NODE_DEVICES),)

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        return decode_sgpu_devices(json_annotation(annotations, NODE_DEVICES))

    health_reason: str = R.CARD_UNHEALTHY
    usage_keys: tuple[str, ...] = (APP_CLASS, QOS_POLICY)
    sees_earlier: bool = True  # the pod's own devices count as holding its class and QoS

    def marks(self, annotations: Mapping[str, str], placed: ContainerDevice) -> tuple[str, ...]:
        app_class = annotations.get(APP_CLASS)
        found = [app_class] if app_class in (ONLINE, OFFLINE) else []
        if app_class != ONLINE:  # online pods leave the device's QoS as it is
            found.append(QOS_MARK + ("" if placed.usedcores == 100 else annotations.get(QOS_POLICY, "")))
        return tuple(found)

    def need(self, ask: ContainerRequest, state: ClusterState, rows: Rows, used: IntArray, usedmem: IntArray,
             usedcores: IntArray) -> Need:
        base = super().need(ask, state, rows, used, usedmem, usedcores)
        # Cores are not clamped to 100 here (HAMi's sGPU loop does not), and online pods take none.
        cores = np.full(len(used), ask.coresreq, dtype=np.int64)
        return Need(slots=base.slots, mem=base.mem, cores=cores)

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        annotations = ctx.pod.annotations
        app_class = annotations.get(APP_CLASS)
        online = app_class == ONLINE
        classed = app_class in (ONLINE, OFFLINE)
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        ids = row_ids(state, rows)
        on, off, qos, known = _pod_marks(state, ids)
        mine = np.isin(ids, np.asarray(sorted(set(earlier)), dtype=np.int64)) if earlier else np.zeros(len(ids), bool)
        if classed:  # the pod's own earlier containers count as what the pod is
            on, off = on + (mine & online), off + (mine & (app_class == OFFLINE))
        busy = used > 0
        has_class = (on > 0) | (off > 0)
        class_ok = ~busy | ((has_class == classed) & ~((on > 0) & (app_class == OFFLINE)))
        if online:
            qos_ok = np.ones(len(ids), dtype=bool)
        else:
            wanted = annotations.get(QOS_POLICY, "")
            registered = _registered_qos(state, ids)
            device_qos = np.where(known, qos, registered)
            qos_ok = ~busy | (ask.coresreq == 100) | (device_qos == "") | (device_qos == wanted) | mine
        count, totalmem, totalcore = state.count[rows], state.totalmem[rows], state.totalcore[rows]
        cores = need.cores
        conditions = [
            ~class_ok,
            ~qos_ok,
            used >= count,
            ctx.mutex & busy,
            totalmem - usedmem < need.mem,
        ]
        choices = [R.CARD_APP_CLASS_MISMATCH, R.CARD_QOS_POLICY_MISMATCH, R.CARD_TIME_SLICING_EXHAUSTED,
                   R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT, R.CARD_INSUFFICIENT_MEMORY]
        if not online:
            conditions += [
                totalcore - usedcores < cores,
                (totalcore == 100) & (cores == 100) & busy,
                (totalcore != 0) & (usedcores == totalcore) & (cores == 0),
            ]
            choices += [R.CARD_INSUFFICIENT_CORE, R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT, R.CARD_COMPUTE_UNITS_EXHAUSTED]
        codes = np.select(conditions, [R.CODE_OF[c] for c in choices], 0).astype(np.int64)
        if online:
            need = Need(slots=need.slots, mem=need.mem, cores=np.zeros(len(ids), dtype=np.int64))
        return codes, need

    topology: bool = True

    def choose(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, walk: Walk,
               fitting: list[int]) -> tuple[list[int], str]:
        if len(fitting) <= ask.nums:
            return fitting[: ask.nums], ""
        app_class = ctx.pod.annotations.get(APP_CLASS)
        rows = [walk.rows.start + j for j in fitting]
        if app_class is not None:
            if app_class != ONLINE:
                return fitting[: ask.nums], ""
            on, off, _, _ = _pod_marks(state, np.asarray(rows, dtype=np.int64))
            order = sorted(range(len(fitting)), key=lambda k: _online_preference(int(on[k]), int(off[k])))
            return [fitting[k] for k in order[: ask.nums]], ""
        if ask.coresreq == 100:
            zones = [link_zone(state.devices[row]) for row in rows]
            return [fitting[k] for k in prefer_metalink(zones, ask.nums)], ""
        return fitting[: ask.nums], ""

    scores_nodes: bool = True
    policy_neutral_score: bool = True

    def node_scores(self, ctx: PodContext, state: ClusterState, nodes: IntArray) -> FloatArray | None:
        """0 for every node unless the pod is online (then the device it would get on each node
        decides) or takes a whole device with topology awareness (then the engine places the pod
        on each node)."""
        annotations = ctx.pod.annotations
        mine = [a for c in ctx.pod.containers for a in c.asks if a.vendor == self.name]
        if annotations.get(APP_CLASS) == ONLINE:
            return self._online_scores(mine[0], ctx, state, nodes) if len(mine) == 1 and mine[0].nums == 1 else None
        if any(a.coresreq == 100 for a in mine) and self._topology_aware(annotations):
            return None
        return np.zeros(len(nodes), dtype=np.float32)

    def _online_scores(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState,
                       nodes: IntArray) -> FloatArray:
        """An online pod's one device on each node is the fitting device it prefers (fewest online
        pods, devices with only offline pods last); its score is that device's."""
        rows = state.vendor_rows(self.name)
        ids = row_ids(state, rows)
        usage, _ = self.usage_codes(ask, ctx, state, rows, state.used[rows], state.usedmem[rows],
                                    state.usedcores[rows])
        fits = (usage == 0) & (ctx.static_codes(state)[ids] == 0)
        on, off, _, _ = _pod_marks(state, ids)
        only_offline = (on == 0) & (off > 0)
        first_key, second_key = np.where(only_offline, off, on), np.where(only_offline, 0, off)
        score = np.where(only_offline, -100 * off, -20 * on - 2 * off)
        node_of = state.dev_node[ids]
        order = np.lexsort((second_key, first_key, only_offline, ~fits, node_of))  # the last key sorts first
        ordered_nodes = node_of[order]
        best = order[np.concatenate([[True], ordered_nodes[1:] != ordered_nodes[:-1]])] if len(order) else order
        per_node = np.zeros(len(state.nodes), dtype=np.float32)
        per_node[node_of[best]] = np.where(fits[best], score[best], 0)
        result: FloatArray = per_node[nodes]
        return result

    def score_node(self, ctx: PodContext, state: ClusterState, node: int,
                   allocation: Sequence[Sequence[ContainerDevice]]) -> float:
        placed = [d for c in allocation for d in c]
        if not placed:
            return 0.0
        annotations = ctx.pod.annotations
        rows = state.vendor_rows_of_node(node, self.name)
        if annotations.get(APP_CLASS) == ONLINE:
            taken = {d.uuid for d in placed}
            mine = np.asarray([r for r in rows if state.uuids[r] in taken], dtype=np.int64)
            on, off, _, _ = _pod_marks(state, mine)
            return float(sum(_online_score(int(a), int(b)) for a, b in zip(on, off, strict=True)))
        exclusive = [d for d in placed if d.usedcores == 100]
        if not exclusive or not self._topology_aware(annotations):
            return 0.0
        zone_of = {state.uuids[r]: link_zone(state.devices[r]) for r in rows}
        taken = {d.uuid for d in exclusive}
        allocated = [zone_of.get(d.uuid, 0) for d in exclusive]
        available = [(state.uuids[r], zone_of[state.uuids[r]]) for r in rows if state.used[r] == 0]
        rest = [zone for uuid, zone in available if uuid not in taken]
        allocated_score = link_score(allocated)
        loss = link_score([zone for _, zone in available]) - allocated_score - link_score(rest)
        return float(10 * allocated_score - loss)

    def _topology_aware(self, annotations: Mapping[str, str]) -> bool:
        value = annotations.get(TOPOLOGY_AWARE)
        parsed = None if value is None else _go_bool(value)
        return self.topology_aware if parsed is None else parsed

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        result = super().decision_annotations(pod)
        per_container = [
            [{"uuid": d.uuid, **({"compute": d.usedcores} if d.usedcores else {}),
              **({"vRam": d.usedmem} if d.usedmem else {})} for d in container]
            for container in pod.allocation
        ]
        result[ALLOCATED_DEVICES] = json.dumps(per_container, separators=(",", ":"))
        result[PREDICATE_TIME] = str(pod.now_ns)
        return result

    def decision_keys(self) -> tuple[str, ...]:
        return (*super().decision_keys(), ALLOCATED_DEVICES, PREDICATE_TIME)


def _pod_marks(state: ClusterState, ids: IntArray) -> tuple[IntArray, IntArray, np.ndarray, BoolArray]:
    """Per row of `ids`: its online pods, its offline pods, the QoS its pods expect, and whether
    they say one (False: no pod says, or they disagree)."""
    none = np.zeros(len(ids), dtype=np.int64)
    on = state.marks[ONLINE][ids] if ONLINE in state.marks else none
    off = state.marks[OFFLINE][ids] if OFFLINE in state.marks else none
    qos = np.full(len(ids), "", dtype=object)
    said = np.zeros(len(ids), dtype=np.int64)  # how many different QoS the row's pods expect
    for mark, counts in state.marks.items():
        if mark.startswith(QOS_MARK):
            held = counts[ids] > 0
            qos[held] = mark[len(QOS_MARK):]
            said += held
    return on, off, qos, said == 1


def _registered_qos(state: ClusterState, ids: IntArray) -> np.ndarray:
    """The QoS each device last reported in the node annotation."""
    codes, values = device_table(state, "metax-qos", lambda d: str(d.custom.get("QosPolicy", "")))
    table = np.asarray(values + [""], dtype=object)
    return table[codes[ids]]  # code -1 (not a MetaX device) reads the "" at the end


def _online_preference(online: int, offline: int) -> tuple[int, int, int]:
    """Sort key for an online pod's devices: fewest online pods, devices with only offline pods last."""
    if online == 0 and offline > 0:
        return (1, offline, 0)
    return (0, online, offline)


def _online_score(online: int, offline: int) -> int:
    if offline > 0 and online == 0:
        return -100 * offline
    return -20 * online - 2 * offline


def link_zone(device: DeviceInfo) -> int:
    return custom_int(device, "LinkZone")


def link_score(zones: Sequence[int]) -> int:
    """10 for every pair of devices in one (non-zero) MetaLink zone."""
    counts: dict[int, int] = {}
    for zone in zones:
        if zone:
            counts[zone] = counts.get(zone, 0) + 1
    return LINK_SCORE * sum(n * (n - 1) // 2 for n in counts.values())


def prefer_metalink(zones: Sequence[int], wanted: int) -> list[int]:
    """HAMi's prioritizeExclusiveDevices: positions of `wanted` devices among candidates with these
    MetaLink zones — the smallest zone that holds them all, else zones smallest first, then the
    devices on no link. Equal-sized zones keep the candidates' order (HAMi's is random)."""
    groups: dict[int, list[int]] = {}
    others: list[int] = []
    for position, zone in enumerate(zones):
        (groups.setdefault(zone, []) if zone > 0 else others).append(position)
    linked = sorted(groups.values(), key=len)
    for group in linked:
        if len(group) >= wanted:
            return group[:wanted]
    picked = [p for group in linked for p in group] + others
    return picked[:wanted]


def _go_bool(value: str) -> bool | None:
    """Go's strconv.ParseBool; None for anything else."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


_SGPU_INTS = ("totalDevCount", "totalCompute", "totalVRam", "availableDevCount", "availableCompute",
              "availableVRam", "numa", "linkZone")
_SGPU_STRINGS = ("uuid", "bdf", "model", "qosPolicy")


def decode_sgpu_devices(data: Any) -> list[DeviceInfo]:
    """Devices from MetaX's node annotation (None: absent). Raises AnnotationError."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise AnnotationError(f"{NODE_DEVICES}: not a JSON list")
    devices = []
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise AnnotationError(f"{NODE_DEVICES}: device {position} is not an object")
        for key in _SGPU_INTS:
            value = item.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value <= INT32_MAX:
                raise AnnotationError(f"{NODE_DEVICES}: device {position}: '{key}' must be a 32-bit integer")
        for key in _SGPU_STRINGS:
            if not isinstance(item.get(key, ""), str):
                raise AnnotationError(f"{NODE_DEVICES}: device {position}: '{key}' must be a string")
        healthy = item.get("healthy", False)
        if not isinstance(healthy, bool):
            raise AnnotationError(f"{NODE_DEVICES}: device {position}: 'healthy' must be true or false")
        if not item.get("uuid"):
            raise AnnotationError(f"{NODE_DEVICES}: device {position} has no 'uuid'")
        devices.append(DeviceInfo(
            id=item.get("uuid", ""),
            index=position,
            count=item.get("totalDevCount", 0),
            devmem=item.get("totalVRam", 0),
            devcore=item.get("totalCompute", 0),
            type=SGPU,
            numa=item.get("numa", 0),
            health=healthy,
            vendor=SGPU,
            custom={"QosPolicy": item.get("qosPolicy", ""), "Model": item.get("model", ""),
                    "LinkZone": item.get("linkZone", 0)},
        ))
    return devices


def encode_sgpu_devices(devices: Sequence[DeviceInfo]) -> str:
    """MetaX's node annotation for these devices (what its device plugin writes; for tests and tools)."""
    return json.dumps([
        {"uuid": d.id, "model": d.custom.get("Model", ""), "totalDevCount": d.count, "totalCompute": d.devcore,
         "totalVRam": d.devmem, "numa": d.numa, "healthy": d.health, "qosPolicy": d.custom.get("QosPolicy", ""),
         "linkZone": d.custom.get("LinkZone", 0)}
        for d in devices
    ], separators=(",", ":"))


def metax(raw: Any) -> list[Vendor]:
    section = config_section(raw, "metax")
    gpu = MetaxGpu(
        name=GPU,
        resources=Resources(count=config_name(section, "resourceCountName", "metax-tech.com/gpu", "metax")),
        keys=AnnotationKeys(to_allocate="hami.io/metax-gpu-devices-to-allocate",
                            allocated="hami.io/metax-gpu-devices-allocated"),
        source=NodeSource.CAPACITY,
        lock=LockKind.NONE,
    )
    sgpu = MetaxSgpu(
        name=SGPU,
        resources=Resources(
            count=config_name(section, "resourceVCountName", "metax-tech.com/sgpu", "metax"),
            memory=config_name(section, "resourceVMemoryName", "metax-tech.com/vmemory", "metax"),
            cores=config_name(section, "resourceVCoreName", "metax-tech.com/vcore", "metax"),
            memory_factor=SGPU_MEMORY_UNIT,
        ),
        keys=AnnotationKeys(
            register=NODE_DEVICES,
            to_allocate="hami.io/metax-sgpu-devices-to-allocate",
            allocated="hami.io/metax-sgpu-devices-allocated",
            uuid_pairs=(("metax-tech.com/use-gpuuuid", "metax-tech.com/nouse-gpuuuid"),),
        ),
        source=NodeSource.VENDOR_JSON,
        limits_only=True,
        topology_aware=config_bool(section, "sgpuTopologyAware", False, "metax"),
    )
    return [gpu, sgpu]
