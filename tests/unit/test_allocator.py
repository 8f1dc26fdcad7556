"""The allocator settings take effect in this process's C library (glibc here)."""

from __future__ import annotations

import ctypes
import ctypes.util

from hami.allocator import tune_allocator


def test_glibc_accepts_every_setting() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    assert hasattr(libc, "mallopt"), "this test runs on glibc"
    assert tune_allocator() is True
