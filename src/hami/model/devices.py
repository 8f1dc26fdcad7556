"""Devices as a node registers them (the static part; usage lives in the scheduler state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hami.model.mig import MigProfile

HAMI_CORE_MODE = "hami-core"
MIG_MODE = "mig"


@dataclass(frozen=True)
class DeviceInfo:
    """One device as a node registers it (HAMi's DeviceInfo), of any vendor.

    `count` is how many tasks may share it (deviceSplitCount), `devmem` its memory in MiB
    after memory scaling, `devcore` its compute in percent after core scaling (100 = all SMs;
    some vendors count compute units instead). `vendor` is HAMi's vendor key (its CommonWord:
    "NVIDIA", "Ascend910B3", "DCU", "MLU", …); `custom` holds the vendor's extra facts
    (HAMi's custominfo: Ascend network groups, AWS instance type, Enflame profiles, …).
    """

    id: str
    count: int
    devmem: int
    devcore: int
    type: str
    numa: int = 0
    health: bool = True
    index: int = 0
    mode: str = HAMI_CORE_MODE
    vendor: str = "NVIDIA"
    custom: dict[str, Any] = field(default_factory=dict, hash=False)
    # NVIDIA MIG mode: the profiles the GPU offers (HAMi's migProfiles).
    mig_profiles: tuple[MigProfile, ...] = ()
    # NVIDIA topology: the link score to each other GPU of the node, by UUID (HAMi's
    # DevicePairScore, from hami.io/node-nvidia-score; higher is a faster link).
    pair_scores: dict[str, int] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class NodeDevices:
    """A node and the devices it registered, plus the node facts the engine may check."""

    name: str
    devices: tuple[DeviceInfo, ...]
    cordoned: frozenset[str] = field(default_factory=frozenset)
    # Node CPU (millicores) and memory (MiB) capacity; 0 means "not checked".
    cpu_milli: int = 0
    memory_mib: int = 0
