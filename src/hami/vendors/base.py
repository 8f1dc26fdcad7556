"""The vendor interface: what the engine, the webhook, the extender and `hami schedule` ask of a vendor.

HAMi gives every vendor its own copy of one fit loop. Here the loop lives once, in the engine;
a vendor is a `Vendor` whose defaults are HAMi's generic behaviour, and which overrides only
what it does differently:

- resource names and units, and the ask a container makes (`ask`);
- the webhook's changes to a container (`admit`);
- the devices a node offers (`node_devices`: a JSON or CSV annotation, or node capacity);
- per-device checks (`static_codes`, `usage_codes`), the device choice (`choose`, for vendors
  with a topology), a node score (`score_node`), and what a placed device uses (`usage`);
- the annotations written for a decision (`decision_annotations`) and the node lock it needs.

Vendors whose whole contract is data are instances of `Vendor` built from a table row
(hami.vendors.table); the others subclass it in a module of their own.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from hami.annotations.errors import AnnotationError
from hami.annotations.handshake import decode_handshake, encode_requesting
from hami.annotations.node_register import decode_node_devices
from hami.annotations.pod_devices import encode_pod_devices
from hami.annotations.selectors import DeviceSelectors, split_list
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice, PodAllocation
from hami.model.devices import DeviceInfo
from hami.model.requests import NO_PERCENTAGE, ContainerRequest
from hami.quantity import QuantityError, parse_quantity, parse_whole
from hami.scheduler import reasons as R

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]
Rows = slice | IntArray

# How long a node agent has to answer the scheduler's handshake request (HAMi: 60 s).
HANDSHAKE_TIMEOUT = timedelta(seconds=60)

# HAMi counts memory and cores in int32; a larger ask is a mistake (a byte count, say), not a request.
INT32_MAX = 2**31 - 1


class NodeSource(enum.Enum):
    """Where a vendor's devices come from on the Node object."""

    JSON = "json"  # a JSON list of DeviceInfo in an annotation
    CSV = "csv"  # HAMi's colon-separated legacy form in an annotation
    CAPACITY = "capacity"  # synthesised from node.status.capacity
    VENDOR_JSON = "vendor-json"  # the vendor's own JSON in an annotation


class LockKind(enum.Enum):
    SHARED = "shared"  # hami.io/mutex.lock, "<RFC3339>,<namespace>,<name>"
    OWN = "own"  # a vendor's own node annotation (Cambricon: an RFC3339 time)
    NONE = "none"


@dataclass(frozen=True)
class Resources:
    """Resource names a container asks with; `memory_factor` turns the memory unit into MiB."""

    count: str
    memory: str | None = None
    percentage: str | None = None
    cores: str | None = None
    priority: str | None = None
    memory_factor: int = 1
    # Names the scheduler manages beyond these (kube-scheduler ignores them: managedResources).
    extra: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        found = (self.count, self.memory, self.percentage, self.cores, *self.extra)
        return tuple(n for n in found if n)


@dataclass(frozen=True)
class AnnotationKeys:
    """A vendor's pod and node annotation names (None: the vendor has no such annotation)."""

    register: str | None = None
    handshake: str | None = None
    to_allocate: str | None = None
    allocated: str | None = None
    use_type: str | None = None
    nouse_type: str | None = None
    # (use, nouse) pairs; a device must pass every pair (Kunlun honours two spellings).
    uuid_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def selector_keys(self) -> tuple[str, ...]:
        keys = [k for k in (self.use_type, self.nouse_type) if k]
        for use, nouse in self.uuid_pairs:
            keys += [use, nouse]
        return tuple(keys)


@dataclass(frozen=True)
class Repeats:
    """Devices that one container may take more than once (NVIDIA MIG GPUs: one instance each
    time), as HAMi's walk tries such a device again after taking it."""

    mask: BoolArray  # per device: may be taken several times
    copies: IntArray  # per device: how many times it can still be taken (1 where not `mask`)
    reason: str  # why a repeating device took no more (HAMi counts it once per such device)


