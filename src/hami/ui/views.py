"""What each page shows, computed from the store: plain data in, plain rows out (no HTTP, no I/O).

Devices are read from the engine's state, so every vendor the engine knows appears here as it is,
grouped by `DeviceInfo.vendor` and `.type`; nothing here names a vendor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from hami.model.requests import NO_PERCENTAGE, PodRequest
from hami.ui.prometheus import Usage
from hami.ui.store import PodInfo, StoreView

# May the viewer see the pods of this namespace?
PodFilter = Callable[[str], bool]


@dataclass(frozen=True)
class Holder:
    """A pod's share of one device. `pod` is "" when the viewer may not see that pod."""

    pod: str
    memory: int
    cores: int
    slots: int


@dataclass
class DeviceRow:
    node: str
    uuid: str
    index: int
    vendor: str
    type: str
    mode: str
    numa: int
    health: bool
    cordoned: bool
    slots: int
    slots_used: int
    memory: int
    memory_used: int
    cores: int
    cores_used: int
    holders: list[Holder] = field(default_factory=list)
    hidden_pods: int = 0
    # Live usage from the node monitor (Prometheus), None when not known.
    memory_in_use: int | None = None
    utilization: float | None = None
    memory_unit: str = "MiB"  # "" for a vendor whose devices count memory in units of their own

    @property
    def exclusive(self) -> bool:
        """Held whole by one pod: all of its compute asked (HAMi's cores 100)."""
        return any(h.cores >= self.cores > 0 for h in self.holders)

    @property
    def sharing(self) -> str:
        if self.exclusive:
            return "exclusive"
        return "shared" if self.slots_used > 1 else ("in use" if self.slots_used else "free")


@dataclass
class NodeRow:
    name: str
    ready: bool
    unschedulable: bool
    lock: str
    devices: list[DeviceRow]

    @property
    def vendors(self) -> list[str]:
        return sorted({d.vendor for d in self.devices})

    @property
    def memory(self) -> int:
        return sum(d.memory for d in self.devices)

    @property
    def memory_used(self) -> int:
        return sum(d.memory_used for d in self.devices)


@dataclass
class TypeRow:
    """Overview: one vendor and device type."""

    vendor: str
    type: str
    nodes: int = 0
    devices: int = 0
    unhealthy: int = 0
    free_devices: int = 0  # no task on them at all
    slots: int = 0
    slots_used: int = 0
    memory: int = 0
    memory_used: int = 0
    cores: int = 0
    cores_used: int = 0
    memory_in_use: int | None = None
    memory_unit: str = "MiB"
    # Free compute (in device shares, 1.0 = one whole device) that no typical pod could use.
    fragmented: float | None = None
    free_share: float = 0.0


def memory_unit(view: StoreView, vendor: str) -> str:
    """MiB for vendors whose pods ask memory in MiB; "" for those whose devices register a
    share of their own (Enflame GCU registers 100, for example)."""
    known = view.state.vendors.get(vendor)
    return "MiB" if known is None or known.resources.memory else ""


def device_rows(view: StoreView, node: int, may_see: PodFilter, holders: dict[tuple[str, str], list[Holder]]
                ) -> list[DeviceRow]:
    state = view.state
    info = state.nodes[node]
    rows = []
    for offset, r in enumerate(state.rows_of_node(node)):
        device = info.devices[offset]
        held = holders.get((info.name, device.id), [])
        shown = [h for h in held if h.pod and may_see(h.pod.split("/", 1)[0])]
        hidden = [h for h in held if h not in shown]
        if hidden:
            shown.append(Holder("", sum(h.memory for h in hidden), sum(h.cores for h in hidden),
                                sum(h.slots for h in hidden)))
        rows.append(DeviceRow(
            node=info.name, uuid=device.id, index=device.index, vendor=device.vendor, type=device.type,
            mode=device.mode, numa=device.numa, health=bool(state.health[r]), cordoned=bool(state.cordoned[r]),
            slots=int(state.count[r]), slots_used=int(state.used[r]),
            memory=int(state.totalmem[r]), memory_used=int(state.usedmem[r]),
            cores=int(state.totalcore[r]), cores_used=int(state.usedcores[r]),
            holders=shown, hidden_pods=len(hidden), memory_unit=memory_unit(view, device.vendor),
        ))
    return rows


