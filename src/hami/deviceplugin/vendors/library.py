"""What the real backends share: loading a vendor's C library, and health by polling it."""

from __future__ import annotations

import ctypes
import logging
import queue
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hami.deviceplugin.backend import BackendError, HealthEvent

log = logging.getLogger(__name__)

LIBRARY_NOT_FOUND = "LIBRARY_NOT_FOUND"


def load_library(candidates: Sequence[str], what: str, hint: str) -> ctypes.CDLL:
    """The first of `candidates` (paths, or names for the linker) that loads; BackendError
    LIBRARY_NOT_FOUND naming every one tried when none does."""
    errors = []
    for candidate in candidates:
        try:
            return ctypes.CDLL(candidate)
        except OSError as exc:
            errors.append(str(exc))
    raise BackendError(LIBRARY_NOT_FOUND, f"cannot load {what} ({'; '.join(errors)}); {hint}")


def sysfs_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().strip(), 0)
    except (OSError, ValueError):
        return default


class HealthPoller:
    """Health events for libraries without an event API: each device is probed every `interval_s`
    seconds (as HAMi's plugins do) and a change of its answer is an event."""

    def __init__(self, probe: Callable[[str], str | None], interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe  # uuid -> None when healthy, else why not
        self._interval = interval_s
        self._clock = clock
        self._health: dict[str, bool] = {}
        self._next = 0.0
        self._events: queue.Queue[HealthEvent] = queue.Queue()

    def watch(self, health: dict[str, bool]) -> None:
        self._health = dict(health)
        self._next = self._clock() + self._interval

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        if self._events.empty() and self._clock() >= self._next:
            self._next = self._clock() + self._interval
            for uuid, was in self._health.items():
                problem = self._probe(uuid)
                if (problem is None) != was:
                    self._health[uuid] = problem is None
                    self._events.put(HealthEvent(uuid=uuid, healthy=problem is None, reason=problem or "healthy again"))
        try:
            return self._events.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None
