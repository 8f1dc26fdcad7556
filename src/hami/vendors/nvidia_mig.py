"""HAMi v2.10's dynamic-MIG choice, as pure functions over a GPU's profiles and what is in use.

A request of `memory` MiB gets the smallest allowed profile (by memory, then slice count) that
holds it and has a free placement. Placements of `1g.*` and `3g.*` profiles are tried from the
highest start down, the others from the lowest up, which keeps the big contiguous ranges free
for as long as possible (HAMi's mig_topology.go).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hami.model.allocation import DevicePart
from hami.model.mig import MigPlacement, MigProfile


def prefers_high_placement(profile: str) -> bool:
    return profile.startswith(("1g.", "3g."))


def ordered_placements(profile: MigProfile) -> list[MigPlacement]:
    return sorted(profile.placements, key=lambda p: -p.start if prefers_high_placement(profile.name) else p.start)


def free_placement(profile: MigProfile, occupied: Sequence[MigPlacement]) -> MigPlacement | None:
    """HAMi's selectMigPlacement: the first placement, in the profile's order, that overlaps nothing."""
    for candidate in ordered_placements(profile):
        if not any(candidate.overlaps(used) for used in occupied):
            return candidate
    return None


def select_candidate(profiles: Sequence[MigProfile], occupied: Sequence[MigPlacement],
                     memory: int) -> tuple[MigProfile, MigPlacement] | None:
    """HAMi's selectMigCandidate: the smallest profile of at least `memory` MiB with a free placement."""
    for profile in sorted(profiles, key=lambda p: (p.memory, p.slices)):
        if profile.memory < memory:
            continue
        placement = free_placement(profile, occupied)
        if placement is not None:
            return profile, placement
    return None


def placements_of(parts: Iterable[DevicePart]) -> list[MigPlacement]:
    return [MigPlacement(p.start, p.size) for p in parts if p.size > 0]


def instances_that_fit(profiles: Sequence[MigProfile], occupied: Sequence[MigPlacement], memory: int,
                       most: int) -> int:
    """How many instances for `memory` MiB one after another still fit (at most `most`)."""
    taken = list(occupied)
    count = 0
    while count < most:
        found = select_candidate(profiles, taken, memory)
        if found is None:
            break
        taken.append(found[1])
        count += 1
    return count


def can_place(profiles: Sequence[MigProfile], occupied: Sequence[MigPlacement], requested: Sequence[str]) -> bool:
    """HAMi's canPlaceMigProfiles: whether every requested profile gets a placement at once
    (backtracking, the profiles with the fewest placements first). Not on the scheduling path
    (HAMi's neither); kept for tests of a GPU's geometry."""
    by_name = {p.name: p for p in profiles}
    if any(name not in by_name for name in requested):
        return False
    ordered = sorted(requested, key=lambda n: (len(by_name[n].placements),
                                               -(by_name[n].placements[0].size if by_name[n].placements else 0)))
    used = list(occupied)

    def place(i: int) -> bool:
        if i == len(ordered):
            return True
        for candidate in ordered_placements(by_name[ordered[i]]):
            if any(candidate.overlaps(u) for u in used):
                continue
            used.append(candidate)
            if place(i + 1):
                return True
            used.pop()
        return False

    return place(0)
