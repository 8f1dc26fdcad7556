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

from hami.annotations.selectors import Policy, decode_node_policy, decode_policy
from hami.errors import HamiError


@dataclass(frozen=True)
class FilterDevices:
    uuid: tuple[str, ...] = ()
    index: tuple[int, ...] = ()


OPERATING_MODES = ("hami-core", "mig", "mps")


@dataclass(frozen=True)
class NodeOverride:
    """One entry of HAMi's per-node `nodeconfig` list."""

    name: str
    operatingmode: str | None = None
    devicememoryscaling: float | None = None
    devicecorescaling: float | None = None
    devicesplitcount: int | None = None
    filterdevices: FilterDevices = field(default_factory=FilterDevices)
    # Ours: with operatingmode mig, only these GPUs run MIG (None: every GPU the allowlist covers).
    migdevices: FilterDevices | None = None


@dataclass(frozen=True)
class MigAllowlistEntry:
    """One entry of `migProfileAllowlist`: GPU models (substrings of NVML's name) and the MIG
    profiles pods may get on them."""

    models: tuple[str, ...]
    profiles: tuple[str, ...]


def _allow(models: str, profiles: str) -> MigAllowlistEntry:
    return MigAllowlistEntry(tuple(models.split("|")), tuple(profiles.split()))


# HAMi v2.10's chart default (charts/hami/templates/scheduler/device-configmap.yaml), then
# ours for the names NVML gives H100 and H200 GPUs ("NVIDIA H100 80GB HBM3", "NVIDIA H200"),
# which none of the chart's model strings but "H20" matches.
DEFAULT_MIG_ALLOWLIST = (
    _allow("A30", "1g.6gb 2g.12gb 4g.24gb"),
    _allow("A100-SXM4-40GB|A100-40GB-PCIe|A100-PCIE-40GB", "1g.5gb 2g.10gb 3g.20gb 7g.40gb"),
    _allow("A100-SXM4-80GB|A100-80GB-PCIe|A100-PCIE-80GB", "1g.10gb 2g.20gb 3g.40gb 7g.79gb"),
    _allow("H100-PCIE-80GB|H100-SXM5-80GB", "1g.10gb 2g.20gb 3g.40gb 7g.80gb"),
    _allow("H100-PCIE-94GB|H100-SXM5-94GB", "1g.12gb 2g.24gb 3g.47gb 7g.94gb"),
    _allow("H20|H100 on GH200", "1g.12gb 2g.24gb 3g.48gb 7g.96gb"),
    _allow("H200 NVL|H200-SXM5", "1g.18gb 2g.35gb 3g.71gb 7g.141gb"),
    _allow("B200", "1g.23gb 2g.45gb 3g.90gb 7g.180gb"),
    _allow("RTX PRO 6000 Blackwell Server Edition", "1g.24gb 2g.48gb 4g.96gb"),
    _allow("H100 80GB HBM3|H100 PCIe", "1g.10gb 2g.20gb 3g.40gb 7g.80gb"),
    _allow("H200", "1g.18gb 2g.35gb 3g.71gb 7g.141gb"),
)


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
    migProfileAllowlist: tuple[MigAllowlistEntry, ...] = DEFAULT_MIG_ALLOWLIST  # noqa: N815

    def mig_profiles_for(self, model: str) -> tuple[str, ...]:
        """The allowed MIG profiles of a GPU model (NVML's name); () when no entry covers it.

        An entry covers the model when one of its models is a substring of the name (HAMi's
        containsModel). HAMi takes the first such entry, so "NVIDIA H200" gets the profiles of
        "H20"; we take the entry with the longest matching model, the first on a tie.
        """
        best: tuple[int, tuple[str, ...]] = (0, ())
        for entry in self.migProfileAllowlist:
            length = max((len(m) for m in entry.models if m in model), default=0)
            if length > best[0]:
                best = (length, entry.profiles)
        return best[1]

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
            values[key] = parse_mig_allowlist(value)
    config = replace(NvidiaConfig(), **values)
    if config.defaultCores > 100:
        raise HamiError("config: nvidia.defaultCores must be 0-100")
    if config.deviceSplitCount < 1:
        raise HamiError("config: nvidia.deviceSplitCount must be at least 1")
    if config.gpuCorePolicy not in ("default", "force", "disable"):
        raise HamiError("config: nvidia.gpuCorePolicy must be default, force or disable")
    return config


def parse_mig_allowlist(raw: Any) -> tuple[MigAllowlistEntry, ...]:
    """HAMi's list of {models, profiles}, validated as HAMi does (ValidateMigProfileAllowlist):
    both lists non-empty, and each profile named `<N>g.<memory>`."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise HamiError("config: nvidia.migProfileAllowlist must be a list of {models, profiles}")
    entries = []
    for position, item in enumerate(raw):
        where = f"config: nvidia.migProfileAllowlist[{position}]"
        if not isinstance(item, dict):
            raise HamiError(f"{where}: expected a mapping with 'models' and 'profiles'")
        lists = []
        for key in ("models", "profiles"):
            value = item.get(key)
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise HamiError(f"{where}: '{key}' must be a non-empty list of names")
            lists.append(tuple(value))
        for profile in lists[1]:
            head, dot, _ = profile.partition(".")
            if not dot or len(head) < 2 or not head.endswith("g") or not head[:-1].isdigit():
                raise HamiError(f"{where}: invalid MIG profile {profile!r} (expected a name like 2g.10gb)")
        entries.append(MigAllowlistEntry(models=lists[0], profiles=lists[1]))
    return tuple(entries)


def _filter(raw: Any, where: str) -> FilterDevices:
    if not isinstance(raw, dict):
        raise HamiError(f"config: {where} must be a mapping with 'uuid' and 'index' lists")
    try:
        return FilterDevices(uuid=tuple(str(u) for u in raw.get("uuid") or ()),
                             index=tuple(int(i) for i in raw.get("index") or ()))
    except (TypeError, ValueError):
        raise HamiError(f"config: {where}.index must list GPU indexes") from None


def _parse_nodeconfig(raw: Any) -> tuple[NodeOverride, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise HamiError("config: nodeconfig must be a list")
    entries = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise HamiError(f"config: nodeconfig[{position}] needs a 'name'")
        mode = item.get("operatingmode")
        if mode is not None and mode not in OPERATING_MODES:
            raise HamiError(f"config: nodeconfig[{position}] ({item['name']}): operatingmode {mode!r} is not one "
                            f"of {', '.join(OPERATING_MODES)}")
        migdevices = item.get("migdevices")
        entries.append(
            NodeOverride(
                name=item["name"],
                operatingmode=mode,
                devicememoryscaling=item.get("devicememoryscaling"),
                devicecorescaling=item.get("devicecorescaling"),
                devicesplitcount=item.get("devicesplitcount"),
                filterdevices=_filter(item.get("filterdevices") or {}, f"nodeconfig[{position}].filterdevices"),
                migdevices=None if migdevices is None else _filter(migdevices, f"nodeconfig[{position}].migdevices"),
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
            node_policy=decode_node_policy(sched_raw.get("nodeSchedulerPolicy", "binpack"), "nodeSchedulerPolicy"),
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
