"""`hami.io/node-nvidia-register`: the devices a node offers.

HAMi writes a JSON list (one object per device). Older HAMi and some vendors write a
colon-separated form, `id,count,devmem,devcore,type,numa,health[,index,mode]:` per device;
we read both and always write JSON.
"""

from __future__ import annotations

import json
from typing import Any

from hami.annotations.errors import AnnotationError
from hami.annotations.mig import decode_mig_profiles, encode_mig_profiles
from hami.model.devices import HAMI_CORE_MODE, DeviceInfo


def encode_node_devices(devices: list[DeviceInfo] | tuple[DeviceInfo, ...]) -> str:
    """JSON as HAMi's device plugin writes it (every field explicit; `custominfo` when there is some)."""
    return json.dumps([_device_json(d) for d in devices], separators=(",", ":"))


def _device_json(d: DeviceInfo) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": d.id,
        "index": d.index,
        "count": d.count,
        "devmem": d.devmem,
        "devcore": d.devcore,
        "type": d.type,
        "numa": d.numa,
        "mode": d.mode,
        "health": d.health,
    }
    if d.mig_profiles:  # NVIDIA MIG mode: the profiles and placements NVML reported
        obj["migProfiles"] = encode_mig_profiles(d.mig_profiles)
    if d.custom:
        obj["custominfo"] = d.custom
    return obj


def decode_node_devices(value: str) -> list[DeviceInfo]:
    """Decode either form; raises AnnotationError with a reason a person can act on."""
    text = value.strip()
    if text.startswith("["):
        return _decode_json(text)
    if text.startswith("{"):
        raise AnnotationError("neither a JSON list nor the colon-separated device form (a JSON object)")
    if ":" in text:
        return _decode_legacy(text)
    raise AnnotationError("neither a JSON list nor the colon-separated device form")


def _int_field(obj: dict[str, Any], key: str, position: int) -> int:
    raw = obj.get(key, 0)  # Go's omitempty drops zero values, so absent means 0
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise AnnotationError(f"device {position}: '{key}' must be an integer, got {raw!r}")
    return raw


def _decode_json(text: str) -> list[DeviceInfo]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, list):
        raise AnnotationError("JSON value is not a list")
    devices = []
    for position, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise AnnotationError(f"device {position}: not an object")
        device_id = obj.get("id")
        if not isinstance(device_id, str) or not device_id:
            raise AnnotationError(f"device {position}: missing 'id'")
        health = obj.get("health", False)  # omitempty: an absent health is false in HAMi
        if not isinstance(health, bool):
            raise AnnotationError(f"device {position}: 'health' must be true or false")
        dtype = obj.get("type", "")
        mode = obj.get("mode") or HAMI_CORE_MODE
        if not isinstance(dtype, str) or not isinstance(mode, str):
            raise AnnotationError(f"device {position}: 'type' and 'mode' must be strings")
        custom = obj.get("custominfo") or {}  # a vendor's extra facts (Ascend's NetworkID, …)
        if not isinstance(custom, dict):
            raise AnnotationError(f"device {position}: 'custominfo' must be an object")
        device = DeviceInfo(
            id=device_id,
            count=_int_field(obj, "count", position),
            devmem=_int_field(obj, "devmem", position),
            devcore=_int_field(obj, "devcore", position),
            type=dtype,
            numa=_int_field(obj, "numa", position),
            health=health,
            index=_int_field(obj, "index", position),
            mode=mode,
            custom=custom,
            mig_profiles=decode_mig_profiles(obj.get("migProfiles"), f"device {position}: migProfiles"),
        )
        _check_ranges(device, position)
        devices.append(device)
    return devices


def _decode_legacy(text: str) -> list[DeviceInfo]:
    devices = []
    for position, chunk in enumerate(part for part in text.split(":") if part.strip()):
        items = chunk.split(",")
        if len(items) not in (7, 9):
            raise AnnotationError(f"device {position}: expected 7 or 9 comma-separated fields, got {len(items)}")
        try:
            count, devmem, devcore, numa = int(items[1]), int(items[2]), int(items[3]), int(items[5])
            index = int(items[7]) if len(items) == 9 else 0
        except ValueError:
            raise AnnotationError(f"device {position}: count, memory, cores, numa and index must be integers") from None
        health_text = items[6].strip().lower()
        if health_text not in ("true", "false", "1", "0", "t", "f"):
            raise AnnotationError(f"device {position}: health must be true or false, got {items[6]!r}")
        device = DeviceInfo(
            id=items[0],
            count=count,
            devmem=devmem,
            devcore=devcore,
            type=items[4],
            numa=numa,
            health=health_text in ("true", "1", "t"),
            index=index,
            mode=items[8] if len(items) == 9 and items[8] else HAMI_CORE_MODE,
        )
        _check_ranges(device, position)
        devices.append(device)
    return devices


def _check_ranges(device: DeviceInfo, position: int) -> None:
    for name in ("count", "devmem", "devcore"):
        if getattr(device, name) < 0:
            raise AnnotationError(f"device {position} ({device.id}): '{name}' is negative")
