"""Moore Threads (HAMi's `Mthreads`): devices from node capacity, 16 cores and 512 MiB units per GPU.

Moore Threads' device plugin advertises `mthreads.com/sgpu-core` (16 per GPU) and
`mthreads.com/sgpu-memory` (512 MiB units, the node's total) as node capacity; HAMi makes
ceil(cores / 16) GPUs of them. Its webhook turns a request for several GPUs into whole GPUs
(16 cores and 96 units each) and only accepts a memory of 2, 4, 8, 16, 32, 64 or 96 units for
one GPU. Every device of a pod must be the one its earlier containers got. The decision writes
only the `-allocated` annotation (Moore Threads' own plugin reads `mthreads.com/gpu-index`),
and no node lock is taken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hami.errors import HamiError
from hami.model.devices import DeviceInfo
from hami.model.requests import ContainerRequest
from hami.quantity import QuantityError, parse_quantity
from hami.vendors.base import (
    AnnotationKeys,
    IntArray,
    LockKind,
    Need,
    NodeSource,
    PodDecisionInput,
    Resources,
    Rows,
    Vendor,
    capacity_int,
    config_name,
    config_section,
    generic_usage_codes,
    resources_of,
    rounded_up,
    same_device_rule,
    writable_annotations,
)

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

VENDOR = "Mthreads"
MEMORY_UNIT = 512  # MiB in one mthreads.com/sgpu-memory
CORES_PER_GPU = 16
MEMORY_PER_GPU = 96  # units: a whole GPU
VALID_MEMORY = (2, 4, 8, 16, 32, 64, 96)
GPU_INDEX = "mthreads.com/gpu-index"
PREDICATE_TIME = "mthreads.com/predicate-time"
PREDICATE_NODE = "mthreads.com/predicate-node"
REQUEST_GPU_NUM = "mthreads.com/request-gpu-num"


@dataclass
class Mthreads(Vendor):
    """HAMi's MthreadsDevices with the chart's resource names (device-config `mthreads:`)."""

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        r = self.resources
        count = self.quantity(container, r.count)
        if not count:
            return None
        memory = (self.quantity(container, r.memory) or 0) * MEMORY_UNIT
        cores = self.quantity(container, r.cores) or 0
        if memory > 2**31 - 1:
            raise HamiError(f"container {container.get('name')!r}: {r.memory} is larger than HAMi's limit")
        # HAMi divides the container's memory and cores evenly over its GPUs (rounding down).
        return ContainerRequest(nums=count, memreq=memory // count, mem_percentage=0 if memory else 100,
                                coresreq=cores // count, vendor=self.name)

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        r = self.resources
        limits, requests = resources_of(container)
        raw = limits.get(r.count, requests.get(r.count))
        if raw is None:
            return False
        count = rounded_up(container, r.count, raw)
        if count < 0:
            raise HamiError(f"{r.count} must be greater than 0")
        if count == 0:  # a count of 0 asks for nothing (HAMi denies it: compatibility.md)
            return False
        limits = container.setdefault("resources", {}).setdefault("limits", {})
        assert r.memory is not None and r.cores is not None
        if count > 1:
            limits[r.cores] = str(count * CORES_PER_GPU)
            limits[r.memory] = str(count * MEMORY_PER_GPU)
            writable_annotations(pod)[REQUEST_GPU_NUM] = str(count)
            return True
        if r.memory not in limits:  # one GPU and no memory: the whole GPU
            limits[r.cores] = str(count * CORES_PER_GPU)
            limits[r.memory] = str(count * MEMORY_PER_GPU)
            return True
        try:
            memory = parse_quantity(limits[r.memory])
        except QuantityError:
            memory = None
        if memory not in VALID_MEMORY:
            raise HamiError("sGPU memory request value is invalid, valid values are [2, 4, 8, 16, 32, 64, 96]")
        return True

    def managed_resources(self) -> tuple[str, ...]:
        # Only the count, as HAMi's chart lists it: the memory and core resources are real node
        # capacity (the vendor's plugin advertises them), which kube-scheduler must keep checking.
        return (self.resources.count,)

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        name = str((node.get("metadata") or {}).get("name"))
        capacity = (node.get("status") or {}).get("capacity") or {}
        cores = capacity_int(capacity, self.resources.cores)
        if not cores:
            return []
        memory = capacity_int(capacity, self.resources.memory)
        gpus = -(-cores // CORES_PER_GPU)
        devmem = memory * MEMORY_UNIT * CORES_PER_GPU // cores
        return [
            DeviceInfo(id=f"{name}-mthreads-{i}", count=100, devmem=devmem, devcore=CORES_PER_GPU, type=VENDOR,
                       index=i, vendor=VENDOR)
            for i in range(gpus)
        ]

    sees_earlier: bool = True

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        codes = generic_usage_codes(state, rows, used, usedmem, usedcores, need, ctx.mutex)
        return same_device_rule(codes, state, rows, earlier), need

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        encoded = super().decision_annotations(pod)  # only `-allocated`: HAMi writes no to-allocate key
        last = [c for c in pod.allocation if c][-1]
        encoded[GPU_INDEX] = ",".join(str(pod.device(d.uuid).index) for d in last)
        encoded[PREDICATE_TIME] = str(pod.now_ns)
        encoded[PREDICATE_NODE] = pod.node
        return encoded

    def decision_keys(self) -> tuple[str, ...]:
        return (*super().decision_keys(), GPU_INDEX, PREDICATE_TIME, PREDICATE_NODE)


def mthreads(raw: Any) -> list[Vendor]:
    section = config_section(raw, "mthreads")
    return [Mthreads(
        name=VENDOR,
        resources=Resources(
            count=config_name(section, "resourceCountName", "mthreads.com/vgpu", "mthreads"),
            memory=config_name(section, "resourceMemoryName", "mthreads.com/sgpu-memory", "mthreads"),
            cores=config_name(section, "resourceCoreName", "mthreads.com/sgpu-core", "mthreads"),
            memory_factor=MEMORY_UNIT,
        ),
        keys=AnnotationKeys(
            allocated="hami.io/mthreads-vgpu-devices-allocated",
            uuid_pairs=(("mthreads.ai/use-gpuuuid", "mthreads.ai/nouse-gpuuuid"),),
        ),
        source=NodeSource.CAPACITY,
        lock=LockKind.NONE,
    )]
