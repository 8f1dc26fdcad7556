"""`hami ui` on the real control plane: the process, a cluster scene with known devices and pods, viewers
with their own ServiceAccount tokens and RBAC, and a snapshot of the cluster for `hami schedule`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.annotations.pod_devices import encode_pod_devices
from hami.model import ContainerDevice, DeviceInfo
from hami.monitor.metrics import CONTAINER_LABELS, HOST_LABELS
from tests.cluster import ControlPlane, free_port, wait_for
from tests.cluster.controlplane import ApiCallError

CHROMIUM = "/usr/bin/chromium"
# Chromium as root in a closed network: no sandbox, and none of its calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
A100, A100_MIB = "NVIDIA-A100-SXM4-80GB", 81920
T4, T4_MIB = "NVIDIA-Tesla-T4", 15360
DCU = "DCU-Z100"


class UiProcess:
    """`hami ui` in its own process, HTTPS with the certificate it makes itself."""

    def __init__(self, cp: ControlPlane, workdir: Path, extra_args: Iterable[str] = (),
                 client_context: ssl.SSLContext | None = None):
        self.cp = cp
        self.client_context = client_context
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_file = workdir / f"hami-ui-{self.port}.log"
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> UiProcess:
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hami", "ui", "--kubeconfig", str(self.cp.kubeconfig), "--host", "127.0.0.1",
             "--port", str(self.port), "--access-ttl", "2", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_for(lambda: self.status("/readyz") == 200, timeout=60, message=f"hami ui /readyz\n{self.log_tail()}")
        return self

    def status(self, path: str) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"hami ui exited with {self.process.returncode}:\n{self.log_tail()}")
        context = self.client_context or insecure_context()
        try:
            with urllib.request.urlopen(self.url + path, timeout=5, context=context) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class MonitorMetrics:
    """The node monitor's metrics, with `hami monitor`'s names and labels and values we choose.

    It stands in for `hami monitor`, which reads GPUs and libvgpu's shared regions that these fake
    nodes do not have; Prometheus scrapes it as it would scrape the monitor."""

    HOST = HOST_LABELS
    CONTAINER = CONTAINER_LABELS

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.host_memory = Gauge("hami_host_gpu_memory_used_bytes", "GPU memory in use", self.HOST,
                                 registry=self.registry)
        self.host_utilization = Gauge("hami_host_gpu_utilization_ratio", "GPU utilisation, percent", self.HOST,
                                      registry=self.registry)
        self.memory = Gauge("hami_vgpu_memory_used_bytes", "memory the container uses", self.CONTAINER,
                            registry=self.registry)
        self.utilization = Gauge("hami_container_device_utilization_ratio", "SM utilisation, percent",
                                 self.CONTAINER, registry=self.registry)
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def device(self, node: str, device: DeviceInfo, memory_mib: int, percent: float) -> None:
        labels = ("vGPU", node, str(device.index), device.id, device.type)
        self.host_memory.labels(*labels).set(memory_mib * 2**20)
        self.host_utilization.labels(*labels).set(percent)

    def container(self, namespace: str, pod: str, uuid: str, memory_mib: int, percent: float) -> None:
        labels = ("vGPU", namespace, pod, "main", "0", uuid)
        self.memory.labels(*labels).set(memory_mib * 2**20)
        self.utilization.labels(*labels).set(percent)

    def stop(self) -> None:
        self.server.shutdown()


def insecure_context() -> ssl.SSLContext:
    """Trusts any server certificate: for talking to the UI's self-signed one from a test."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def https_get(url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None,
              data: bytes | None = None) -> tuple[int, dict[str, str], str]:
    """GET (or POST `data`) without following redirects: (status, headers, body)."""
    context = context or insecure_context()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect)
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def devices(node: str, count: int, gpu_type: str, memory: int, unhealthy: Iterable[int] = ()) -> list[DeviceInfo]:
    return [DeviceInfo(id=f"GPU-{node}-{i}", count=10, devmem=memory, devcore=100, type=gpu_type, index=i,
                       health=i not in set(unhealthy)) for i in range(count)]


