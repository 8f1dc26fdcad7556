"""What a pod asks for, per container, after defaults are applied."""

from __future__ import annotations

from dataclasses import dataclass, field

# HAMi's marker for "no memory percentage asked" in ContainerDeviceRequest.MemPercentagereq.
NO_PERCENTAGE = 101


@dataclass(frozen=True)
class ContainerRequest:
    """Devices one container asks of one vendor: `nums` devices, each with this memory and cores.

    Memory is either absolute (`memreq` MiB) or a percentage of each chosen device
    (`mem_percentage`, 0-100; NO_PERCENTAGE when absolute memory is used). `variant` names a
    vendor-specific kind of ask (for example AWS Neuron cores rather than whole devices).

    A container that asks several vendors (HAMi allows one ask per vendor) carries the first
    ask in its own fields and the others in `also`; `asks` lists them all.
    """

    nums: int = 0
    memreq: int = 0
    mem_percentage: int = NO_PERCENTAGE
    coresreq: int = 0
    vendor: str = "NVIDIA"
    variant: str = ""
    also: tuple[ContainerRequest, ...] = ()

    @property
    def wants_devices(self) -> bool:
        return self.nums > 0 or bool(self.also)

    @property
    def asks(self) -> tuple[ContainerRequest, ...]:
        """Every vendor ask of the container, in vendor order (empty when it asks for none)."""
        return ((self,) if self.nums > 0 else ()) + self.also

    def memory_on(self, device_memory: int) -> int:
        """MiB this request takes on a device with `device_memory` MiB (HAMi's rule)."""
        if self.memreq > 0:
            return self.memreq
        if self.mem_percentage != NO_PERCENTAGE:
            return device_memory * self.mem_percentage // 100
        return 0

    @staticmethod
    def of(asks: list[ContainerRequest]) -> ContainerRequest:
        """One container's request from its vendor asks (sorted by vendor for a fixed order)."""
        ordered = sorted((a for a in asks if a.nums > 0), key=lambda a: a.vendor)
        if not ordered:
            return ContainerRequest()
        first, *rest = ordered
        return ContainerRequest(first.nums, first.memreq, first.mem_percentage, first.coresreq, first.vendor,
                                first.variant, tuple(rest))


@dataclass(frozen=True)
class PodRequest:
    """A pod's device requests in HAMi's container order: init containers first.

    `init_count` says how many of `containers` are init containers; `names` carries the
    container names in the same order. `annotations` are the pod's (selectors, policies).
    `sidecars` marks, per container, the init containers that keep running beside the app
    containers (`restartPolicy: Always`): they hold their devices as app containers do.
    """

    key: str
    containers: tuple[ContainerRequest, ...]
    init_count: int = 0
    names: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    cpu_milli: int = 0
    memory_mib: int = 0
    sidecars: frozenset[int] = frozenset()

    @property
    def wants_devices(self) -> bool:
        return any(c.wants_devices for c in self.containers)

    @property
    def vendors(self) -> tuple[str, ...]:
        """The vendors the pod asks, sorted."""
        return tuple(sorted({a.vendor for c in self.containers for a in c.asks}))

    def runs_beside_apps(self, position: int) -> bool:
        """True for app containers and sidecars: containers that run at the same time."""
        return position >= self.init_count or position in self.sidecars
