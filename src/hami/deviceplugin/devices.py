"""From discovered GPUs to what the node registers (annotation) and what kubelet sees (shares)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hami.config import HamiConfig
from hami.deviceplugin.backend import GpuInfo
from hami.model.devices import HAMI_CORE_MODE, MIG_MODE, DeviceInfo
from hami.model.mig import MigProfile

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
    # With mode mig: the GPUs that run MIG (None: every GPU the allowlist covers).
    mig_uuids: frozenset[str] | None = None
    mig_indexes: frozenset[int] | None = None

    def wants_mig(self, gpu: GpuInfo) -> bool:
        """Whether this GPU is to run MIG here (the allowlist decides the rest)."""
        if self.mode != MIG_MODE:
            return False
        if self.mig_uuids is None and self.mig_indexes is None:
            return True
        return gpu.uuid in (self.mig_uuids or ()) or gpu.index in (self.mig_indexes or ())


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
    if override.operatingmode == MIG_MODE:
        mode = MIG_MODE
    elif override.operatingmode and override.operatingmode != HAMI_CORE_MODE:
        # HAMi v2.10 has no MPS implementation either (plugin/mps.go is stubs).
        log.warning("node %s: operatingmode %r is not supported; using %s", node, override.operatingmode, mode)
    mig = override.migdevices
    return NodeSettings(
        split_count=override.devicesplitcount if override.devicesplitcount is not None else settings.split_count,
        memory_scaling=(
            override.devicememoryscaling if override.devicememoryscaling is not None else settings.memory_scaling
        ),
        core_scaling=override.devicecorescaling if override.devicecorescaling is not None else settings.core_scaling,
        mode=mode,
        filter_uuids=frozenset(override.filterdevices.uuid),
        filter_indexes=frozenset(override.filterdevices.index),
        mig_uuids=None if mig is None else frozenset(mig.uuid),
        mig_indexes=None if mig is None else frozenset(mig.index),
    )


def usable_gpus(gpus: Iterable[GpuInfo], settings: NodeSettings) -> list[GpuInfo]:
    """The GPUs left after the node's `filterdevices` (by UUID or index)."""
    return [g for g in gpus if g.uuid not in settings.filter_uuids and g.index not in settings.filter_indexes]


def device_type(gpu: GpuInfo) -> str:
    """HAMi's type: `NVIDIA-` + NVML's name, e.g. `NVIDIA-NVIDIA A100-SXM4-80GB`."""
    return f"{VENDOR}-{gpu.name}"


def registration(gpus: Iterable[GpuInfo], health: dict[str, bool], settings: NodeSettings,
                 mig: Mapping[str, tuple[MigProfile, ...] | None] | None = None) -> list[DeviceInfo]:
    """The `hami.io/node-nvidia-register` entries, with memory and core scaling applied.

    GPUs in `mig` register in MIG mode as HAMi does: their profiles, full memory and 100 cores
    (no scaling), and as many tasks as the most instances a profile allows; one whose profiles
    are not known (None or none) is left out. The other GPUs register as hami-core shares, even
    on a node whose operating mode is mig.
    """
    found = []
    for g in gpus:
        if mig is not None and g.uuid in mig:
            profiles = mig[g.uuid]
            if not profiles:
                continue
            found.append(DeviceInfo(
                id=g.uuid, count=max(p.instances for p in profiles), devmem=g.memory_mib, devcore=100,
                type=device_type(g), numa=g.numa, health=health.get(g.uuid, g.healthy), index=g.index,
                mode=MIG_MODE, mig_profiles=profiles,
            ))
            continue
        found.append(DeviceInfo(
            id=g.uuid,
            count=settings.split_count,
            devmem=int(g.memory_mib * settings.memory_scaling),
            devcore=int(100 * settings.core_scaling),
            type=device_type(g),
            numa=g.numa,
            health=health.get(g.uuid, g.healthy),
            index=g.index,
            mode=HAMI_CORE_MODE,
        ))
    return found


def share_ids(uuid: str, split_count: int) -> list[str]:
    """The IDs kubelet sees for one GPU: `<uuid>-0` … `<uuid>-<split-1>`."""
    return [f"{uuid}-{i}" for i in range(split_count)]


def gpu_of_share(share_id: str, known: Iterable[str], split_count: int) -> str | None:
    """The GPU UUID of a share ID, or None when it is not one this plugin advertised."""
    uuid, sep, number = share_id.rpartition("-")
    if not sep or not number.isdigit() or int(number) >= split_count:
        return None
    return uuid if uuid in set(known) else None
