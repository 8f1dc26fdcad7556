"""NVIDIA MIG on the wire: `migProfiles` in a GPU's registration, and the pod annotation
`hami.io/vgpu-mig-allocations` (HAMi v2.10's dynamic-MIG reservations).

A reservation names, for one device of one container, the GPU, the profile and the placement
the scheduler chose:

    [{"containerIndex":0,"deviceIndex":0,"gpuUUID":"GPU-…","profile":"2g.10gb",
      "placement":{"start":2,"size":2}}]

`containerIndex` counts init containers first (as the allocation annotation does),
`deviceIndex` the device within that container. The device plugin adds `migUUID`,
`gpuInstanceID` and `computeInstanceID` once it created the instance: all three or none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hami.annotations.errors import AnnotationError
from hami.model.allocation import PodAllocation
from hami.model.mig import MigPlacement, MigProfile


@dataclass(frozen=True)
class MigAllocation:
    container_index: int
    device_index: int
    gpu_uuid: str
    profile: str
    placement: MigPlacement
    # Runtime identity, written by the device plugin after it created the instance.
    mig_uuid: str = ""
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None

    @property
    def realized(self) -> bool:
        return bool(self.mig_uuid) and self.gpu_instance_id is not None and self.compute_instance_id is not None

    def with_runtime(self, mig_uuid: str, gpu_instance_id: int, compute_instance_id: int) -> MigAllocation:
        return replace(self, mig_uuid=mig_uuid, gpu_instance_id=gpu_instance_id,
                       compute_instance_id=compute_instance_id)


# ---- registration: migProfiles ----------------------------------------------------------

def encode_mig_profiles(profiles: Iterable[MigProfile]) -> list[dict[str, Any]]:
    """The `migProfiles` value of one registration entry (HAMi leaves instanceCount out)."""
    return [
        {
            "name": p.name,
            "memoryMB": p.memory,
            "core": p.core,
            "sliceCount": p.slices,
            "placements": [{"start": x.start, "size": x.size} for x in p.placements],
        }
        for p in profiles
    ]


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AnnotationError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


def _placement(raw: Any, what: str) -> MigPlacement:
    if not isinstance(raw, dict):
        raise AnnotationError(f"{what}: placement must be an object with start and size")
    return MigPlacement(_whole(raw.get("start", 0), f"{what}: start"), _whole(raw.get("size", 0), f"{what}: size"))


def decode_mig_profiles(raw: Any, where: str = "migProfiles") -> tuple[MigProfile, ...]:
    """Inverse of encode_mig_profiles; raises AnnotationError naming the bad field."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise AnnotationError(f"{where} must be a list")
    profiles = []
    for position, item in enumerate(raw):
        what = f"{where}[{position}]"
        if not isinstance(item, dict):
            raise AnnotationError(f"{what}: not an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise AnnotationError(f"{what}: missing 'name'")
        placements = item.get("placements") or []
        if not isinstance(placements, list):
            raise AnnotationError(f"{what} ({name}): 'placements' must be a list")
        profiles.append(MigProfile(
            name=name,
            memory=_whole(item.get("memoryMB", 0), f"{what} ({name}): memoryMB"),
            core=_whole(item.get("core", 0), f"{what} ({name}): core"),
            slices=_whole(item.get("sliceCount", 0), f"{what} ({name}): sliceCount"),
            placements=tuple(_placement(p, f"{what} ({name})") for p in placements),
        ))
    return tuple(profiles)


# ---- pod: hami.io/vgpu-mig-allocations ---------------------------------------------------

def encode_mig_allocations(allocations: Sequence[MigAllocation]) -> str:
    out = []
    for a in allocations:
        item: dict[str, Any] = {
            "containerIndex": a.container_index,
            "deviceIndex": a.device_index,
            "gpuUUID": a.gpu_uuid,
            "profile": a.profile,
            "placement": {"start": a.placement.start, "size": a.placement.size},
        }
        if a.mig_uuid:
            item["migUUID"] = a.mig_uuid
        if a.gpu_instance_id is not None:
            item["gpuInstanceID"] = a.gpu_instance_id
        if a.compute_instance_id is not None:
            item["computeInstanceID"] = a.compute_instance_id
        out.append(item)
    return json.dumps(out, separators=(",", ":"))


def decode_mig_allocations(value: str | None) -> list[MigAllocation]:
    """HAMi's DecodeMigAllocations: [] for none; AnnotationError for an incomplete entry, a
    repeated (container, device) pair or a partial runtime identity."""
    if not value:
        return []
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise AnnotationError("JSON value is not a list")
    seen: set[tuple[int, int]] = set()
    result = []
    for position, item in enumerate(data):
        what = f"MIG allocation {position}"
        if not isinstance(item, dict):
            raise AnnotationError(f"{what}: not an object")
        container = item.get("containerIndex", 0)
        device = item.get("deviceIndex", 0)
        gpu, profile = item.get("gpuUUID", ""), item.get("profile", "")
        if (isinstance(container, bool) or not isinstance(container, int) or container < 0
                or isinstance(device, bool) or not isinstance(device, int) or device < 0
                or not isinstance(gpu, str) or not gpu or not isinstance(profile, str) or not profile):
            raise AnnotationError(f"{what} is incomplete")
        placement = _placement(item.get("placement") or {}, what)
        if placement.size == 0:
            raise AnnotationError(f"{what} is incomplete (placement size 0)")
        mig_uuid = item.get("migUUID", "")
        gi, ci = item.get("gpuInstanceID"), item.get("computeInstanceID")
        if not isinstance(mig_uuid, str):
            raise AnnotationError(f"{what}: 'migUUID' must be a string")
        for name, number in (("gpuInstanceID", gi), ("computeInstanceID", ci)):
            if number is not None:
                _whole(number, f"{what}: {name}")
        runtime = sum((bool(mig_uuid), gi is not None, ci is not None))
        if runtime not in (0, 3):
            raise AnnotationError(f"{what} has partial runtime identity")
        key = (container, device)
        if key in seen:
            raise AnnotationError(f"duplicate MIG allocation for container {container} device {device}")
        seen.add(key)
        result.append(MigAllocation(container, device, gpu, profile, placement, mig_uuid, gi, ci))
    return result


def allocations_of(allocation: PodAllocation) -> list[MigAllocation]:
    """The reservations of a decision: one per device that carries a MIG part."""
    found = []
    for container_index, container in enumerate(allocation):
        for device_index, device in enumerate(container):
            part = device.part
            if part is not None and part.size > 0:
                found.append(MigAllocation(container_index, device_index, device.uuid, part.profile,
                                           MigPlacement(part.start, part.size)))
    return found
