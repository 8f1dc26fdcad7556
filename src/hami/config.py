"""HAMi's device-config.yaml and our scheduler defaults.

The `nvidia` key is parsed here; every other vendor's section (`cambricon`, `hygon`, `vnpus`,
`iluvatars`, …) is kept as read and parsed by that vendor's module (hami.vendors). Unknown
keys are accepted and ignored, so a HAMi chart's config file loads as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from hami.annotations.selectors import Policy, decode_policy
from hami.errors import HamiError


@dataclass(frozen=True)
class FilterDevices:
    uuid: tuple[str, ...] = ()
    index: tuple[int, ...] = ()


@dataclass(frozen=True)
class NodeOverride:
    """One entry of HAMi's per-node `nodeconfig` list."""

    name: str
    operatingmode: str | None = None
    devicememoryscaling: float | None = None
    devicecorescaling: float | None = None
    devicesplitcount: int | None = None
    filterdevices: FilterDevices = field(default_factory=FilterDevices)


@dataclass(frozen=True)
class NvidiaConfig:
    resourceCountName: str = "nvidia.com/gpu"  # noqa: N815 - HAMi's YAML keys
    resourceMemoryName: str = "nvidia.com/gpumem"  # noqa: N815
    resourceMemoryPercentageName: str = "nvidia.com/gpumem-percentage"  # noqa: N815
    resourceCoreName: str = "nvidia.com/gpucores"  # noqa: N815
    resourcePriorityName: str = "nvidia.com/priority"  # noqa: N815
    overwriteEnv: bool = False  # noqa: N815
    defaultMemory: int = 0  # noqa: N815
    defaultCores: int = 0  # noqa: N815
    defaultGPUNum: int = 1  # noqa: N815
    memoryFactor: int = 1  # noqa: N815
    deviceSplitCount: int = 10  # noqa: N815
    deviceMemoryScaling: float = 1.0  # noqa: N815
    deviceCoreScaling: float = 1.0  # noqa: N815
    gpuCorePolicy: str = "default"  # noqa: N815
    libCudaLogLevel: int = 0  # noqa: N815
    migProfileAllowlist: tuple[str, ...] = ()  # noqa: N815

    @property
    def managed_resources(self) -> tuple[str, ...]:
        return (
            self.resourceCountName,
            self.resourceMemoryName,
            self.resourceMemoryPercentageName,
            self.resourceCoreName,
        )


@dataclass(frozen=True)
class SchedulerConfig:
    node_policy: Policy = Policy.BINPACK
    gpu_policy: Policy = Policy.SPREAD


# device-config.yaml sections of the vendors other than NVIDIA (HAMi's key names).
VENDOR_SECTIONS = (
    "cambricon", "hygon", "metax", "enflame", "mthreads", "iluvatars", "kunlun", "awsneuron", "amd", "vastai",
    "biren", "vnpus",
)


