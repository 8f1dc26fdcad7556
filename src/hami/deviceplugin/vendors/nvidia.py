"""NVIDIA GPUs on the node: the vendor the plugin started with (devices.py, allocate.grant)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from hami.annotations import keys
from hami.annotations.handshake import encode_reported
from hami.annotations.node_register import encode_node_devices
from hami.config import HamiConfig
from hami.deviceplugin import devices as dev
from hami.deviceplugin.allocate import AllocateSettings, NvidiaSession
from hami.deviceplugin.backend import GpuInfo
from hami.deviceplugin.pods import Pod
from hami.deviceplugin.vendors.base import NodePods, NodeVendor

VENDOR = "nvidia"


@dataclass
class NvidiaNode(NodeVendor[GpuInfo]):
    settings: dev.NodeSettings = field(default_factory=dev.NodeSettings)
    allocate: AllocateSettings = field(default_factory=lambda: AllocateSettings(node=""))

    def usable(self, chips: Sequence[GpuInfo]) -> list[GpuInfo]:
        return dev.usable_gpus(chips, self.settings)

    def share_ids(self, chip: GpuInfo) -> list[str]:
        return dev.share_ids(chip.uuid, self.split_count)

    def describe(self, chip: GpuInfo) -> str:
        return (f"GPU {chip.index} {chip.uuid} {chip.name}: {chip.memory_mib} MiB, {chip.sm_count} SMs, NUMA "
                f"{chip.numa}, NVLink peers {list(chip.nvlink_peers) or 'none'}{'' if chip.healthy else ', UNHEALTHY'}")

    def registration(self, chips: Sequence[GpuInfo], health: Mapping[str, bool]) -> dict[str, str]:
        return {keys.NODE_NVIDIA_REGISTER: encode_node_devices(dev.registration(chips, dict(health), self.settings))}

    def handshake(self, now: datetime) -> str:
        return encode_reported(now)

    def session(self, pod: Pod, chips: Mapping[str, GpuInfo], node_pods: NodePods) -> NvidiaSession:
        return NvidiaSession(pod, self.allocate)


def node_vendor(config: HamiConfig, node: str, hook_path: str, cache_root: str) -> NvidiaNode:
    settings = dev.node_settings(config, node)
    return NvidiaNode(
        name=VENDOR, noun="GPU", resource_name=config.nvidia.resourceCountName,
        to_allocate_key=keys.DEVICES_TO_ALLOCATE, split_count=settings.split_count,
        handshake_key=keys.NODE_HANDSHAKE, settings=settings,
        allocate=AllocateSettings(node=node, nvidia=config.nvidia, memory_scaling=settings.memory_scaling,
                                  hook_path=hook_path, cache_root=cache_root),
    )
