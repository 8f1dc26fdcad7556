"""Task priority: which containers' devices to suspend, and whose core limit to lift. Pure.

HAMi's rules (its monitor's feedback loop), per physical GPU, with "running" meaning a
launch within the last `window_ns` on that GPU (libvgpu stamps, per device and per
priority, the time of the latest launch):

- A container is suspended on a GPU while another container runs priority-0 work on it.
  libvgpu ignores the flag in priority-0 processes, so it is set regardless of the
  container's own priority (a new process of unknown priority is then held at once).
- With core-limit switching on, a container's SM cap is lifted (`relax`) while no other
  container on that GPU runs work of the same or a higher priority (0 is higher than 1).

The answer also says when it may change next: the earliest moment a running container
stops counting as running. Nothing here reads a clock or a file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

HIGH, LOW = 0, 1


@dataclass(frozen=True)
class DeviceActivity:
    """One container's use of one GPU."""

    container: str  # any key that names the container (its cache directory)
    index: int  # the device's index inside the container (the region's)
    uuid: str  # the physical GPU
    priority: int  # the container's task priority (libvgpu's default is 1)
    last_launch_ns: tuple[int, int]  # latest launch by priority-0 / priority-1 work (0: none)


@dataclass(frozen=True)
class Flags:
    suspend: bool = False
    relax: bool = False


@dataclass(frozen=True)
class PriorityPlan:
    flags: dict[tuple[str, int], Flags]  # (container, device index) -> flags
    next_change_ns: int | None  # when a running container stops counting as running; None: nothing runs
    running: dict[str, tuple[int, ...]]  # GPU uuid -> priorities with work running on it (sorted)


def _running(activity: DeviceActivity, priority: int, now_ns: int, window_ns: int) -> bool:
    last = activity.last_launch_ns[priority]
    return last > 0 and now_ns - last < window_ns


def plan(activities: Iterable[DeviceActivity], now_ns: int, window_ns: int, core_limit_switching: bool) -> PriorityPlan:
    by_gpu: dict[str, list[DeviceActivity]] = {}
    for activity in activities:
        by_gpu.setdefault(activity.uuid, []).append(activity)
    flags: dict[tuple[str, int], Flags] = {}
    running_on: dict[str, tuple[int, ...]] = {}
    next_change: int | None = None
    for uuid, users in by_gpu.items():
        # Per container: the priorities it runs on this GPU.
        runs = {(a.container, a.index): {p for p in (HIGH, LOW) if _running(a, p, now_ns, window_ns)} for a in users}
        running_on[uuid] = tuple(sorted(set().union(*runs.values())))
        for a in users:
            for p in (HIGH, LOW):
                if _running(a, p, now_ns, window_ns):
                    expires = a.last_launch_ns[p] + window_ns
                    next_change = expires if next_change is None else min(next_change, expires)
        for a in users:
            others = [r for (container, _), r in runs.items() if container != a.container]
            suspend = any(HIGH in r for r in others)
            relax = core_limit_switching and not any(p <= a.priority for r in others for p in r)
            flags[(a.container, a.index)] = Flags(suspend=suspend, relax=relax)
    return PriorityPlan(flags=flags, next_change_ns=next_change, running=running_on)
