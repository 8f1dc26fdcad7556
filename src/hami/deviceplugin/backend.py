"""What the plugin needs from the GPUs: a small interface, with NVML and fake implementations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hami.model.mig import MigPlacement

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


# NVML's topology levels (nvmlGpuTopologyLevel_t): how far apart two GPUs are on PCIe.
TOPOLOGY_INTERNAL = 0  # the same board
TOPOLOGY_SINGLE = 10  # one PCIe switch
TOPOLOGY_MULTIPLE = 20  # several PCIe switches, no host bridge
TOPOLOGY_HOSTBRIDGE = 30  # the same host bridge
TOPOLOGY_NODE = 40  # the same NUMA node (CPU)
TOPOLOGY_SYSTEM = 50  # across CPUs (SMP interconnect)

# NVML's NVLink remote device types.
NVLINK_DEVICE_GPU = 0
NVLINK_DEVICE_SWITCH = 2

# NVML's GPU-instance profile indexes (NVML_GPU_INSTANCE_PROFILE_*), by slices; the
# revisions are the media-extension (+me) and double-memory 1g profiles.
GI_PROFILE_1_SLICE = 0
GI_PROFILE_2_SLICE = 1
GI_PROFILE_3_SLICE = 2
GI_PROFILE_4_SLICE = 3
GI_PROFILE_7_SLICE = 4
GI_PROFILE_8_SLICE = 5
GI_PROFILE_6_SLICE = 6
GI_PROFILE_1_SLICE_REV1 = 7
GI_PROFILE_2_SLICE_REV1 = 8
GI_PROFILE_1_SLICE_REV2 = 9
# The plain profile of each slice count (HAMi's profileNameToGIProfileID), then its revisions.
GI_PROFILES_BY_SLICES: dict[int, tuple[int, ...]] = {
    1: (GI_PROFILE_1_SLICE, GI_PROFILE_1_SLICE_REV2, GI_PROFILE_1_SLICE_REV1),
    2: (GI_PROFILE_2_SLICE, GI_PROFILE_2_SLICE_REV1),
    3: (GI_PROFILE_3_SLICE,),
    4: (GI_PROFILE_4_SLICE,),
    6: (GI_PROFILE_6_SLICE,),
    7: (GI_PROFILE_7_SLICE,),
    8: (GI_PROFILE_8_SLICE,),
}
# NVML's compute-instance profile index for a whole GPU instance of N slices (shared engines).
CI_PROFILE_BY_SLICES = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}


@dataclass(frozen=True)
class NvLink:
    """One enabled NVLink of a GPU: the PCI bus ID at its far end and what is there (None where
    the driver does not say)."""

    remote_bus_id: str | None
    remote_type: int | None


@dataclass(frozen=True)
class GiProfileInfo:
    """nvmlDeviceGetGpuInstanceProfileInfo: one GPU-instance profile of a GPU."""

    index: int  # the NVML_GPU_INSTANCE_PROFILE_* asked for
    id: int  # NVML's profile ID (nvidia-smi mig -lgip)
    name: str  # "MIG 2g.10gb"
    slices: int
    instances: int
    sm_count: int
    memory_mib: int


@dataclass(frozen=True)
class MigInstance:
    """A GPU instance that exists on a GPU, with its compute instances and MIG device UUID."""

    gpu_instance_id: int
    profile_id: int
    placement: MigPlacement
    compute_instance_ids: tuple[int, ...]
    mig_uuid: str  # "" while it has no compute instance


class Backend(Protocol):
    def init(self) -> None:
        """Open the driver; raises BackendError."""

    def devices(self) -> list[GpuInfo]:
        """All GPUs, in index order; raises BackendError."""

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        """Block up to timeout_s for the next health change; None when there was none."""

    def shutdown(self) -> None:
        """Release the driver."""

    # ---- links (nvmlDeviceGetNvLink*, nvmlDeviceGetTopologyCommonAncestor) ----------------

    def nvlinks(self, uuid: str) -> list[NvLink]:
        """The GPU's enabled NVLinks; [] where NVLink is not supported. Raises BackendError."""

    def common_ancestor(self, uuid: str, peer: str) -> int:
        """The TOPOLOGY_* level of two GPUs. Raises BackendError."""

    # ---- MIG (nvmlDevice*Mig*, *GpuInstance*, *ComputeInstance*) -----------------------------

    def mig_mode(self, uuid: str) -> tuple[bool, bool]:
        """(current, pending) MIG mode; BackendError NVML_ERROR_NOT_SUPPORTED on a GPU without MIG."""

    def set_mig_mode(self, uuid: str, enabled: bool) -> None:
        """Ask for a MIG mode; it may stay pending until the GPU is reset. Raises BackendError."""

    def gi_profile(self, uuid: str, index: int) -> GiProfileInfo:
        """A GPU-instance profile; BackendError (NOT_SUPPORTED, INVALID_ARGUMENT) where it does not exist."""

    def gi_placements(self, uuid: str, index: int) -> list[MigPlacement]:
        """Every placement NVML allows for the profile, whatever is in use. Raises BackendError."""

    def create_gpu_instance(self, uuid: str, index: int, placement: MigPlacement) -> int:
        """A GPU instance of the profile at the placement; its ID. Raises BackendError
        (NVML_ERROR_INSUFFICIENT_RESOURCES where it overlaps one, NOT_SUPPORTED outside MIG mode)."""

    def create_compute_instance(self, uuid: str, gpu_instance: int, ci_index: int) -> int:
        """A compute instance of the CI profile in a GPU instance; its ID. Raises BackendError."""

    def destroy_compute_instance(self, uuid: str, gpu_instance: int, compute_instance: int) -> None:
        """Raises BackendError (NVML_ERROR_IN_USE while a process runs on it, NOT_FOUND)."""

    def destroy_gpu_instance(self, uuid: str, gpu_instance: int) -> None:
        """Raises BackendError (NVML_ERROR_IN_USE while it has compute instances, NOT_FOUND)."""

    def gpu_instances(self, uuid: str) -> list[MigInstance]:
        """Every GPU instance on the GPU. Raises BackendError."""

    def busy(self, uuid: str) -> bool:
        """Whether a process runs on the GPU or one of its MIG devices (True where unknown)."""