def holders_by_device(view: StoreView, nodes: set[str]) -> dict[tuple[str, str], list[Holder]]:
    """Per (node, device UUID) of the given nodes, each pod's share as the engine counts it."""
    state = view.state
    positions = {state.node_pos[n] for n in nodes if n in state.node_pos}
    result: dict[tuple[str, str], list[Holder]] = {}
    for key, footprint in sorted(kv for kv in state.pods.items() if kv[1].node in positions):
        node = state.names[footprint.node]
        for r, slots, memory, cores in zip(footprint.rows.tolist(), footprint.used.tolist(), footprint.mem.tolist(),
                                           footprint.cores.tolist(), strict=True):
            result.setdefault((node, state.uuids[r]), []).append(Holder(key, memory, cores, slots))
    return result


def node_rows(view: StoreView, may_see: PodFilter, names: Iterable[str] | None = None) -> list[NodeRow]:
    """Nodes with devices (all, or those named), by name."""
    state = view.state
    wanted = sorted(state.node_pos) if names is None else [n for n in names if n in state.node_pos]
    holders = holders_by_device(view, set(wanted))
    rows = []
    for name in wanted:
        info = view.nodes.get(name)
        rows.append(NodeRow(
            name=name,
            ready=info.ready if info else False,
            unschedulable=info.unschedulable if info else False,
            lock=info.lock if info else "",
            devices=device_rows(view, state.node_pos[name], may_see, holders),
        ))
    return rows


def node_summaries(view: StoreView) -> list[tuple[str, str, str, int, int, int, int, int]]:
    """Per node with devices, without building device rows: (name, vendors, types, devices,
    memory used, memory, slots used, slots). Vectorised: this is the 1,000-node listing."""
    state = view.state
    starts = state.starts[:-1]
    if not len(starts):
        return []
    mem = np.add.reduceat(state.totalmem, starts)
    mem_used = np.add.reduceat(state.usedmem, starts)
    slots = np.add.reduceat(state.count, starts)
    used = np.add.reduceat(state.used, starts)
    out = []
    for i, node in enumerate(state.nodes):
        vendors = ", ".join(sorted({d.vendor for d in node.devices}))
        types = ", ".join(sorted({d.type for d in node.devices}))
        out.append((node.name, vendors, types, len(node.devices), int(mem_used[i]), int(mem[i]), int(used[i]),
                    int(slots[i])))
    return out


def overview(view: StoreView, fragmented: dict[tuple[str, str], tuple[float, float]] | None = None
             ) -> list[TypeRow]:
    """Allocation per vendor and device type, vectorised over every device of the cluster."""
    state = view.state
    rows: dict[tuple[str, str], TypeRow] = {}
    nodes_of: dict[tuple[str, str], set[int]] = {}
    vendors = [d.vendor for n in state.nodes for d in n.devices]
    keys = list(zip(vendors, state.types, strict=True))
    distinct = sorted(set(keys))
    group = {k: i for i, k in enumerate(distinct)}
    gid = np.asarray([group[k] for k in keys], dtype=np.int64)
    size = len(distinct)

    def total(values: np.ndarray) -> list[int]:
        return [int(v) for v in np.bincount(gid, weights=values, minlength=size)] if len(gid) else [0] * size

    sums = {name: total(values) for name, values in (
        ("slots", state.count), ("slots_used", state.used), ("memory", state.totalmem),
        ("memory_used", state.usedmem), ("cores", state.totalcore), ("cores_used", state.usedcores),
        ("unhealthy", (~state.health).astype(np.int64)), ("free_devices", (state.used == 0).astype(np.int64)),
        ("devices", np.ones(len(gid), dtype=np.int64)),
    )}
    for k, node in zip(keys, state.dev_node.tolist(), strict=True):
        nodes_of.setdefault(k, set()).add(node)
    for i, k in enumerate(distinct):
        row = TypeRow(vendor=k[0], type=k[1], nodes=len(nodes_of[k]), memory_unit=memory_unit(view, k[0]),
                      **{name: values[i] for name, values in sums.items()})
        row.free_share = (row.cores - row.cores_used) / 100.0
        if fragmented is not None and k in fragmented:
            row.fragmented, row.free_share = fragmented[k]
        rows[k] = row
    return list(rows.values())


def nodes_per_vendor(view: StoreView) -> dict[str, int]:
    """How many nodes have devices of each vendor (a node with two types counts once)."""
    counts: dict[str, int] = {}
    for node in view.state.nodes:
        for vendor in {d.vendor for d in node.devices}:
            counts[vendor] = counts.get(vendor, 0) + 1
    return counts


