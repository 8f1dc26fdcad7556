"""Why a pod waits, and the smallest change that would let it fit, found by asking the engine.

Every suggestion is an answer the engine gave to a what-if question on the cluster's state (put
back as it was after): the same pod with less memory, fewer cores, fewer devices, without one of
its selectors, or on a node after one pod there has ended. Nothing is guessed from the reason text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.errors import HamiError
from hami.model.requests import NO_PERCENTAGE, ContainerRequest, PodRequest
from hami.scheduler import reasons as R
from hami.scheduler.engine import Decision, PolicyDefaults, schedule
from hami.scheduler.state import ClusterState
from hami.ui.store import Allocation

# Pod annotations besides the vendors' type and UUID lists that narrow which devices a pod accepts.
SELECTOR_KEYS = (keys.VGPU_MODE, keys.NUMA_BIND)


def selector_keys(state: ClusterState) -> tuple[str, ...]:
    """Every annotation that narrows the devices a pod accepts: each vendor's type and UUID lists."""
    found: list[str] = []
    for vendor in state.vendors:
        found.extend(k for k in vendor.keys.selector_keys if k not in found)
    return (*found, *SELECTOR_KEYS)
_COUNTED = re.compile(r"^\d+/\d+ (.+)$")


@dataclass(frozen=True)
class ReasonGroup:
    reason: str  # one reason, or several joined by " + " when a node fails for more than one
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Suggestion:
    kind: str  # memory | cores | devices | selector | pod-ends
    text: str
    node: str | None = None  # where the changed pod would go
    pod: str | None = None  # the pod whose end frees the node (pod-ends)


@dataclass
class Explanation:
    decision: Decision
    groups: list[ReasonGroup] = field(default_factory=list)
    suggestions: list[Suggestion] = field(default_factory=list)
    # What-if questions the engine answered to find the suggestions.
    questions: int = 0


def reason_names(text: str) -> tuple[str, ...]:
    """`"2/4 CardInsufficientMemory, 1/4 CardTypeMismatch"` -> the reason names, in the text's order."""
    names = []
    for part in text.split(", "):
        match = _COUNTED.match(part.strip())
        names.append(match.group(1) if match else part.strip())
    return tuple(n for n in names if n)


def group_reasons(reasons: dict[str, str]) -> list[ReasonGroup]:
    """Nodes grouped by the reasons they fail for, biggest group first."""
    groups: dict[str, list[str]] = {}
    for node, text in reasons.items():
        groups.setdefault(" + ".join(reason_names(text)), []).append(node)
    return sorted((ReasonGroup(reason, tuple(sorted(nodes))) for reason, nodes in groups.items()),
                  key=lambda g: (-len(g.nodes), g.reason))


def decide(state: ClusterState, pod: PodRequest, defaults: PolicyDefaults, unregistered: Iterable[str] = (),
           nodes: list[str] | None = None) -> Decision:
    """The engine's decision with every node accounted for, as `hami schedule` reports it."""
    try:
        decision = schedule(state, pod, defaults, nodes=nodes)
    except AnnotationError as exc:
        raise HamiError(f"pod {pod.key}: {exc}") from None
    for name in unregistered:
        decision.reasons.setdefault(name, R.NODE_UNREGISTERED)
    return decision


def _with_asks(pod: PodRequest, change: Callable[[ContainerRequest], ContainerRequest]) -> PodRequest:
    """The pod with `change` applied to every vendor ask of every container."""
    def each(c: ContainerRequest) -> ContainerRequest:
        if not c.wants_devices:
            return c
        return ContainerRequest.of([change(dataclasses.replace(a, also=())) for a in c.asks])
    return dataclasses.replace(pod, containers=tuple(each(c) for c in pod.containers))


