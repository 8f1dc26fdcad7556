"""MIG GPUs for scheduler tests, registered the way the device plugin registers them (profiles
discovered through the fake NVML backend from NVIDIA's geometry tables)."""

from __future__ import annotations

from typing import Any

from hami.config import HamiConfig
from hami.deviceplugin.devices import NodeSettings, registration
from hami.deviceplugin.fake import FakeBackend
from hami.deviceplugin.mig import discover_profiles
from hami.model import DeviceInfo
from hami.model.devices import MIG_MODE
from hami.model.mig import MigPlacement, MigProfile

MODELS = {
    "A100-40GB": ("NVIDIA A100-SXM4-40GB", 40960),
    "A100-80GB": ("NVIDIA A100-SXM4-80GB", 81920),
    "H100-80GB": ("NVIDIA H100 80GB HBM3", 81559),
    "H200-141GB": ("NVIDIA H200", 143771),
}


def mig_gpu(uuid: str, model: str, index: int = 0, config: HamiConfig | None = None, **kw: Any) -> DeviceInfo:
    """One GPU in MIG mode as the plugin registers it (allowlist: the chart default, or `config`'s)."""
    name, memory = MODELS[model]
    backend = FakeBackend(data={"devices": [{"uuid": uuid, "name": name, "memory": memory, "migMode": "enabled"}]})
    backend.init()
    gpu = backend.devices()[0]
    allowed = (config or HamiConfig()).nvidia.mig_profiles_for(name)
    profiles = discover_profiles(backend, gpu, allowed)
    [device] = registration([gpu], {}, NodeSettings(mode=MIG_MODE), {uuid: profiles})
    return DeviceInfo(**{**device.__dict__, "index": index, **kw})


def synthetic_a100(uuid: str = "GPU-a", placements_1g: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6),
                   only_1g: bool = False, **kw: Any) -> DeviceInfo:
    """HAMi's test GPU (mig_capability_test.go): round memory sizes, 1g/2g/3g only (or 1g only,
    as in mig_allocation_test.go)."""
    profiles = (
        MigProfile("1g.5gb", 5120, 14, 1, 7, tuple(MigPlacement(s, 1) for s in placements_1g)),
        MigProfile("2g.10gb", 10240, 28, 2, 3, tuple(MigPlacement(s, 2) for s in (0, 2, 4))),
        MigProfile("3g.20gb", 20480, 42, 3, 2, tuple(MigPlacement(s, 4) for s in (0, 4))),
    )[: 1 if only_1g else 3]
    return DeviceInfo(id=uuid, count=7, devmem=40960, devcore=100, type="NVIDIA-A100-SXM4-40GB", mode=MIG_MODE,
                      mig_profiles=profiles, **kw)
