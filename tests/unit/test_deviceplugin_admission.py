"""Which pod kubelet is starting: several pods bound to one node wait for their devices and a
kubelet stand-in (real gRPC, kubelet's own protos, kubelet's admission order per pod) starts them
in any order. Each container gets its own pod's devices and limits, or the start fails with a
clear error; never another pod's."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from hami.annotations import keys
from hami.annotations.pod_devices import decode_pod_devices
from hami.config import HamiConfig, NvidiaConfig
from hami.deviceplugin.fake import FakeBackend
from hami.deviceplugin.pods import InMemoryPodSource
from hami.deviceplugin.server import DevicePlugin, PluginOptions
from hami.scheduler.nodelock import ALLOCATE_BY_POD_RESOURCES
from tests.cluster.kubelet import AdmissionError, KubeletStandIn
from tests.unit.test_deviceplugin_support import FAKE_GPUS, GPU_A, GPU_B, NODE, gpu_pod, wait_until


@dataclass
class Node:
    kubelet: KubeletStandIn
    plugin: DevicePlugin
    source: InMemoryPodSource

    def admit(self, name: str) -> Any:
        pod = self.source.get_pod("default", name)
        assert pod is not None
        return self.kubelet.admit(pod)

    def annotations(self, name: str) -> dict[str, str]:
        pod = self.source.get_pod("default", name)
        assert pod is not None
        return dict(pod["metadata"]["annotations"])


@contextmanager
def node(pods: list[dict[str, Any]], pod_resources: bool = True, lock: str | None = None) -> Iterator[Node]:
    with tempfile.TemporaryDirectory(prefix="dp") as tmp:
        root = Path(tmp)
        kubelet = KubeletStandIn(root / "k", root / "pr" / "kubelet.sock")
        kubelet.serve_pod_resources = pod_resources
        kubelet.start()
        source = InMemoryPodSource(pods, nodes={NODE: {keys.NODE_LOCK: lock} if lock else {}})
        options = PluginOptions(node=NODE, plugin_dir=str(root / "k"), socket_name="hami.sock",
                                cache_root=str(root / "c"), register_interval_s=0.2, watch_interval_s=0.05,
                                pod_resources_socket=str(root / "pr" / "kubelet.sock"))
        plugin = DevicePlugin(FakeBackend(data=FAKE_GPUS), source, HamiConfig(nvidia=NvidiaConfig(deviceSplitCount=16)),
                              options)
        plugin.start()
        try:
            kubelet.wait_for_devices("nvidia.com/gpu")
            yield Node(kubelet, plugin, source)
        finally:
            plugin.stop()
            kubelet.stop()


def waiting_pods(count: int) -> list[dict[str, Any]]:
    """`count` one-GPU pods on GPU A, each with its own memory limit, bound in name order."""
    return [gpu_pod(f"p{i:02d}", [("main", 1)], f"{GPU_A},NVIDIA,{1000 + 100 * i},{i}:;", uid=f"uid-{i}")
            for i in range(count)]


def test_twelve_pods_started_in_reverse_order_each_get_their_own_limits() -> None:
    pods = waiting_pods(12)
    with node(pods) as n:
        for i in reversed(range(12)):
            admitted = n.admit(f"p{i:02d}")
            envs = admitted.envs("main")
            assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{1000 + 100 * i}m", (i, envs)
            assert envs["CUDA_DEVICE_SM_LIMIT"] == str(i)
            annotations = n.annotations(f"p{i:02d}")
            assert annotations[keys.BIND_PHASE] == "success"
            assert not any(decode_pod_devices(annotations[keys.DEVICES_TO_ALLOCATE]))
        # GetPreferredAllocation steered kubelet to the shares of GPU A, the scheduler's choice.
        assert all(d.startswith(GPU_A) for _, _, ids, _ in admitted.containers for d in ids)


def test_mixed_one_and_two_gpu_pods_in_any_order() -> None:
    pods = []
    for i in range(11):
        if i % 2:
            decision = f"{GPU_A},NVIDIA,{2000 + i},10:{GPU_B},NVIDIA,{3000 + i},10:;"
            pods.append(gpu_pod(f"p{i:02d}", [("main", 2)], decision, uid=f"uid-{i}"))
        else:
            pods.append(gpu_pod(f"p{i:02d}", [("main", 1)], f"{GPU_B},NVIDIA,{1000 + i},5:;", uid=f"uid-{i}"))
    order = [3, 10, 0, 7, 1, 9, 2, 8, 4, 6, 5]
    with node(pods) as n:
        for i in order:
            envs = n.admit(f"p{i:02d}").envs("main")
            if i % 2:
                assert (envs["CUDA_DEVICE_MEMORY_LIMIT_0"], envs["CUDA_DEVICE_MEMORY_LIMIT_1"]) == \
                    (f"{2000 + i}m", f"{3000 + i}m")
                assert envs["NVIDIA_VISIBLE_DEVICES"] == f"{GPU_A},{GPU_B}"
            else:
                assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{1000 + i}m"
                assert "CUDA_DEVICE_MEMORY_LIMIT_1" not in envs
        assert {n.annotations(f"p{i:02d}")[keys.BIND_PHASE] for i in order} == {"success"}


def test_init_and_app_containers_of_pods_started_out_of_order() -> None:
    first = gpu_pod("a", [("app", 1)], f"{GPU_A},NVIDIA,500,0:;{GPU_A},NVIDIA,700,0:;", init=[("setup", 1)],
                    uid="uid-a")
    second = gpu_pod("b", [("app", 1)], f"{GPU_B},NVIDIA,900,0:;{GPU_B},NVIDIA,1100,0:;", init=[("setup", 1)],
                     uid="uid-b")
    with node([first, second]) as n:
        admitted = n.admit("b")
        assert admitted.envs("setup")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "900m"
        assert admitted.envs("app")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1100m"
        admitted = n.admit("a")
        assert admitted.envs("setup")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "500m"
        assert admitted.envs("app")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "700m"


def test_a_pod_not_decided_by_the_scheduler_is_refused_not_given_another_pods_devices() -> None:
    waiting = waiting_pods(2)
    stranger = gpu_pod("stranger", [("main", 1)], "", uid="uid-s", phase="")  # bypassed the scheduler
    with node([*waiting, stranger]) as n:
        with pytest.raises(AdmissionError) as rejected:
            n.admit("stranger")
        assert rejected.value.code == grpc.StatusCode.NOT_FOUND
        assert "kubelet is admitting no pod that waits for devices" in rejected.value.details
        assert "default/p00, default/p01" in rejected.value.details
        # Nothing was taken from the pods that wait.
        assert [n.annotations(f"p0{i}")[keys.BIND_PHASE] for i in range(2)] == ["allocating"] * 2
        assert n.admit("p01").envs("main")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1100m"


def test_without_kubelets_answer_one_waiting_pod_or_the_lock_owner_else_a_clear_error() -> None:
    with node(waiting_pods(1), pod_resources=False) as n:
        assert n.admit("p00").envs("main")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1000m"
    # HAMi's way: the node lock names the pod (the scheduler holds it until Allocate).
    with node(waiting_pods(3), pod_resources=False, lock="2024-05-01T10:00:00Z,default,p02") as n:
        assert n.admit("p02").envs("main")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1200m"
        assert keys.NODE_LOCK not in n.source.nodes[NODE]  # released once allocated
        # Two left, no lock: refuse rather than guess, and leave both pods waiting.
        with pytest.raises(AdmissionError) as rejected:
            n.admit("p01")
        assert rejected.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot tell which pod kubelet is starting" in rejected.value.details
        assert "default/p00, default/p01" in rejected.value.details
        assert [n.annotations(f"p0{i}")[keys.BIND_PHASE] for i in range(2)] == ["allocating"] * 2


def test_the_node_advertises_pod_matching_only_while_kubelet_answers() -> None:
    with node([]) as n:
        wait_until(lambda: n.source.nodes[NODE].get(ALLOCATE_BY_POD_RESOURCES) == "nvidia.com/gpu",
                   what="the pod-matching annotation")
        n.kubelet.stop()  # kubelet's sockets gone: HAMi's node lock again
        wait_until(lambda: ALLOCATE_BY_POD_RESOURCES not in n.source.nodes[NODE], what="the annotation withdrawn")
    with node([], pod_resources=False) as n:
        wait_until(lambda: n.source.nodes[NODE].get(keys.NODE_NVIDIA_REGISTER), what="registration")
        assert ALLOCATE_BY_POD_RESOURCES not in n.source.nodes[NODE]
