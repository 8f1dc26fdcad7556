"""A light progress bar on stderr: redrawn in place on a terminal, a line per 10% otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None):
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.started = time.perf_counter()
        self._last_decile = -1

    def advance(self, note: str = "") -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        share = self.done / self.total
        eta = elapsed / share - elapsed if share else 0.0
        if self.tty:
            width = 30
            filled = int(width * share)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.0f}s eta {eta:4.0f}s {note}"
                              f"\x1b[K")
            if self.done == self.total:
                self.stream.write("\n")
        else:
            decile = int(share * 10)
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(f"{self.label}: {self.done}/{self.total} done, {elapsed:.0f}s {note}\n")
        self.stream.flush()
