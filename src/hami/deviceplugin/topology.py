"""How the node's GPUs are linked, measured as HAMi measures it, and the scores it publishes.

For each ordered pair of GPUs (HAMi's calculate_score.go and links.go):
- one PCIe entry from the common ancestor: same board 60, one switch 50, several switches 40,
  one host bridge 30, same CPU 20, across CPUs 10;
- one NVLink entry when they are linked: 100 per link, counting the links whose far end is the
  peer's PCI bus ID; without direct links, GPUs that both reach NVSwitches count the smaller
  number of switch links.
A pair scores the sum of its entries. When the two directions of a pair have a different number
of entries (NVLink seen from one side only: a broken link or driver), the pair scores 0 and the
node gets a Warning event.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from hami.deviceplugin.backend import (
    NVLINK_DEVICE_SWITCH,
    TOPOLOGY_HOSTBRIDGE,
    TOPOLOGY_INTERNAL,
    TOPOLOGY_MULTIPLE,
    TOPOLOGY_NODE,
    TOPOLOGY_SINGLE,
    TOPOLOGY_SYSTEM,
    Backend,
    BackendError,
    GpuInfo,
    NvLink,
)
from hami.deviceplugin.nvml import sysfs_bus_id

P2P_SCORES = {TOPOLOGY_INTERNAL: 60, TOPOLOGY_SINGLE: 50, TOPOLOGY_MULTIPLE: 40, TOPOLOGY_HOSTBRIDGE: 30,
              TOPOLOGY_NODE: 20, TOPOLOGY_SYSTEM: 10}
NVLINK_SCORE = 100  # per link
MAX_NVLINKS = 18  # HAMi's link types stop at 18 (H100, B200)
ASYMMETRIC_REASON = "AsymmetricGPUP2PLink"


@dataclass(frozen=True)
class Topology:
    """Per GPU UUID, its score towards every other GPU; and the pairs scored 0 for asymmetry."""

    scores: dict[str, dict[str, int]]
    asymmetric: tuple[tuple[str, str], ...] = ()


def nvlink_count(links: Sequence[NvLink], peer_links: Sequence[NvLink], peer_bus: str) -> int:
    """HAMi's GetNVLink: direct links to the peer, else the smaller count of NVSwitch links when
    both GPUs reach NVSwitches; 0 when not linked (or past 18 links)."""
    wanted = sysfs_bus_id(peer_bus)
    remotes = [link.remote_bus_id for link in links if link.remote_bus_id is not None]
    direct = sum(1 for bus in remotes if sysfs_bus_id(bus) == wanted)
    if 1 <= direct <= MAX_NVLINKS:
        return direct
    if not remotes:
        return 0
    mine = sum(1 for link in links if link.remote_type == NVLINK_DEVICE_SWITCH)
    theirs = sum(1 for link in peer_links if link.remote_type == NVLINK_DEVICE_SWITCH)
    count = min(mine, theirs) if mine and theirs else 0
    return count if count <= MAX_NVLINKS else 0


def p2p_score(level: int) -> int:
    try:
        return P2P_SCORES[level]
    except KeyError:
        raise BackendError("NVML_ERROR_UNKNOWN", f"unknown topology level {level}") from None


def measure(backend: Backend, gpus: Sequence[GpuInfo]) -> Topology:
    """The pair scores of the GPUs; raises BackendError when a link query fails (HAMi then
    publishes no scores either)."""
    links = {g.uuid: backend.nvlinks(g.uuid) for g in gpus}
    entries: dict[tuple[str, str], list[int]] = {}
    for first, second in itertools.permutations(gpus, 2):
        found = [p2p_score(backend.common_ancestor(first.uuid, second.uuid))]
        count = nvlink_count(links[first.uuid], links[second.uuid], second.pci_bus_id)
        if count:
            found.append(NVLINK_SCORE * count)
        entries[(first.uuid, second.uuid)] = found
    scores: dict[str, dict[str, int]] = {g.uuid: {} for g in gpus}
    asymmetric = []
    for (a, b), found in entries.items():
        if len(found) != len(entries[(b, a)]):
            scores[a][b] = 0
            if a < b:
                asymmetric.append((a, b))
        else:
            scores[a][b] = sum(found)
    return Topology(scores=scores, asymmetric=tuple(asymmetric))
