"""Device plugin pieces without gRPC: fake and NVML backends, config, node agent, Allocate rules, command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from hami.annotations import keys
from hami.config import FilterDevices, HamiConfig, NodeOverride, NvidiaConfig
from hami.deviceplugin import allocate as alloc
from hami.deviceplugin import devices as dev
from hami.deviceplugin import nvml
from hami.deviceplugin.agent import NodeAgent
from hami.deviceplugin.backend import BackendError, GpuInfo
from hami.deviceplugin.fake import FakeBackend
from hami.deviceplugin.pods import InMemoryPodSource, in_memory_from_list
from hami.errors import HamiError
from tests.unit.test_deviceplugin_support import FAKE_GPUS, GPU_A, GPU_B, KubeletDouble, gpu_pod

ROOT = Path(__file__).resolve().parents[2]

# ---- fake backend -------------------------------------------------------------------------------


def test_fake_backend_behaves_like_nvml_before_and_after_init() -> None:
    backend = FakeBackend(data=FAKE_GPUS)
    with pytest.raises(BackendError) as info:
        backend.devices()
    assert info.value.code == "NVML_ERROR_UNINITIALIZED"
    backend.init()
    gpus = backend.devices()
    assert [(g.uuid, g.index, g.memory_mib, g.sm_count, g.numa, g.nvlink_peers) for g in gpus] == [
        (GPU_A, 0, 81920, 108, 0, (GPU_B,)),
        (GPU_B, 1, 81920, 108, 1, (GPU_A,)),
    ]
    with pytest.raises(BackendError) as info:
        FakeBackend(data={"initError": "NVML_ERROR_DRIVER_NOT_LOADED"}).init()
    assert info.value.code == "NVML_ERROR_DRIVER_NOT_LOADED"


def test_fake_backend_device_errors_and_xids() -> None:
    data = {"devices": [{"uuid": "GPU-x", "memory": 1024, "error": "NVML_ERROR_GPU_IS_LOST"},
                        {"uuid": "GPU-y", "memory": 1024, "xids": [13, 48]}]}
    backend = FakeBackend(data=data)
    backend.init()
    assert [g.healthy for g in backend.devices()] == [False, True]
    event = backend.wait_event(0.5)
    assert event is not None and (event.uuid, event.healthy, event.reason) == ("GPU-y", False, "XID 48")
    assert backend.wait_event(0.05) is None  # XID 13 is an application error; each XID is raised once


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"devices": [{"memory": 1}]}, "missing 'uuid'"),
        ({"devices": [{"uuid": "GPU-a", "memory": 1}, {"uuid": "GPU-a", "memory": 1}]}, "appears twice"),
        ({"devices": [{"uuid": "GPU-a"}]}, "'memory'"),
        ({"devices": [{"uuid": "GPU-a", "memory": -1}]}, "'memory'"),
        ({"devices": [{"uuid": "GPU-a", "memory": 1, "nvlink": ["GPU-z"]}]}, "GPU-z"),
        ({"devices": [{"uuid": "GPU-a", "memory": 1, "healthy": "yes"}]}, "'healthy'"),
        (["GPU-a"], "mapping"),
    ],
)
def test_fake_devices_file_errors_name_the_problem(data: Any, message: str) -> None:
    with pytest.raises(HamiError, match=message):
        FakeBackend(data=data)


def test_fake_backend_rereads_its_file(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(yaml.safe_dump(FAKE_GPUS))
    backend = FakeBackend(path)
    backend.init()
    assert backend.wait_event(0.01) is None
    changed = json.loads(json.dumps(FAKE_GPUS))
    changed["devices"][0]["healthy"] = False
    path.write_text(yaml.safe_dump(changed))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    event = backend.wait_event(0.5)
    assert event is not None and (event.uuid, event.healthy) == (GPU_A, False)
    assert backend.devices()[0].healthy is False


def test_example_fake_devices_file_loads() -> None:
    backend = FakeBackend(ROOT / "examples" / "fake-devices.yaml")
    backend.init()
    assert len(backend.devices()) == 3


# ---- NVML backend, over a stand-in for the pynvml module -------------------------------------------


class _NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


def _fake_pynvml(events: list[Any]) -> SimpleNamespace:
    gpus = [
        {"uuid": "GPU-0", "name": "NVIDIA H100 80GB HBM3", "mem": 81559 * 2**20, "bus": "00000000:1B:00.0",
         "peer": "00000000:2C:00.0", "sms": 132},
        {"uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3", "mem": None, "bus": "00000000:2C:00.0",
         "peer": "00000000:1B:00.0", "sms": None},
    ]
    handles = [SimpleNamespace(value=100 + i, gpu=g) for i, g in enumerate(gpus)]
    m = SimpleNamespace(NVMLError=_NVMLError, NVML_ERROR_TIMEOUT=10, NVML_ERROR_GPU_IS_LOST=15,
                        NVML_ERROR_NOT_SUPPORTED=3, NVML_ERROR_UNKNOWN=999, NVML_NVLINK_MAX_LINKS=4,
                        NVML_FEATURE_ENABLED=1, nvmlEventTypeXidCriticalError=8)

    def memory(h: Any) -> Any:
        if h.gpu["mem"] is None:
            raise _NVMLError(15)
        return SimpleNamespace(total=h.gpu["mem"])

    def attributes(h: Any) -> Any:
        if h.gpu["sms"] is None:
            raise _NVMLError(3)
        return SimpleNamespace(multiprocessorCount=h.gpu["sms"])

    def link_state(h: Any, link: int) -> int:
        if link >= 2:
            raise _NVMLError(3)
        return 1

    def wait(event_set: Any, timeout_ms: int) -> Any:
        if not events:
            raise _NVMLError(10)
        return events.pop(0)

    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(handles)
    m.nvmlDeviceGetHandleByIndex = lambda i: handles[i]
    m.nvmlDeviceGetUUID = lambda h: h.gpu["uuid"].encode()
    m.nvmlDeviceGetName = lambda h: h.gpu["name"]
    m.nvmlDeviceGetPciInfo = lambda h: SimpleNamespace(busId=h.gpu["bus"].encode())
    m.nvmlDeviceGetMemoryInfo = memory
    m.nvmlDeviceGetAttributes = attributes
    m.nvmlDeviceGetNvLinkState = link_state
    m.nvmlDeviceGetNvLinkRemotePciInfo = lambda h, link: SimpleNamespace(busId=h.gpu["peer"])
    m.nvmlEventSetCreate = lambda: "set"
    m.nvmlDeviceRegisterEvents = lambda h, kinds, event_set: None
    m.nvmlEventSetWait_v2 = wait
    m.nvmlEventSetFree = lambda event_set: None
    m.handles = handles
    return m


def test_nvml_backend_discovery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _fake_pynvml([])
    monkeypatch.setattr(nvml, "_nvml", lambda: fake)
    (tmp_path / "0000:1b:00.0").mkdir()
    (tmp_path / "0000:1b:00.0" / "numa_node").write_text("1\n")
    (tmp_path / "0000:2c:00.0").mkdir()
    (tmp_path / "0000:2c:00.0" / "numa_node").write_text("-1\n")
    backend = nvml.NvmlBackend(sysfs_root=tmp_path)
    with pytest.raises(BackendError, match="NVML_ERROR_UNINITIALIZED"):
        backend.devices()
    backend.init()
    first, second = backend.devices()
    assert first == GpuInfo(uuid="GPU-0", index=0, name="NVIDIA H100 80GB HBM3", memory_mib=81559, sm_count=132,
                            numa=1, nvlink_peers=("GPU-1",), healthy=True, pci_bus_id="00000000:1B:00.0")
    # Memory query fails: listed, unhealthy; SM count unknown; sysfs -1 means no NUMA: 0.
    assert (second.uuid, second.healthy, second.sm_count, second.numa, second.nvlink_peers) == \
        ("GPU-1", False, 0, 0, ("GPU-0",))
    backend.shutdown()


def test_nvml_backend_errors_and_xid_events(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[Any] = []
    fake = _fake_pynvml(events)
    monkeypatch.setattr(nvml, "_nvml", lambda: fake)

    def no_driver() -> None:
        raise _NVMLError(15)

    fake.nvmlInit = no_driver
    with pytest.raises(BackendError) as info:
        nvml.NvmlBackend().init()
    assert info.value.code == "NVML_ERROR_GPU_IS_LOST"
    fake.nvmlInit = lambda: None
    backend = nvml.NvmlBackend(sysfs_root=Path("/nonexistent"))
    backend.init()
    backend.devices()
    assert backend.wait_event(0.01) is None  # timeout
    events.append(SimpleNamespace(eventType=8, eventData=13, device=fake.handles[1]))
    assert backend.wait_event(0.01) is None  # application XID
    events.append(SimpleNamespace(eventType=8, eventData=79, device=fake.handles[1]))
    event = backend.wait_event(0.01)
    assert event is not None and (event.uuid, event.healthy, event.reason) == ("GPU-1", False, "XID 79")


def test_sysfs_bus_id() -> None:
    assert nvml.sysfs_bus_id("00000000:3B:00.0") == "0000:3b:00.0"
    assert nvml.sysfs_bus_id("0000:3b:00.0") == "0000:3b:00.0"


# ---- config and registration -----------------------------------------------------------------------


def test_node_overrides_and_filters() -> None:
    config = HamiConfig(
        nvidia=NvidiaConfig(deviceSplitCount=10, deviceMemoryScaling=1.0, deviceCoreScaling=1.0),
        nodeconfig=(NodeOverride(name="big", devicememoryscaling=2.0, devicecorescaling=1.5, devicesplitcount=3,
                                 filterdevices=FilterDevices(uuid=("GPU-b",), index=(2,))),),
    )
    gpus = [GpuInfo(uuid=f"GPU-{c}", index=i, name="NVIDIA T4", memory_mib=15360) for i, c in enumerate("abcd")]
    plain = dev.node_settings(config, "other")
    assert (plain.split_count, plain.memory_scaling, plain.core_scaling) == (10, 1.0, 1.0)
    big = dev.node_settings(config, "big")
    usable = dev.usable_gpus(gpus, big)
    assert [g.uuid for g in usable] == ["GPU-a", "GPU-d"]
    registered = dev.registration(usable, {"GPU-d": False}, big)
    assert [(d.id, d.count, d.devmem, d.devcore, d.type, d.health, d.index) for d in registered] == [
        ("GPU-a", 3, 30720, 150, "NVIDIA-NVIDIA T4", True, 0),
        ("GPU-d", 3, 30720, 150, "NVIDIA-NVIDIA T4", False, 3),
    ]


def test_share_ids_round_trip() -> None:
    ids = dev.share_ids("GPU-1-2-3", 3)
    assert ids == ["GPU-1-2-3-0", "GPU-1-2-3-1", "GPU-1-2-3-2"]
    assert [dev.gpu_of_share(i, {"GPU-1-2-3"}, 3) for i in ids] == ["GPU-1-2-3"] * 3
    assert dev.gpu_of_share("GPU-1-2-3-3", {"GPU-1-2-3"}, 3) is None
    assert dev.gpu_of_share("GPU-1-2-3", {"GPU-1-2-3"}, 3) is None
    assert dev.gpu_of_share("GPU-9-0", {"GPU-1-2-3"}, 3) is None


# ---- node agent ------------------------------------------------------------------------------------


def test_agent_writes_only_on_change_and_answers_the_scheduler() -> None:
    source = InMemoryPodSource(nodes={"n": {}})
    clock = iter(datetime(2024, 5, 1, 10, 0, s, tzinfo=UTC) for s in range(10))
    agent = NodeAgent(source, "n", now=lambda: next(clock))
    gpus = [GpuInfo(uuid="GPU-a", index=0, name="NVIDIA T4", memory_mib=15360)]
    devices = dev.registration(gpus, {}, dev.NodeSettings())
    assert agent.sync(devices)
    assert source.nodes["n"][keys.NODE_HANDSHAKE] == "Reported 2024-05-01 10:00:00.000000 +0000 UTC"
    assert json.loads(source.nodes["n"][keys.NODE_NVIDIA_REGISTER])[0]["devmem"] == 15360
    assert not agent.sync(devices)
    assert len(source.node_patches) == 1
    source.nodes["n"][keys.NODE_HANDSHAKE] = "Requesting_2024-05-01 10:05:00"
    assert agent.sync(devices)
    assert source.node_patches[-1][1] == {keys.NODE_HANDSHAKE: "Reported 2024-05-01 10:00:01.000000 +0000 UTC"}
    unhealthy = dev.registration(gpus, {"GPU-a": False}, dev.NodeSettings())
    assert agent.sync(unhealthy)
    assert set(source.node_patches[-1][1]) == {keys.NODE_NVIDIA_REGISTER, keys.NODE_HANDSHAKE}


# ---- Allocate rules --------------------------------------------------------------------------------


def test_node_lock_parsing() -> None:
    assert alloc.parse_node_lock("2024-05-01T10:00:00Z,ns,pod") == ("ns", "pod")
    assert alloc.parse_node_lock("2024-05-01T10:00:00Z") is None


def test_decision_with_more_containers_than_the_pod_is_refused() -> None:
    pod = gpu_pod("p", [("main", 1)], "GPU-a,NVIDIA,1,0:;GPU-a,NVIDIA,1,0:;")
    with pytest.raises(alloc.AllocateError, match="lists 2 containers but the pod has 1"):
        alloc.pending_parts(pod)


@pytest.mark.parametrize(("value", "mounted"), [("true", False), ("1", False), ("True", False),
                                                 ("false", True), ("yes", True), (None, True)])
def test_disable_control_follows_go_parse_bool(value: str | None, mounted: bool) -> None:
    env = {"main": [{"name": "CUDA_DISABLE_CONTROL", "value": value}]} if value is not None else None
    pod = gpu_pod("p", [("main", 1)], "GPU-a,NVIDIA,1,0:;", env=env)
    container = alloc.containers_in_order(pod)[0]
    grant = alloc.grant(pod, container, alloc.pending_parts(pod)[0], alloc.AllocateSettings(node="n"))
    assert ("/etc/ld.so.preload" in [m.container_path for m in grant.mounts]) is mounted


def test_bind_order_is_no_guide_to_the_pod_kubelet_starts() -> None:
    # kubelet admits pods in the order it sees them, not in bind-time order: without kubelet's
    # pod-resources API and without a lock naming one of them, two waiting pods are not guessed at.
    older = gpu_pod("older", [("main", 1)], "GPU-a,NVIDIA,1,0:;")
    newer = gpu_pod("newer", [("main", 1)], "GPU-a,NVIDIA,2,0:;")
    older["metadata"]["annotations"][keys.BIND_TIME] = "100"
    newer["metadata"]["annotations"][keys.BIND_TIME] = "200"
    source = InMemoryPodSource([newer, older], nodes={"node-1": {}})
    with pytest.raises(alloc.AllocateError, match="cannot tell which pod kubelet is starting") as refused:
        alloc.find_pod(source, "node-1")
    assert refused.value.code == "FAILED_PRECONDITION"
    source.nodes["node-1"][keys.NODE_LOCK] = "2024-05-01T10:00:00Z,default,newer"
    assert alloc.find_pod(source, "node-1")["metadata"]["name"] == "newer"


def test_pods_file_reader() -> None:
    data = {"kind": "List", "items": [
        {"kind": "Node", "metadata": {"name": "n", "annotations": {"a": "b"}}},
        {"kind": "Pod", "metadata": {"name": "p", "namespace": "x"}, "spec": {"nodeName": "n"}},
    ]}
    source = in_memory_from_list(data, "pods.yaml")
    assert source.node_annotations("n") == {"a": "b"}
    assert [p["metadata"]["name"] for p in source.pods_on_node("n")] == ["p"]
    with pytest.raises(HamiError, match="no metadata.name"):
        in_memory_from_list({"items": [{"kind": "Pod"}]}, "pods.yaml")


# ---- the command -----------------------------------------------------------------------------------


def test_command_reports_a_failed_discovery(tmp_path: Path) -> None:
    from hami.cli import main

    gpus = tmp_path / "gpus.yaml"
    gpus.write_text("initError: NVML_ERROR_DRIVER_NOT_LOADED\n")
    pods = tmp_path / "pods.yaml"
    pods.write_text("items: []\n")
    code = main(["device-plugin", "--node-name", "n", "--fake-devices", str(gpus), "--pods", str(pods),
                 "--device-plugin-path", str(tmp_path / "dp")])
    assert code == 2


def test_command_runs_by_hand_with_fake_devices() -> None:
    """The README's by-hand run: fake GPUs, a pods file instead of an API server, a kubelet double."""
    with tempfile.TemporaryDirectory(prefix="dp") as tmp:
        root = Path(tmp)
        kubelet = KubeletDouble(root)
        kubelet.start()
        pods = root / "pods.yaml"
        pods.write_text(yaml.safe_dump({"items": [gpu_pod("p", [("main", 1)], "GPU-x,NVIDIA,1,0:;")]}))
        process = subprocess.Popen(
            [sys.executable, "-m", "hami", "device-plugin", "--node-name", "node-1",
             "--fake-devices", str(ROOT / "examples" / "fake-devices.yaml"), "--pods", str(pods),
             "--device-plugin-path", str(root), "--cache-dir", str(root / "c")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            request = kubelet.next_registration(timeout=20)
            assert request.resource_name == "nvidia.com/gpu"
            with kubelet.client(request.endpoint) as stub:
                from hami.deviceplugin.api import api_pb2

                first = next(stub.ListAndWatch(api_pb2.Empty(), timeout=5))
                assert len(first.devices) == 30  # 3 GPUs x deviceSplitCount 10
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=10)
            kubelet.stop()
        assert process.returncode == 0, output
        assert "registered nvidia.com/gpu with kubelet" in output
        assert "node node-1: registered 3 GPU(s)" in output


def test_unreachable_api_server_is_unavailable(tmp_path: Path) -> None:
    from hami.deviceplugin.pods import KubePodSource, PodSourceError

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }))
    source = KubePodSource(str(kubeconfig))
    with pytest.raises(PodSourceError, match="patch node n"):
        source.patch_node_annotations("n", {"a": "b"})
    with pytest.raises(alloc.AllocateError) as info:
        alloc.find_pod(source, "n")
    assert info.value.code == "UNAVAILABLE" and "list pods on n" in info.value.message
    with pytest.raises(HamiError, match="cannot load Kubernetes config"):
        KubePodSource(str(tmp_path / "missing"))
