"""NVIDIA GPUs on the node: the vendor the plugin started with (devices.py, allocate.grant)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hami.annotations import keys
from hami.annotations.handshake import encode_reported
from hami.annotations.node_register import encode_node_devices
from hami.config import HamiConfig
from hami.deviceplugin import devices as dev
from hami.deviceplugin.allocate import AllocateSettings, NvidiaSession, Session
from hami.deviceplugin.backend import GpuInfo
from hami.deviceplugin.features import MigSession, NodeFeatures
from hami.deviceplugin.pods import Pod, PodSource
from hami.deviceplugin.vendors.base import NodePods, NodeVendor

VENDOR = "nvidia"


@dataclass
class NvidiaNode(NodeVendor[GpuInfo]):
    settings: dev.NodeSettings = field(default_factory=dev.NodeSettings)
    allocate: AllocateSettings = field(default_factory=lambda: AllocateSettings(node=""))
    config: HamiConfig = field(default_factory=HamiConfig)
    link_scores: bool = True  # publish hami.io/node-nvidia-score
    mig_cleanup_interval_s: float = 5.0
    # Links and dynamic MIG, once prepare() ran (hami.deviceplugin.features).
    features: NodeFeatures | None = None

    def prepare(self, backend: Any, source: PodSource, chips: Sequence[GpuInfo]) -> list[GpuInfo]:
        self.features = NodeFeatures(backend, source, self.config, self.allocate.node, self.settings,
                                     self.link_scores)
        return self.features.start(chips)

    def background(self, stopping: threading.Event) -> None:
        if self.features is not None:
            self.features.run_cleanup(stopping, self.mig_cleanup_interval_s)

    def usable(self, chips: Sequence[GpuInfo]) -> list[GpuInfo]:
        return dev.usable_gpus(chips, self.settings)

    def share_ids(self, chip: GpuInfo) -> list[str]:
        return dev.share_ids(chip.uuid, self.split_count)

    def describe(self, chip: GpuInfo) -> str:
        return (f"GPU {chip.index} {chip.uuid} {chip.name}: {chip.memory_mib} MiB, {chip.sm_count} SMs, NUMA "
                f"{chip.numa}, NVLink peers {list(chip.nvlink_peers) or 'none'}{'' if chip.healthy else ', UNHEALTHY'}")

    def registration(self, chips: Sequence[GpuInfo], health: Mapping[str, bool]) -> dict[str, str]:
        if self.features is None:
            return {keys.NODE_NVIDIA_REGISTER: encode_node_devices(dev.registration(chips, dict(health),
                                                                                     self.settings))}
        found = {keys.NODE_NVIDIA_REGISTER: encode_node_devices(self.features.registration(chips, dict(health)))}
        if self.features.scores is not None:
            found[keys.NODE_NVIDIA_SCORE] = self.features.scores
        return found

    def handshake(self, now: datetime) -> str:
        return encode_reported(now)

    def session(self, pod: Pod, chips: Mapping[str, GpuInfo], node_pods: NodePods) -> Session:
        plain = NvidiaSession(pod, self.allocate)
        if self.features is None or self.features.mig is None:
            return plain
        return MigSession(plain, pod, self.features)


def node_vendor(config: HamiConfig, node: str, hook_path: str, cache_root: str, link_scores: bool = True,
                mig_cleanup_interval_s: float = 5.0) -> NvidiaNode:
    settings = dev.node_settings(config, node)
    return NvidiaNode(
        name=VENDOR, noun="GPU", resource_name=config.nvidia.resourceCountName,
        to_allocate_key=keys.DEVICES_TO_ALLOCATE, split_count=settings.split_count,
        handshake_key=keys.NODE_HANDSHAKE, settings=settings,
        allocate=AllocateSettings(node=node, nvidia=config.nvidia, memory_scaling=settings.memory_scaling,
                                  hook_path=hook_path, cache_root=cache_root),
        config=config, link_scores=link_scores, mig_cleanup_interval_s=mig_cleanup_interval_s,
    )