@dataclass(frozen=True)
class HamiConfig:
    nvidia: NvidiaConfig = field(default_factory=NvidiaConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    nodeconfig: tuple[NodeOverride, ...] = ()
    # The other vendors' sections as read (None when absent: the vendor's HAMi defaults apply).
    sections: dict[str, Any] = field(default_factory=dict, hash=False)

    def node_override(self, node: str) -> NodeOverride | None:
        for entry in self.nodeconfig:
            if entry.name == node:
                return entry
        return None


_INT_KEYS = {"defaultMemory", "defaultCores", "defaultGPUNum", "memoryFactor", "deviceSplitCount", "libCudaLogLevel"}
_FLOAT_KEYS = {"deviceMemoryScaling", "deviceCoreScaling"}
_STR_KEYS = {
    "resourceCountName",
    "resourceMemoryName",
    "resourceMemoryPercentageName",
    "resourceCoreName",
    "resourcePriorityName",
    "gpuCorePolicy",
}


def _number(section: str, key: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HamiError(f"config: {section}.{key} must be a number, got {value!r}")
    if value < 0:
        raise HamiError(f"config: {section}.{key} must not be negative, got {value!r}")
    if kind is int and int(value) != value:
        raise HamiError(f"config: {section}.{key} must be a whole number, got {value!r}")
    return kind(value)


def parse_nvidia(raw: dict[str, Any]) -> NvidiaConfig:
    values: dict[str, Any] = {}
    known = {f.name for f in fields(NvidiaConfig)}
    for key, value in raw.items():
        if key not in known:
            continue
        if key in _INT_KEYS:
            values[key] = _number("nvidia", key, value, int)
        elif key in _FLOAT_KEYS:
            values[key] = _number("nvidia", key, value, float)
        elif key in _STR_KEYS:
            if not isinstance(value, str) or not value:
                raise HamiError(f"config: nvidia.{key} must be a non-empty string")
            values[key] = value
        elif key == "overwriteEnv":
            values[key] = bool(value)
        elif key == "migProfileAllowlist":
            values[key] = tuple(str(v) for v in (value or []))
    config = replace(NvidiaConfig(), **values)
    if config.defaultCores > 100:
        raise HamiError("config: nvidia.defaultCores must be 0-100")
    if config.deviceSplitCount < 1:
        raise HamiError("config: nvidia.deviceSplitCount must be at least 1")
    if config.gpuCorePolicy not in ("default", "force", "disable"):
        raise HamiError("config: nvidia.gpuCorePolicy must be default, force or disable")
    return config


def _parse_nodeconfig(raw: Any) -> tuple[NodeOverride, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise HamiError("config: nodeconfig must be a list")
    entries = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise HamiError(f"config: nodeconfig[{position}] needs a 'name'")
        filters = item.get("filterdevices") or {}
        entries.append(
            NodeOverride(
                name=item["name"],
                operatingmode=item.get("operatingmode"),
                devicememoryscaling=item.get("devicememoryscaling"),
                devicecorescaling=item.get("devicecorescaling"),
                devicesplitcount=item.get("devicesplitcount"),
                filterdevices=FilterDevices(
                    uuid=tuple(str(u) for u in filters.get("uuid") or ()),
                    index=tuple(int(i) for i in filters.get("index") or ()),
                ),
            )
        )
    return tuple(entries)


def parse_config(raw: Any) -> HamiConfig:
    if raw is None:
        return HamiConfig()
    if not isinstance(raw, dict):
        raise HamiError("config: the file must hold a mapping (keys nvidia, scheduler, nodeconfig)")
    nvidia_raw = raw.get("nvidia") or {}
    if not isinstance(nvidia_raw, dict):
        raise HamiError("config: 'nvidia' must be a mapping")
    sched_raw = raw.get("scheduler") or {}
    if not isinstance(sched_raw, dict):
        raise HamiError("config: 'scheduler' must be a mapping")
    try:
        scheduler = SchedulerConfig(
            node_policy=decode_policy(sched_raw.get("nodeSchedulerPolicy", "binpack"), "nodeSchedulerPolicy"),
            gpu_policy=decode_policy(sched_raw.get("gpuSchedulerPolicy", "spread"), "gpuSchedulerPolicy"),
        )
    except ValueError as exc:
        raise HamiError(f"config: {exc}") from None
    return HamiConfig(
        nvidia=parse_nvidia(nvidia_raw), scheduler=scheduler, nodeconfig=_parse_nodeconfig(raw.get("nodeconfig")),
        sections={key: raw[key] for key in VENDOR_SECTIONS if raw.get(key) is not None},
    )


def load_config(path: str | Path | None) -> HamiConfig:
    """Read a config file; None gives HAMi's defaults."""
    if path is None:
        return HamiConfig()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise HamiError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HamiError(f"config {path} is not valid YAML: {exc}") from None
    return parse_config(raw)
