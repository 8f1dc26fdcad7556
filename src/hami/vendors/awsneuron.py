"""AWS Neuron (Inferentia, Trainium): whole devices or NeuronCores, HAMi's device-config `awsneuron`.

A node's devices come from its capacity: `aws.amazon.com/neuron` devices and
`aws.amazon.com/neuroncore` cores in all. A container asks either whole devices
(`aws.amazon.com/neuron: n`) or cores (`aws.amazon.com/neuroncore: c`): one or two cores fit
on one device, more must be a multiple of two and take that many devices, two cores each.
Several devices must be neighbours: on Inferentia (`inf*` instance types) any run of
consecutive devices, on Trainium a run of 1, 4, 8 or 16 aligned on its size.

Each device's cores are a bit mask (`devcore` = all its cores, e.g. 0b11); a placed device
records the cores it takes as a mask in `usedcores`. Masks given on one device never overlap,
so the usage the scheduler sums per device is their union.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.annotations.pod_devices import encode_pod_devices
from hami.errors import HamiError
from hami.model.devices import DeviceInfo
from hami.model.requests import ContainerRequest
from hami.quantity import QuantityError, parse_quantity, parse_whole
from hami.scheduler import reasons as R
from hami.vendors.base import (
    INT32_MAX,
    AnnotationKeys,
    BoolArray,
    IntArray,
    LockKind,
    Need,
    NodeSource,
    PodDecisionInput,
    Resources,
    Rows,
    Vendor,
    Walk,
    per_row,
    resources_of,
)

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

AWS_NEURON = "AWSNeuron"
NODE_TYPE = "AWSNodeType"  # custominfo: the node's instance type
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
# Cores of one device a core ask may use (HAMi's maxCoresPerNeuronDevice: only two are addressable).
CORES_PER_DEVICE = 2
WHOLE_DEVICES = "neuron"  # ContainerRequest.variant: whole devices
CORES = "neuroncore"  # ContainerRequest.variant: cores
TRAINIUM_RUNS = (1, 4, 8, 16)
# Pod annotations AWS's device plugin reads.
ASSIGNED_IDS = "AWS_NEURON_IDS"
RESOURCE_TYPE = "NEURON_RESOURCE_TYPE"
ALLOC_TIME = "NEURON_ALLOC_TIME"
ALLOCATED = "NEURON_ALLOCATED"
PREDICATE_NODE = "aws.amazon.com/predicate-node"


def _validated(container: Mapping[str, Any], name: str, raw: Any, most: int) -> int:
    """HAMi's validateResourceRequest: a whole number up to `most`; 0 asks for nothing (HAMi
    denies it: see compatibility.md)."""
    try:
        value = parse_quantity(raw)
    except QuantityError as exc:
        raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None
    if value.denominator != 1:
        raise HamiError(f"{name} must be an integer")
    if value < 0:
        raise HamiError(f"{name} must be greater than 0")
    if value > most:
        raise HamiError(f"{name} must not exceed {most}")
    return int(value)


def _lowest_bits(free: IntArray, wanted: int) -> IntArray:
    """Per device, a mask of the `wanted` lowest set bits of `free` (fewer when it has fewer)."""
    mask = np.zeros_like(free)
    rest = free.copy()
    for _ in range(wanted):
        low = rest & -rest
        mask |= low
        rest ^= low
    return mask


@dataclass
class AWSNeuron(Vendor):
    @staticmethod
    def of(count: str, cores: str) -> AWSNeuron:
        return AWSNeuron(
            name=AWS_NEURON,
            resources=Resources(count=count, cores=cores),
            keys=AnnotationKeys(allocated="hami.io/aws-neuron-devices-allocated",
                                uuid_pairs=(("aws.amazon.com/use-neuron-uuid", "aws.amazon.com/nouse-neuron-uuid"),)),
            source=NodeSource.CAPACITY,
            lock=LockKind.NONE,
            exact=True,  # several devices must be neighbours
            topology=True,
        )

    # ---- requests ---------------------------------------------------------------------

    def quota_resources(self) -> tuple[tuple[str, str, int], ...]:
        # NeuronCores are whole cores kept as a bit mask per device, not a percentage: a quota
        # on them would count mask values. HAMi's scheduler does not check it either.
        return ()

    def _asked(self, container: Mapping[str, Any], name: str | None) -> Any:
        limits, requests = resources_of(container)
        if not name:
            return None
        return limits.get(name, requests.get(name))

    def split_cores(self, cores: int) -> tuple[int, int]:
        """HAMi's splitCoreRequest: (devices, cores per device) for a core ask."""
        if cores <= CORES_PER_DEVICE:
            return 1, cores
        if cores % CORES_PER_DEVICE:
            raise HamiError(f"{self.resources.cores} must be 1 or a multiple of {CORES_PER_DEVICE}, got {cores}")
        nums = cores // CORES_PER_DEVICE
        if nums > INT32_MAX:
            raise HamiError(f"{self.resources.cores} needs {nums} devices, which exceeds the maximum of {INT32_MAX}")
        return nums, CORES_PER_DEVICE

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        """Whole devices when a device count is asked (even beside cores), else cores."""
        r = self.resources
        raw = self._asked(container, r.count)
        nums = 0 if raw is None else _validated(container, r.count, raw, INT32_MAX)
        if nums:
            # Per device, all its cores (the mask is known per node: see need()).
            return ContainerRequest(nums=nums, memreq=0, mem_percentage=0, coresreq=CORES_PER_DEVICE,
                                    vendor=self.name, variant=WHOLE_DEVICES)
        raw = self._asked(container, r.cores)
        asked = 0 if raw is None else _validated(container, r.cores or "", raw, INT32_MAX * CORES_PER_DEVICE)
        if not asked:
            return None
        nums, cores = self.split_cores(asked)
        return ContainerRequest(nums=nums, memreq=0, mem_percentage=0, coresreq=cores, vendor=self.name,
                                variant=CORES)

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        """HAMi's MutateAdmission: validates the ask (limits or requests); changes nothing."""
        return self.ask(container) is not None

    # ---- nodes ------------------------------------------------------------------------

    def node_inputs(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        labels = (node.get("metadata") or {}).get("labels") or {}
        return (*super().node_inputs(node), labels.get(INSTANCE_TYPE_LABEL))

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        """Devices from capacity; each has this node's cores per device as task slots and as a mask
        (HAMi computes cores per device once, from the first node it sees, for every node)."""
        metadata = node.get("metadata") or {}
        capacity = (node.get("status") or {}).get("capacity") or {}
        try:
            devices = parse_whole(capacity.get(self.resources.count, 0))
            cores = parse_whole(capacity.get(self.resources.cores or "", 0))
        except QuantityError:
            return []
        if devices == 0:
            return []
        per_device = cores // devices
        node_type = str((metadata.get("labels") or {}).get(INSTANCE_TYPE_LABEL, ""))
        name = str(metadata.get("name"))
        return [
            DeviceInfo(id=f"{name}-{AWS_NEURON}-{i}", count=per_device, devmem=0, devcore=(1 << per_device) - 1,
                       type=AWS_NEURON, index=i, vendor=self.name, custom={NODE_TYPE: node_type})
            for i in range(devices)
        ]

    # ---- fit --------------------------------------------------------------------------

    def need(self, ask: ContainerRequest, state: ClusterState, rows: Rows, used: IntArray, usedmem: IntArray,
             usedcores: IntArray) -> Need:
        """The cores a device gives as a mask: all of them for whole devices and multi-device asks,
        else the lowest free ones."""
        total = state.totalcore[rows]
        if ask.variant == WHOLE_DEVICES or ask.nums > 1:
            cores = total.copy()
        else:
            cores = _lowest_bits(total & ~usedcores, ask.coresreq)
        zeros = np.zeros(len(used), dtype=np.int64)
        return Need(slots=np.ones(len(used), dtype=np.int64), mem=zeros, cores=cores)

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        if ask.nums > 1:  # part of a run of devices: a device nobody uses
            busy = R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT]
            return np.where(used > 0, busy, 0).astype(np.int64), need
        total = state.totalcore[rows]
        wanted = np.bitwise_count(total) if ask.variant == WHOLE_DEVICES else ask.coresreq
        free = np.bitwise_count(total).astype(np.int64) - np.bitwise_count(usedcores & total)
        codes = np.select(
            [used >= state.count[rows], ctx.mutex & (used > 0), free < wanted],
            [R.CODE_OF[R.CARD_TIME_SLICING_EXHAUSTED], R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT],
             R.CODE_OF[R.CARD_INSUFFICIENT_CORE]],
            0,
        )
        return codes.astype(np.int64), need

    def choose(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, walk: Walk,
               fitting: list[int]) -> tuple[list[int], str]:
        """One device: the first that fits. Several: HAMi's graphSelect, on device indices."""
        if ask.nums == 1:
            return fitting[:1], ""
        first = walk.rows.start
        position_of = {int(state.index[first + j]): j for j in fitting}
        lowest = min(walk.rows, key=lambda r: int(state.index[r]))
        run = neighbours(set(position_of), ask.nums, str(state.devices[lowest].custom.get(NODE_TYPE, "")),
                         int(state.index[walk.rows.start:walk.rows.stop].max()) + 1)
        if not run:
            return [], R.NUMA_NOT_FIT
        return [position_of[i] for i in run], ""

    def node_fits(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState,
                  codes: IntArray) -> tuple[BoolArray, str] | None:
        """neighbours() on every node at once, with each node's fitting devices as a bit mask."""
        n_nodes = len(state.nodes)
        if ask.nums == 1:
            return np.ones(n_nodes, dtype=bool), R.NUMA_NOT_FIT
        rows = state.vendor_rows(self.name)
        index, node_of = state.index[rows], state.dev_node[rows]
        if len(index) and int(index.max()) >= 62:
            return None  # beyond a mask: walk
        ok = codes == 0
        free = np.zeros(n_nodes, dtype=np.int64)
        np.bitwise_or.at(free, node_of[ok], np.left_shift(1, index[ok]))
        size = np.zeros(n_nodes, dtype=np.int64)
        np.maximum.at(size, node_of, index + 1)
        inferentia = np.zeros(n_nodes, dtype=bool)
        inf_rows = per_row(state, self.name, "inferentia", lambda r: np.asarray(
            [_inferentia(str(state.devices[i].custom.get(NODE_TYPE, ""))) for i in r], dtype=np.int64))
        inferentia[node_of[inf_rows == 1]] = True
        run = (1 << ask.nums) - 1
        fits = np.zeros(n_nodes, dtype=bool)
        for start in range(0, int(size.max(initial=0)) - ask.nums + 1):
            window = run << start
            present = ((free & window) == window) & (start + ask.nums <= size)
            aligned = ask.nums in TRAINIUM_RUNS and start % ask.nums == 0
            fits |= present & (inferentia | aligned)
        return fits, R.NUMA_NOT_FIT

    # ---- decision ---------------------------------------------------------------------

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        """HAMi's PatchAnnotations: the allocation, and for AWS's device plugin the device
        indices (whole devices) or core ids (`cores per device × index + core`) of every
        container, with when and where."""
        result = {self.keys.allocated or "": encode_pod_devices(pod.allocation)}
        ids: list[str] = []
        for position, container in enumerate(pod.allocation):
            if not container:
                continue
            variant = _variant(pod.requests, position, self.name)
            for placed in container:
                device = pod.device(placed.uuid)
                if variant == WHOLE_DEVICES:
                    ids.append(str(device.index))
                    continue
                per_device = device.devcore.bit_length()
                ids.extend(str(per_device * device.index + bit) for bit in range(per_device)
                           if placed.usedcores >> bit & 1)
                result[RESOURCE_TYPE] = self.resources.cores or ""
            if ids:
                result[ASSIGNED_IDS] = ",".join(ids)
                result[ALLOC_TIME] = str(pod.now_ns)
                result[ALLOCATED] = "false"
                result[PREDICATE_NODE] = pod.node
        return result

    def decision_keys(self) -> tuple[str, ...]:
        return (*super().decision_keys(), ASSIGNED_IDS, RESOURCE_TYPE, ALLOC_TIME, ALLOCATED, PREDICATE_NODE)