@dataclass(frozen=True)
class Need:
    """What one container's ask takes on each candidate device: task slots, MiB and cores."""

    slots: IntArray
    mem: IntArray
    cores: IntArray
    # Set where some devices may be taken more than once for the ask (None: each once).
    repeats: Repeats | None = None


@dataclass(frozen=True)
class Walk:
    """A node's devices of one vendor as the per-node walk sees them (node-relative rows)."""

    rows: range  # the vendor's rows on the node, absolute
    order: list[int]  # positions into `rows`, in the order HAMi tries them
    codes: IntArray  # per position: the first failing check (0 = fits)
    need: Need  # per position
    # The devices of the vendor that this pod's earlier containers took on the node.
    earlier: tuple[ContainerDevice, ...] = ()


@dataclass
class Vendor:
    """HAMi's generic device behaviour. Subclasses override what their vendor does differently."""

    name: str  # HAMi's CommonWord: the vendor key everywhere
    resources: Resources
    keys: AnnotationKeys
    source: NodeSource = NodeSource.JSON
    lock: LockKind = LockKind.SHARED
    lock_key: str | None = None  # for LockKind.OWN
    default_cores: int = 0  # cores asked when the container names none
    # Whether the count is read from limits only (AMD) or limits, then requests (most).
    limits_only: bool = False
    # Feasibility is more than "enough devices pass": the engine walks every candidate node.
    exact: bool = False
    # A container's checks read the devices the pod's earlier containers took (`earlier`), so a pod
    # whose containers ask this vendor more than once is walked node by node (Moore Threads, MetaX).
    sees_earlier: bool = False
    # HAMi's marker for a node score that the node policy may invert (MetaX sGPU).
    policy_neutral_score: bool = False
    # The registered type must contain this (case-insensitive) for the device to be the vendor's
    # (HAMi's substring rule; we use it only to sort JSON registrations of shared keys).
    type_word: str = ""
    # Pod annotations that `static_codes` reads (so cached checks are keyed by them).
    static_keys: tuple[str, ...] = ()
    # The reason an unhealthy device counts under (MetaX sGPU says CardUnhealthy).
    health_reason: str = R.CARD_NOT_HEALTH
    # Pod annotations that `marks` reads: what a placed pod leaves on its devices for later pods.
    usage_keys: tuple[str, ...] = ()

    # ---- requests ---------------------------------------------------------------------

    def quantity(self, container: Mapping[str, Any], name: str | None, limits_only: bool = False) -> int | None:
        """A whole, non-negative quantity from limits (then requests); None when absent."""
        if not name:
            return None
        limits, requests = resources_of(container)
        if name in limits:
            raw = limits[name]
        elif not limits_only and name in requests:
            raw = requests[name]
        else:
            return None
        try:
            value = parse_whole(raw)
        except QuantityError as exc:
            raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None
        if value > INT32_MAX:
            raise HamiError(f"container {container.get('name')!r}: {name} is {value}, larger than HAMi's limit "
                            f"{INT32_MAX}")
        return value

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        """HAMi's GenerateResourceRequests: the container's ask of this vendor (None: asks none)."""
        r = self.resources
        count = self.quantity(container, r.count, self.limits_only)
        if not count:
            return None
        memory = self.quantity(container, r.memory, self.limits_only) or 0
        percentage = self.quantity(container, r.percentage, self.limits_only)
        cores = self.quantity(container, r.cores, self.limits_only)
        memreq = memory * r.memory_factor
        if memreq > INT32_MAX:
            raise HamiError(f"container {container.get('name')!r}: {r.memory} is {memory} × {r.memory_factor} MiB, "
                            f"larger than HAMi's limit")
        if percentage is not None and percentage > 100:
            raise HamiError(f"container {container.get('name')!r}: {r.percentage} is {percentage}, over 100")
        # HAMi: without memory, the percentage asked, else the whole device.
        mem_percentage = NO_PERCENTAGE if memreq else (100 if percentage is None else percentage)
        return ContainerRequest(
            nums=count,
            memreq=memreq,
            mem_percentage=mem_percentage,
            coresreq=self.default_cores if cores is None else cores,
            vendor=self.name,
        )

    def managed_resources(self) -> tuple[str, ...]:
        return self.resources.names

    def quota_resources(self) -> tuple[tuple[str, str, int], ...]:
        """(resource, "memory" or "cores", memory factor) that a namespace's ResourceQuota may cap
        (`limits.<resource>`), as HAMi's GetResourceNames names them."""
        r = self.resources
        found = []
        if r.memory:
            found.append((r.memory, "memory", r.memory_factor))
        if r.cores:
            found.append((r.cores, "cores", 1))
        return tuple(found)

    # ---- webhook ----------------------------------------------------------------------

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        """HAMi's MutateAdmission: change the container in place; True when it asks this vendor.

        Raises HamiError to deny the pod. The generic rule: a count above 0 in limits (HAMi takes
        any count, even 0; a count of 0 asks for no device here).
        """
        return bool(self.quantity(container, self.resources.count, limits_only=True))

    # ---- nodes ------------------------------------------------------------------------

    def node_inputs(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        """Everything of the Node object this vendor's devices depend on (to skip no-op updates)."""
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        if self.source is NodeSource.CAPACITY:
            capacity = (node.get("status") or {}).get("capacity") or {}
            return tuple(str(capacity.get(n, "")) for n in self.resources.names)
        return (annotations.get(self.keys.register or ""),)

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        """The devices this vendor registered on the node ([] for none). Raises AnnotationError."""
        if self.keys.register is None:
            return []
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        value = annotations.get(self.keys.register)
        if value is None:
            return []
        devices = decode_node_devices(str(value))
        return [self.registered(d) for d in devices]

    def node_health(self, node: Mapping[str, Any], now: datetime) -> bool:
        """HAMi's CheckHealth: a vendor whose node agent stopped answering the handshake is unhealthy.

        The scheduler writes `Requesting_<time>`; the agent answers `Reported …`. A request left
        unanswered for 60 s, on a node that no longer advertises the vendor's count resource,
        means the agent is gone: its devices are not offered until it reports again.
        """
        if self.keys.handshake is None:
            return True
        value = str(((node.get("metadata") or {}).get("annotations") or {}).get(self.keys.handshake) or "")
        if "Requesting" not in value:
            return True
        try:
            asked = decode_handshake(value).at
        except AnnotationError:
            return True  # as HAMi: a time it cannot read is not held against the node
        if asked is None or now < asked + HANDSHAKE_TIMEOUT:
            return True
        allocatable = ((node.get("status") or {}).get("allocatable") or {}).get(self.resources.count)
        try:
            return allocatable is not None and parse_whole(allocatable) > 0
        except QuantityError:
            return False

    def handshake_request(self, node: Mapping[str, Any], now: datetime) -> str | None:
        """The handshake value the scheduler writes to ask the node agent to report again (None:
        nothing to write). Only on nodes that register this vendor (HAMi writes it on every node)."""
        if self.keys.handshake is None or self.keys.register is None:
            return None
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        if self.keys.register not in annotations:
            return None
        if "Requesting" in str(annotations.get(self.keys.handshake) or ""):
            return None
        return encode_requesting(now)

    def registered(self, device: DeviceInfo) -> DeviceInfo:
        """A decoded registration entry, marked as this vendor's."""
        return DeviceInfo(**{**device.__dict__, "vendor": self.name})

    # ---- fit --------------------------------------------------------------------------

    def selectors(self, annotations: Mapping[str, str]) -> DeviceSelectors:
        k = self.keys
        use_uuids: tuple[str, ...] = ()
        nouse_uuids: tuple[str, ...] = ()
        for use, nouse in k.uuid_pairs:
            use_uuids += split_list(annotations.get(use))
            nouse_uuids += split_list(annotations.get(nouse))
        return DeviceSelectors(
            use_types=split_list(annotations.get(k.use_type), upper=True) if k.use_type else (),
            nouse_types=split_list(annotations.get(k.nouse_type), upper=True) if k.nouse_type else (),
            use_uuids=use_uuids,
            nouse_uuids=nouse_uuids,
        )

    def static_codes(self, state: ClusterState, rows: IntArray, annotations: Mapping[str, str]) -> IntArray | None:
        """Checks beyond health, cordon, type and UUID that do not depend on usage (None: none)."""
        return None

    def need(self, ask: ContainerRequest, state: ClusterState, rows: Rows, used: IntArray, usedmem: IntArray,
             usedcores: IntArray) -> Need:
        """What the ask takes on each of `rows` (usage arrays are aligned with `rows`)."""
        totalmem = state.totalmem[rows]
        if ask.memreq > 0:
            mem = np.full(totalmem.shape, ask.memreq, dtype=np.int64)
        elif ask.mem_percentage != NO_PERCENTAGE:
            mem = (totalmem * ask.mem_percentage) // 100
        else:
            mem = np.zeros(totalmem.shape, dtype=np.int64)
        ones = np.ones(totalmem.shape, dtype=np.int64)
        return Need(slots=ones, mem=mem, cores=np.full(totalmem.shape, min(ask.coresreq, 100), dtype=np.int64))

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        """Per device of `rows`, the first failing usage check (0 = fits), and what the ask needs.

        `earlier`: rows this pod's earlier containers took of this vendor on the node.
        """
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        return generic_usage_codes(state, rows, used, usedmem, usedcores, need, ctx.mutex), need

    def choose(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, walk: Walk,
               fitting: list[int]) -> tuple[list[int], str]:
        """Among the fitting positions (in walk order), the devices to give; ([], reason) when none.
        A position may appear more than once where `walk.need.repeats` allows it.

        Only called when `chooses` says so (the generic loop takes the first that fit).
        """
        return fitting[: ask.nums], ""

    # Vendors whose choice looks at every fitting device (a topology) set this.
    topology: bool = False

    def chooses(self, ask: ContainerRequest, ctx: PodContext, need: Need) -> bool:
        """Whether `choose` picks this ask's devices among every device that fits."""
        return self.topology

    def placed(self, ask: ContainerRequest, state: ClusterState, walk: Walk,
               picked: Sequence[int]) -> tuple[ContainerDevice, ...]:
        """The devices given for the picked positions of a walk (HAMi's AddResourceUsage may
        rewrite what a device records: MIG writes the profile's memory and cores)."""
        need = walk.need
        return tuple(
            ContainerDevice(state.uuids[walk.rows[j]], self.wire_type(state.devices[walk.rows[j]]),
                            int(need.mem[j]), int(need.cores[j]))
            for j in picked
        )

    def score_node(self, ctx: PodContext, state: ClusterState, node: int,
                   allocation: Sequence[Sequence[ContainerDevice]]) -> float:
        """HAMi's ScoreNode for this vendor's part of the pod on the node (added to the node score)."""
        return 0.0

    # Vendors with a ScoreNode set this, so the engine computes allocations for every candidate.
    scores_nodes: bool = False

    def node_fits(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState,
                  codes: IntArray) -> tuple[BoolArray, str] | None:
        """For an `exact` vendor: per node of the state, whether the devices that pass every check
        (`codes == 0`, over `state.vendor_rows(self.name)`) hold a choice for `ask` on the node
        as it is, and the reason when not. None: the engine walks each candidate node instead."""
        return None

    def node_scores(self, ctx: PodContext, state: ClusterState, nodes: IntArray) -> FloatArray | None:
        """`score_node` of many nodes at once, for a pod whose asks each see the node as it is
        (no two of its containers compete for devices). None: the engine places the pod on each
        node and calls `score_node`."""
        return None

    def scores(self, ctx: PodContext) -> bool:
        """Whether `score_node` counts for this pod (the engine then places it on every candidate)."""
        return self.scores_nodes

    def usage(self, device: DeviceInfo, placed: ContainerDevice) -> tuple[int, int, int]:
        """HAMi's AddResourceUsage: task slots, MiB and cores a placed device takes."""
        return 1, placed.usedmem, placed.usedcores

    def marks(self, annotations: Mapping[str, str], placed: ContainerDevice) -> tuple[str, ...]:
        """Labels a pod leaves on a device it holds (MetaX sGPU: its app class and QoS), counted per
        device in the state (`ClusterState.marks`) so that checks can see who runs on a device."""
        return ()

    def wire_type(self, device: DeviceInfo) -> str:
        """The type written for a device in the pod's allocation annotation."""
        return self.name

    # ---- decision ---------------------------------------------------------------------

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        """HAMi's PatchAnnotations: the annotations for this vendor's part of a decision."""
        encoded = encode_pod_devices(pod.allocation)
        result = {}
        if self.keys.to_allocate:
            result[self.keys.to_allocate] = encoded
        if self.keys.allocated:
            result[self.keys.allocated] = encoded
        return result

    def decision_keys(self) -> tuple[str, ...]:
        """Every pod annotation a decision of this vendor may write (cleared when a bind fails)."""
        return tuple(k for k in (self.keys.to_allocate, self.keys.allocated) if k)

    def held(self, annotations: Mapping[str, str], allocation: PodAllocation) -> PodAllocation:
        """The vendor's part of a pod's decision as decoded from its allocation annotation,
        completed from the vendor's other annotations (NVIDIA: the MIG reservations)."""
        return allocation


@dataclass(frozen=True)
class PodDecisionInput:
    """A decision as a vendor writes it: the node's devices and the vendor's part of the allocation.

    `allocation` has one entry per container (init containers first), holding only this
    vendor's devices; `devices` maps each device UUID of the node to its registration.
    """

    node: str
    allocation: PodAllocation
    devices: Mapping[str, DeviceInfo]
    annotations: Mapping[str, str]
    container_names: tuple[str, ...]
    now_ns: int
    # The pod's requests per container (same order), for vendors whose annotations depend on
    # the kind of ask (AWS Neuron: whole devices or cores).
    requests: tuple[ContainerRequest, ...] = ()

    def device(self, uuid: str) -> DeviceInfo:
        return self.devices[uuid]


def resources_of(container: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(limits, requests) of a container; raises HamiError when they are not mappings."""
    resources = container.get("resources") or {}
    if not isinstance(resources, dict):
        raise HamiError(f"container {container.get('name')!r}: 'resources' is not a mapping")
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if not isinstance(limits, dict) or not isinstance(requests, dict):
        raise HamiError(f"container {container.get('name')!r}: limits and requests must be mappings")
    return limits, requests


def generic_usage_codes(state: ClusterState, rows: Rows, used: IntArray, usedmem: IntArray, usedcores: IntArray,
                        need: Need, mutex: bool = False, totalcore: IntArray | None = None) -> IntArray:
    """HAMi's generic fit checks on usage, in its order (0 = fits).

    `totalcore` replaces the registered cores where a vendor counts them differently for some
    pods (Ascend's hami-core mode counts percent of the device, whatever it registered).
    """
    count, totalmem = state.count[rows], state.totalmem[rows]
    if totalcore is None:
        totalcore = state.totalcore[rows]
    cores = need.cores
    conditions = [
        used >= count,
        totalmem - usedmem < need.mem,
        totalcore - usedcores < cores,
        (totalcore == 100) & (cores == 100) & (used > 0),
        (totalcore != 0) & (usedcores == totalcore) & (cores == 0),
    ]
    choices = [R.CODE_OF[name] for name in R.DEVICE_CHECKS[4:]]
    if mutex:  # HAMi's `mutex` GPU policy: only devices nobody uses
        conditions.insert(1, used > 0)
        choices.insert(1, R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT])
    return np.select(conditions, choices, 0).astype(np.int64)


def per_row(state: ClusterState, vendor: str, what: str, compute: Callable[[IntArray], IntArray]) -> IntArray:
    """A fact of each of the vendor's devices that only its registration decides (`compute` gets
    the vendor's rows), computed once per state."""
    key = (vendor, what)
    cached = state.static_cache.get(key)
    if cached is None:
        rows = np.arange(len(state.uuids), dtype=np.int64)[state.vendor_rows(vendor)]
        cached = compute(rows)
        cached.flags.writeable = False
        state.static_cache[key] = cached
    return cached


def writable_annotations(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The annotations of a pod that the webhook is changing (a dict), created when absent."""
    if not isinstance(pod, dict):
        raise TypeError("the webhook changes a pod held in a dict")
    metadata: dict[str, Any] = pod.setdefault("metadata", {})
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        return annotations
    fresh: dict[str, Any] = {}
    metadata["annotations"] = fresh
    return fresh


def row_ids(state: ClusterState, rows: Rows) -> IntArray:
    """The absolute row numbers that `rows` (a slice or an index array) selects."""
    if isinstance(rows, slice):
        if rows.step is None and rows.start is not None and rows.stop is not None:
            return np.arange(rows.start, rows.stop, dtype=np.int64)  # one node's rows
        return np.arange(len(state.uuids), dtype=np.int64)[rows]
    return rows


def device_table(state: ClusterState, key: str, value_of: Callable[[DeviceInfo], Any]) -> tuple[IntArray, list[Any]]:
    """A per-row fact of the registered devices as (codes, values): row r has `values[codes[r]]`, or
    code -1 where `value_of` gives None. Computed once per state (devices do not change in a state)."""
    cache_key = ("device_table", key)
    cached = state.static_cache.get(cache_key)
    if cached is not None:
        return cached  # type: ignore[return-value]
    values: list[Any] = []
    index: dict[Any, int] = {}
    codes = np.full(len(state.devices), -1, dtype=np.int64)
    for row, device in enumerate(state.devices):
        value = value_of(device)
        if value is None:
            continue
        code = index.get(value)
        if code is None:
            code = index[value] = len(values)
            values.append(value)
        codes[row] = code
    codes.flags.writeable = False
    state.static_cache[cache_key] = (codes, values)  # type: ignore[assignment]
    return codes, values


def capacity_int(capacity: Mapping[str, Any], name: str | None) -> int:
    """A whole node-capacity value; 0 when absent or not a whole number (HAMi: no devices)."""
    if not name or name not in capacity:
        return 0
    try:
        return parse_whole(capacity[name])
    except QuantityError:
        return 0


def rounded_up(container: Mapping[str, Any], name: str, raw: Any) -> int:
    """A count as Go's Quantity.Value() reads it: rounded up to a whole number."""
    try:
        value = parse_quantity(raw)
    except QuantityError as exc:
        raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None
    whole = int(value)
    return whole + 1 if value > whole else whole


def same_device_rule(codes: IntArray, state: ClusterState, rows: Rows, earlier: Sequence[int]) -> IntArray:
    """HAMi's customFilterRule (Moore Threads, MetaX GPU): once a pod holds a device of the vendor,
    its later containers may only use that same device."""
    if not earlier:
        return codes
    ids = row_ids(state, rows)
    same = np.ones(len(ids), dtype=bool)
    for row in set(earlier):
        same &= ids == row
    rule = R.CODE_OF[R.CARD_NOT_FOUND_CUSTOM_FILTER_RULE]
    return np.where((codes == 0) & ~same, rule, codes).astype(np.int64)


def config_section(raw: Any, what: str) -> dict[str, Any]:
    """A vendor's device-config section ({} when absent: HAMi's chart defaults apply)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HamiError(f"config: '{what}' must be a mapping")
    return raw


def config_name(section: Mapping[str, Any], key: str, default: str, what: str) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value:
        raise HamiError(f"config: {what}.{key} must be a non-empty string")
    return value


def config_bool(section: Mapping[str, Any], key: str, default: bool, what: str) -> bool:
    """A yes/no setting; the chart may render it as a string ("false")."""
    value = section.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise HamiError(f"config: {what}.{key} must be true or false, got {value!r}")


def custom_int(device: DeviceInfo, key: str, default: int = 0) -> int:
    value = device.custom.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def json_annotation(annotations: Mapping[str, Any], key: str) -> Any:
    """A JSON annotation value; raises AnnotationError naming the key."""
    value = annotations.get(key)
    if value is None:
        return None
    try:
        return json.loads(str(value))
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{key}: invalid JSON: {exc.msg} at position {exc.pos}") from None