# ---- pods --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """One container's device request, as a person reads it."""

    container: str
    vendor: str
    devices: int
    memory: str  # "3000 MiB", "50 %", or "" for the default
    cores: int


def asks(request: PodRequest) -> list[Ask]:
    """Every vendor ask of every container (a container may ask several vendors)."""
    out = []
    for position, container in enumerate(request.containers):
        name = request.names[position] if position < len(request.names) else str(position)
        for c in container.asks:
            if c.memreq:
                memory = f"{c.memreq} MiB"
            elif c.mem_percentage != NO_PERCENTAGE:
                memory = f"{c.mem_percentage} %"
            else:
                memory = ""
            out.append(Ask(name, c.vendor, c.nums, memory, c.coresreq))
    return out


@dataclass
class PodRow:
    info: PodInfo
    asks: list[Ask]
    # (container name, device UUID, device type, MiB, cores) of the decision, if any.
    allocated: list[tuple[str, str, str, int, int]]
    decided_node: str
    # "held by this pod", "held by <pod>", "" (the node lock of the pod's node).
    lock: str
    memory_in_use: int | None = None
    utilization: float | None = None


# ---- live usage (Prometheus) ------------------------------------------------------------------


def add_device_usage(nodes: list[NodeRow], usage: Usage) -> None:
    for node in nodes:
        for d in node.devices:
            d.memory_in_use = usage.device_memory.get((node.name, d.uuid))
            d.utilization = usage.device_utilization.get((node.name, d.uuid))


def add_pod_usage(pods: list[PodRow], usage: Usage) -> None:
    for row in pods:
        row.memory_in_use = usage.pod_memory.get(row.info.key)
        row.utilization = usage.pod_utilization.get(row.info.key)


def add_type_usage(rows: list[TypeRow], view: StoreView, usage: Usage) -> None:
    """Memory in use per vendor and type: the sum over the devices the monitors report."""
    state = view.state
    totals: dict[tuple[str, str], int] = {}
    for node in state.nodes:
        for d in node.devices:
            used = usage.device_memory.get((node.name, d.id))
            if used is not None:
                totals[(d.vendor, d.type)] = totals.get((d.vendor, d.type), 0) + used
    for row in rows:
        row.memory_in_use = totals.get((row.vendor, row.type))


def pod_keys(view: StoreView, may_see: PodFilter, pending_only: bool = False, namespace: str = "",
             node: str = "") -> list[str]:
    """The pods to list, by key: those the viewer may see, narrowed by the filters."""
    keys = []
    for key, info in view.pods.items():
        if not may_see(info.namespace) or (namespace and info.namespace != namespace):
            continue
        if pending_only and not info.pending:
            continue
        if node and info.node != node and (key not in view.holdings or view.holdings[key].node != node):
            continue
        keys.append(key)
    return sorted(keys)


def pod_rows(view: StoreView, may_see: PodFilter, keys: list[str]) -> list[PodRow]:
    """A row per pod key (from pod_keys): what it asks, what it holds, its bind and lock state."""
    state = view.state
    rows = []
    for key in keys:
        info = view.pods[key]
        holding = view.holdings.get(key)
        allocated = []
        node = holding.node if holding else ""
        if holding is not None:
            names = info.request.names if info.request else ()
            position_of = state.node_pos.get(node)
            type_of = {}
            if position_of is not None:
                type_of = {state.uuids[r]: state.types[r] for r in state.rows_of_node(position_of)}
            for position, container in enumerate(holding.allocation):
                cname = names[position] if position < len(names) else str(position)
                for d in container:
                    allocated.append((cname, d.uuid, type_of.get(d.uuid, "?"), d.usedmem, d.usedcores))
        lock_node = info.node or node
        lock = ""
        if lock_node and lock_node in view.nodes and view.nodes[lock_node].lock:
            parts = view.nodes[lock_node].lock.split(",")
            holder = "/".join(parts[1:3]) if len(parts) >= 3 else ""
            if holder == key:
                lock = "held by this pod"
            else:
                lock = f"held by {holder}" if holder and may_see(holder.split('/', 1)[0]) else "held by another pod"
        rows.append(PodRow(info=info, asks=asks(info.request) if info.request else [], allocated=allocated,
                           decided_node=node, lock=lock))
    return rows


def page(count: int, number: int, size: int) -> tuple[int, int]:
    """(first index, number of pages) for page `number` (1-based, clamped) of `count` items."""
    pages = max(1, -(-count // size))
    number = min(max(1, number), pages)
    return (number - 1) * size, pages
