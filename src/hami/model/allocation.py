"""Which devices each container of a pod got: the scheduler's decision."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerDevice:
    """One device given to one container: `usedmem` MiB and `usedcores` percent of it."""

    uuid: str
    vendor: str
    usedmem: int
    usedcores: int


# One inner tuple per container, init containers first, as HAMi encodes them.
PodAllocation = tuple[tuple[ContainerDevice, ...], ...]
