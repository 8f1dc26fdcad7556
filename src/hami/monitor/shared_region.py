"""Reader (and the monitor's two flags) for libvgpu's shared region file.

The layout mirrors ``libvgpu/include/vgpu_region.h`` (version 1); a unit test
compares every offset here with the C compiler's. The library updates the file
with atomics and a lock; this reader takes a consistent-enough copy (one
``pread`` of the whole file), which is what a metrics scrape needs.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass

MAGIC = 0x55504756494D4148  # "HAMIVGPU" read as a little-endian u64
VERSION = 1
MAX_DEVICES = 16
MAX_PROCS = 256


class RegionError(Exception):
    """The file is missing, too short, or not a version-1 region."""


class VgpuDevice(ctypes.Structure):
    _fields_ = [
        ("limit", ctypes.c_uint64),
        ("used", ctypes.c_uint64),
        ("total", ctypes.c_uint64),
        ("sm_limit", ctypes.c_uint32),
        ("sm_count", ctypes.c_uint32),
        ("suspend", ctypes.c_uint32),
        ("relax", ctypes.c_uint32),
        ("util_permille", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("tokens", ctypes.c_int64),
        ("refill_ns", ctypes.c_uint64),
        ("rate_milli", ctypes.c_uint64),
        ("ctl_ns", ctypes.c_uint64),
        ("launched", ctypes.c_uint64),
        ("ctl_launched", ctypes.c_uint64),
        ("waits", ctypes.c_uint64),
        ("cost_bits", ctypes.c_uint64),
        ("reserved1", ctypes.c_uint64 * 2),
    ]
    limit: int
    used: int
    total: int
    sm_limit: int
    sm_count: int
    suspend: int
    relax: int
    util_permille: int
    launched: int
    waits: int


class VgpuProc(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_int32),
        ("priority", ctypes.c_int32),
        ("start_time", ctypes.c_uint64),
        ("last_kernel_ns", ctypes.c_uint64),
        ("used", ctypes.c_uint64 * MAX_DEVICES),
    ]
    pid: int
    priority: int
    start_time: int
    last_kernel_ns: int
    used: ctypes.Array[ctypes.c_uint64]


class VgpuRegion(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_uint64),
        ("version", ctypes.c_uint32),
        ("region_size", ctypes.c_uint32),
        ("device_size", ctypes.c_uint32),
        ("proc_size", ctypes.c_uint32),
        ("max_devices", ctypes.c_uint32),
        ("max_procs", ctypes.c_uint32),
        ("device_count", ctypes.c_uint32),
        ("suspend_any", ctypes.c_uint32),
        ("created_ns", ctypes.c_uint64),
        ("limits_gen", ctypes.c_uint32),
        ("reserved0", ctypes.c_uint32),
        ("reserved", ctypes.c_uint64 * 2),
        ("dev", VgpuDevice * MAX_DEVICES),
        ("proc", VgpuProc * MAX_PROCS),
    ]
    magic: int
    version: int
    region_size: int
    device_size: int
    proc_size: int
    max_devices: int
    max_procs: int
    device_count: int
    suspend_any: int
    created_ns: int
    limits_gen: int
    dev: ctypes.Array[VgpuDevice]
    proc: ctypes.Array[VgpuProc]


@dataclass(frozen=True)
class DeviceUsage:
    index: int
    limit_bytes: int  # 0: no memory limit
    used_bytes: int
    total_bytes: int  # physical, as a process last saw it (0: unknown)
    sm_limit: int  # percent; 0: none
    utilization: float  # the limiter's last measurement, 0..1
    suspended: bool
    launched_blocks: int
    throttled_launches: int


@dataclass(frozen=True)
class ProcessUsage:
    pid: int
    priority: int
    last_kernel_ns: int  # CLOCK_REALTIME nanoseconds; 0: no kernel yet
    used_bytes: tuple[int, ...]  # per device


@dataclass(frozen=True)
class RegionSnapshot:
    version: int
    created_ns: int
    devices: tuple[DeviceUsage, ...]
    processes: tuple[ProcessUsage, ...]


def field_offsets() -> dict[str, tuple[int, int]]:
    """``"struct.field" -> (offset, size)`` for every field, named as the C layout tool prints them."""
    out: dict[str, tuple[int, int]] = {}
    for cname, struct in (("vgpu_region_t", VgpuRegion), ("vgpu_device_t", VgpuDevice), ("vgpu_proc_t", VgpuProc)):
        for name, *_ in struct._fields_:
            desc = getattr(struct, name)
            out[f"{cname}.{name}"] = (int(desc.offset), int(desc.size))
    return out


def _parse(data: bytes) -> VgpuRegion:
    size = ctypes.sizeof(VgpuRegion)
    if len(data) < size:
        raise RegionError(f"region is {len(data)} bytes, expected at least {size}")
    region = VgpuRegion.from_buffer_copy(data[:size])
    if region.magic != MAGIC:
        raise RegionError("not a libvgpu region (bad magic)")
    if region.version != VERSION or region.region_size != size:
        raise RegionError(f"region layout version {region.version} (size {region.region_size}) is not supported")
    return region


def read_region(path: str | os.PathLike[str]) -> RegionSnapshot:
    """Per-device limit/used and per-process usage of one container's region."""
    with open(path, "rb") as f:
        region = _parse(f.read(ctypes.sizeof(VgpuRegion)))
    count = max(0, min(int(region.device_count), MAX_DEVICES))
    devices = []
    for i in range(MAX_DEVICES):
        d = region.dev[i]
        if i >= count and not (d.used or d.limit or d.sm_limit or d.suspend or d.relax or d.launched):
            continue
        devices.append(
            DeviceUsage(
                index=i,
                limit_bytes=int(d.limit),
                used_bytes=int(d.used),
                total_bytes=int(d.total),
                sm_limit=int(d.sm_limit),
                utilization=int(d.util_permille) / 1000.0,
                suspended=bool(d.suspend),
                launched_blocks=int(d.launched),
                throttled_launches=int(d.waits),
            )
        )
    procs = tuple(
        ProcessUsage(
            pid=int(p.pid),
            priority=int(p.priority),
            last_kernel_ns=int(p.last_kernel_ns),
            used_bytes=tuple(int(v) for v in p.used),
        )
        for p in region.proc
        if p.pid
    )
    return RegionSnapshot(
        version=int(region.version), created_ns=int(region.created_ns), devices=tuple(devices), processes=procs
    )