def device_pod(name: str, namespace: str, memory: int, cores: int, gpus: int = 1,
               annotations: Mapping[str, str] | None = None, node: str = "",
               allocation: list[tuple[str, int, int]] | None = None) -> dict[str, Any]:
    """A pod asking for NVIDIA devices; with `node` and `allocation`, already placed by HAMi's decision."""
    notes = dict(annotations or {})
    spec: dict[str, Any] = {
        "schedulerName": "hami-ui-test-nobody",  # no scheduler acts on it: it waits, or stays where put
        "containers": [{"name": "main", "image": "busybox",
                        "resources": {"limits": {"nvidia.com/gpu": gpus, "nvidia.com/gpumem": memory,
                                                 "nvidia.com/gpucores": cores}}}],
    }
    if node and allocation is not None:
        placed = ((tuple(ContainerDevice(uuid, "NVIDIA", mem, c) for uuid, mem, c in allocation)),)
        notes.update({keys.VGPU_NODE: node, keys.VGPU_TIME: "1700000000",
                      keys.DEVICES_ALLOCATED: encode_pod_devices(placed),
                      keys.DEVICES_TO_ALLOCATE: encode_pod_devices(placed), keys.BIND_PHASE: "success"})
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "annotations": notes},
            "spec": spec}


def vendor_pod(name: str, namespace: str, limits: dict[str, Any], node: str = "",
               allocated: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A pod asking any vendor's resources; with `node` and `allocated` (the vendor's allocated-devices
    annotation and its value, as HAMi writes them), already placed."""
    notes: dict[str, str] = {}
    spec: dict[str, Any] = {"schedulerName": "hami-ui-test-nobody",
                            "containers": [{"name": "main", "image": "busybox", "resources": {"limits": limits}}]}
    if node and allocated:
        notes = {keys.VGPU_NODE: node, keys.VGPU_TIME: "1700000000", keys.BIND_PHASE: "success", **allocated}
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "annotations": notes},
            "spec": spec}


def dcu_registration(node: str, n: int) -> str:
    """Hygon DCUs in HAMi's colon-separated registration: 4 tasks each, 16384 MiB."""
    return "".join(f"DCU-{node}-{i},4,16384,100,{DCU},0,true,{i},hami-core:" for i in range(n))


