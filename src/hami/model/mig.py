"""NVIDIA MIG geometry as a node registers it: profiles and the slice ranges they may occupy.

A MIG-capable GPU has 8 memory slices (7 compute slices). A GPU instance of a profile occupies
one of the placements NVML lists for it, `[start, start + size)`; two instances may not overlap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class MigPlacement:
    start: int
    size: int

    def overlaps(self, other: MigPlacement) -> bool:
        return self.start < other.start + other.size and other.start < self.start + self.size


@dataclass(frozen=True)
class MigProfile:
    """One allowed GPU-instance profile of a GPU (HAMi's MigProfile).

    `memory` is MiB as NVML reports it, `core` the percent of the GPU's SMs (rounded up), and
    `placements` every place NVML allows an instance of it, whatever is in use.
    """

    name: str  # "2g.10gb"
    memory: int
    core: int
    slices: int  # NVML's sliceCount
    instances: int = 0  # NVML's instanceCount: at most this many at once
    placements: tuple[MigPlacement, ...] = ()