def _write_flag(path: str | os.PathLike[str], device: int, field: str, on: bool) -> None:
    if not 0 <= device < MAX_DEVICES:
        raise ValueError(f"device index {device} out of range")
    size = ctypes.sizeof(VgpuRegion)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), size) as mm:
        _parse(bytes(mm[:64]) + bytes(size - 64))  # header check only
        offsets = field_offsets()
        dev_base = offsets["vgpu_region_t.dev"][0] + device * ctypes.sizeof(VgpuDevice)
        off = dev_base + offsets[f"vgpu_device_t.{field}"][0]
        old = int.from_bytes(mm[off : off + 4], "little")
        mm[off : off + 4] = (1 if on else 0).to_bytes(4, "little")
        if field == "suspend" and bool(old) != on:
            any_off = offsets["vgpu_region_t.suspend_any"][0]
            count = int.from_bytes(mm[any_off : any_off + 4], "little")
            count = count + 1 if on else max(0, count - 1)
            mm[any_off : any_off + 4] = count.to_bytes(4, "little")


def set_suspended(path: str | os.PathLike[str], device: int, on: bool) -> None:
    """Monitor side: make the container's low-priority launches on ``device`` wait (or resume).

    The monitor must be the only writer of these flags (it keeps ``suspend_any`` in step)."""
    _write_flag(path, device, "suspend", on)


def set_relaxed(path: str | os.PathLike[str], device: int, on: bool) -> None:
    """Monitor side: under the ``default`` core policy, lift the SM cap while the device is not shared."""
    _write_flag(path, device, "relax", on)
