"""The pod decision: `hami.io/vgpu-devices-to-allocate` / `-allocated` and friends.

Per container (init containers first) a list of devices `uuid,vendor,memMiB,cores`, each
ended by `:`; containers ended by `;`. A container without devices is an empty part, so the
position of every container is kept (`GPU-a,NVIDIA,3000,30:;;` is three containers).
"""

from __future__ import annotations

import enum
from datetime import datetime

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.model.allocation import ContainerDevice, PodAllocation

CONTAINER_SEP = ";"
DEVICE_SEP = ":"


class BindPhase(enum.Enum):
    ALLOCATING = "allocating"
    SUCCESS = "success"
    FAILED = "failed"


def encode_container_devices(devices: tuple[ContainerDevice, ...] | list[ContainerDevice]) -> str:
    return "".join(f"{d.uuid},{d.vendor},{d.usedmem},{d.usedcores}{DEVICE_SEP}" for d in devices)


def decode_container_devices(text: str) -> tuple[ContainerDevice, ...]:
    devices = []
    for chunk in text.split(DEVICE_SEP):
        if not chunk.strip():
            continue
        items = chunk.split(",")
        if len(items) < 4:
            raise AnnotationError(f"device entry {chunk!r} needs uuid,type,memory,cores")
        try:
            mem, cores = int(items[2]), int(items[3])
        except ValueError:
            raise AnnotationError(f"device entry {chunk!r}: memory and cores must be integers") from None
        if mem < 0 or cores < 0:
            raise AnnotationError(f"device entry {chunk!r}: negative memory or cores")
        devices.append(ContainerDevice(uuid=items[0], vendor=items[1], usedmem=mem, usedcores=cores))
    return tuple(devices)


def encode_pod_devices(allocation: PodAllocation) -> str:
    return "".join(encode_container_devices(c) + CONTAINER_SEP for c in allocation)


def decode_pod_devices(text: str) -> PodAllocation:
    """Inverse of encode_pod_devices; the part after the last `;` (normally empty) is dropped."""
    if not text:
        return ()
    parts = text.split(CONTAINER_SEP)
    if parts[-1] == "":
        parts = parts[:-1]
    return tuple(decode_container_devices(p) for p in parts)


def decision_annotations(node: str, allocation: PodAllocation, now: datetime) -> dict[str, str]:
    """The annotations the scheduler writes at filter time."""
    encoded = encode_pod_devices(allocation)
    return {
        keys.VGPU_NODE: node,
        keys.VGPU_TIME: str(int(now.timestamp())),
        keys.DEVICES_TO_ALLOCATE: encoded,
        keys.DEVICES_ALLOCATED: encoded,
    }


def bind_annotations(phase: BindPhase, now: datetime) -> dict[str, str]:
    return {keys.BIND_PHASE: phase.value, keys.BIND_TIME: str(int(now.timestamp()))}


def decode_bind_phase(value: str) -> BindPhase:
    try:
        return BindPhase(value)
    except ValueError:
        raise AnnotationError(f"unknown bind phase {value!r}") from None


def decode_unix_time(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise AnnotationError(f"{value!r} is not a unix time in seconds") from None
    if seconds < 0:
        raise AnnotationError(f"{value!r} is a negative unix time")
    return seconds


def pod_allocation_from_annotations(annotations: dict[str, str]) -> PodAllocation | None:
    """The devices a pod holds: `-allocated`, else `-to-allocate`; None when it has no decision."""
    for key in (keys.DEVICES_ALLOCATED, keys.DEVICES_TO_ALLOCATE):
        value = annotations.get(key)
        if value:
            allocation = decode_pod_devices(value)
            if any(allocation):
                return allocation
    return None