@dataclass
class Scene:
    """Nodes and pods with a known state, and two viewers: an operator and a team-a member."""

    cp: ControlPlane
    team_a: str = ""
    team_b: str = ""
    prefix: str = ""
    nodes: dict[str, list[DeviceInfo]] = field(default_factory=dict)
    cpu_node: str = ""
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    admin_token: str = ""
    team_a_token: str = ""
    team_a_user: str = ""
    lock: str = ""
    other_nodes: list[str] = field(default_factory=list)

    def node(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def build(self) -> Scene:
        self.team_a = self.cp.create_namespace("ui-team-a")
        self.team_b = self.cp.create_namespace("ui-team-b")
        self.prefix = self.team_a.replace("ui-team-a", "ui")
        a0, a1, t4, cpu = self.node("a100-0"), self.node("a100-1"), self.node("t4-0"), self.node("cpu-0")
        self.nodes = {a0: devices(a0, 2, A100, A100_MIB), a1: devices(a1, 2, A100, A100_MIB),
                      t4: devices(t4, 4, T4, T4_MIB, unhealthy=[3])}
        self.lock = f"2026-12-01T10:00:00Z,{self.team_b},infer-2"  # a bind of infer-2 holds a100-1's lock
        for name, devs in self.nodes.items():
            annotations = {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devs)}
            if name == a1:
                annotations[keys.NODE_LOCK] = self.lock
            self.cp.add_node(name, {"nvidia.com/gpu": str(10 * len(devs))}, annotations)
        self.cpu_node = cpu
        self.cp.add_node(cpu)
        # Other vendors, side by side: two Hygon DCUs (registered by annotation) and two Enflame
        # GCUs (registered by the node's capacity alone).
        dcu, gcu = self.node("dcu-0"), self.node("gcu-0")
        self.cp.add_node(dcu, {"hygon.com/dcunum": "8"}, {"hami.io/node-dcu-register": dcu_registration(dcu, 2)})
        self.cp.add_node(gcu, {"enflame.com/gcu": "2"})
        self.other_nodes = [dcu, gcu]
        a, b = self.team_a, self.team_b
        pods = [
            device_pod("train-1", a, 60000, 50, node=a0, allocation=[(f"GPU-{a0}-0", 60000, 50)]),
            device_pod("train-2", a, 70000, 100, node=a0, allocation=[(f"GPU-{a0}-1", 70000, 100)]),
            device_pod("infer-1", b, 40000, 30, node=a1, allocation=[(f"GPU-{a1}-0", 40000, 30)]),
            device_pod("infer-2", b, 50000, 30, node=a1, allocation=[(f"GPU-{a1}-1", 50000, 30)]),
            device_pod("t4-x", b, 10000, 20, node=t4, allocation=[(f"GPU-{t4}-0", 10000, 20)]),
            # Waits: no A100 has 50000 MiB free, and it refuses every other type.
            device_pod("big", a, 50000, 20, annotations={keys.USE_GPUTYPE: "A100"}),
            # Would fit now (three healthy T4s): it waits only because no scheduler takes it.
            device_pod("two-t4", b, 8000, 10, gpus=2, annotations={keys.USE_GPUTYPE: "T4"}),
            vendor_pod("dcu-run", b, {"hygon.com/dcunum": 1, "hygon.com/dcumem": 8000, "hygon.com/dcucores": 30},
                       node=dcu, allocated={"hami.io/dcu-devices-allocated": f"DCU-{dcu}-0,DCU,8000,30:;"}),
            vendor_pod("gcu-run", b, {"enflame.com/gcu": 1}, node=gcu,
                       allocated={"hami.io/enflame-gcu-devices-allocated": f"{gcu}-GCU-0,GCU,100,100:;"}),
            # Waits: a DCU has 16384 MiB.
            vendor_pod("dcu-big", a, {"hygon.com/dcunum": 1, "hygon.com/dcumem": 20000, "hygon.com/dcucores": 10}),
        ]
        for pod in pods:
            meta = pod["metadata"]
            self.pods[f"{meta['namespace']}/{meta['name']}"] = pod
            self.cp.api("POST", f"/api/v1/namespaces/{meta['namespace']}/pods", pod)
        self.admin_token = self._viewer(a, "ui-operator", cluster=True)
        self.team_a_token = self._viewer(a, "ui-team-a-member", cluster=False)
        self.team_a_user = f"system:serviceaccount:{a}:ui-team-a-member"
        return self

    def _viewer(self, namespace: str, name: str, cluster: bool) -> str:
        return viewer_token(self.cp, namespace, name, cluster)

    def snapshot(self, path: Path, extra: Iterable[dict[str, Any]] = ()) -> Path:
        """Nodes and placed pods as `kubectl get nodes,pods -A -o yaml` prints them; `extra` pods first."""
        nodes = self.cp.api("GET", "/api/v1/nodes")["items"]
        pods = [p for p in self.cp.api("GET", "/api/v1/pods")["items"] if (p.get("spec") or {}).get("nodeName")]
        items = [*extra, *[{"apiVersion": "v1", "kind": "Node", **n} for n in nodes],
                 *[{"apiVersion": "v1", "kind": "Pod", **p} for p in pods]]
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
        return path

    def close(self) -> None:
        for name in [*self.nodes, self.cpu_node, *self.other_nodes]:
            self.cp.remove_node(name)
        for namespace in (self.team_a, self.team_b):
            self.cp.delete_namespace(namespace)
        for kind in ("clusterrolebindings", "clusterroles"):
            with contextlib.suppress(ApiCallError):  # best effort on a shared cluster
                self.cp.api("DELETE", f"/apis/rbac.authorization.k8s.io/v1/{kind}/{self.team_a}-ui-operator")


def viewer_token(cp: ControlPlane, namespace: str, name: str, cluster: bool) -> str:
    """A ServiceAccount that may list pods (everywhere, and nodes, or only in `namespace`); its token.
    Cluster-wide rights are named "<namespace>-<name>" (Scene.close removes them)."""
    cp.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    if cluster:
        rules = [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list", "watch"]}]
        role = f"{namespace}-{name}"
        cp.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {"metadata": {"name": role}, "rules": rules})
        cp.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
               {"metadata": {"name": role}, "subjects": subject,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}})
    else:
        rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
        base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        cp.api("POST", f"{base}/roles", {"metadata": {"name": name}, "rules": rules})
        cp.api("POST", f"{base}/rolebindings",
               {"metadata": {"name": name}, "subjects": subject,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}})
    answer = cp.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                     "spec": {"expirationSeconds": 3600}})
    return str(answer["status"]["token"])


def hami_schedule(snapshot: Path) -> dict[str, Any]:
    """What `hami schedule --snapshot FILE -o json` prints."""
    out = subprocess.run([sys.executable, "-m", "hami", "schedule", "--snapshot", str(snapshot), "-o", "json"],
                         capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result
