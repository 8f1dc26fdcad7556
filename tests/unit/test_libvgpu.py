"""libvgpu against the fake driver: memory limit, shared region, SM cap, priority, lookup paths."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from hami.monitor import shared_region
from tests.unit.libvgpu_helpers import BUILD, Sandbox, build, failures, values

MiB = 1 << 20
PATHS = ["direct", "dlsym", "procaddr"]


@pytest.fixture(scope="session", autouse=True)
def _built() -> None:
    build()


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def test_library_exports_only_the_hooks() -> None:
    out = subprocess.run(["nm", "-D", "--defined-only", str(BUILD / "libvgpu.so")], capture_output=True, text=True)
    names = {line.split()[-1] for line in out.stdout.splitlines() if line.split()[1] in "TtWi"}
    assert "dlsym" in names and "cuMemAlloc_v2" in names and "cuGetProcAddress_v2" in names
    assert all(n.startswith(("cu", "nvml")) or n == "dlsym" for n in names), names
    needed = subprocess.run(["readelf", "-d", str(BUILD / "libvgpu.so")], capture_output=True, text=True).stdout
    assert "libcuda" not in needed and "libnvidia-ml" not in needed


def test_region_layout_matches_the_c_struct() -> None:
    out = subprocess.run([str(BUILD / "region_layout")], capture_output=True, text=True, check=True).stdout
    c_fields: dict[str, tuple[int, int]] = {}
    sizes: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2:
            sizes[parts[0]] = int(parts[1])
        else:
            c_fields[parts[0]] = (int(parts[1]), int(parts[2]))
    assert c_fields == shared_region.field_offsets()
    import ctypes

    assert sizes == {
        "vgpu_region_t": ctypes.sizeof(shared_region.VgpuRegion),
        "vgpu_device_t": ctypes.sizeof(shared_region.VgpuDevice),
        "vgpu_proc_t": ctypes.sizeof(shared_region.VgpuProc),
    }


@pytest.mark.parametrize("path", PATHS)
def test_memory_limit_holds_and_frees_return_budget(box: Sandbox, path: str) -> None:
    r = box.run("t_mem", path, CUDA_DEVICE_MEMORY_LIMIT="1000m")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not failures(r.stdout)
    v = values(r.stdout)
    assert int(v["total"]) == 1000 * MiB
    assert int(v["allocated"]) <= 1000 * MiB
    snap = shared_region.read_region(box.region)
    assert snap.version == 1
    dev0 = snap.devices[0]
    assert dev0.limit_bytes == 1000 * MiB and dev0.used_bytes == 0
    assert all(p.used_bytes[0] == 0 for p in snap.processes)


def test_without_the_library_the_fake_enforces_only_its_capacity(box: Sandbox) -> None:
    r = box.run("t_info", preload=False, CUDA_DEVICE_MEMORY_LIMIT="1g", FAKE_CUDA_MEM_MIB="4096")
    assert int(values(r.stdout)["total"]) == 4096 * MiB


def test_lookup_paths_return_the_wrappers(box: Sandbox) -> None:
    r = box.run("t_paths")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", PATHS)
def test_forked_processes_racing_never_pass_the_limit(box: Sandbox, path: str) -> None:
    r = box.run("t_race", path, "8", "10", "1024", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(values(r.stdout)["sum"]) <= 1 << 30


@pytest.mark.parametrize("path", PATHS)
def test_killed_lock_holder_does_not_wedge_others(box: Sandbox, path: str) -> None:
    r = box.run("t_kill", path, "1024", CUDA_DEVICE_MEMORY_LIMIT="1g", timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3000m", 3000 * MiB),
        ("3g", 3 << 30),
        ("1073741824", 1 << 30),
        ("512Mi", 512 * MiB),
        ("2Gi", 2 << 30),
        ("2G", 2 << 30),
    ],
)
def test_limit_forms(box: Sandbox, value: str, expected: int) -> None:
    r = box.run("t_info", CUDA_DEVICE_MEMORY_LIMIT_0=value, FAKE_CUDA_MEM_MIB="8192")
    v = values(r.stdout)
    assert int(v["total"]) == expected
    assert int(v["device_total"]) == expected
    assert int(v["nvml_total"]) == expected
    assert r.stderr == ""


@pytest.mark.parametrize("value", ["3gb", "abc", "1.5g", "-1", "3 g", "", "99999999999999999999g"])
def test_bad_limit_is_refused_with_one_log_line(box: Sandbox, value: str) -> None:
    r = box.run("t_info", CUDA_DEVICE_MEMORY_LIMIT=value, FAKE_CUDA_MEM_MIB="8192")
    assert int(values(r.stdout)["total"]) == 8192 * MiB
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA_DEVICE_MEMORY_LIMIT" in lines[0], r.stderr


def test_per_device_limit_and_view_never_above_physical(box: Sandbox) -> None:
    env = {"FAKE_CUDA_DEVICES": "2", "FAKE_CUDA_MEM_MIB": "4096", "CUDA_DEVICE_MEMORY_LIMIT": "1g"}
    d0 = values(box.run("t_info", "0", **env, CUDA_DEVICE_MEMORY_LIMIT_1="64g").stdout)
    d1 = values(box.run("t_info", "1", **env, CUDA_DEVICE_MEMORY_LIMIT_1="64g").stdout)
    assert int(d0["total"]) == 1 << 30
    assert int(d1["total"]) == 4096 * MiB  # the limit is above the card: the card's figure
    assert int(d1["nvml_total"]) == 4096 * MiB


def test_context_overhead_is_counted(box: Sandbox) -> None:
    r = box.run(
        "t_info",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
        CUDA_DEVICE_CONTEXT_OVERHEAD="300m",
        FAKE_CUDA_CTX_OVERHEAD_MIB="300",
    )
    v = values(r.stdout)
    assert int(v["total"]) == 1 << 30
    assert int(v["free"]) == (1 << 30) - 300 * MiB


def test_region_of_another_layout_is_left_alone(box: Sandbox) -> None:
    box.region.write_bytes(b"\x01" * 64)
    r = box.run("t_info", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert int(values(r.stdout)["total"]) == 1 << 30
    assert "another layout" in r.stderr
    assert box.region.read_bytes() == b"\x01" * 64
    with pytest.raises(shared_region.RegionError):
        shared_region.read_region(box.region)


SM_ENV = {"FAKE_CUDA_BLOCK_US": "500", "FAKE_CUDA_SM_COUNT": "108"}


def _util(box: Sandbox, *args: str, **env: str) -> float:
    r = box.run("t_sm", *args, **SM_ENV, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    return float(values(r.stdout)["util"])


def test_sm_limit_30_gives_30_percent(box: Sandbox) -> None:
    util = _util(box, "direct", "kernel", "3.5", "1.5", "1", CUDA_DEVICE_SM_LIMIT="30")
    assert 0.25 <= util <= 0.35, util
    snap = shared_region.read_region(box.region)
    assert snap.devices[0].sm_limit == 30 and snap.devices[0].throttled_launches > 0


@pytest.mark.parametrize(
    ("path", "kind", "procs"),
    [("dlsym", "ex", "1"), ("direct", "coop", "1"), ("procaddr", "graph", "1"), ("procaddr-ptsz", "kernel", "2")],
)
def test_sm_limit_covers_every_launch_path(box: Sandbox, path: str, kind: str, procs: str) -> None:
    util = _util(box, path, kind, "2.5", "1.2", procs, CUDA_DEVICE_SM_LIMIT="30")
    assert 0.25 <= util <= 0.35, util


def test_without_sm_limit_or_disabled_the_device_is_saturated(box: Sandbox) -> None:
    # Well above the cap; not 100 %, since a starved CPU can leave the fake device idle.
    assert _util(box, "direct", "kernel", "1.5", "0.3", "1") > 0.6
    util = _util(
        box, "direct", "kernel", "1", "0.3", "1", CUDA_DEVICE_SM_LIMIT="30", GPU_CORE_UTILIZATION_POLICY="disable"
    )
    assert util > 0.6


def test_low_priority_waits_while_high_priority_runs(box: Sandbox) -> None:
    high_region, low_region = box.dir / "high.cache", box.dir / "low.cache"
    high = box.popen("t_prio", "3", region=high_region, CUDA_TASK_PRIORITY="0")
    low = box.popen("t_prio", "3", region=low_region, CUDA_TASK_PRIORITY="1")
    try:
        # The monitor's job: high-priority kernels are running, so suspend the others on that device.
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                shared_region.read_region(low_region)
                snap = shared_region.read_region(high_region)
            except (FileNotFoundError, shared_region.RegionError):
                # Not created yet, or created and sized but its header not yet written.
                pass
            else:
                if any(p.last_kernel_ns and p.priority == 0 for p in snap.processes):
                    break
            time.sleep(0.05)
        time.sleep(0.3)
        shared_region.set_suspended(low_region, 0, True)
        shared_region.set_suspended(high_region, 0, True)  # ignored by priority 0
        assert shared_region.read_region(low_region).devices[0].suspended
        time.sleep(1.2)
        before = max(p.last_kernel_ns for p in shared_region.read_region(low_region).processes)
        shared_region.set_suspended(low_region, 0, False)
        shared_region.set_suspended(high_region, 0, False)
        time.sleep(0.4)
        after = max(p.last_kernel_ns for p in shared_region.read_region(low_region).processes)
        assert after > before  # resumed
    finally:
        for region in (high_region, low_region):
            if region.exists():
                shared_region.set_suspended(region, 0, False)
        high_out, _ = high.communicate(timeout=20)
        low_out, _ = low.communicate(timeout=20)
    assert float(values(low_out)["max_gap_s"]) >= 1.0, low_out
    assert float(values(high_out)["max_gap_s"]) < 0.3, high_out
