"""Which devices each container of a pod got: the scheduler's decision."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePart:
    """A fixed partition of a device given to a container: an NVIDIA MIG GPU instance of
    `profile` on memory slices `[start, start + size)`."""

    profile: str
    start: int
    size: int


@dataclass(frozen=True)
class ContainerDevice:
    """One device given to one container: `usedmem` MiB and `usedcores` percent of it.

    `part` is set where the container gets a fixed partition of the device rather than a
    share of it (a MIG instance); it is not part of the allocation annotation's text.
    """

    uuid: str
    vendor: str
    usedmem: int
    usedcores: int
    part: DevicePart | None = None


# One inner tuple per container, init containers first, as HAMi encodes them.
PodAllocation = tuple[tuple[ContainerDevice, ...], ...]
