"""What a pod asks for, per container, after defaults are applied."""

from __future__ import annotations

from dataclasses import dataclass, field

# HAMi's marker for "no memory percentage asked" in ContainerDeviceRequest.MemPercentagereq.
NO_PERCENTAGE = 101


@dataclass(frozen=True)
class ContainerRequest:
    """Devices one container asks for: `nums` devices, each with this memory and cores.

    Memory is either absolute (`memreq` MiB) or a percentage of each chosen device
    (`mem_percentage`, 0-100; NO_PERCENTAGE when absolute memory is used).
    """

    nums: int = 0
    memreq: int = 0
    mem_percentage: int = NO_PERCENTAGE
    coresreq: int = 0
    vendor: str = "NVIDIA"

    @property
    def wants_devices(self) -> bool:
        return self.nums > 0

    def memory_on(self, device_memory: int) -> int:
        """MiB this request takes on a device with `device_memory` MiB (HAMi's rule)."""
        if self.memreq > 0:
            return self.memreq
        if self.mem_percentage != NO_PERCENTAGE:
            return device_memory * self.mem_percentage // 100
        return 0


@dataclass(frozen=True)
class PodRequest:
    """A pod's device requests in HAMi's container order: init containers first.

    `init_count` says how many of `containers` are init containers; `names` carries the
    container names in the same order. `annotations` are the pod's (selectors, policies).
    """

    key: str
    containers: tuple[ContainerRequest, ...]
    init_count: int = 0
    names: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    cpu_milli: int = 0
    memory_mib: int = 0

    @property
    def wants_devices(self) -> bool:
        return any(c.wants_devices for c in self.containers)
