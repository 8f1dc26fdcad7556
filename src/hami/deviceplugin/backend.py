"""What the plugin needs from the GPUs: a small interface, with NVML and fake implementations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# XIDs that an application causes and that say nothing about the GPU's health
# (the same list as NVIDIA's device plugin): graphics engine exception, GPU memory page
# fault, reset channel verification error, preemptive cleanup, ECC page retirement pending,
# and the interrupt error of a killed context.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


class BackendError(Exception):
    """A failed query, named like NVML's return codes (e.g. NVML_ERROR_DRIVER_NOT_LOADED)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as discovered; memory in MiB."""

    uuid: str
    index: int
    name: str
    memory_mib: int
    sm_count: int = 0
    numa: int = 0
    # UUIDs of the GPUs this one reaches over NVLink (one entry per peer).
    nvlink_peers: tuple[str, ...] = ()
    healthy: bool = True
    pci_bus_id: str = ""


@dataclass(frozen=True)
class HealthEvent:
    """A GPU became unhealthy (an XID error) or, for backends that can tell, healthy again."""

    uuid: str
    healthy: bool
    reason: str


class Backend(Protocol):
    def init(self) -> None:
        """Open the driver; raises BackendError."""

    def devices(self) -> list[GpuInfo]:
        """All GPUs, in index order; raises BackendError."""

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        """Block up to timeout_s for the next health change; None when there was none."""

    def shutdown(self) -> None:
        """Release the driver."""
