"""A vendor's node side, as the shared plugin sees it.

The gRPC server, the kubelet registration, the node agent and the Allocate flow are the same
for every vendor (hami.deviceplugin.server, .agent, .allocate). A vendor module says only what
differs: the devices its management library reports (`Chip` and a backend), the IDs kubelet
sees for them, the node annotations HAMi's scheduler reads, and what a container gets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from hami.config import HamiConfig
from hami.deviceplugin.allocate import Session, pod_name
from hami.deviceplugin.pods import Pod, PodSource
from hami.model.devices import DeviceInfo


@dataclass(frozen=True, kw_only=True)
class Chip:
    """One physical device as discovered: the facts every vendor has."""

    uuid: str
    index: int
    healthy: bool = True
    numa: int = 0


class ChipLike(Protocol):
    """What the shared plugin reads of a device (NVIDIA's GpuInfo and every Chip have it)."""

    @property
    def uuid(self) -> str: ...

    @property
    def index(self) -> int: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def numa(self) -> int: ...


C = TypeVar("C", bound=ChipLike)


@dataclass(frozen=True)
class NodeFilter:
    """The node's `nodeconfig` entry as it applies to every vendor: devices left out, shares per device."""

    uuids: frozenset[str] = frozenset()
    indexes: frozenset[int] = frozenset()
    split_count: int | None = None

    @staticmethod
    def of(config: HamiConfig, node: str) -> NodeFilter:
        override = config.node_override(node)
        if override is None:
            return NodeFilter()
        return NodeFilter(uuids=frozenset(override.filterdevices.uuid),
                          indexes=frozenset(override.filterdevices.index),
                          split_count=override.devicesplitcount)

    def keeps(self, chip: ChipLike) -> bool:
        return chip.uuid not in self.uuids and chip.index not in self.indexes


# The pods bound to this node, asked only by the vendors that need them (AMD's CU masks).
NodePods = Callable[[], list[Pod]]


@dataclass
class NodeVendor(Generic[C]):
    """A vendor's node side. Subclasses fill in discovery, registration and grants."""

    name: str  # the --vendor word
    resource_name: str  # the resource kubelet advertises
    to_allocate_key: str  # the pod annotation holding the scheduler's decision per container
    split_count: int  # shares of one device that kubelet sees (the registration's `count`)
    handshake_key: str | None = None
    node_filter: NodeFilter = field(default_factory=NodeFilter)
    noun: str = "device"  # what the vendor calls a device, for log lines

    @property
    def socket_name(self) -> str:
        return f"hami-{self.name}.sock"

    def usable(self, chips: Sequence[C]) -> list[C]:
        """The devices the node offers (its `filterdevices` left out)."""
        return [c for c in chips if self.node_filter.keeps(c)]

    def prepare(self, backend: Any, source: PodSource, chips: Sequence[C]) -> list[C]:
        """Work done once before serving, with the device library and the API server at hand; the
        devices served (NVIDIA: dynamic MIG and the links between GPUs)."""
        return list(chips)

    def background(self, stopping: threading.Event) -> None:
        """A loop the plugin runs beside serving until `stopping` is set (NVIDIA: MIG cleanup)."""
        return

    def share_ids(self, chip: C) -> list[str]:
        """The IDs kubelet sees for one device (HAMi's `<uuid>-<i>` unless a vendor differs)."""
        return [f"{chip.uuid}-{i}" for i in range(self.split_count)]

    def describe(self, chip: C) -> str:
        return f"{chip.uuid} (index {chip.index}, NUMA {chip.numa}){'' if chip.healthy else ', UNHEALTHY'}"

    def registration(self, chips: Sequence[C], health: Mapping[str, bool]) -> dict[str, str]:
        """The node annotations that register the devices (the handshake aside)."""
        raise NotImplementedError

    def handshake(self, now: datetime) -> str:
        """The handshake value the node agent writes (for vendors with a handshake key)."""
        raise NotImplementedError

    def session(self, pod: Pod, chips: Mapping[str, C], node_pods: NodePods) -> Session:
        """Grants for one Allocate call of `pod` (`chips` by UUID)."""
        raise NotImplementedError


def go_device_json(devices: Sequence[DeviceInfo], vendor: str | None = None) -> str:
    """A registration list as Go's encoding/json writes HAMi's DeviceInfo: fields in struct order,
    zero values left out (omitempty), custominfo keys sorted, no spaces."""
    items = []
    for d in devices:
        obj: dict[str, Any] = {"id": d.id, "index": d.index, "count": d.count, "devmem": d.devmem,
                               "devcore": d.devcore, "type": d.type, "numa": d.numa, "health": d.health,
                               "devicevendor": vendor, "custominfo": dict(sorted(d.custom.items())) or None}
        items.append({k: v for k, v in obj.items() if v})
    return json.dumps(items, separators=(",", ":"))


def container_name(container: Mapping[str, Any]) -> str:
    return str(container.get("name", ""))


def pod_uid(pod: Pod) -> str:
    """The pod's UID (its namespace_name when a hand-written pod has none)."""
    return str((pod.get("metadata") or {}).get("uid") or pod_name(pod).replace("/", "_"))


def pod_annotations(pod: Pod) -> dict[str, str]:
    return {str(k): str(v) for k, v in ((pod.get("metadata") or {}).get("annotations") or {}).items()}


def terminated(pod: Pod) -> bool:
    """Whether the pod's containers are done for good (its devices are free again)."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def with_health(chips: Sequence[C], health: Mapping[str, bool]) -> list[tuple[C, bool]]:
    return [(c, health.get(c.uuid, c.healthy)) for c in chips]