def _asks(pod: PodRequest) -> list[tuple[str, ContainerRequest]]:
    """(container name, vendor ask) for every ask of the pod, in container order."""
    names = pod.names or ("",) * len(pod.containers)
    return [(name, a) for c, name in zip(pod.containers, names, strict=False) for a in c.asks]


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest x in [low, high] with fits(x), assuming fits is monotone (None if not even low)."""
    if not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


class _Asker:
    """Asks the engine what-if questions and counts them."""

    def __init__(self, state: ClusterState, defaults: PolicyDefaults):
        self.state = state
        self.defaults = defaults
        self.questions = 0

    def place(self, pod: PodRequest, nodes: list[str] | None = None) -> str | None:
        self.questions += 1
        try:
            return schedule(self.state, pod, self.defaults, nodes=nodes, explain=False).node
        except AnnotationError:
            return None


def _memory_asked(c: ContainerRequest) -> bool:
    return c.memreq > 0 or c.mem_percentage != NO_PERCENTAGE


def _memory(asker: _Asker, pod: PodRequest) -> Suggestion | None:
    """Ask the memory of every device container scaled down to the largest percentage that fits."""
    if not any(_memory_asked(a) for _, a in _asks(pod)):
        return None

    def scaled(percent: int) -> PodRequest:
        def change(c: ContainerRequest) -> ContainerRequest:
            if c.memreq > 0:
                return dataclasses.replace(c, memreq=max(1, c.memreq * percent // 100))
            if c.mem_percentage != NO_PERCENTAGE:
                return dataclasses.replace(c, mem_percentage=max(1, c.mem_percentage * percent // 100))
            return c
        return _with_asks(pod, change)

    best = _largest(lambda p: asker.place(scaled(p)) is not None, 1, 99)
    if best is None:
        return None
    changed = scaled(best)
    parts = []
    for (name, before), (_, after) in zip(_asks(pod), _asks(changed), strict=True):
        if before.memreq:
            parts.append(f"{name}: {after.memreq} MiB instead of {before.memreq} MiB")
        elif before.mem_percentage != NO_PERCENTAGE:
            parts.append(f"{name}: {after.mem_percentage} % instead of {before.mem_percentage} %")
    return Suggestion("memory", "Ask less device memory — " + "; ".join(parts), node=asker.place(changed))


def _cores(asker: _Asker, pod: PodRequest) -> Suggestion | None:
    if not any(a.coresreq > 0 for _, a in _asks(pod)):
        return None

    def scaled(percent: int) -> PodRequest:
        return _with_asks(pod, lambda c: dataclasses.replace(c, coresreq=c.coresreq * percent // 100))

    best = _largest(lambda p: asker.place(scaled(p)) is not None, 0, 99)
    if best is None:
        return None
    changed = scaled(best)
    parts = [f"{name}: {after.coresreq} % instead of {before.coresreq} %"
             for (name, before), (_, after) in zip(_asks(pod), _asks(changed), strict=True) if before.coresreq > 0]
    return Suggestion("cores", "Ask fewer cores — " + "; ".join(parts), node=asker.place(changed))


def _devices(asker: _Asker, pod: PodRequest) -> Suggestion | None:
    most = max((a.nums for _, a in _asks(pod)), default=0)
    if most <= 1:
        return None

    def fewer(n: int) -> PodRequest:
        return _with_asks(pod, lambda c: dataclasses.replace(c, nums=min(c.nums, n)))

    best = _largest(lambda n: asker.place(fewer(n)) is not None, 1, most - 1)
    if best is None:
        return None
    return Suggestion("devices", f"Ask for at most {best} device{'s' if best > 1 else ''} per container "
                      f"instead of {most}", node=asker.place(fewer(best)))


def _selectors(asker: _Asker, pod: PodRequest) -> list[Suggestion]:
    out = []
    for key in selector_keys(asker.state):
        if key not in pod.annotations:
            continue
        annotations = {k: v for k, v in pod.annotations.items() if k != key}
        changed = dataclasses.replace(pod, annotations=annotations)
        try:
            decision = schedule(asker.state, changed, asker.defaults, explain=False)
        except AnnotationError:
            continue
        asker.questions += 1
        if decision.node is None:
            continue
        types = sorted({t for container in decision.device_types for t in container})
        on = f" (it would get {', '.join(types)})" if types else ""
        out.append(Suggestion("selector", f"Drop the annotation {key}: {pod.annotations[key]}{on}",
                              node=decision.node))
    return out


def _memory_need(state: ClusterState, pod: PodRequest, rows: range) -> np.ndarray:
    """Per device row, the least memory an ask of the pod for that device's vendor would take
    there (none when no ask is for that vendor): a device with less cannot take any of them."""
    need = np.full(len(rows), np.iinfo(np.int64).max, dtype=np.int64)
    for k, r in enumerate(rows):
        device = state.devices[r]
        takes = [a.memory_on(device.devmem) for _, a in _asks(pod) if a.vendor == device.vendor]
        if takes:
            need[k] = min(takes)
    return need


def _pod_ends(asker: _Asker, pod: PodRequest, failing: list[str], allocations: dict[str, Allocation],
              limit: int, budget: int, nodes: int) -> list[Suggestion]:
    """Nodes where the pod would fit once one pod there ends, smallest such pod first.

    Looked for on the `nodes` failing nodes with the most free memory on one device, among the
    pods there whose end would leave some device with the memory the pod needs; each candidate
    is then asked of the engine.
    """
    state = asker.state
    on_node: dict[str, list[str]] = {}
    for key, (node, *_) in allocations.items():
        if key in state.pods:
            on_node.setdefault(node, []).append(key)
    positions = [state.node_pos[n] for n in failing if n in on_node]
    if not positions:
        return []
    free = state.totalmem - state.usedmem
    best_free = np.maximum.reduceat(free, state.starts[:-1])[positions]
    closest = [positions[k] for k in np.argsort(-best_free, kind="stable")[:nodes].tolist()]
    tries: list[tuple[int, str, str]] = []
    for i in closest:
        name = state.names[i]
        rows = state.rows_of_node(i)
        # Even with every pod there gone, would it fit? If not, no single pod's end helps.
        asker.questions += 1
        alone = ClusterState([state.nodes[i]], state.vendors)
        try:
            if schedule(alone, pod, asker.defaults, explain=False).node is None:
                continue
        except AnnotationError:
            return []
        need = _memory_need(state, pod, rows)
        node_free = free[rows.start:rows.stop]
        for key in on_node[name]:
            footprint = state.pods[key]
            after = node_free.copy()
            np.add.at(after, footprint.rows - rows.start, footprint.mem)
            if (after >= need).any():
                tries.append((int(footprint.mem.sum()), key, name))
    out: list[Suggestion] = []
    for _, key, name in sorted(tries):
        if len(out) >= limit or asker.questions >= budget:
            break
        node, allocation, init_count, sidecars = allocations[key]
        state.remove_pod(key)
        try:
            fits = asker.place(pod, [name]) is not None
        finally:
            state.add_pod(key, node, allocation, init_count, sidecars=sidecars)
        if fits:
            out.append(Suggestion("pod-ends", f"Node {name} frees up enough when pod {key} ends", node=name, pod=key))
    return out


def explain(state: ClusterState, pod: PodRequest, defaults: PolicyDefaults, unregistered: Iterable[str],
            allocations: dict[str, Allocation], limit: int = 3, budget: int = 400, nodes: int = 64
            ) -> Explanation:
    """The engine's answer for the pod, its reasons grouped, and what would change it.

    `state` is changed while asking and put back as it was (UiStore.what_if gives it with its
    lock held). `allocations` holds (node, allocation, init container count) of the pods counted
    in it. At most `budget` questions; pod ends are looked for on the `nodes` closest to fitting.
    """
    decision = decide(state, pod, defaults, unregistered)
    result = Explanation(decision=decision, groups=group_reasons(decision.reasons))
    if decision.node is not None:
        return result
    asker = _Asker(state, defaults)
    for finder in (_memory, _cores, _devices):
        suggestion = finder(asker, pod)
        if suggestion is not None:
            result.suggestions.append(suggestion)
    result.suggestions.extend(_selectors(asker, pod))
    failing = [n for n in sorted(decision.reasons) if n in state.node_pos]
    result.suggestions.extend(_pod_ends(asker, pod, failing, allocations, limit, budget, nodes))
    result.questions = asker.questions
    return result
