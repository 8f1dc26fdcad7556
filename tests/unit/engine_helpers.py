"""Small builders for engine tests: nodes, pods and a state in a few words."""

from __future__ import annotations

from typing import Any

from hami.config import NvidiaConfig
from hami.model import DeviceInfo, NodeDevices, PodRequest
from hami.scheduler.engine import Decision, PolicyDefaults, commit, schedule
from hami.scheduler.state import ClusterState
from hami.vendors.nvidia import pod_request


def gpu(
    uuid: str, mem: int = 24000, count: int = 10, cores: int = 100, dtype: str = "NVIDIA-A10", **kw: Any
) -> DeviceInfo:
    return DeviceInfo(id=uuid, count=count, devmem=mem, devcore=cores, type=dtype, **kw)


def node(name: str, *devices: DeviceInfo, cordoned: tuple[str, ...] = ()) -> NodeDevices:
    indexed = tuple(DeviceInfo(**{**d.__dict__, "index": d.index if d.index else i}) for i, d in enumerate(devices))
    return NodeDevices(name=name, devices=indexed, cordoned=frozenset(cordoned))


def container(name: str = "c", **limits: Any) -> dict[str, Any]:
    names = {
        "gpu": "nvidia.com/gpu",
        "mem": "nvidia.com/gpumem",
        "pct": "nvidia.com/gpumem-percentage",
        "cores": "nvidia.com/gpucores",
    }
    return {"name": name, "resources": {"limits": {names[k]: v for k, v in limits.items()}}}


def pod(
    name: str,
    *containers: dict[str, Any],
    init: tuple[dict[str, Any], ...] = (),
    annotations: dict[str, str] | None = None,
    config: NvidiaConfig | None = None,
) -> PodRequest:
    obj = {
        "metadata": {"name": name, "namespace": "t", "annotations": annotations or {}},
        "spec": {"initContainers": list(init), "containers": list(containers)},
    }
    return pod_request(obj, config or NvidiaConfig())


def place(state: ClusterState, request: PodRequest, **defaults: Any) -> Decision:
    decision = schedule(state, request, PolicyDefaults(**defaults))
    commit(state, request, decision)
    return decision


def devices_of(decision: Decision) -> list[list[str]]:
    return [[d.uuid for d in c] for c in decision.allocation]
