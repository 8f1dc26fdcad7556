"""Running libvgpu's C test programs against the fake driver."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBVGPU = ROOT / "libvgpu"
BUILD = LIBVGPU / "build"


def build() -> None:
    subprocess.run(["make", "-s", "-C", str(LIBVGPU)], check=True, capture_output=True, text=True)


@dataclass
class Sandbox:
    """One fake GPU (its state file) and one container (its region file)."""

    dir: Path

    @property
    def region(self) -> Path:
        return self.dir / "region.cache"

    @property
    def fake_state(self) -> Path:
        return self.dir / "fake.state"

    def env(self, preload: bool = True, region: Path | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "FAKE_CUDA_", "LIBVGPU_", "GPU_CORE"))}
        env.pop("LD_PRELOAD", None)
        env.update(
            LD_LIBRARY_PATH=str(BUILD),
            FAKE_CUDA_STATE=str(self.fake_state),
            CUDA_DEVICE_MEMORY_SHARED_CACHE=str(region or self.region),
            LIBCUDA_LOG_LEVEL="1",
        )
        if preload:
            env["LD_PRELOAD"] = str(BUILD / "libvgpu.so")
        env.update(extra)
        return env

    def run(
        self, prog: str, *args: str, preload: bool = True, timeout: float = 60, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BUILD / prog), *args],
            env=self.env(preload=preload, **extra),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, prog: str, *args: str, region: Path | None = None, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(BUILD / prog), *args],
            env=self.env(region=region, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def values(out: str) -> dict[str, str]:
    """``key=value`` pairs from a test program's output."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith(("PASS", "FAIL")):
            continue
        for word in line.split():
            if "=" in word:
                k, v = word.split("=", 1)
                found[k] = v
    return found


def failures(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]
