"""A GPU node without GPUs, for the monitor's tests and benchmark.

The GPUs are libvgpu's fake driver (one state file shared by every process, so memory and
kernel time are device-wide); each container is a `t_worker` process under libvgpu, with
the env the device plugin would give it and its region in its own cache directory
`<root>/containers/<pod uid>_<container>/vgpu.cache`, as on a real node; its pod is a dict
carrying the scheduler's decision annotations.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hami.annotations import keys
from hami.annotations.pod_devices import encode_pod_devices
from hami.model.allocation import ContainerDevice

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "libvgpu" / "build"


def gpu_uuid(index: int) -> str:
    return f"GPU-6a1f0e2c-0000-4000-8000-{index:012d}"


@dataclass(frozen=True)
class Gpu:
    """One container's share of one GPU: which GPU, how many MiB, what percent of its SMs."""

    index: int
    memory_mib: int
    cores: int = 0


@dataclass
class Worker:
    """One process of a container, driven by t_worker's line commands."""

    process: subprocess.Popen[str]
    cache_dir: Path

    def send(self, command: str, timeout: float = 60.0) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited ({self.process.poll()}) on {command!r}")
        return line.strip()

    def start(self, command: str) -> None:
        """Send without waiting for the answer (read it later with answer())."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


@dataclass
class SimNode:
    dir: Path
    gpus: int = 2
    gpu_memory_mib: int = 16384
    node: str = "sim-node"
    pods: list[dict[str, Any]] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hook_path.joinpath("containers").mkdir(parents=True, exist_ok=True)

    @property
    def hook_path(self) -> Path:
        return self.dir / "vgpu"

    @property
    def fake_state(self) -> Path:
        return self.dir / "fake-gpu.state"

    def driver_env(self) -> dict[str, str]:
        """What the fake driver needs, in every process that uses it (the monitor's NVML too)."""
        return {
            "LD_LIBRARY_PATH": str(BUILD),
            "FAKE_CUDA_STATE": str(self.fake_state),
            "FAKE_CUDA_DEVICES": str(self.gpus),
            "FAKE_CUDA_MEM_MIB": str(self.gpu_memory_mib),
            "FAKE_CUDA_UUIDS": ",".join(gpu_uuid(i) for i in range(self.gpus)),
            "FAKE_CUDA_BLOCK_US": "50",
        }

    def fake_devices_yaml(self) -> Path:
        """The same GPUs in the device plugin's fake-devices format."""
        path = self.dir / "fake-devices.yaml"
        devices = [{"uuid": gpu_uuid(i), "name": "Fake GPU", "memory": self.gpu_memory_mib} for i in range(self.gpus)]
        path.write_text(yaml.safe_dump({"devices": devices}))
        return path

    def add_pod(self, name: str, containers: dict[str, list[Gpu]], namespace: str = "default",
                priority: dict[str, int] | None = None) -> dict[str, Any]:
        """A pod on this node with the scheduler's decision (as after Allocate: to-allocate blanked)."""
        allocation = tuple(
            tuple(ContainerDevice(gpu_uuid(g.index), "NVIDIA", g.memory_mib, g.cores) for g in gpus)
            for gpus in containers.values()
        )
        limits = {c: ({"nvidia.com/priority": str(priority[c])} if priority and c in priority else {})
                  for c in containers}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuidlib.uuid4()),
                "annotations": {
                    keys.VGPU_NODE: self.node,
                    keys.DEVICES_ALLOCATED: encode_pod_devices(allocation),
                    keys.DEVICES_TO_ALLOCATE: ";" * len(allocation),
                    keys.BIND_PHASE: "success",
                },
            },
            "spec": {
                "nodeName": self.node,
                "containers": [{"name": c, "image": "sim", "resources": {"limits": limits[c]}} for c in containers],
            },
        }
        self.pods.append(pod)
        return pod

    def pods_file(self) -> Path:
        path = self.dir / "pods.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": self.pods}))
        return path

    def cache_dir(self, pod: dict[str, Any], container: str) -> Path:
        return self.hook_path / "containers" / f"{pod['metadata']['uid']}_{container}"

    def start(self, pod: dict[str, Any], container: str, priority: int | None = None, device: int = 0,
              **env: str) -> Worker:
        """A process of the container, with the env the device plugin gives it (its decision's limits),
        working on the container's device number `device`."""
        from hami.annotations.pod_devices import decode_pod_devices

        names = [c["name"] for c in pod["spec"]["containers"]]
        devices = decode_pod_devices(pod["metadata"]["annotations"][keys.DEVICES_ALLOCATED])[names.index(container)]
        cache = self.cache_dir(pod, container)
        cache.mkdir(parents=True, exist_ok=True)
        full = {k: v for k, v in os.environ.items()
                if not k.startswith(("CUDA_", "FAKE_CUDA_", "LIBVGPU_", "GPU_CORE", "NVIDIA_"))}
        full.pop("LD_PRELOAD", None)
        full.update(self.driver_env())
        full.update(
            LD_PRELOAD=str(BUILD / "libvgpu.so"),
            NVIDIA_VISIBLE_DEVICES=",".join(d.uuid for d in devices),
            CUDA_DEVICE_MEMORY_SHARED_CACHE=str(cache / "vgpu.cache"),
            CUDA_DEVICE_SM_LIMIT=str(devices[0].usedcores),
            LIBCUDA_LOG_LEVEL="1",
        )
        for i, d in enumerate(devices):
            full[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{d.usedmem}m"
        if priority is not None:
            full["CUDA_TASK_PRIORITY"] = str(priority)
        full.update(env)
        process = subprocess.Popen([str(BUILD / "t_worker"), str(device)], env=full, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        worker = Worker(process, cache)
        self.workers.append(worker)
        ready = worker.answer()
        if not ready.startswith("ready"):
            raise RuntimeError(f"worker did not start: {ready!r}")
        return worker

    def monitor_command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hami", "monitor", *args]

    def monitor_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NVIDIA_", "LD_PRELOAD"))}
        env.update(self.driver_env())
        env.update(HOOK_PATH=str(self.hook_path), NODE_NAME=self.node)
        env.update(extra)
        return env

    def start_monitor(self, *args: str, log: Path | None = None, **env: str) -> subprocess.Popen[bytes]:
        out = open(log or self.dir / "monitor.log", "ab")  # noqa: SIM115 - the child owns it
        return subprocess.Popen(self.monitor_command(*args), env=self.monitor_env(**env), stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers.clear()


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
