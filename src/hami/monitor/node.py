"""The monitor's loop on one node: find the containers' regions, keep task priority, apply
resized limits, and remove the regions of containers that are gone.

Each container has a directory `<pod uid>_<container>` under the cache root (the device
plugin creates it and mounts it into the container) holding its region file. The loop
watches the root and every container directory with inotify, so it wakes when a directory
comes or goes and when a process writes its region through the file: libvgpu does that on
the first launch after 100 ms without one. That is what makes priority react in
milliseconds rather than at the next poll. It also wakes when the last running work of a
container stops counting as running (the priority window), when the pods change, and every
`scan_interval_s` for a full pass (in case an event was missed).

A region that is missing, truncated, of another layout or garbage is logged once and
skipped until it changes; the loop never stops for one container's file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify  # type: ignore[import-untyped]  # no stubs
from inotify_simple import flags as inotify_flags

from hami.monitor import priority, shared_region
from hami.monitor.pods import ContainerInfo, PodIndex
from hami.monitor.shared_region import RegionError, RegionSnapshot

log = logging.getLogger(__name__)

MIB = 1024 * 1024
REGION_NAME = "vgpu.cache"  # what the device plugin names it (CUDA_DEVICE_MEMORY_SHARED_CACHE)
ROOT_EVENTS = inotify_flags.CREATE | inotify_flags.DELETE | inotify_flags.MOVED_TO | inotify_flags.MOVED_FROM
DIR_EVENTS = (
    inotify_flags.MODIFY | inotify_flags.CREATE | inotify_flags.DELETE | inotify_flags.MOVED_TO
    | inotify_flags.CLOSE_WRITE
)


@dataclass(frozen=True)
class ContainerDir:
    name: str  # "<pod uid>_<container>"
    pod_uid: str
    container: str
    path: Path

    def region(self) -> Path | None:
        """The region file: `vgpu.cache`, else the first `*.cache` (HAMi's rule); None when there is none."""
        preferred = self.path / REGION_NAME
        if preferred.is_file():
            return preferred
        with contextlib.suppress(OSError):
            for candidate in sorted(self.path.glob("*.cache")):
                if candidate.is_file():
                    return candidate
        return None


def parse_dir_name(name: str) -> tuple[str, str] | None:
    """`<pod uid>_<container>` split on the first `_` (pod UIDs have none); None for other names."""
    uid, sep, container = name.partition("_")
    return (uid, container) if sep and uid and container else None


@dataclass
class Tracked:
    dir: ContainerDir
    watch: int | None = None
    region: Path | None = None
    snapshot: RegionSnapshot | None = None
    problem: str = ""  # the last problem logged about its region ("" = none)
    kept_in_use: bool = False  # logged once: gone pod, region still in use


@dataclass(frozen=True)
class MonitorOptions:
    root: Path  # the cache root: $HOOK_PATH/containers
    window_s: float = 0.5  # work counts as running until this long after its last launch
    core_limit_switching: bool = False  # HAMi's: lift the SM cap of a container running alone
    scan_interval_s: float = 1.0
    grace_s: float = 300.0  # a gone pod's directory is kept at least this long after its last change
    cleanup_interval_s: float = 30.0


@dataclass
class MonitorStats:
    suspends: int = 0
    resumes: int = 0
    resizes: int = 0
    removed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # container dir -> why its region is skipped


class NodeMonitor:
    def __init__(self, options: MonitorOptions, pods: PodIndex | None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        if options.window_s < 0.1:
            raise ValueError("the priority window must be at least 0.1 s (libvgpu announces after 100 ms idle)")
        self.options = options
        self.pods = pods
        self.clock_ns = clock_ns
        self.stats = MonitorStats()
        self._lock = threading.Lock()
        self._tracked: dict[str, Tracked] = {}
        self._by_watch: dict[int, str] = {}
        self._inotify = INotify(nonblocking=True)
        self._root_watch: int | None = None
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._pods_changed = True
        self._next_change_ns: int | None = None
        self._root_missing_logged = False
        # time.monotonic() when the loop last finished a pass without error (the liveness probe's).
        self.last_pass: float | None = None

    # ---- for other threads -------------------------------------------------------------

    def wake(self) -> None:
        """Run a pass soon (the pods changed, or the loop should stop)."""
        self._pods_changed = True
        os.eventfd_write(self._wake_fd, 1)

    def containers(self) -> list[ContainerDir]:
        with self._lock:
            return [t.dir for t in self._tracked.values()]

    def close(self) -> None:
        self._inotify.close()
        os.close(self._wake_fd)

    # ---- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        next_scan = next_cleanup = 0.0
        while not stop.is_set():
            dirty, rescan = self._wait(self._timeout(next_scan))
            if stop.is_set():
                return
            now = time.monotonic()
            full = rescan or now >= next_scan
            try:
                if full:
                    self._scan()
                    next_scan = now + self.options.scan_interval_s
                self.step(None if full else dirty)
                if now >= next_cleanup:
                    self.cleanup()
                    next_cleanup = now + self.options.cleanup_interval_s
                self.last_pass = time.monotonic()
            except Exception:  # noqa: BLE001 - a bug must not end priority on the node: log, go on
                log.exception("monitor pass failed")
                stop.wait(0.5)

    def _timeout(self, next_scan: float) -> float:
        timeout = max(0.0, next_scan - time.monotonic())
        if self._next_change_ns is not None:
            # libvgpu stamps launches with a coarse clock: look a little after the window ends.
            timeout = min(timeout, max(0.0, (self._next_change_ns - self.clock_ns()) / 1e9 + 0.002))
        return timeout

    def _wait(self, timeout: float) -> tuple[set[str], bool]:
        """Block until an event or the timeout; the containers whose files changed, and whether
        directories came or went."""
        ready, _, _ = select.select([self._inotify.fileno(), self._wake_fd], [], [], timeout)
        dirty: set[str] = set()
        rescan = False
        if self._wake_fd in ready:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wake_fd)
        if self._inotify.fileno() in ready:
            for event in self._inotify.read(timeout=0):
                if event.wd == self._root_watch or event.mask & inotify_flags.Q_OVERFLOW:
                    rescan = True
                else:
                    name = self._by_watch.get(event.wd)
                    if name is not None:
                        dirty.add(name)
        return dirty, rescan

    def step(self, dirty: set[str] | None) -> None:
        """One pass: re-read the regions that changed (all when `dirty` is None) and those with
        running work, then bring flags and limits in line."""
        with self._lock:
            tracked = dict(self._tracked)
        window = int(self.options.window_s * 1e9)
        now = self.clock_ns()
        for name, t in tracked.items():
            # A container that ran work at its last read may have run more since (launches
            # while running raise no event): read it again until it has been idle a while.
            if dirty is None or name in dirty or self._pods_changed or _recently_active(t.snapshot, now, 2 * window):
                self._read(t)
        self._pods_changed = False
        infos = {name: self._info(t) for name, t in tracked.items()}
        self._apply_limits(tracked, infos)
        self._apply_priority(tracked, infos)

    # ---- directories -------------------------------------------------------------------

    def _scan(self) -> None:
        root = self.options.root
        if self._root_watch is None:
            try:
                self._root_watch = self._inotify.add_watch(str(root), ROOT_EVENTS)
                self._root_missing_logged = False
            except OSError as exc:
                if not self._root_missing_logged:
                    log.warning("cache root %s: %s; waiting for it (the device plugin creates it)", root, exc.strerror)
                    self._root_missing_logged = True
                return
        try:
            names = {e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)}
        except OSError as exc:
            log.warning("cannot list %s: %s", root, exc.strerror)
            self._root_watch = None
            return
        with self._lock:
            known = set(self._tracked)
        for name in sorted(names - known):
            parsed = parse_dir_name(name)
            if parsed is None:
                continue
            tracked = Tracked(ContainerDir(name, parsed[0], parsed[1], root / name))
            with contextlib.suppress(OSError):  # gone again already: the next scan forgets it
                tracked.watch = self._inotify.add_watch(str(tracked.dir.path), DIR_EVENTS)
                self._by_watch[tracked.watch] = name
            with self._lock:
                self._tracked[name] = tracked
            log.info("container %s (pod %s): watching", tracked.dir.container, tracked.dir.pod_uid)
        for name in known - names:
            self._forget(name)

    def _forget(self, name: str) -> None:
        with self._lock:
            tracked = self._tracked.pop(name, None)
        if tracked is None:
            return
        self.stats.skipped.pop(name, None)
        if tracked.watch is not None:
            self._by_watch.pop(tracked.watch, None)
            with contextlib.suppress(OSError):  # removed with the directory already
                self._inotify.rm_watch(tracked.watch)

    # ---- regions -----------------------------------------------------------------------

    def _read(self, t: Tracked) -> None:
        t.region = t.dir.region()
        problem = ""
        if t.region is None:
            t.snapshot = None  # no process has started yet: not a problem
        else:
            try:
                t.snapshot = shared_region.read_region(t.region)
            except RegionError as exc:
                t.snapshot, problem = None, str(exc)
            except OSError as exc:
                t.snapshot, problem = None, exc.strerror or str(exc)
        if problem != t.problem:
            if problem:
                log.warning("container %s: region %s: %s; skipped until it changes", t.dir.name, t.region, problem)
                self.stats.skipped[t.dir.name] = problem
            else:
                log.info("container %s: region readable again", t.dir.name)
                self.stats.skipped.pop(t.dir.name, None)
            t.problem = problem

    def _info(self, t: Tracked) -> ContainerInfo | None:
        return self.pods.container(t.dir.pod_uid, t.dir.container) if self.pods is not None else None

    def _apply_limits(self, tracked: dict[str, Tracked], infos: dict[str, ContainerInfo | None]) -> None:
        """Write the decision's limits into regions that differ (a resize, or a region that
        a process created from an environment older than the decision)."""
        for name, t in tracked.items():
            info = infos[name]
            if t.snapshot is None or t.region is None or info is None or not info.devices:
                continue
            wanted = {i: (d.usedmem * MIB, d.usedcores if 0 < d.usedcores < 100 else 0)
                      for i, d in enumerate(info.devices)}
            have = {i: _limits(t.snapshot, i) for i in wanted}
            if wanted == have:
                continue
            try:
                shared_region.write_limits(t.region, wanted)
            except (RegionError, OSError, ValueError) as exc:
                log.warning("container %s: cannot write new limits: %s", name, exc)
                continue
            self.stats.resizes += 1
            for i, (memory, cores) in wanted.items():
                if have[i] != (memory, cores):
                    used = (t.snapshot.device(i) or _NO_DEVICE).used_bytes
                    log.info("pod %s/%s container %s device %d: limits %d MiB %d %% -> %d MiB %d %%%s",
                             info.namespace, info.pod, info.container, i, have[i][0] // MIB, have[i][1],
                             memory // MIB, cores,
                             f" (holds {used // MIB} MiB: new allocations fail until it frees)"
                             if memory and used > memory else "")
            self._read(t)

    def _apply_priority(self, tracked: dict[str, Tracked], infos: dict[str, ContainerInfo | None]) -> None:
        activities = []
        for name, t in tracked.items():
            info = infos[name]
            if t.snapshot is None or info is None:
                continue
            prio = min((p.priority for p in t.snapshot.processes), default=priority.LOW)
            for i, device in enumerate(info.devices):
                usage = t.snapshot.device(i)
                last = usage.last_launch_ns if usage is not None else (0, 0)
                activities.append(priority.DeviceActivity(name, i, device.uuid, prio, last))
        plan = priority.plan(activities, self.clock_ns(), int(self.options.window_s * 1e9),
                             self.options.core_limit_switching)
        self._next_change_ns = plan.next_change_ns
        for name, t in tracked.items():
            if t.snapshot is None or t.region is None:
                continue
            have = {d.index: (d.suspended, d.relaxed) for d in t.snapshot.devices if d.suspended or d.relaxed}
            wanted = {i: (False, False) for i in have}  # flags of devices no longer known are cleared
            for (container, index), flags in plan.flags.items():
                if container == name:
                    wanted[index] = (flags.suspend, flags.relax)
            if all(have.get(i, (False, False)) == value for i, value in wanted.items()):
                continue
            try:
                shared_region.write_flags(t.region, wanted)
            except (RegionError, OSError, ValueError) as exc:
                log.warning("container %s: cannot write priority flags: %s", name, exc)
                continue
            for i, (suspend, _) in wanted.items():
                before = have.get(i, (False, False))[0]
                if suspend != before:
                    if suspend:
                        self.stats.suspends += 1
                    else:
                        self.stats.resumes += 1
                    log.info("container %s device %d: %s", name, i,
                             "suspended: priority-0 work runs on its GPU" if suspend else "resumed")
            self._read(t)

    # ---- cleanup -----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove the directories of containers whose pod is gone: only once the pod list is
        known, only after the grace period since the directory last changed, and never while
        a live process holds the region."""
        if self.pods is None or not self.pods.synced:
            return
        now = time.time()
        with self._lock:
            tracked = list(self._tracked.values())
        for t in tracked:
            if self.pods.known(t.dir.pod_uid):
                continue
            region = t.dir.region()
            try:
                changed = max(p.stat().st_mtime for p in (t.dir.path, region) if p is not None)
            except OSError:
                continue  # going away already
            if now - changed < self.options.grace_s:
                continue
            if region is not None and shared_region.in_use(region):
                if not t.kept_in_use:
                    log.warning("container %s: pod %s is gone but a live process still uses %s; kept",
                                t.dir.name, t.dir.pod_uid, region)
                    t.kept_in_use = True
                continue
            try:
                shutil.rmtree(t.dir.path)
            except OSError as exc:
                log.warning("cannot remove %s: %s", t.dir.path, exc.strerror)
                continue
            self.stats.removed += 1
            log.info("removed %s: pod %s is gone", t.dir.path, t.dir.pod_uid)
            self._forget(t.dir.name)


_NO_DEVICE = shared_region.DeviceUsage(0, 0, 0, 0, 0, 0.0, False, False, 0, 0)


def _limits(snapshot: RegionSnapshot, index: int) -> tuple[int, int]:
    device = snapshot.device(index)
    if device is None:
        return (0, 0)
    return (device.limit_bytes, device.sm_limit if 0 < device.sm_limit < 100 else 0)


def _recently_active(snapshot: RegionSnapshot | None, now_ns: int, window_ns: int) -> bool:
    if snapshot is None:
        return False
    return any(t > 0 and now_ns - t < window_ns for d in snapshot.devices for t in d.last_launch_ns)
