"""AMD (HAMi's `AMD`): GPUs registered by HAMi's amd-device-plugin, compute counted in CUs.

The plugin registers each GPU in `hami.io/node-amd-register` (JSON) with its compute units
(CUs) as `devcore` and its product name as the type. A container asks in `limits` only:
`amd.com/gpu` GPUs, `amd.com/gpumem` MiB each (none: the whole memory) and `amd.com/gpucores`
as a percentage of each GPU's CUs (1-100, default 100), which becomes a CU count on the chosen
GPU. The allocation annotation names each device by its product type, not "AMD". A node offers
its GPUs only while it advertises `amd.com/gpu` capacity (HAMi's health check).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.errors import HamiError
from hami.model.devices import DeviceInfo
from hami.model.requests import ContainerRequest
from hami.quantity import QuantityError, parse_quantity
from hami.scheduler import reasons as R
from hami.vendors.base import (
    AnnotationKeys,
    IntArray,
    Need,
    NodeSource,
    Resources,
    Rows,
    Vendor,
    capacity_int,
    config_name,
    config_section,
    resources_of,
)

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

VENDOR = "AMD"
REGISTER = "hami.io/node-amd-register"


@dataclass
class Amd(Vendor):
    """HAMi's AMDDevices with the chart's resource names (device-config `amd:`)."""

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        r = self.resources
        count = self.quantity(container, r.count, limits_only=True)
        if not count:
            return None
        memory = self.quantity(container, r.memory, limits_only=True) or 0
        percent = self.quantity(container, r.cores, limits_only=True)
        if percent is not None and not 1 <= percent <= 100:
            raise HamiError(f"{r.cores} must be an integer percentage between 1 and 100")
        return ContainerRequest(nums=count, memreq=memory, mem_percentage=0,
                                coresreq=100 if percent is None else percent, vendor=self.name)

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        r = self.resources
        limits, _ = resources_of(container)
        if r.count in limits and not self.quantity(container, r.count, limits_only=True):
            return False  # a count of 0 asks for nothing (compatibility.md)
        if r.count in limits and r.cores and r.cores in limits:
            try:
                percent = parse_quantity(limits[r.cores])
            except QuantityError:
                percent = None
            if percent is None or percent.denominator != 1 or not 1 <= percent <= 100:
                raise HamiError(f"{r.cores} must be an integer percentage between 1 and 100")
        return any(name in limits for name in r.names)

    def node_inputs(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        capacity = (node.get("status") or {}).get("capacity") or {}
        return (*super().node_inputs(node), str(capacity.get(self.resources.count, "")))

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        # HAMi counts the node's AMD GPUs healthy only while it advertises the count resource.
        if not capacity_int((node.get("status") or {}).get("capacity") or {}, self.resources.count):
            return []
        return super().node_devices(node)

    def need(self, ask: ContainerRequest, state: ClusterState, rows: Rows, used: IntArray, usedmem: IntArray,
             usedcores: IntArray) -> Need:
        totalmem, totalcore = state.totalmem[rows], state.totalcore[rows]
        mem = np.where((ask.memreq <= 0) & (totalmem > 0), totalmem, ask.memreq).astype(np.int64)
        if ask.coresreq > 0:
            # A percentage of the GPU's CUs, at least one CU and at most all of them.
            cores = np.minimum(np.maximum(totalcore * ask.coresreq // 100, 1), totalcore)
        else:
            cores = np.where((totalmem > 0) & (mem >= totalmem), totalcore, 0)
        return Need(slots=np.ones(len(mem), dtype=np.int64), mem=mem, cores=cores.astype(np.int64))

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        count, totalmem, totalcore = state.count[rows], state.totalmem[rows], state.totalcore[rows]
        codes = np.select(
            [
                used >= count,
                ctx.mutex & (used > 0),
                totalmem - usedmem < need.mem,
                ((ask.coresreq > 0) & (totalcore <= 0)) | (totalcore - usedcores < need.cores),
            ],
            [R.CODE_OF[R.CARD_TIME_SLICING_EXHAUSTED], R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT],
             R.CODE_OF[R.CARD_INSUFFICIENT_MEMORY], R.CODE_OF[R.CARD_INSUFFICIENT_CORE]],
            0,
        ).astype(np.int64)
        return codes, need

    def wire_type(self, device: DeviceInfo) -> str:
        return device.type  # the product type (`AMD_Instinct_MI300X`), as HAMi writes it


def amd(raw: Any) -> list[Vendor]:
    section = config_section(raw, "amd")
    return [Amd(
        name=VENDOR,
        resources=Resources(
            count=config_name(section, "resourceCountName", "amd.com/gpu", "amd"),
            memory=config_name(section, "resourceMemoryName", "amd.com/gpumem", "amd"),
            cores=config_name(section, "resourceCoreName", "amd.com/gpucores", "amd"),
        ),
        keys=AnnotationKeys(
            register=REGISTER,
            to_allocate="hami.io/amd-devices-to-allocate",
            allocated="hami.io/amd-devices-allocated",
            use_type="amd.com/use-gputype",
            nouse_type="amd.com/nouse-gputype",
            uuid_pairs=(("amd.com/use-gpu-uuid", "amd.com/nouse-gpu-uuid"),),
        ),
        source=NodeSource.JSON,
        limits_only=True,
    )]
