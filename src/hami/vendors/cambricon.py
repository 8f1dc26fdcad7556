"""Cambricon MLU (HAMi's `MLU`): devices from node capacity, memory in 256 MiB units, its own node lock.

Cambricon's device plugin advertises `cambricon.com/mlu.smlu.vcore` (100 per card) and
`cambricon.com/mlu.smlu.vmemory` (256 MiB units, the node's total) as node capacity; HAMi makes
ceil(vcore / 100) cards of them. A container that names no cores asks 100: a whole card,
exclusively. The decision adds `CAMBRICON_DSMLU_ASSIGNED` and `CAMBRICON_DSMLU_PROFILE` pod
annotations, which Cambricon's own dsmlu plugin reads, and binding takes the node annotation
`cambricon.com/dsmlu.lock` (an RFC 3339 time, stale after two minutes: hami.vendors.ownlock)
instead of HAMi's shared lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hami.model.devices import DeviceInfo
from hami.vendors.base import (
    AnnotationKeys,
    LockKind,
    NodeSource,
    PodDecisionInput,
    Resources,
    Vendor,
    capacity_int,
    config_name,
    config_section,
)

VENDOR = "MLU"
MEMORY_UNIT = 256  # MiB in one cambricon.com/mlu.smlu.vmemory
CORES_PER_CARD = 100
ASSIGNED = "CAMBRICON_DSMLU_ASSIGNED"
PROFILE = "CAMBRICON_DSMLU_PROFILE"
LOCK_KEY = "cambricon.com/dsmlu.lock"


@dataclass
class Cambricon(Vendor):
    """HAMi's CambriconDevices with the chart's resource names (device-config `cambricon:`)."""

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        name = str((node.get("metadata") or {}).get("name"))
        capacity = (node.get("status") or {}).get("capacity") or {}
        cores = capacity_int(capacity, self.resources.cores)
        if not cores:
            return []
        memory = capacity_int(capacity, self.resources.memory)
        cards = -(-cores // CORES_PER_CARD)
        # The node's memory, shared out by cores: a card's part of it, in MiB (HAMi's formula).
        devmem = memory * MEMORY_UNIT * CORES_PER_CARD // cores
        return [
            DeviceInfo(id=f"{name}-cambricon-mlu-{i}", count=100, devmem=devmem, devcore=CORES_PER_CARD,
                       type=VENDOR, index=i, vendor=VENDOR)
            for i in range(cards)
        ]

    def managed_resources(self) -> tuple[str, ...]:
        # Only the count, as HAMi's chart lists it: the memory and core resources are real node
        # capacity (the vendor's plugin advertises them), which kube-scheduler must keep checking.
        return (self.resources.count,)

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        result = super().decision_annotations(pod)
        result[ASSIGNED] = "false"
        first = next(c[0] for c in pod.allocation if c)
        # "<index>_<cores>_<memory units>" of the first device of the first container with one.
        result[PROFILE] = f"{pod.device(first.uuid).index}_{first.usedcores}_{first.usedmem // MEMORY_UNIT}"
        return result

    def decision_keys(self) -> tuple[str, ...]:
        return (*super().decision_keys(), ASSIGNED, PROFILE)


def cambricon(raw: Any) -> list[Vendor]:
    section = config_section(raw, "cambricon")
    return [Cambricon(
        name=VENDOR,
        resources=Resources(
            count=config_name(section, "resourceCountName", "cambricon.com/vmlu", "cambricon"),
            memory=config_name(section, "resourceMemoryName", "cambricon.com/mlu.smlu.vmemory", "cambricon"),
            cores=config_name(section, "resourceCoreName", "cambricon.com/mlu.smlu.vcore", "cambricon"),
            memory_factor=MEMORY_UNIT,
        ),
        keys=AnnotationKeys(
            to_allocate="hami.io/cambricon-mlu-devices-to-allocate",
            allocated="hami.io/cambricon-mlu-devices-allocated",
            uuid_pairs=(("cambricon.com/use-gpuuuid", "cambricon.com/nouse-gpuuuid"),),
        ),
        source=NodeSource.CAPACITY,
        lock=LockKind.OWN,
        lock_key=LOCK_KEY,
        default_cores=CORES_PER_CARD,
    )]
