"""Faults during a burst, on a real control plane of this module's own (its API server is
stopped): the API server and etcd stop for 10 s and come back; the leading scheduler replica is
killed; the device plugin is killed in the middle of an Allocate. Afterwards no device is
over-committed, no pod is bound against its decision, no decision is lost, and every pod that
can be placed is bound."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hami.annotations import keys
from hami.annotations.pod_devices import pod_allocation_from_annotations
from tests.cluster import ControlPlane, wait_for
from tests.cluster.kubelet import AdmissionError
from tests.cluster.proxy import TcpProxy
from tests.integration.hami_stack import (
    GpuNode,
    HamiScheduler,
    create_pod,
    gpu_node_annotations,
    gpu_pod,
    pods_in,
    usage_by_device,
)

NODES, GPUS, MEMORY, SPLIT = 10, 4, 24000, 10
POD_MEMORY, POD_CORES, BURST = 6000, 10, 200
PLACEABLE = NODES * GPUS * (MEMORY // POD_MEMORY)  # 160 of the 200


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of this module's own: its API server is stopped here."""
    cp = ControlPlane.start(tmp_path_factory.mktemp("faults-control-plane"))
    try:
        yield cp
    finally:
        cp.close()


def gpu_nodes(namespace: str, add_node: Any) -> list[str]:
    names = [f"{namespace}-n{i}" for i in range(NODES)]
    for name in names:
        add_node(name, annotations=gpu_node_annotations(name, gpus=GPUS, memory=MEMORY, split=SPLIT))
    return names


def burst(cp: ControlPlane, namespace: str, scheduler: str) -> None:
    pods = [gpu_pod(f"p{i:03d}", scheduler, memory=POD_MEMORY, cores=POD_CORES) for i in range(BURST)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: create_pod(cp, namespace, p), pods))


def bound_count(cp: ControlPlane, namespace: str) -> int:
    return sum(1 for p in pods_in(cp, namespace) if p["spec"].get("nodeName"))


def allocated_by_scheduler(hami: HamiScheduler, namespace: str) -> dict[str, float]:
    """MiB per pod of `namespace` as the scheduler counts it (its hami_vgpu_* metrics)."""
    _, body = hami.get("/metrics")
    counted: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "hami_vgpu_memory_allocated_bytes":
            for sample in family.samples:
                if sample.labels["namespace"] == namespace:
                    pod = sample.labels["pod"]
                    counted[pod] = counted.get(pod, 0.0) + sample.value / 2**20
    return counted


def check_after_recovery(cp: ControlPlane, namespace: str, hami: HamiScheduler, placeable: int) -> None:
    # Every pod that can be placed is bound, and not one more (that would be over-commit).
    wait_for(lambda: bound_count(cp, namespace) >= placeable, timeout=300, poll=1,
             message=f"{placeable} pods bound\n{hami.log_tail()}")
    time.sleep(5)  # give kube-scheduler time to try the others again: none may be placed
    pods = pods_in(cp, namespace)
    bound = [p for p in pods if p["spec"].get("nodeName")]
    assert len(bound) == placeable
    # No device over-committed.
    for uuid, (tasks, memory, cores) in usage_by_device(pods).items():
        assert tasks <= SPLIT and memory <= MEMORY and cores <= 100, (uuid, tasks, memory, cores)
    # Every bound pod carries its decision, for the node it is bound to.
    for pod in bound:
        annotations = pod["metadata"].get("annotations") or {}
        assert annotations.get(keys.VGPU_NODE) == pod["spec"]["nodeName"], pod["metadata"]["name"]
        allocation = pod_allocation_from_annotations(annotations)
        assert allocation and all(d.uuid.startswith(f"GPU-{pod['spec']['nodeName']}-") for c in allocation for d in c)
    # No decision lost: the scheduler counts exactly the bound pods' shares.
    wanted = {p["metadata"]["name"]: float(POD_MEMORY) for p in bound}
    wait_for(lambda: allocated_by_scheduler(hami, namespace) == wanted, timeout=60,
             message="the scheduler's count to match the bound pods")


@pytest.mark.timeout(600)
def test_api_server_and_etcd_stop_for_10s_during_a_burst(
    control_plane: ControlPlane, namespace: str, add_node: Any, start_scheduler: Any, tmp_path: Path
) -> None:
    gpu_nodes(namespace, add_node)
    hami = HamiScheduler(control_plane, tmp_path / "hami", scheduler_name=f"hami-{namespace}"[:60]).start()
    try:
        start_scheduler(hami.extender_config())
        burst(control_plane, namespace, hami.scheduler_name)
        wait_for(lambda: bound_count(control_plane, namespace) >= 20, timeout=120, poll=0.2, message="20 bound")
        assert bound_count(control_plane, namespace) < PLACEABLE  # the burst is still going on
        control_plane.stop_api()
        time.sleep(10)
        control_plane.start_api()
        check_after_recovery(control_plane, namespace, hami, PLACEABLE)
    finally:
        hami.stop()


