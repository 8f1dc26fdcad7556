"""NVIDIA: HAMi's reference vendor (hami-core sharing, `hami.io/node-nvidia-register`).

Requests get HAMi's defaults, those its webhook writes into the pod (a count when only memory
or cores are asked; exclusive cores when a whole card is asked) followed by those its
scheduler applies (default memory, else 100 %; default cores). Applying them again to a pod
that already went through the webhook changes nothing, so the same function serves raw and
admitted pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hami.annotations import keys
from hami.annotations.selectors import DeviceSelectors, decode_selectors
from hami.config import NvidiaConfig
from hami.errors import HamiError
from hami.model.requests import NO_PERCENTAGE, ContainerRequest, PodRequest
from hami.quantity import QuantityError, parse_whole
from hami.vendors.base import (
    INT32_MAX,
    AnnotationKeys,
    NodeSource,
    Resources,
    Vendor,
    resources_of,
)

VENDOR = "NVIDIA"
TASK_PRIORITY_ENV = "CUDA_TASK_PRIORITY"
CORE_POLICY_ENV = "GPU_CORE_UTILIZATION_POLICY"


def _whole(container: Mapping[str, Any], name: str, raw: Any) -> int:
    try:
        value = parse_whole(raw)
    except QuantityError as exc:
        raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None
    if value > INT32_MAX:
        raise HamiError(f"container {container.get('name')!r}: {name} is {value}, larger than HAMi's limit {INT32_MAX}")
    return value


def container_request(container: Mapping[str, Any], config: NvidiaConfig) -> ContainerRequest:
    """The container's NVIDIA request (nums == 0 when it asks for none). Raises HamiError."""
    limits, requests = resources_of(container)

    def lookup(name: str) -> int | None:
        if name in limits:
            return _whole(container, name, limits[name])
        if name in requests:
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
    if memreq > INT32_MAX:
        raise HamiError(f"{where}: {config.resourceMemoryName} × memoryFactor is {memreq} MiB, "
                        "larger than HAMi's limit")
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


def pod_request(pod: dict[str, Any], config: NvidiaConfig, check_node_resources: bool = False) -> PodRequest:
    """A pod's NVIDIA requests alone (every vendor: hami.vendors.registry.VendorSet.pod_request)."""
    from hami.vendors.registry import vendor_set

    return vendor_set(config).pod_request(pod, check_node_resources)


@dataclass
class Nvidia(Vendor):
    """NVIDIA with HAMi's device-config (`nvidia:` key)."""

    config: NvidiaConfig = NvidiaConfig()

    @staticmethod
    def of(config: NvidiaConfig) -> Nvidia:
        return Nvidia(
            name=VENDOR,
            resources=Resources(
                count=config.resourceCountName,
                memory=config.resourceMemoryName,
                percentage=config.resourceMemoryPercentageName,
                cores=config.resourceCoreName,
                priority=config.resourcePriorityName,
                memory_factor=max(config.memoryFactor, 1),
            ),
            keys=AnnotationKeys(
                register=keys.NODE_NVIDIA_REGISTER,
                to_allocate=keys.DEVICES_TO_ALLOCATE,
                allocated=keys.DEVICES_ALLOCATED,
                use_type=keys.USE_GPUTYPE,
                nouse_type=keys.NOUSE_GPUTYPE,
                uuid_pairs=((keys.USE_GPUUUID, keys.NOUSE_GPUUUID),),
            ),
            source=NodeSource.JSON,
            type_word="NVIDIA",
            config=config,
        )

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        request = container_request(container, self.config)
        return request if request.nums > 0 else None

    def selectors(self, annotations: Mapping[str, str]) -> DeviceSelectors:
        return decode_selectors(dict(annotations))

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        """HAMi's webhook defaults for one container, in place. Raises HamiError to deny."""
        config = self.config
        limits, requests = resources_of(container)
        request = container_request(container, config)  # validates every quantity and range
        if request.nums == 0:
            return False
        resources = container.setdefault("resources", {})
        limits = resources.setdefault("limits", {})
        if config.resourceCountName not in limits and config.resourceCountName not in requests:
            limits[config.resourceCountName] = config.defaultGPUNum
        if config.resourceCoreName not in limits and config.resourceCoreName not in requests:
            percentage = limits.get(config.resourceMemoryPercentageName)
            memory = limits.get(config.resourceMemoryName, requests.get(config.resourceMemoryName))
            if (percentage is not None and parse_whole(percentage) == 100) or (percentage is None and memory is None):
                limits[config.resourceCoreName] = 100
        priority = limits.get(config.resourcePriorityName)
        if priority is not None:
            level = _whole(container, config.resourcePriorityName, priority)
            if level > 1:
                raise HamiError(f"container {container.get('name')!r}: {config.resourcePriorityName} must be "
                                "0 (high) or 1 (low)")
            set_env(container, TASK_PRIORITY_ENV, str(level))
        if config.gpuCorePolicy != "default":
            set_env(container, CORE_POLICY_ENV, config.gpuCorePolicy)
        return True

    def managed_resources(self) -> tuple[str, ...]:
        return (*self.resources.names, self.config.resourcePriorityName)


def set_env(container: dict[str, Any], name: str, value: str) -> None:
    """Set one environment variable of a container (replacing an earlier value)."""
    env = [e for e in container.get("env") or [] if e.get("name") != name]
    env.append({"name": name, "value": value})
    container["env"] = env
