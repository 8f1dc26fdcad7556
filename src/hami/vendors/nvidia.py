"""NVIDIA requests: from a container's resources to a ContainerRequest, with HAMi's defaults.

The defaults are those HAMi's webhook writes into the pod (a count when only memory or cores
are asked; exclusive cores when a whole card is asked) followed by those its scheduler applies
(default memory, else 100 %; default cores). Applying them again to a pod that already went
through the webhook changes nothing, so the same function serves raw and admitted pods.
"""

from __future__ import annotations

from typing import Any

from hami.config import NvidiaConfig
from hami.errors import HamiError
from hami.model.requests import NO_PERCENTAGE, ContainerRequest, PodRequest
from hami.quantity import QuantityError, parse_milli, parse_whole

VENDOR = "NVIDIA"


def _resources(container: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    resources = container.get("resources") or {}
    if not isinstance(resources, dict):
        raise HamiError(f"container {container.get('name')!r}: 'resources' is not a mapping")
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if not isinstance(limits, dict) or not isinstance(requests, dict):
        raise HamiError(f"container {container.get('name')!r}: limits and requests must be mappings")
    return limits, requests


def _whole(container: dict[str, Any], name: str, raw: Any) -> int:
    try:
        return parse_whole(raw)
    except QuantityError as exc:
        raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None


def container_request(container: dict[str, Any], config: NvidiaConfig) -> ContainerRequest:
    """The container's NVIDIA request (nums == 0 when it asks for none). Raises HamiError."""
    limits, requests = _resources(container)

    def lookup(name: str, limits_only: bool = False) -> int | None:
        if name in limits:
            return _whole(container, name, limits[name])
        if not limits_only and name in requests:
            return _whole(container, name, requests[name])
        return None

    count = lookup(config.resourceCountName)
    memory = lookup(config.resourceMemoryName)
    percentage = lookup(config.resourceMemoryPercentageName)
    cores = lookup(config.resourceCoreName)

    where = f"container {container.get('name')!r}"
    if percentage is not None and percentage > 100:
        raise HamiError(f"{where}: {config.resourceMemoryPercentageName} is {percentage}, over 100")
    if cores is not None and cores > 100:
        raise HamiError(f"{where}: {config.resourceCoreName} is {cores}, over 100")

    # Webhook: only memory or cores asked (in limits) -> the default device count.
    if count is None and config.defaultGPUNum > 0:
        asked_in_limits = any(
            name in limits
            for name in (config.resourceMemoryName, config.resourceMemoryPercentageName, config.resourceCoreName)
        )
        if asked_in_limits:
            count = config.defaultGPUNum
    if not count:
        return ContainerRequest()

    # Webhook: a whole card (no memory asked, or 100 %) without cores -> exclusive cores.
    if cores is None and (percentage == 100 or (percentage is None and memory is None)):
        cores = 100

    memreq = (memory or 0) * max(config.memoryFactor, 1)
    mem_percentage = NO_PERCENTAGE if percentage is None else percentage
    if mem_percentage == NO_PERCENTAGE and memreq == 0:
        if config.defaultMemory:
            memreq = config.defaultMemory
        else:
            mem_percentage = 100
    return ContainerRequest(
        nums=count,
        memreq=memreq,
        mem_percentage=mem_percentage,
        coresreq=config.defaultCores if cores is None else cores,
        vendor=VENDOR,
    )


def _cpu_memory(containers: list[dict[str, Any]]) -> tuple[int, int]:
    cpu = memory = 0
    for container in containers:
        _, requests = _resources(container)
        try:
            if "cpu" in requests:
                cpu += parse_milli(requests["cpu"])
            if "memory" in requests:
                memory += -(-parse_whole(requests["memory"]) // 2**20)
        except QuantityError as exc:
            raise HamiError(f"container {container.get('name')!r}: {exc}") from None
    return cpu, memory


def pod_request(pod: dict[str, Any], config: NvidiaConfig, check_node_resources: bool = False) -> PodRequest:
    """All containers of a pod in HAMi's order (init containers first)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    key = f"{metadata.get('namespace') or 'default'}/{metadata.get('name')}"
    init = list(spec.get("initContainers") or [])
    app = list(spec.get("containers") or [])
    for container in init + app:
        if not isinstance(container, dict):
            raise HamiError(f"pod {key}: a container is not a mapping")
    try:
        containers = tuple(container_request(c, config) for c in init + app)
    except HamiError as exc:
        raise HamiError(f"pod {key}: {exc}") from None
    annotations = metadata.get("annotations") or {}
    cpu, memory = _cpu_memory(app) if check_node_resources else (0, 0)
    return PodRequest(
        key=key,
        containers=containers,
        init_count=len(init),
        names=tuple(str(c.get("name", "")) for c in init + app),
        annotations={str(k): str(v) for k, v in annotations.items()},
        cpu_milli=cpu,
        memory_mib=memory,
    )


def requests_managed_resources(pod: dict[str, Any], config: NvidiaConfig) -> bool:
    spec = pod.get("spec") or {}
    for container in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        resources = (container or {}).get("resources") or {}
        for section in ("limits", "requests"):
            if any(name in (resources.get(section) or {}) for name in config.managed_resources):
                return True
    return False
