"""Per-pod selectors and policy annotations: which devices a pod accepts, and how to score."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hami.annotations import keys
from hami.annotations.errors import AnnotationError


class Policy(enum.Enum):
    BINPACK = "binpack"
    SPREAD = "spread"
    # A GPU policy only (HAMi's topology-aware): devices are tried in spread's order, and a
    # container's devices are chosen among all that fit by how well they are linked.
    TOPOLOGY_AWARE = "topology-aware"


# The policies a node policy may be.
NODE_POLICIES = (Policy.BINPACK, Policy.SPREAD)
TOPOLOGY_AWARE = Policy.TOPOLOGY_AWARE.value


@dataclass(frozen=True)
class ScoringWeights:
    slot: float = 1.0
    core: float = 1.0
    memory: float = 1.0


@dataclass(frozen=True)
class DeviceSelectors:
    """Type filters are case-insensitive substrings of the device type; UUID filters are exact."""

    use_types: tuple[str, ...] = ()
    nouse_types: tuple[str, ...] = ()
    use_uuids: tuple[str, ...] = ()
    nouse_uuids: tuple[str, ...] = ()
    mode: str | None = None
    numa_bind: bool = False

    def type_allowed(self, device_type: str) -> bool:
        upper = device_type.upper()
        if self.use_types and not any(t in upper for t in self.use_types):
            return False
        return not any(t in upper for t in self.nouse_types)

    def mode_allowed(self, device_mode: str) -> bool:
        # HAMi: the annotation value must contain the device's mode.
        return self.mode is None or device_mode in self.mode

    def uuid_allowed(self, uuid: str) -> bool:
        if self.use_uuids and uuid not in self.use_uuids:
            return False
        return uuid not in self.nouse_uuids


def split_list(value: str | None, upper: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    # Empty items are dropped: HAMi keeps them, and "" matches every type (see compatibility.md).
    items = (item.strip() for item in value.split(","))
    return tuple(item.upper() if upper else item for item in items if item)


def encode_list(items: list[str] | tuple[str, ...]) -> str:
    return ",".join(items)


def decode_selectors(annotations: dict[str, str]) -> DeviceSelectors:
    numa = annotations.get(keys.NUMA_BIND, "").strip().lower() in ("true", "1", "t")
    return DeviceSelectors(
        use_types=split_list(annotations.get(keys.USE_GPUTYPE), upper=True),
        nouse_types=split_list(annotations.get(keys.NOUSE_GPUTYPE), upper=True),
        use_uuids=split_list(annotations.get(keys.USE_GPUUUID)),
        nouse_uuids=split_list(annotations.get(keys.NOUSE_GPUUUID)),
        mode=annotations.get(keys.VGPU_MODE),
        numa_bind=numa,
    )


def decode_policy(value: str, what: str) -> Policy:
    try:
        return Policy(value.strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in Policy) + (", mutex" if what == keys.GPU_SCHEDULER_POLICY else "")
        raise AnnotationError(f"{what} {value!r} is not one of: {choices}") from None


def decode_node_policy(value: str, what: str) -> Policy:
    """A node policy: binpack or spread (topology-aware orders GPUs, not nodes)."""
    try:
        policy = Policy(value.strip().lower())
    except ValueError:
        policy = None
    if policy not in NODE_POLICIES:
        choices = ", ".join(p.value for p in NODE_POLICIES)
        raise AnnotationError(f"{what} {value!r} is not one of: {choices}")
    assert policy is not None
    return policy


# GPU policy words that filter devices rather than order them (HAMi: `binpack,mutex`,
# `binpack,topology-aware`).
GPU_POLICY_FILTERS = ("mutex", TOPOLOGY_AWARE)


def decode_gpu_policy(value: str) -> tuple[Policy | None, frozenset[str]]:
    """HAMi's comma list for the GPU policy: the sort key (None: not given) and the filter words."""
    order: Policy | None = None
    filters: set[str] = set()
    for word in (w.strip().lower() for w in value.split(",")):
        if not word:
            continue
        if word in GPU_POLICY_FILTERS:
            filters.add(word)
            continue
        policy = decode_policy(word, keys.GPU_SCHEDULER_POLICY)
        order = order or policy
    return order, frozenset(filters)


def pod_policies(
    annotations: dict[str, str], node_default: Policy, gpu_default: Policy
) -> tuple[Policy, Policy]:
    """The node and GPU policies a pod runs under: its annotations, else the defaults."""
    node = annotations.get(keys.NODE_SCHEDULER_POLICY)
    gpu = annotations.get(keys.GPU_SCHEDULER_POLICY)
    gpu_order, gpu_filters = decode_gpu_policy(gpu) if gpu else (None, frozenset())
    if gpu_order is None and TOPOLOGY_AWARE in gpu_filters:
        gpu_order = Policy.TOPOLOGY_AWARE  # HAMi: `topology-aware` alone orders as spread does
    return (
        decode_node_policy(node, keys.NODE_SCHEDULER_POLICY) if node else node_default,
        gpu_order or gpu_default,
    )


def gpu_policy_filters(annotations: dict[str, str], default: Policy | None = None) -> frozenset[str]:
    """The GPU policy's filter words: the pod's annotation, else those of the default policy."""
    gpu = annotations.get(keys.GPU_SCHEDULER_POLICY)
    if gpu:
        return decode_gpu_policy(gpu)[1]
    return frozenset({TOPOLOGY_AWARE}) if default is Policy.TOPOLOGY_AWARE else frozenset()


def encode_weights(weights: ScoringWeights) -> str:
    return f"slot={weights.slot:g},core={weights.core:g},memory={weights.memory:g}"


def decode_weights(value: str | None) -> ScoringWeights:
    """`slot=1,core=1,memory=1`; missing keys keep their default of 1."""
    if not value or not value.strip():
        return ScoringWeights()
    found: dict[str, float] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        name, sep, number = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in ("slot", "core", "memory"):
            raise AnnotationError(f"{keys.DEVICE_SCORING_WEIGHTS}: {item.strip()!r} is not slot=, core= or memory=")
        try:
            weight = float(number)
        except ValueError:
            raise AnnotationError(f"{keys.DEVICE_SCORING_WEIGHTS}: {number.strip()!r} is not a number") from None
        if weight < 0 or weight != weight or weight == float("inf"):
            raise AnnotationError(f"{keys.DEVICE_SCORING_WEIGHTS}: weight for {name} must be finite and >= 0")
        found[name] = weight
    return ScoringWeights(**found)


def decode_cordon(value: str | None) -> frozenset[str]:
    return frozenset(split_list(value))