def _variant(requests: tuple[ContainerRequest, ...], position: int, vendor: str) -> str:
    if position < len(requests):
        for ask in requests[position].asks:
            if ask.vendor == vendor:
                return ask.variant
    return CORES


def _inferentia(node_type: str) -> bool:
    return "inf" in node_type or "Inf" in node_type


def neighbours(free: set[int], count: int, node_type: str, size: int) -> list[int]:
    """HAMi's graphSelect on free device indices: Inferentia takes the first run of `count`
    consecutive free devices; Trainium a run of 1, 4, 8 or 16 aligned on its size."""
    if _inferentia(node_type):
        step = 1
    elif count in TRAINIUM_RUNS:
        step = count
    else:
        return []
    for start in range(0, size - count + 1, step):
        run = list(range(start, start + count))
        if free.issuperset(run):
            return run
    return []


def vendors(raw: Any) -> list[Vendor]:
    """AWS Neuron from device-config's `awsneuron` section (HAMi's chart names when absent)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HamiError("config: 'awsneuron' must be a mapping")

    def name(key: str, default: str) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value:
            raise HamiError(f"config: awsneuron.{key} must be a non-empty string")
        return value

    return [AWSNeuron.of(name("resourceCountName", "aws.amazon.com/neuron"),
                         name("resourceCoreName", "aws.amazon.com/neuroncore"))]
