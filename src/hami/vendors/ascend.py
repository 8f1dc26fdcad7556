"""Huawei Ascend NPUs: 910A, 910B2, 910B3, 910B4, 910B4-1, 310P and 910C (HAMi's `vnpus`).

Each chip is a vendor of its own (its CommonWord, e.g. `Ascend910B3`), built from one entry of
device-config's `vnpus.configs`. A container asks `huawei.com/<chip>` NPUs and, per NPU,
`huawei.com/<chip>-memory` MiB, which the webhook rounds up to the chip's smallest vNPU
template that holds it (or to the whole NPU). In hami-core mode (pod annotation
`huawei.com/vnpu-mode: hami-core`, on nodes whose `hami-vnpu-core` annotation or the config
allows it) memory is kept as asked and `huawei.com/<chip>-core` asks a percentage of the
NPU's compute.

The 910 chips have a topology: the device plugin puts each NPU in a network group
(custominfo `NetworkID`: NPUs 0-3 and 4-7 of an 8-NPU server), and a multi-NPU ask takes
whole groups first, largest first; the node score rewards asks that stay in one group. A
910C card carries two NPUs (`index // 2`): a multi-NPU 910C ask takes whole cards only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.annotations.selectors import Policy
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.model.devices import HAMI_CORE_MODE, DeviceInfo
from hami.model.requests import NO_PERCENTAGE, ContainerRequest
from hami.quantity import QuantityError, parse_whole
from hami.scheduler import reasons as R
from hami.vendors.base import (
    INT32_MAX,
    AnnotationKeys,
    BoolArray,
    FloatArray,
    IntArray,
    Need,
    NodeSource,
    PodDecisionInput,
    Resources,
    Rows,
    Vendor,
    Walk,
    generic_usage_codes,
    per_row,
    resources_of,
)
from hami.vendors.nvidia import set_env

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

VNPU_MODE = "huawei.com/vnpu-mode"  # pod annotation: "hami-core" asks soft split
NODE_HAMI_CORE = "hami-vnpu-core"  # node annotation: "true" when the node runs hami-vnpu-core
TEMPLATE_MODE = "template"  # a node that only hard-splits NPUs by template (DeviceInfo.mode)
PREDICATE_TIME = "predicate-time"
VISIBLE_DEVICES_ENV = "ASCEND_VISIBLE_DEVICES"
NETWORK_ID = "NetworkID"
ASCEND910 = "Ascend910"
ASCEND910C = "Ascend910C"
NETWORK_WEIGHT = 10  # HAMi's Ascend910NetworkWeight
NPUS_PER_910C_CARD = 2


@dataclass(frozen=True)
class Template:
    """A vNPU template: a hard slice of an NPU with this much memory (MiB)."""

    name: str
    memory: int
    ai_core: int = 0
    ai_cpu: int = 0


@dataclass(frozen=True)
class Chip:
    """One entry of `vnpus.configs` (HAMi's VNPUConfig); templates sorted by memory."""

    common_word: str
    chip_name: str
    resource_name: str
    resource_memory_name: str
    resource_core_name: str
    memory_allocatable: int
    memory_capacity: int
    memory_factor: int = 1
    ai_core: int = 0
    ai_cpu: int = 0
    runtime_class_name: str = ""
    overwrite_env: bool = False
    templates: tuple[Template, ...] = ()
    super_pod: bool = False

    def trim_memory(self, memory: int) -> tuple[int, str]:
        """HAMi's trimMemory: the smallest template holding `memory` MiB, else the whole NPU
        (no template name) when it fits the NPU's capacity, else (0, "") for invalid."""
        for template in self.templates:
            if memory <= template.memory:
                return template.memory, template.name
        if memory <= self.memory_capacity:
            return self.memory_allocatable, ""
        return 0, ""


def _chip(word: str, chip: str, allocatable: int, capacity: int, ai_core: int, ai_cpu: int,
          templates: tuple[tuple[str, int, int, int], ...], factor: int = 1, super_pod: bool = False) -> Chip:
    return Chip(
        common_word=word, chip_name=chip, resource_name=f"huawei.com/{word}",
        resource_memory_name=f"huawei.com/{word}-memory", resource_core_name=f"huawei.com/{word}-core",
        memory_allocatable=allocatable, memory_capacity=capacity, memory_factor=factor, ai_core=ai_core,
        ai_cpu=ai_cpu, templates=tuple(Template(*t) for t in templates), super_pod=super_pod,
    )


# HAMi v2.10 chart defaults (charts/hami/templates/scheduler/device-configmap.yaml, `vnpus`).
CHART_CHIPS = (
    _chip("Ascend910A", "910A", 32768, 32768, 30, 0,
          (("vir02", 2184, 2, 0), ("vir04", 4369, 4, 0), ("vir08", 8738, 8, 0), ("vir16", 17476, 16, 0))),
    _chip("Ascend910B2", "910B2", 65536, 65536, 24, 6,
          (("vir03_1c_8g", 8192, 3, 1), ("vir06_1c_16g", 16384, 6, 1), ("vir12_3c_32g", 32768, 12, 3))),
    _chip("Ascend910B3", "910B3", 65536, 65536, 20, 7,
          (("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3))),
    _chip("Ascend910B4-1", "910B4-1", 65536, 65536, 20, 7,
          (("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3))),
    _chip("Ascend910B4", "910B4", 32768, 32768, 20, 7,
          (("vir05_1c_8g", 8192, 5, 1), ("vir10_3c_16g", 16384, 10, 3))),
    _chip("Ascend310P", "310P3", 21527, 24576, 8, 7,
          (("vir01", 3072, 1, 1), ("vir02", 6144, 2, 2), ("vir04", 12288, 4, 4))),
    # The chart gives 910C no memoryFactor (Go's zero: no scaling).
    _chip("Ascend910C", "Ascend910", 65536, 65536, 20, 7,
          (("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3)), factor=0, super_pod=True),
)


def _dense_groups(state: ClusterState, rows: IntArray) -> IntArray:
    """Per device, its network group numbered from 1 in order of NetworkID; 0 for none."""
    groups = [network_id(state.devices[r]) for r in rows]
    ids = {g: k for k, g in enumerate(sorted({g for g in groups if g is not None}), start=1)}
    return np.asarray([0 if g is None else ids[g] for g in groups], dtype=np.int64)


def network_id(device: DeviceInfo) -> int | None:
    """The device's network group (custominfo NetworkID); None when absent or not a number."""
    value = device.custom.get(NETWORK_ID)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        return None
    return int(value)


@dataclass
class Ascend(Vendor):
    """One Ascend chip (CommonWord) with its `vnpus.configs` entry."""

    chip: Chip = field(default_factory=lambda: CHART_CHIPS[0])
    # vnpus.hamiVnpuCore: whether nodes run hami-vnpu-core unless their annotation says otherwise.
    hami_core_nodes: bool = False
    # Every Ascend chip's count resource of the section (overwriteEnv spares containers asking any).
    siblings: tuple[str, ...] = ()

    @staticmethod
    def of(chip: Chip, hami_core_nodes: bool = False, siblings: tuple[str, ...] = ()) -> Ascend:
        word = chip.common_word
        return Ascend(
            name=word,
            resources=Resources(
                count=chip.resource_name,
                memory=chip.resource_memory_name,
                cores=chip.resource_core_name or None,
                memory_factor=max(chip.memory_factor, 1),
            ),
            keys=AnnotationKeys(
                register=f"hami.io/node-register-{word}",
                handshake=f"hami.io/node-handshake-{word}",
                to_allocate=f"hami.io/{word}-devices-to-allocate",
                allocated=f"hami.io/{word}-devices-allocated",
                uuid_pairs=((f"hami.io/use-{word}-uuid", f"hami.io/no-use-{word}-uuid"),),
            ),
            source=NodeSource.JSON,
            exact=word == ASCEND910C,  # whole-card pairs can fail where enough NPUs fit
            topology=word.startswith(ASCEND910),
            scores_nodes=word.startswith(ASCEND910),
            static_keys=(VNPU_MODE,),
            chip=chip,
            hami_core_nodes=hami_core_nodes,
            siblings=siblings or (chip.resource_name,),
        )

    # ---- requests ---------------------------------------------------------------------

    def _whole(self, container: Mapping[str, Any], name: str, raw: Any) -> int:
        try:
            return parse_whole(raw)
        except QuantityError as exc:
            raise HamiError(f"container {container.get('name')!r}: {name}: {exc}") from None

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        """HAMi's GenerateResourceRequests (memory × memoryFactor; out-of-range values are errors)."""
        chip, where = self.chip, f"container {container.get('name')!r}"
        count = self.quantity(container, chip.resource_name)
        if not count:
            return None
        limits, requests = resources_of(container)
        memory = 0
        raw = limits.get(chip.resource_memory_name, requests.get(chip.resource_memory_name))
        if raw is not None:
            memory = self._whole(container, chip.resource_memory_name, raw)
            if memory > INT32_MAX:
                raise HamiError(f"{where}: {chip.resource_memory_name} is {memory}: Ascend memory is counted in MB, "
                                "not bytes, so a quantity such as 16Gi is invalid; ask 16384 for 16 GB")
        memreq = memory * max(chip.memory_factor, 1)
        if memreq > INT32_MAX:
            raise HamiError(f"{where}: {chip.resource_memory_name} is {memory} × memoryFactor {chip.memory_factor} "
                            "MB, over HAMi's limit (memory is counted in MB, not bytes)")
        cores = self.quantity(container, chip.resource_core_name or None) or 0
        return ContainerRequest(nums=count, memreq=memreq, mem_percentage=NO_PERCENTAGE if memreq else 100,
                                coresreq=cores, vendor=self.name)

    # ---- webhook ----------------------------------------------------------------------

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        """HAMi's MutateAdmission: 910C pairs, hami-core checks, memory rounded to a template."""
        chip = self.chip
        limits, requests = resources_of(container)
        count = self._whole(container, chip.resource_name, limits.get(chip.resource_name, 0))
        if not count:  # a count of 0 asks for nothing (HAMi: see compatibility.md)
            # HAMi adds this to every container without the chip; one asking another Ascend chip
            # keeps its devices (HAMi would hide them).
            if chip.overwrite_env and not any(self._whole(container, name, limits[name])
                                              for name in self.siblings if name in limits):
                set_env(container, VISIBLE_DEVICES_ENV, "")
            return False
        if chip.common_word == ASCEND910C and chip.super_pod:
            if count == 1:  # the smallest unit is a card: two NPUs
                limits[chip.resource_name] = "2"
                if chip.resource_name in requests:
                    requests[chip.resource_name] = "2"
            elif count % 2:
                raise HamiError(f"Ascend910C device request must be 1 or 2*n, got {count}")
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        hami_core = annotations.get(VNPU_MODE) == HAMI_CORE_MODE
        if not hami_core and chip.resource_core_name:
            raw = limits.get(chip.resource_core_name, requests.get(chip.resource_core_name))
            if raw is not None and self._whole(container, chip.resource_core_name, raw) > 0:
                raise HamiError(f"{chip.resource_core_name} is only supported in hami-core (soft split) mode")
        memory = chip.memory_allocatable
        if chip.resource_memory_name in limits:
            asked = self._whole(container, chip.resource_memory_name, limits[chip.resource_memory_name])
            if hami_core:
                memory = asked
            else:
                memory, _ = chip.trim_memory(asked)
                if memory <= 0:
                    raise HamiError(f"{chip.resource_memory_name} {asked} is invalid")
        if count > 1 and not hami_core and memory != chip.memory_allocatable:
            raise HamiError("vNPU not supported for multiple devices")
        limits[chip.resource_memory_name] = str(memory)
        resources = container["resources"]
        if resources.get("requests") is None:
            resources["requests"] = {}
        resources["requests"][chip.resource_memory_name] = str(memory)
        spec = pod.get("spec")
        if chip.runtime_class_name and isinstance(spec, dict) and spec.get("runtimeClassName") is None:
            spec["runtimeClassName"] = chip.runtime_class_name
        return True

    # ---- nodes ------------------------------------------------------------------------

    def node_inputs(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        return (annotations.get(self.keys.register or ""), annotations.get(NODE_HAMI_CORE))

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        """The chip's NPUs from `hami.io/node-register-<chip>`; `mode` says whether the node
        runs hami-vnpu-core (its `hami-vnpu-core` annotation, else vnpus.hamiVnpuCore)."""
        devices = super().node_devices(node)
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        flag = annotations.get(NODE_HAMI_CORE)
        hami_core = self.hami_core_nodes if flag is None else str(flag) == "true"
        mode = HAMI_CORE_MODE if hami_core else TEMPLATE_MODE
        return [DeviceInfo(**{**d.__dict__, "mode": mode}) for d in devices]

    # ---- fit --------------------------------------------------------------------------

    def static_codes(self, state: ClusterState, rows: IntArray, annotations: Mapping[str, str]) -> IntArray | None:
        """A hami-core pod fits only nodes that run hami-vnpu-core (ModeNotFit)."""
        if annotations.get(VNPU_MODE) != HAMI_CORE_MODE:
            return None
        hami_core_by_id = np.asarray([m == HAMI_CORE_MODE for m in state.mode_names], dtype=bool)
        supported = hami_core_by_id[state.mode_id[rows]]
        return np.where(supported, 0, R.CODE_OF[R.MODE_NOT_FIT]).astype(np.int64)

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        # In hami-core mode cores are a percentage of the NPU, whatever the node registered.
        percent = ctx.pod.annotations.get(VNPU_MODE) == HAMI_CORE_MODE
        totalcore = np.full(len(used), 100, dtype=np.int64) if percent else None
        return generic_usage_codes(state, rows, used, usedmem, usedcores, need, ctx.mutex, totalcore), need

    def choose(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, walk: Walk,
               fitting: list[int]) -> tuple[list[int], str]:
        """910C: whole cards; 910 with network groups on every NPU: the largest groups first;
        otherwise the first NPUs in the walk's order."""
        first = walk.rows.start
        if self.name == ASCEND910C and ask.nums > 1:
            picked = _whole_cards(fitting, [int(state.index[first + j]) for j in fitting], ask.nums)
            return (picked, "") if len(picked) == ask.nums else ([], R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST)
        groups = [network_id(state.devices[r]) for r in walk.rows]
        if ask.nums == 1 or None in groups or len(fitting) == ask.nums:
            return fitting[: ask.nums], ""
        return _largest_groups(fitting, [groups[j] for j in fitting], ask.nums), ""

    def node_fits(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState,
                  codes: IntArray) -> tuple[BoolArray, str] | None:
        """910C: a node fits a multi-NPU ask when enough cards have both NPUs fitting (and the
        ask is even: cards are taken whole). Other chips: counting fitting NPUs is enough."""
        n_nodes = len(state.nodes)
        if self.name != ASCEND910C or ask.nums <= 1:
            return np.ones(n_nodes, dtype=bool), R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST
        rows = state.vendor_rows(self.name)
        ok = codes == 0
        cards = state.index[rows] // NPUS_PER_910C_CARD
        width = int(cards.max()) + 1 if len(cards) else 1
        fitting = np.bincount(state.dev_node[rows][ok] * width + cards[ok], minlength=n_nodes * width)
        whole = (fitting.reshape(n_nodes, width) == NPUS_PER_910C_CARD).sum(axis=1)
        return (whole * NPUS_PER_910C_CARD >= ask.nums) & (ask.nums % 2 == 0), R.ALLOCATED_CARDS_INSUFFICIENT_REQUEST

    def node_scores(self, ctx: PodContext, state: ClusterState, nodes: IntArray) -> FloatArray | None:
        """score_node for every node at once: the largest network group among an ask's fitting
        NPUs holds min(its size, asked) of the NPUs chosen. Nodes where only some NPUs have a
        group (HAMi then chooses first-fit), and 910C card pairs on nodes with several groups,
        are left to the walk."""
        rows = state.vendor_rows(self.name)
        node_of = state.dev_node[rows]
        n_nodes = len(state.nodes)
        dense = per_row(state, self.name, "network-group", lambda r: _dense_groups(state, r))
        width = int(dense.max(initial=0)) + 1
        members = per_row(state, self.name, "network-group-members", lambda r: np.bincount(
            node_of * width + dense, minlength=n_nodes * width).reshape(n_nodes, width))[nodes]
        ungrouped = members[:, 0]  # group 0 of the dense numbering holds the NPUs without one
        sizes = members.sum(axis=1)
        if ((ungrouped > 0) & (ungrouped < sizes)).any():
            return None
        static = ctx.static_codes(state)[rows]
        used, usedmem, usedcores = state.used[rows], state.usedmem[rows], state.usedcores[rows]
        score = np.zeros(len(nodes), dtype=np.float32)
        for container in ctx.pod.containers:
            for ask in container.asks:
                if ask.vendor != self.name:
                    continue
                if self.name == ASCEND910C and ask.nums > 1:
                    if ((members > 0).sum(axis=1) > 1).any():
                        return None
                    score += np.float32(1)  # whole cards of one group
                    continue
                usage, _ = self.usage_codes(ask, ctx, state, rows, used, usedmem, usedcores)
                ok = (static == 0) & (usage == 0)
                fitting = np.bincount(node_of[ok] * width + dense[ok], minlength=n_nodes * width)
                largest = fitting.reshape(n_nodes, width)[nodes].max(axis=1, initial=0)
                score += np.minimum(largest, ask.nums).astype(np.float32) / np.float32(ask.nums)
        score[ungrouped > 0] = 0
        value = score * np.float32(NETWORK_WEIGHT)
        return -value if ctx.node_policy is Policy.SPREAD else value

    def score_node(self, ctx: PodContext, state: ClusterState, node: int,
                   allocation: Sequence[Sequence[ContainerDevice]]) -> float:
        """HAMi's ScoreNode: per container the share of its NPUs in its largest network group,
        summed, × 10; 0 when an NPU has no group. Under the spread node policy the sign is turned,
        so that keeping an ask in one group helps under either policy."""
        score = np.float32(0)
        for container in allocation:
            if not container:
                continue
            counts: dict[int, int] = {}
            for placed in container:
                group = network_id(state.devices[state.row_of[(node, placed.uuid)]])
                if group is None:
                    return 0.0
                counts[group] = counts.get(group, 0) + 1
            score += np.float32(max(counts.values())) / np.float32(len(container))
        value = float(score * np.float32(NETWORK_WEIGHT))
        return -value if ctx.node_policy is Policy.SPREAD else value

    # ---- decision ---------------------------------------------------------------------

    def decision_annotations(self, pod: PodDecisionInput) -> dict[str, str]:
        """HAMi's PatchAnnotations: the allocation, `predicate-time` and `huawei.com/<chip>`
        (per NPU: UUID, template name outside hami-core mode, memory, cores; zeros left out)."""
        result = super().decision_annotations(pod)
        result[PREDICATE_TIME] = str(pod.now_ns // 1_000_000_000)
        hami_core = pod.annotations.get(VNPU_MODE) == HAMI_CORE_MODE
        runtime: list[dict[str, Any]] = []
        for container in pod.allocation:
            for placed in container:
                entry: dict[str, Any] = {"UUID": placed.uuid}
                if not hami_core:
                    _, template = self.chip.trim_memory(placed.usedmem)
                    if template:
                        entry["temp"] = template
                if placed.usedmem:
                    entry["memory"] = placed.usedmem
                if placed.usedcores:
                    entry["core"] = placed.usedcores
                runtime.append(entry)
        result[self.runtime_key] = json.dumps(runtime, separators=(",", ":"))
        return result

    @property
    def runtime_key(self) -> str:
        return f"huawei.com/{self.name}"

    def decision_keys(self) -> tuple[str, ...]:
        return (*super().decision_keys(), PREDICATE_TIME, self.runtime_key)


def _whole_cards(fitting: list[int], indices: list[int], nums: int) -> list[int]:
    """HAMi's computeBestCombination910C: cards (`index // 2`) whose two NPUs both fit, taken
    whole until `nums` NPUs are reached. HAMi orders equal cards at random; we keep the walk's
    order (the GPU policy's), as for every other choice."""
    cards: dict[int, list[int]] = {}
    for position, index in zip(fitting, indices, strict=True):
        cards.setdefault(index // NPUS_PER_910C_CARD, []).append(position)
    picked: list[int] = []
    for npus in cards.values():
        if len(picked) >= nums:
            break
        if len(npus) == NPUS_PER_910C_CARD:
            picked.extend(npus)
    return picked


def _largest_groups(fitting: list[int], groups: Sequence[int | None], nums: int) -> list[int]:
    """HAMi's computeBestCombination: fitting NPUs by network group, the largest group first
    (ties in the walk's order; HAMi's are random), until `nums` are taken."""
    by_group: dict[int | None, list[int]] = {}
    for position, group in zip(fitting, groups, strict=True):
        by_group.setdefault(group, []).append(position)
    ordered = sorted(by_group.values(), key=len, reverse=True)  # stable: ties keep the walk's order
    return [p for members in ordered for p in members][:nums]


# ---- device-config `vnpus` --------------------------------------------------------------


def _int(entry: Mapping[str, Any], key: str, what: str, default: int | None = None, least: int = 0) -> int:
    value = entry.get(key, default)
    if value is None:
        raise HamiError(f"config: {what}.{key} is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise HamiError(f"config: {what}.{key} must be a whole number of at least {least}, got {value!r}")
    return value


def _str(entry: Mapping[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if value is None:
        raise HamiError(f"config: {what}.{key} is required")
    if not isinstance(value, str):
        raise HamiError(f"config: {what}.{key} must be a string, got {value!r}")
    return value


def _bool(entry: Mapping[str, Any], key: str, what: str) -> bool:
    value = entry.get(key, False)
    if isinstance(value, str) and value in ("true", "false"):  # the chart may render a quoted default
        return value == "true"
    if not isinstance(value, bool):
        raise HamiError(f"config: {what}.{key} must be true or false, got {value!r}")
    return value


def parse_chip(entry: Any, what: str) -> Chip:
    """One `vnpus.configs` entry; absent numbers are HAMi's zero values, names are required."""
    if not isinstance(entry, dict):
        raise HamiError(f"config: {what} must be a mapping")
    word = _str(entry, "commonWord", what)
    if not word:
        raise HamiError(f"config: {what}.commonWord must not be empty")
    raw_templates = entry.get("templates") or []
    if not isinstance(raw_templates, list):
        raise HamiError(f"config: {what}.templates must be a list")
    templates = []
    for i, raw in enumerate(raw_templates):
        where = f"{what}.templates[{i}]"
        if not isinstance(raw, dict):
            raise HamiError(f"config: {where} must be a mapping")
        templates.append(Template(name=_str(raw, "name", where), memory=_int(raw, "memory", where, least=1),
                                  ai_core=_int(raw, "aiCore", where, 0), ai_cpu=_int(raw, "aiCPU", where, 0)))
    chip = Chip(
        common_word=word,
        chip_name=_str(entry, "chipName", what, ""),
        resource_name=_str(entry, "resourceName", what),
        resource_memory_name=_str(entry, "resourceMemoryName", what),
        resource_core_name=_str(entry, "resourceCoreName", what, ""),
        memory_allocatable=_int(entry, "memoryAllocatable", what, least=1),
        memory_capacity=_int(entry, "memoryCapacity", what, least=1),
        memory_factor=_int(entry, "memoryFactor", what, 0),
        ai_core=_int(entry, "aiCore", what, 0),
        ai_cpu=_int(entry, "aiCPU", what, 0),
        runtime_class_name=_str(entry, "runtimeClassName", what, ""),
        overwrite_env=_bool(entry, "overwriteEnv", what),
        templates=tuple(sorted(templates, key=lambda t: t.memory)),  # HAMi sorts them at start
        super_pod=_bool(entry, "superPod", what),
    )
    if not chip.resource_name or not chip.resource_memory_name:
        raise HamiError(f"config: {what}: resourceName and resourceMemoryName must not be empty")
    return chip


def vendors(raw: Any) -> list[Vendor]:
    """The Ascend vendors of device-config's `vnpus` section (HAMi's chart defaults when absent)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise HamiError("config: 'vnpus' must be a mapping with 'hamiVnpuCore' and 'configs'")
    hami_core = _bool(raw, "hamiVnpuCore", "vnpus")
    configs = raw.get("configs")
    if configs is None:
        chips = list(CHART_CHIPS)
    elif not isinstance(configs, list):
        raise HamiError("config: vnpus.configs must be a list of chips")
    else:
        chips = [parse_chip(entry, f"vnpus.configs[{i}]") for i, entry in enumerate(configs)]
    siblings = tuple(c.resource_name for c in chips)
    return [Ascend.of(c, hami_core, siblings) for c in chips]
