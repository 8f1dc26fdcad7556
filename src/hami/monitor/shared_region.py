"""Reader (and the monitor's two flags) for libvgpu's shared region file.

The layout mirrors ``libvgpu/include/vgpu_region.h`` (version 1); a unit test
compares every offset here with the C compiler's. The library updates the file
with atomics and a lock; this reader takes a consistent-enough copy (one
``read`` of the whole file), which is what a metrics scrape needs. The monitor
writes the suspend/relax flags and, on a resize, the limits.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

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
        ("last_launch_ns", ctypes.c_uint64 * 2),
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
    last_launch_ns: ctypes.Array[ctypes.c_uint64]


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
    relaxed: bool
    launched_blocks: int
    throttled_launches: int
    # CLOCK_REALTIME ns of the latest launch on this device by a priority-0 / priority-1 process (0: none)
    last_launch_ns: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class ProcessUsage:
    pid: int  # as the container sees it (its own pid namespace)
    priority: int
    last_kernel_ns: int  # CLOCK_REALTIME nanoseconds; 0: no kernel yet
    used_bytes: tuple[int, ...]  # per device


@dataclass(frozen=True)
class RegionSnapshot:
    version: int
    created_ns: int
    limits_gen: int
    devices: tuple[DeviceUsage, ...]
    processes: tuple[ProcessUsage, ...]

    def device(self, index: int) -> DeviceUsage | None:
        for d in self.devices:
            if d.index == index:
                return d
        return None


REGION_SIZE = ctypes.sizeof(VgpuRegion)


def field_offsets() -> dict[str, tuple[int, int]]:
    """``"struct.field" -> (offset, size)`` for every field, named as the C layout tool prints them."""
    out: dict[str, tuple[int, int]] = {}
    for cname, struct in (("vgpu_region_t", VgpuRegion), ("vgpu_device_t", VgpuDevice), ("vgpu_proc_t", VgpuProc)):
        for name, *_ in struct._fields_:
            desc = getattr(struct, name)
            out[f"{cname}.{name}"] = (int(desc.offset), int(desc.size))
    return out


def _check(region: VgpuRegion, size: int) -> None:
    if size < REGION_SIZE:
        raise RegionError(f"region is {size} bytes, expected at least {REGION_SIZE}")
    if region.magic != MAGIC:
        raise RegionError("not a libvgpu region (bad magic)")
    if region.version != VERSION or region.region_size != REGION_SIZE:
        raise RegionError(f"region layout version {region.version} (size {region.region_size}) is not supported")


def _parse(data: bytes) -> VgpuRegion:
    if len(data) < REGION_SIZE:
        raise RegionError(f"region is {len(data)} bytes, expected at least {REGION_SIZE}")
    region = VgpuRegion.from_buffer_copy(data[:REGION_SIZE])
    _check(region, len(data))
    return region


def parse_region(data: bytes) -> RegionSnapshot:
    """A snapshot from the bytes of a region file; RegionError when they are not a version-1 region."""
    region = _parse(data)
    count = max(0, min(int(region.device_count), MAX_DEVICES))
    devices = []
    for i in range(MAX_DEVICES):
        d = region.dev[i]
        last = (int(d.last_launch_ns[0]), int(d.last_launch_ns[1]))
        if i >= count and not (d.used or d.limit or d.sm_limit or d.suspend or d.relax or d.launched or any(last)):
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
                relaxed=bool(d.relax),
                launched_blocks=int(d.launched),
                throttled_launches=int(d.waits),
                last_launch_ns=last,
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
        version=int(region.version),
        created_ns=int(region.created_ns),
        limits_gen=int(region.limits_gen),
        devices=tuple(devices),
        processes=procs,
    )


def read_region(path: str | os.PathLike[str]) -> RegionSnapshot:
    """Per-device limit/used and per-process usage of one container's region.

    Reads with one ``read`` (never a mapping: a file truncated under a mapping would kill
    the reader with SIGBUS). Raises RegionError for a file that is not a version-1 region
    and OSError when it cannot be read."""
    with open(path, "rb") as f:
        return parse_region(f.read(REGION_SIZE + 1))


T = TypeVar("T")


def _update(path: str | os.PathLike[str], change: Callable[[VgpuRegion], T]) -> T:
    """Map the region read-write and apply ``change`` to it. ctypes stores of aligned 4- and
    8-byte fields are single machine stores, so libvgpu's atomic loads never see half a value.
    The mapping lives only for the call, and the size is checked first: a file truncated
    under a long-lived mapping would kill the reader with SIGBUS."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if size < REGION_SIZE:
            raise RegionError(f"region is {size} bytes, expected at least {REGION_SIZE}")
        mm = mmap.mmap(f.fileno(), REGION_SIZE)
        try:
            region = VgpuRegion.from_buffer(mm)
            try:
                _check(region, size)
                return change(region)
            finally:
                del region  # the buffer export must end before the mapping closes
        finally:
            mm.close()


def write_flags(path: str | os.PathLike[str], flags: dict[int, tuple[bool, bool]]) -> None:
    """Monitor side: per device index, (suspend, relax). ``suspend`` makes the container's
    low-priority launches on that device wait; ``relax`` lifts its SM cap under the ``default``
    core policy. The monitor must be the only writer of these flags: ``suspend_any`` (the
    launch fast path's check) is recounted here."""
    for device in flags:
        if not 0 <= device < MAX_DEVICES:
            raise ValueError(f"device index {device} out of range")

    def change(region: VgpuRegion) -> None:
        for device, (suspend, relax) in flags.items():
            region.dev[device].relax = int(relax)
            region.dev[device].suspend = int(suspend)
        region.suspend_any = sum(1 for i in range(MAX_DEVICES) if region.dev[i].suspend)

    _update(path, change)


def write_limits(path: str | os.PathLike[str], limits: dict[int, tuple[int, int]]) -> bool:
    """Monitor side (resize): per device index, (memory limit in bytes, SM limit in percent;
    0 = none). libvgpu obeys from its next allocation or launch. Returns whether anything changed."""
    for device, (memory, cores) in limits.items():
        if not 0 <= device < MAX_DEVICES:
            raise ValueError(f"device index {device} out of range")
        if memory < 0 or not 0 <= cores <= 100:
            raise ValueError(f"device {device}: bad limits {memory} bytes, {cores} %")

    def change(region: VgpuRegion) -> bool:
        changed = False
        for device, (memory, cores) in limits.items():
            if region.dev[device].limit != memory or region.dev[device].sm_limit != cores:
                region.dev[device].limit = memory
                region.dev[device].sm_limit = cores
                changed = True
            if device + 1 > region.device_count:
                region.device_count = device + 1
        if changed:
            region.limits_gen = (region.limits_gen + 1) & 0xFFFFFFFF  # after the limits: processes re-read
        return changed

    return _update(path, change)


def set_suspended(path: str | os.PathLike[str], device: int, on: bool) -> None:
    """Suspend (or resume) one device's low-priority launches; the relax flag is kept."""
    snap = read_region(path)
    current = snap.device(device)
    write_flags(path, {device: (on, current.relaxed if current else False)})


def set_relaxed(path: str | os.PathLike[str], device: int, on: bool) -> None:
    """Under the ``default`` core policy, lift the SM cap while the device is not shared."""
    snap = read_region(path)
    current = snap.device(device)
    write_flags(path, {device: (current.suspended if current else False, on)})


def in_use(path: str | os.PathLike[str]) -> bool:
    """Whether a live process has the region open: each holds a shared lock on byte 1."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 1)
        return False
    finally:
        os.close(fd)
