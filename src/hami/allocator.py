"""glibc's allocator tuned for the engine's large, short-lived numpy arrays.

Each decision makes temporary arrays of one element per device (hundreds of KiB at 40,000
devices). By default glibc serves blocks that large with mmap and gives them back with munmap,
so every decision pays page faults for fresh pages: on a 5,000-node cluster that was most of
the per-pod time and most of its tail (bench/engine/mixed.py: p99 15 ms, then 7.5 ms). Keeping
such blocks on the heap, and not trimming the heap after each free, reuses the same pages.
The process keeps its peak heap instead of returning it, which suits a long-running scheduler.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD = 512 * 1024 * 1024
TOP_PAD = 64 * 1024 * 1024


def tune_allocator() -> bool:
    """Apply the settings above where the C library is glibc; False (and nothing changed) elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library (%s): allocator left as it is", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
