"""The cluster as the engine sees it: devices as flat arrays, usage kept up to date.

Row r of every device array is one device; the devices of node i are rows
`starts[i]:starts[i + 1]`, grouped by vendor (in vendor-name order, each vendor's devices in
the order the node registered them), so that one vendor's devices on a node are a contiguous
range. Only nodes with at least one registered device are held. Mutation is explicit
(`add_pod`, `remove_pod`) and does no I/O: the state is plain data.
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from hami.model.allocation import ContainerDevice, DevicePart, PodAllocation
from hami.model.devices import DeviceInfo, NodeDevices

if TYPE_CHECKING:
    from hami.vendors.base import Vendor
    from hami.vendors.registry import VendorSet

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Footprint:
    """What one pod holds on its node: per device row, tasks, MiB and cores."""

    node: int
    rows: IntArray
    used: IntArray
    mem: IntArray
    cores: IntArray
    cpu_milli: int
    memory_mib: int
    # Per device row, the vendor's marks this pod leaves there (Vendor.marks).
    marks: tuple[tuple[int, tuple[str, ...]], ...] = ()
    # Fixed partitions the pod holds (MIG instances), per device row.
    parts: tuple[tuple[int, DevicePart], ...] = ()


Usage = tuple[int, int, int]  # task slots, MiB, cores


def footprint_of(
    allocation: PodAllocation,
    init_count: int,
    sidecars: frozenset[int] = frozenset(),
    usage: Callable[[ContainerDevice], Usage] | None = None,
) -> dict[str, Usage]:
    """Per device UUID: (tasks, MiB, cores) the pod holds at its peak.

    Init containers run one after another before the app containers; sidecars (init
    containers with `restartPolicy: Always`) keep running beside every later container. So the
    pod holds, per device, the larger of each ordinary init container plus the sidecars started
    before it, and all sidecars plus all app containers. `usage` says what one placed device
    takes (HAMi's AddResourceUsage; by default one task slot and its memory and cores).
    """
    take = usage or _plain_usage
    running: dict[str, list[int]] = {}  # sidecars so far, then app containers too
    peak: dict[str, list[int]] = {}
    for position, container in enumerate(allocation):
        ordinary_init = position < init_count and position not in sidecars
        for d in container:
            amount = take(d)
            if ordinary_init:
                base = running.get(d.uuid, [0, 0, 0])
                top = peak.setdefault(d.uuid, [0, 0, 0])
                for k in range(3):
                    top[k] = max(top[k], base[k] + amount[k])
            else:
                total = running.setdefault(d.uuid, [0, 0, 0])
                for k in range(3):
                    total[k] += amount[k]
    result: dict[str, Usage] = {}
    for uuid in running.keys() | peak.keys():
        a, i = running.get(uuid, [0, 0, 0]), peak.get(uuid, [0, 0, 0])
        result[uuid] = (max(a[0], i[0]), max(a[1], i[1]), max(a[2], i[2]))
    return result


def _plain_usage(device: ContainerDevice) -> Usage:
    return 1, device.usedmem, device.usedcores


class ClusterState:
    def __init__(self, nodes: Iterable[NodeDevices], vendors: VendorSet | None = None):
        if vendors is None:
            from hami.vendors.registry import default_vendors

            vendors = default_vendors()
        self.vendors = vendors
        self.nodes: list[NodeDevices] = [_by_vendor(n) for n in nodes if n.devices]
        self.names: list[str] = [n.name for n in self.nodes]
        self.node_pos: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.name in self.node_pos:
                raise ValueError(f"node {node.name} given twice")
            self.node_pos[node.name] = i
        devices = [d for n in self.nodes for d in n.devices]
        self.devices: list[DeviceInfo] = devices
        sizes = [len(n.devices) for n in self.nodes]
        self.starts: IntArray = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.sizes: IntArray = np.asarray(sizes, dtype=np.int64)
        self.dev_node: IntArray = np.repeat(np.arange(len(self.nodes), dtype=np.int64), sizes)
        self.uuids: list[str] = [d.id for d in devices]
        self.types: list[str] = [d.type for d in devices]
        self.modes: list[str] = [d.mode for d in devices]
        self.count: IntArray = np.asarray([d.count for d in devices], dtype=np.int64)
        self.totalmem: IntArray = np.asarray([d.devmem for d in devices], dtype=np.int64)
        self.totalcore: IntArray = np.asarray([d.devcore for d in devices], dtype=np.int64)
        self.numa: IntArray = np.asarray([d.numa for d in devices], dtype=np.int64)
        self.index: IntArray = np.asarray([d.index for d in devices], dtype=np.int64)
        self.health = np.asarray([d.health for d in devices], dtype=bool)
        self.cordoned = np.asarray(
            [d.id in n.cordoned for n in self.nodes for d in n.devices], dtype=bool
        )
        # Distinct types and modes, so string filters run once per distinct value.
        self.type_names, type_ids = np.unique(np.asarray(self.types, dtype=object), return_inverse=True)
        self.type_id: IntArray = type_ids.astype(np.int64)
        self.mode_names, mode_ids = np.unique(np.asarray(self.modes, dtype=object), return_inverse=True)
        self.mode_id: IntArray = mode_ids.astype(np.int64)
        order = sorted(range(len(self.nodes)), key=lambda i: self.nodes[i].name)
        self.name_rank: IntArray = np.empty(len(self.nodes), dtype=np.int64)
        self.name_rank[order] = np.arange(len(self.nodes), dtype=np.int64)
        self.row_of: dict[tuple[int, str], int] = {
            (int(self.dev_node[r]), uuid): r for r, uuid in enumerate(self.uuids)
        }
        self.uuid_rows: dict[str, list[int]] = {}
        for r, uuid in enumerate(self.uuids):
            self.uuid_rows.setdefault(uuid, []).append(r)
        self._index_vendors(devices)
        # Whether any vendor here marks devices with what its pods are (most clusters: none).
        self._marking = any(getattr(vendors.get(name), "usage_keys", ()) for name in self.vendor_names)

        n_dev = len(devices)
        self.used: IntArray = np.zeros(n_dev, dtype=np.int64)
        self.usedmem: IntArray = np.zeros(n_dev, dtype=np.int64)
        self.usedcores: IntArray = np.zeros(n_dev, dtype=np.int64)
        self.node_cpu: IntArray = np.asarray([n.cpu_milli for n in self.nodes], dtype=np.int64)
        self.node_memory: IntArray = np.asarray([n.memory_mib for n in self.nodes], dtype=np.int64)
        self.node_cpu_used: IntArray = np.zeros(len(self.nodes), dtype=np.int64)
        self.node_memory_used: IntArray = np.zeros(len(self.nodes), dtype=np.int64)
        # Per-node totals for HAMi's node score, kept in step with the usage arrays.
        self.node_count_total: IntArray = self._per_node(self.count)
        self.node_mem_total: IntArray = self._per_node(self.totalmem)
        self.node_core_total: IntArray = self._per_node(self.totalcore)
        self.node_used: IntArray = np.zeros(len(self.nodes), dtype=np.int64)
        self.node_usedmem: IntArray = np.zeros(len(self.nodes), dtype=np.int64)
        self.node_usedcores: IntArray = np.zeros(len(self.nodes), dtype=np.int64)
        self.pods: dict[str, Footprint] = {}
        # Per mark, how many of the pods holding each device row left it (MetaX sGPU: app class, QoS).
        self.marks: dict[str, IntArray] = {}
        # Per device row, the fixed partitions pods hold there (MIG instances), in no order.
        self.parts: dict[int, list[DevicePart]] = {}
        # Per-device checks that depend only on the fixed parts above (health, types, UUIDs), per
        # selector set: most pods share one, so it is computed once per state, not per pod.
        self.static_cache: dict[object, IntArray] = {}

    def _index_vendors(self, devices: list[DeviceInfo]) -> None:
        """Per vendor: its rows, and per node where its devices start and how many there are."""
        names = sorted({d.vendor for d in devices})
        self.vendor_names: list[str] = names
        code = {name: i for i, name in enumerate(names)}
        self.vendor_id: IntArray = np.asarray([code[d.vendor] for d in devices], dtype=np.int64)
        n_nodes = len(self.nodes)
        # One vendor only (the common case): every row is its row, without an index array.
        self.single_vendor = len(names) <= 1
        self._vendor_rows: dict[str, slice | IntArray] = {}
        self._vendor_first: dict[str, IntArray] = {}
        self._vendor_size: dict[str, IntArray] = {}
        for name in names:
            rows = np.flatnonzero(self.vendor_id == code[name]).astype(np.int64)
            self._vendor_rows[name] = slice(None) if self.single_vendor else rows
            size = np.bincount(self.dev_node[rows], minlength=n_nodes).astype(np.int64)
            first = np.full(n_nodes, -1, dtype=np.int64)
            if len(rows):
                # Rows are in node order, so a node's first row of the vendor is its smallest.
                nodes_of_rows = self.dev_node[rows]
                starts = np.flatnonzero(np.concatenate([[True], nodes_of_rows[1:] != nodes_of_rows[:-1]]))
                first[nodes_of_rows[starts]] = rows[starts]
            self._vendor_first[name] = first
            self._vendor_size[name] = size

    def vendor_rows(self, vendor: str) -> slice | IntArray:
        """The vendor's rows over the whole cluster (a slice when every row is the vendor's)."""
        rows = self._vendor_rows.get(vendor)
        return np.zeros(0, dtype=np.int64) if rows is None else rows

    def vendor_sizes(self, vendor: str) -> IntArray:
        """Per node: how many devices of the vendor it has."""
        size = self._vendor_size.get(vendor)
        return np.zeros(len(self.nodes), dtype=np.int64) if size is None else size

    def vendor_rows_of_node(self, node: int, vendor: str) -> range:
        size = self._vendor_size.get(vendor)
        if size is None or size[node] == 0:
            return range(0)
        first = int(self._vendor_first[vendor][node])
        return range(first, first + int(size[node]))

    def vendor_of_row(self, row: int) -> Vendor:
        return self.vendors[self.devices[row].vendor]

    def usage_of(self, row: int, placed: ContainerDevice) -> tuple[int, int, int]:
        """What a placed device takes on row `row` (the vendor's AddResourceUsage)."""
        vendor = self.vendors.get(self.devices[row].vendor)
        if vendor is None:
            return 1, placed.usedmem, placed.usedcores
        return vendor.usage(self.devices[row], placed)

    def _per_node(self, values: IntArray) -> IntArray:
        if len(self.nodes) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.add.reduceat(values, self.starts[:-1]).astype(np.int64)

    @property
    def node_names(self) -> list[str]:
        return self.names

    def rows_of_node(self, node: int) -> range:
        return range(int(self.starts[node]), int(self.starts[node + 1]))

    def add_pod(
        self,
        key: str,
        node_name: str,
        allocation: PodAllocation,
        init_count: int = 0,
        cpu_milli: int = 0,
        memory_mib: int = 0,
        sidecars: frozenset[int] = frozenset(),
        annotations: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Count a pod's devices as used. Returns problems (unknown node or device UUIDs).

        `annotations` are the pod's: the vendors that mark devices (Vendor.marks) read them.
        """
        if key in self.pods:
            self.remove_pod(key)
        node = self.node_pos.get(node_name)
        if node is None:
            return [f"pod {key}: node {node_name} has no registered devices; its allocation is ignored"]
        problems = []
        rows, used, mem, cores = [], [], [], []

        def usage(placed: ContainerDevice) -> tuple[int, int, int]:
            row = self.row_of.get((node, placed.uuid))
            return _plain_usage(placed) if row is None else self.usage_of(row, placed)

        plain = self.single_vendor and self.vendor_names == ["NVIDIA"]
        footprint_map = footprint_of(allocation, init_count, sidecars, None if plain else usage)
        for uuid, (tasks, mib, pct) in sorted(footprint_map.items()):
            row = self.row_of.get((node, uuid))
            if row is None:
                problems.append(f"pod {key}: device {uuid} is not on node {node_name}; ignored")
                continue
            rows.append(row)
            used.append(tasks)
            mem.append(mib)
            cores.append(pct)
        footprint = Footprint(
            node=node,
            rows=np.asarray(rows, dtype=np.int64),
            used=np.asarray(used, dtype=np.int64),
            mem=np.asarray(mem, dtype=np.int64),
            cores=np.asarray(cores, dtype=np.int64),
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
            marks=self._marks_of(node, allocation, annotations) if annotations and self._marking else (),
            parts=self._parts_of(node, allocation),
        )
        self._apply(footprint, +1)
        self.pods[key] = footprint
        return problems

    def _marks_of(self, node: int, allocation: PodAllocation,
                  annotations: Mapping[str, str]) -> tuple[tuple[int, tuple[str, ...]], ...]:
        found: dict[int, set[str]] = {}
        for container in allocation:
            for placed in container:
                row = self.row_of.get((node, placed.uuid))
                if row is None:
                    continue
                vendor = self.vendors.get(self.devices[row].vendor)
                if vendor is None or not vendor.usage_keys:
                    continue
                found.setdefault(row, set()).update(vendor.marks(annotations, placed))
        return tuple((row, tuple(sorted(marks))) for row, marks in found.items() if marks)
    def _parts_of(self, node: int, allocation: PodAllocation) -> tuple[tuple[int, DevicePart], ...]:
        found = []
        for container in allocation:
            for placed in container:
                if placed.part is not None:
                    row = self.row_of.get((node, placed.uuid))
                    if row is not None:
                        found.append((row, placed.part))
        return tuple(found)

    def parts_of(self, row: int) -> list[DevicePart]:
        """The fixed partitions pods hold on a device row (MIG instances)."""
        return self.parts.get(row, [])

    def remove_pod(self, key: str) -> bool:
        """Free what a pod held; False when the pod was not counted."""
        footprint = self.pods.pop(key, None)
        if footprint is None:
            return False
        self._apply(footprint, -1)
        return True

    @contextlib.contextmanager
    def without(self, keys: Iterable[str]) -> Iterator[None]:
        """The state as if these pods were gone, for the duration of the block (what-if questions
        such as "would the pod fit without these victims"); unknown keys are ignored."""
        removed = [(key, self.pods.pop(key)) for key in dict.fromkeys(keys) if key in self.pods]
        for _, footprint in removed:
            self._apply(footprint, -1)
        try:
            yield
        finally:
            for key, footprint in removed:
                self._apply(footprint, +1)
                self.pods[key] = footprint

    def _apply(self, f: Footprint, sign: int) -> None:
        np.add.at(self.used, f.rows, sign * f.used)
        np.add.at(self.usedmem, f.rows, sign * f.mem)
        np.add.at(self.usedcores, f.rows, sign * f.cores)
        self.node_used[f.node] += sign * int(f.used.sum())
        self.node_usedmem[f.node] += sign * int(f.mem.sum())
        self.node_usedcores[f.node] += sign * int(f.cores.sum())
        self.node_cpu_used[f.node] += sign * f.cpu_milli
        self.node_memory_used[f.node] += sign * f.memory_mib
        for row, marks in f.marks:
            for mark in marks:
                counts = self.marks.get(mark)
                if counts is None:
                    counts = self.marks[mark] = np.zeros(len(self.devices), dtype=np.int64)
                counts[row] += sign
        for row, part in f.parts:
            held = self.parts.setdefault(row, [])
            if sign > 0:
                held.append(part)
            else:
                held.remove(part)
                if not held:
                    del self.parts[row]

    def snapshot(self) -> ClusterState:
        """A copy whose usage can change without touching this one (the devices are shared), for
        long what-if searches outside the lock that guards this state."""
        other = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):  # every array, so usage added later is copied too
                setattr(other, name, value.copy())
        # Everything else that _apply changes.
        other.pods = dict(self.pods)
        other.marks = {mark: counts.copy() for mark, counts in self.marks.items()}
        other.parts = {row: list(held) for row, held in self.parts.items()}
        other.static_cache = dict(self.static_cache)
        return other

    def nodes_named(self, names: Sequence[str]) -> IntArray:
        """Positions of the named nodes we know, in the order given (unknown names are left out)."""
        pos = self.node_pos
        if len(names) > 1:
            try:  # all known: one C-level lookup
                return np.asarray(operator.itemgetter(*names)(pos), dtype=np.int64)
            except KeyError:
                pass
        return np.asarray([pos[n] for n in names if n in pos], dtype=np.int64)


def _by_vendor(node: NodeDevices) -> NodeDevices:
    """The node with its devices grouped by vendor (stable), so each vendor's rows are contiguous."""
    devices = node.devices
    if all(d.vendor == devices[0].vendor for d in devices):
        return node
    ordered = tuple(sorted(devices, key=lambda d: d.vendor))
    return NodeDevices(name=node.name, devices=ordered, cordoned=node.cordoned, cpu_milli=node.cpu_milli,
                       memory_mib=node.memory_mib)
