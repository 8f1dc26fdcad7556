"""From discovered GPUs to what the node registers (annotation) and what kubelet sees (shares)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from hami.config import HamiConfig
from hami.deviceplugin.backend import GpuInfo
from hami.model.devices import HAMI_CORE_MODE, DeviceInfo

log = logging.getLogger(__name__)

VENDOR = "NVIDIA"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


@dataclass(frozen=True)
class NodeSettings:
    """The device config as it applies to one node (global `nvidia:` keys, then its `nodeconfig` entry)."""

    split_count: int = 10
    memory_scaling: float = 1.0
    core_scaling: float = 1.0
    mode: str = HAMI_CORE_MODE
    filter_uuids: frozenset[str] = frozenset()
    filter_indexes: frozenset[int] = frozenset()


def node_settings(config: HamiConfig, node: str) -> NodeSettings:
    nvidia = config.nvidia
    settings = NodeSettings(
        split_count=nvidia.deviceSplitCount,
        memory_scaling=nvidia.deviceMemoryScaling,
        core_scaling=nvidia.deviceCoreScaling,
    )
    override = config.node_override(node)
    if override is None:
        return settings
    mode = HAMI_CORE_MODE
    if override.operatingmode and override.operatingmode != HAMI_CORE_MODE:
        log.warning("node %s: operatingmode %r is not supported; using %s", node, override.operatingmode, mode)
    return NodeSettings(
        split_count=override.devicesplitcount if override.devicesplitcount is not None else settings.split_count,
        memory_scaling=(
            override.devicememoryscaling if override.devicememoryscaling is not None else settings.memory_scaling
        ),
        core_scaling=override.devicecorescaling if override.devicecorescaling is not None else settings.core_scaling,
        mode=mode,
        filter_uuids=frozenset(override.filterdevices.uuid),
        filter_indexes=frozenset(override.filterdevices.index),
    )


def usable_gpus(gpus: Iterable[GpuInfo], settings: NodeSettings) -> list[GpuInfo]:
    """The GPUs left after the node's `filterdevices` (by UUID or index)."""
    return [g for g in gpus if g.uuid not in settings.filter_uuids and g.index not in settings.filter_indexes]


def device_type(gpu: GpuInfo) -> str:
    """HAMi's type: `NVIDIA-` + NVML's name, e.g. `NVIDIA-NVIDIA A100-SXM4-80GB`."""
    return f"{VENDOR}-{gpu.name}"


def registration(gpus: Iterable[GpuInfo], health: dict[str, bool], settings: NodeSettings) -> list[DeviceInfo]:
    """The `hami.io/node-nvidia-register` entries, with memory and core scaling applied."""
    return [
        DeviceInfo(
            id=g.uuid,
            count=settings.split_count,
            devmem=int(g.memory_mib * settings.memory_scaling),
            devcore=int(100 * settings.core_scaling),
            type=device_type(g),
            numa=g.numa,
            health=health.get(g.uuid, g.healthy),
            index=g.index,
            mode=settings.mode,
        )
        for g in gpus
    ]


def share_ids(uuid: str, split_count: int) -> list[str]:
    """The IDs kubelet sees for one GPU: `<uuid>-0` … `<uuid>-<split-1>`."""
    return [f"{uuid}-{i}" for i in range(split_count)]


def gpu_of_share(share_id: str, known: Iterable[str], split_count: int) -> str | None:
    """The GPU UUID of a share ID, or None when it is not one this plugin advertised."""
    uuid, sep, number = share_id.rpartition("-")
    if not sep or not number.isdigit() or int(number) >= split_count:
        return None
    return uuid if uuid in set(known) else None
