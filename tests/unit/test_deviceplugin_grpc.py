"""The device plugin over real gRPC on unix sockets, against a kubelet double built from api.proto."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from hami.annotations import keys
from hami.config import HamiConfig, NvidiaConfig
from hami.deviceplugin.allocate import BIND_FAILURE_REASON
from hami.deviceplugin.api import api_pb2
from tests.unit.test_deviceplugin_support import GPU_A, GPU_B, NODE, gpu_pod, running_plugin, wait_until

LOCK = "2024-05-01T10:00:00Z,default,{name}"


def allocate(stub, *containers: list[str]):
    request = api_pb2.AllocateRequest(
        container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids) for ids in containers]
    )
    return stub.Allocate(request, timeout=5)


def mounts(response) -> list[tuple[str, str, bool]]:
    return [(m.container_path, m.host_path, m.read_only) for m in response.mounts]


def test_registers_with_kubelet_and_annotates_the_node() -> None:
    with running_plugin() as h:
        request = h.kubelet.next_registration()
        assert request.version == "v1beta1"
        assert request.endpoint == "hami.sock"
        assert request.resource_name == "nvidia.com/gpu"
        assert request.options.get_preferred_allocation_available
        assert not request.options.pre_start_required
        annotations = wait_until(lambda: h.source.nodes[NODE].get(keys.NODE_NVIDIA_REGISTER) and h.source.nodes[NODE])
        registered = json.loads(annotations[keys.NODE_NVIDIA_REGISTER])
        assert [d["id"] for d in registered] == [GPU_A, GPU_B]
        assert registered[0] == {"id": GPU_A, "index": 0, "count": 4, "devmem": 81920, "devcore": 100,
                                 "type": "NVIDIA-NVIDIA A100-SXM4-80GB", "numa": 0, "mode": "hami-core",
                                 "health": True}
        assert annotations[keys.NODE_HANDSHAKE].startswith("Reported ")
        with h.kubelet.client(h.endpoint) as stub:
            options = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
            assert options.get_preferred_allocation_available and not options.pre_start_required
            assert stub.PreStartContainer(api_pb2.PreStartContainerRequest(devices_ids=[f"{GPU_A}-0"]), timeout=5) \
                == api_pb2.PreStartContainerResponse()


def test_list_and_watch_pushes_health_changes() -> None:
    with running_plugin() as h, h.kubelet.client(h.endpoint) as stub:
        stream = stub.ListAndWatch(api_pb2.Empty(), timeout=10)
        first = next(stream)
        assert [d.ID for d in first.devices] == [f"{GPU_A}-{i}" for i in range(4)] + [f"{GPU_B}-{i}" for i in range(4)]
        assert {d.health for d in first.devices} == {"Healthy"}
        assert [d.topology.nodes[0].ID for d in first.devices] == [0] * 4 + [1] * 4
        wait_until(lambda: len(h.source.node_patches) >= 1, what="first registration")
        patches_before = len(h.source.node_patches)
        h.backend.inject_xid(GPU_B, 13)  # an application error: no change
        h.backend.inject_xid(GPU_B, 79)  # fallen off the bus
        second = next(stream)
        health = {d.ID: d.health for d in second.devices}
        assert health[f"{GPU_A}-0"] == "Healthy"
        assert [health[f"{GPU_B}-{i}"] for i in range(4)] == ["Unhealthy"] * 4
        # The node annotation follows, once (the periodic check writes nothing more).
        wait_until(lambda: len(h.source.node_patches) > patches_before, what="annotation update")
        registered = json.loads(h.source.nodes[NODE][keys.NODE_NVIDIA_REGISTER])
        assert [d["health"] for d in registered] == [True, False]
        h.backend.set_health(GPU_B, True)
        third = next(stream)
        assert {d.health for d in third.devices} == {"Healthy"}
        stream.cancel()


def test_allocate_one_container_exact_response() -> None:
    pod = gpu_pod("p1", [("main", 1)], f"{GPU_B},NVIDIA,3000,30:;")
    with running_plugin(pods=[pod], lock=LOCK.format(name="p1")) as h, h.kubelet.client(h.endpoint) as stub:
        response = allocate(stub, [f"{GPU_A}-2"])  # kubelet's pick does not matter: the decision does
        assert len(response.container_responses) == 1
        got = response.container_responses[0]
        assert dict(got.envs) == {
            "NVIDIA_VISIBLE_DEVICES": GPU_B,
            "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m",
            "CUDA_DEVICE_SM_LIMIT": "30",
            "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/usr/local/vgpu/cache/vgpu.cache",
        }
        cache = h.root / "c" / "uid-1_main"
        assert mounts(got) == [
            ("/usr/local/vgpu/libvgpu.so", "/usr/local/vgpu/libvgpu.so", True),
            ("/usr/local/vgpu/cache", str(cache), False),
            ("/tmp/vgpulock", "/tmp/vgpulock", False),
            ("/etc/ld.so.preload", "/usr/local/vgpu/ld.so.preload", True),
        ]
        assert cache.is_dir()
        annotations = h.annotations("p1")
        assert annotations[keys.DEVICES_TO_ALLOCATE] == ";"
        assert annotations[keys.DEVICES_ALLOCATED] == f"{GPU_B},NVIDIA,3000,30:;"
        assert annotations[keys.BIND_PHASE] == "success"
        assert keys.NODE_LOCK not in h.source.nodes[NODE]


def test_allocate_two_containers_two_devices_each() -> None:
    decision = f"{GPU_A},NVIDIA,1000,10:{GPU_B},NVIDIA,2000,10:;{GPU_A},NVIDIA,4000,25:{GPU_B},NVIDIA,5000,25:;"
    pod = gpu_pod("p2", [("a", 2), ("b", 2)], decision, priority={"b": 1})
    with running_plugin(pods=[pod], lock=LOCK.format(name="p2")) as h, h.kubelet.client(h.endpoint) as stub:
        first = allocate(stub, [f"{GPU_A}-0", f"{GPU_B}-0"]).container_responses[0]
        assert dict(first.envs) == {
            "NVIDIA_VISIBLE_DEVICES": f"{GPU_A},{GPU_B}",
            "CUDA_DEVICE_MEMORY_LIMIT_0": "1000m",
            "CUDA_DEVICE_MEMORY_LIMIT_1": "2000m",
            "CUDA_DEVICE_SM_LIMIT": "10",
            "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/usr/local/vgpu/cache/vgpu.cache",
        }
        annotations = h.annotations("p2")
        assert annotations[keys.DEVICES_TO_ALLOCATE] == f";{GPU_A},NVIDIA,4000,25:{GPU_B},NVIDIA,5000,25:;"
        assert annotations[keys.BIND_PHASE] == "allocating"
        assert h.source.nodes[NODE][keys.NODE_LOCK] == LOCK.format(name="p2")

        second = allocate(stub, [f"{GPU_A}-1", f"{GPU_B}-1"]).container_responses[0]
        assert dict(second.envs) == {
            "NVIDIA_VISIBLE_DEVICES": f"{GPU_A},{GPU_B}",
            "CUDA_DEVICE_MEMORY_LIMIT_0": "4000m",
            "CUDA_DEVICE_MEMORY_LIMIT_1": "5000m",
            "CUDA_DEVICE_SM_LIMIT": "25",
            "CUDA_DEVICE_MEMORY_SHARED_CACHE": "/usr/local/vgpu/cache/vgpu.cache",
            "CUDA_TASK_PRIORITY": "1",
        }
        assert mounts(second)[1] == ("/usr/local/vgpu/cache", str(h.root / "c" / "uid-1_b"), False)
        annotations = h.annotations("p2")
        assert annotations[keys.DEVICES_TO_ALLOCATE] == ";;"
        assert annotations[keys.BIND_PHASE] == "success"
        assert keys.NODE_LOCK not in h.source.nodes[NODE]


def test_containers_matched_by_name_with_sidecars_and_other_order() -> None:
    # An injected sidecar without GPUs sits first; the GPU containers ask for 1 and 2 devices.
    # kubelet asks for the 2-device container first: it gets that container's devices, not the first's.
    decision = f";{GPU_A},NVIDIA,1000,0:;{GPU_A},NVIDIA,2000,0:{GPU_B},NVIDIA,2000,0:;"
    pod = gpu_pod("p3", [("istio-proxy", 0), ("one", 1), ("two", 2)], decision,
                  env={"two": [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}]})
    with running_plugin(pods=[pod]) as h, h.kubelet.client(h.endpoint) as stub:  # no node lock: found by phase
        got = allocate(stub, [f"{GPU_A}-0", f"{GPU_A}-1"]).container_responses[0]
        assert got.envs["CUDA_DEVICE_MEMORY_LIMIT_1"] == "2000m"
        assert "/etc/ld.so.preload" not in [m.container_path for m in got.mounts]
        assert h.annotations("p3")[keys.DEVICES_TO_ALLOCATE] == f";{GPU_A},NVIDIA,1000,0:;;"
        got = allocate(stub, [f"{GPU_B}-3"]).container_responses[0]
        assert got.envs["NVIDIA_VISIBLE_DEVICES"] == GPU_A
        assert "/etc/ld.so.preload" in [m.container_path for m in got.mounts]
        assert h.annotations("p3")[keys.BIND_PHASE] == "success"


def test_init_containers_come_first() -> None:
    decision = f"{GPU_A},NVIDIA,500,0:;{GPU_B},NVIDIA,700,0:;"
    pod = gpu_pod("p4", [("app", 1)], decision, init=[("setup", 1)])
    with running_plugin(pods=[pod]) as h, h.kubelet.client(h.endpoint) as stub:
        assert allocate(stub, [f"{GPU_A}-0"]).container_responses[0].envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "500m"
        assert allocate(stub, [f"{GPU_A}-0"]).container_responses[0].envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "700m"


def _rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_unknown_device_id_is_invalid_argument() -> None:
    pod = gpu_pod("p5", [("main", 1)], f"{GPU_A},NVIDIA,3000,30:;")
    with running_plugin(pods=[pod]) as h, h.kubelet.client(h.endpoint) as stub:
        for bad in ("GPU-nope-0", f"{GPU_A}-4", GPU_A):
            error = _rpc_error(lambda bad=bad: allocate(stub, [bad]))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert bad in error.details() and "container request 0" in error.details()
        assert h.annotations("p5")[keys.BIND_PHASE] == "allocating"  # nothing was decided about the pod
        # The server is still serving.
        assert allocate(stub, [f"{GPU_A}-0"]).container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == GPU_A


def test_count_not_matching_the_decision_fails_the_pod_and_names_the_container() -> None:
    pod = gpu_pod("p6", [("sidecar", 0), ("trainer", 2)], f";{GPU_A},NVIDIA,3000,30:{GPU_B},NVIDIA,3000,30:;")
    with running_plugin(pods=[pod], lock=LOCK.format(name="p6")) as h, h.kubelet.client(h.endpoint) as stub:
        error = _rpc_error(lambda: allocate(stub, [f"{GPU_A}-0"]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'trainer'" in error.details() and "asks for 1" in error.details() and "assigned 2" in error.details()
        annotations = h.annotations("p6")
        assert annotations[keys.BIND_PHASE] == "failed"
        assert "'trainer'" in annotations[BIND_FAILURE_REASON]
        assert keys.NODE_LOCK not in h.source.nodes[NODE]


def test_no_pending_pod_is_not_found() -> None:
    done = gpu_pod("p7", [("main", 1)], ";", phase="success")
    elsewhere = gpu_pod("p8", [("main", 1)], f"{GPU_A},NVIDIA,3000,30:;", node="node-2")
    with running_plugin(pods=[done, elsewhere]) as h, h.kubelet.client(h.endpoint) as stub:
        error = _rpc_error(lambda: allocate(stub, [f"{GPU_A}-0"]))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert NODE in error.details()


def test_decision_naming_a_gpu_of_another_node_fails() -> None:
    pod = gpu_pod("p9", [("main", 1)], "GPU-elsewhere,NVIDIA,3000,30:;")
    with running_plugin(pods=[pod]) as h, h.kubelet.client(h.endpoint) as stub:
        error = _rpc_error(lambda: allocate(stub, [f"{GPU_A}-0"]))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "GPU-elsewhere" in error.details() and "'main'" in error.details()
        assert h.annotations("p9")[keys.BIND_PHASE] == "failed"


def test_preferred_allocation_follows_the_decision() -> None:
    pod = gpu_pod("p10", [("main", 1)], f"{GPU_B},NVIDIA,3000,30:;")
    with running_plugin(pods=[pod]) as h, h.kubelet.client(h.endpoint) as stub:
        available = [f"{GPU_A}-{i}" for i in range(4)] + [f"{GPU_B}-{i}" for i in range(4)]
        request = api_pb2.PreferredAllocationRequest(container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=1)
        ])
        response = stub.GetPreferredAllocation(request, timeout=5)
        assert list(response.container_responses[0].deviceIDs) == [f"{GPU_B}-0"]
        assert h.annotations("p10")[keys.BIND_PHASE] == "allocating"  # asking changes nothing


def test_reregisters_after_kubelet_restart() -> None:
    with running_plugin() as h:
        h.kubelet.next_registration()
        h.kubelet.restart()  # removes kubelet.sock and the plugin's socket, then listens again
        again = h.kubelet.next_registration()
        assert again.endpoint == "hami.sock" and again.resource_name == "nvidia.com/gpu"
        wait_until(lambda: Path(h.kubelet.plugin_dir / "hami.sock").exists(), what="plugin socket")
        with h.kubelet.client(h.endpoint) as stub:
            first = next(stub.ListAndWatch(api_pb2.Empty(), timeout=5))
            assert len(first.devices) == 8
        assert h.plugin.registrations == 2


def test_memory_scaling_and_config_envs() -> None:
    config = HamiConfig(nvidia=NvidiaConfig(deviceSplitCount=2, deviceMemoryScaling=1.5, gpuCorePolicy="force",
                                            libCudaLogLevel=3))
    pod = gpu_pod("p11", [("main", 1)], f"{GPU_A},NVIDIA,100000,0:;")
    with running_plugin(config=config, pods=[pod]) as h, h.kubelet.client(h.endpoint) as stub:
        envs = dict(allocate(stub, [f"{GPU_A}-1"]).container_responses[0].envs)
        assert envs["CUDA_OVERSUBSCRIBE"] == "true"
        assert envs["GPU_CORE_UTILIZATION_POLICY"] == "force"
        assert envs["LIBCUDA_LOG_LEVEL"] == "3"
        assert envs["CUDA_DEVICE_SM_LIMIT"] == "0"
        registered = json.loads(wait_until(lambda: h.source.nodes[NODE].get(keys.NODE_NVIDIA_REGISTER)))
        assert [(d["count"], d["devmem"]) for d in registered] == [(2, 122880), (2, 122880)]