class Service:
    """What a Service in front of the replicas does: new connections go to a ready replica."""

    def __init__(self, replicas: list[HamiScheduler]) -> None:
        self.replicas = replicas
        self.ready: HamiScheduler | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._probe, daemon=True).start()
        self.proxy = TcpProxy("127.0.0.1", pick=lambda: ("127.0.0.1", self.ready.port) if self.ready else None)

    def _probe(self) -> None:
        while not self._stop.wait(0.2):
            ready = None
            for replica in self.replicas:
                try:
                    if replica.process is not None and replica.process.poll() is None and replica.answers():
                        ready = replica
                        break
                except (OSError, RuntimeError):
                    continue
            self.ready = ready

    def close(self) -> None:
        self._stop.set()
        self.proxy.close()


@pytest.mark.timeout(600)
def test_the_leading_replica_is_killed_during_a_burst(
    control_plane: ControlPlane, namespace: str, add_node: Any, start_scheduler: Any, tmp_path: Path
) -> None:
    gpu_nodes(namespace, add_node)
    name = f"hami-{namespace}"[:60]
    election = ["--leader-elect", "--lease-name", name, "--lease-duration", "4", "--lease-renew-deadline", "2.5",
                "--lease-retry-period", "0.5"]
    first = HamiScheduler(control_plane, tmp_path / "a", name, [*election, "--identity", "a"]).start("/healthz")
    second = HamiScheduler(control_plane, tmp_path / "b", name, [*election, "--identity", "b"],
                           tls_from=first).start("/healthz")
    service = Service([first, second])
    try:
        wait_for(lambda: service.ready, timeout=60, message="a leader")
        config = first.extender_config()
        config["extenders"][0]["urlPrefix"] = f"https://127.0.0.1:{service.proxy.port}"
        start_scheduler(config)
        burst(control_plane, namespace, name)
        wait_for(lambda: bound_count(control_plane, namespace) >= 40, timeout=120, poll=0.2, message="40 bound")
        leader = service.ready
        assert leader is not None
        leader.kill()
        assert bound_count(control_plane, namespace) < PLACEABLE  # the burst is still going on
        survivor = second if leader is first else first
        check_after_recovery(control_plane, namespace, survivor, PLACEABLE)
    finally:
        service.close()
        first.stop()
        second.stop()


@pytest.mark.timeout(600)
def test_the_device_plugin_is_killed_in_the_middle_of_an_allocate(
    control_plane: ControlPlane, namespace: str, add_node: Any, start_scheduler: Any, tmp_path: Path
) -> None:
    node = f"{namespace}-gpu"
    add_node(node)
    hami = HamiScheduler(control_plane, tmp_path / "hami", scheduler_name=f"hami-{namespace}"[:60]).start()
    api_path = TcpProxy("127.0.0.1", control_plane.apiserver_port)  # the plugin's way to the API server
    gpus = GpuNode(control_plane, node, gpus=2, memory=MEMORY,
                   kubeconfig=control_plane.kubeconfig_through(api_path.port, tmp_path / "plugin-kubeconfig"))
    try:
        gpus.start()
        start_scheduler(hami.extender_config())
        for i in range(6):
            create_pod(control_plane, namespace, gpu_pod(f"p{i}", hami.scheduler_name, memory=7000 + 100 * i,
                                                         cores=10 + i))
        wait_for(lambda: bound_count(control_plane, namespace) >= 6, timeout=120, message="6 bound")

        # kubelet starts p5; the plugin's calls to the API server hang, and the plugin dies.
        api_path.freeze()
        outcome: list[BaseException | None] = []

        def admit() -> None:
            try:
                gpus.admit(namespace, "p5")
                outcome.append(None)
            except AdmissionError as exc:
                outcome.append(exc)

        admitting = threading.Thread(target=admit)
        admitting.start()
        time.sleep(1.5)
        gpus.kill_plugin()
        admitting.join(timeout=30)
        assert outcome and isinstance(outcome[0], AdmissionError), outcome  # kubelet rejects the pod
        api_path.thaw()
        gpus.start_plugin()  # registers with kubelet again

        # The rejected pod failed and holds nothing; every other pod gets its own devices and limits.
        failed = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/p5")
        assert failed["status"]["phase"] == "Failed"
        for i in reversed(range(5)):
            pod = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/p{i}")
            ((device,),) = pod_allocation_from_annotations(pod["metadata"]["annotations"]) or ()
            envs = gpus.admit(namespace, f"p{i}").envs("main")
            assert envs["NVIDIA_VISIBLE_DEVICES"] == device.uuid
            assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == f"{device.usedmem}m" == f"{7000 + 100 * i}m"
        wait_for(lambda: set(allocated_by_scheduler(hami, namespace)) == {f"p{i}" for i in range(5)},
                 timeout=60, message="the failed pod's share freed")
        # Its share is free again: a pod of its size is placed and started.
        create_pod(control_plane, namespace, gpu_pod("again", hami.scheduler_name, memory=7500, cores=15))
        wait_for(lambda: bound_count(control_plane, namespace) >= 7, timeout=120,  # the failed p5 keeps its node
                 message="the new pod bound")
        assert gpus.admit(namespace, "again").envs("main")["CUDA_DEVICE_MEMORY_LIMIT_0"] == "7500m"
        pods = [p for p in pods_in(control_plane, namespace) if (p.get("status") or {}).get("phase") != "Failed"]
        for uuid, (tasks, memory, cores) in usage_by_device(pods).items():
            assert tasks <= SPLIT and memory <= MEMORY and cores <= 100, (uuid, tasks, memory, cores)
    finally:
        api_path.thaw()
        gpus.stop()
        api_path.close()
        hami.stop()
