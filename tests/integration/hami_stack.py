"""Our scheduler process on the real control plane: `hami scheduler` as a subprocess over HTTPS,
a kube-scheduler profile that calls it as HAMi's chart configures it, and the webhook registered
through a MutatingWebhookConfiguration."""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.model import DeviceInfo
from hami.scheduler.nodelock import ALLOCATE_BY_POD_RESOURCES
from tests.cluster import ControlPlane, free_port, wait_for
from tests.cluster.kubelet import AdmissionError, Admitted, KubeletStandIn
from tests.cluster.pki import CertificateAuthority, cert_pem, key_pem

MANAGED = [
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
    "nvidia.com/priority",
]

# kube-scheduler parks a refused pod for up to 5 minutes without an event; hami's retry request
# comes about a second after its watch sees the room, then kube-scheduler's backoff (at most 10 s).
RETRY_WITHIN_S = 60


class HamiScheduler:
    """`hami scheduler` in its own process, serving HTTPS on loopback with a certificate of our own CA."""

    def __init__(self, cp: ControlPlane, workdir: Path, scheduler_name: str, extra_args: Iterable[str] = (),
                 tls_from: HamiScheduler | None = None):
        """`tls_from`: serve with that replica's certificate (replicas behind one Service)."""
        self.cp = cp
        self.workdir = workdir
        self.scheduler_name = scheduler_name
        self.extra_args = list(extra_args)
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_file = workdir / "tls.crt"
        self.key_file = workdir / "tls.key"
        if tls_from is not None:
            self.ca = tls_from.ca
            self.cert_file.write_bytes(tls_from.cert_file.read_bytes())
            self.key_file.write_bytes(tls_from.key_file.read_bytes())
        else:
            self.ca = CertificateAuthority.create("hami-scheduler-test-ca")
            key, cert = self.ca.issue("hami-scheduler", ip_addresses=("127.0.0.1",), server=True)
            self.cert_file.write_bytes(cert_pem(cert))
            self.key_file.write_bytes(key_pem(key))
        self.log_file = workdir / "hami-scheduler.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"https://127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    def start(self, wait: str = "/readyz") -> HamiScheduler:
        """Start and wait until `wait` answers 200 (/healthz for a replica that may not lead)."""
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hami",
                "scheduler",
                "--kubeconfig",
                str(self.cp.kubeconfig),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--tls-cert",
                str(self.cert_file),
                "--tls-key",
                str(self.key_file),
                "--scheduler-name",
                self.scheduler_name,
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        wait_for(lambda: self.answers(wait), timeout=60, message=f"hami scheduler {wait}\n{self.log_tail()}")
        return self

    def answers(self, path: str = "/readyz") -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"hami scheduler exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            return self.get(path)[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, bytes]:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        try:
            with urllib.request.urlopen(self.url + path, timeout=5, context=context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def extender_config(self, weight: int = 10, prioritize: bool = True) -> dict[str, Any]:
        """A KubeSchedulerConfiguration with one profile that calls us, as HAMi's chart does
        (HAMi's chart has no prioritize verb: `prioritize=False`)."""
        return {
            "profiles": [{"schedulerName": self.scheduler_name}],
            "extenders": [
                {
                    "urlPrefix": self.url,
                    "filterVerb": "filter",
                    **({"prioritizeVerb": "prioritize"} if prioritize else {}),
                    "bindVerb": "bind",
                    "weight": weight,
                    "enableHTTPS": True,
                    "tlsConfig": {"caData": base64.b64encode(self.ca_pem).decode()},
                    "nodeCacheCapable": True,
                    "httpTimeout": "30s",
                    "managedResources": [{"name": n, "ignoredByScheduler": True} for n in MANAGED],
                }
            ],
        }

    def register_webhook(self, name: str, namespace: str) -> None:
        """A MutatingWebhookConfiguration for pods of `namespace` only (the cluster is shared)."""
        body = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "vgpu.hami.io",
                    "clientConfig": {"url": self.url + "/webhook", "caBundle": base64.b64encode(self.ca_pem).decode()},
                    "rules": [
                        {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "objectSelector": {
                        "matchExpressions": [
                            {"key": keys.WEBHOOK_LABEL, "operator": "NotIn", "values": [keys.WEBHOOK_IGNORE]}
                        ]
                    },
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 10,
                }
            ],
        }
        self.cp.api("POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", body)


def gpu_node_annotations(
    node: str, gpus: int, memory: int = 24000, split: int = 10, gpu_type: str = "NVIDIA-A10",
    matched_by_kubelet: bool = True,
) -> dict[str, str]:
    """A node's registration as our device plugin writes it; `matched_by_kubelet`: as our plugin
    writes it when it can ask kubelet which pod it starts (binds then take no node lock)."""
    devices = [
        DeviceInfo(id=f"GPU-{node}-{i}", count=split, devmem=memory, devcore=100, type=gpu_type, index=i)
        for i in range(gpus)
    ]
    annotations = {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)}
    if matched_by_kubelet:
        annotations[ALLOCATE_BY_POD_RESOURCES] = "nvidia.com/gpu"
    return annotations


class GpuNode:
    """A node's own half: `hami device-plugin` (fake GPUs, in its own process) and a kubelet
    stand-in that registers it and admits pods (tests/cluster/kubelet.py)."""

    def __init__(self, cp: ControlPlane, node: str, gpus: int = 2, memory: int = 24000,
                 pod_resources: bool = True, extra_args: Iterable[str] = (), kubeconfig: Path | None = None):
        """`kubeconfig`: the plugin's (e.g. through a proxy); the admin one by default."""
        self.cp = cp
        self.node = node
        # Short: unix socket paths are limited to about 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="gn"))
        self.devices_file = self.root / "gpus.yaml"
        self.devices_file.write_text(yaml.safe_dump({"devices": [
            {"uuid": f"GPU-{node}-{i}", "name": "NVIDIA A10", "memory": memory, "smCount": 72, "numa": 0}
            for i in range(gpus)
        ]}))
        self.pod_resources = pod_resources
        self.extra_args = list(extra_args)
        self.kubelet = KubeletStandIn(self.root / "k", self.root / "pr" / "kubelet.sock")
        self.kubelet.serve_pod_resources = pod_resources
        self.log_file = self.root / "device-plugin.log"
        self.kubeconfig = kubeconfig or cp.kubeconfig
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GpuNode:
        self.kubelet.start()
        self.start_plugin()
        return self

    def start_plugin(self, wait: bool = True) -> None:
        registered_before = self.kubelet.registrations
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hami", "device-plugin", "--node-name", self.node,
             "--fake-devices", str(self.devices_file), "--kubeconfig", str(self.kubeconfig),
             "--device-plugin-path", str(self.root / "k"), "--socket-name", "hami.sock",
             "--cache-dir", str(self.root / "c"), "--register-interval", "1",
             "--pod-resources-socket", str(self.root / "pr" / "kubelet.sock") if self.pod_resources else "",
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if not wait:
            return
        self.kubelet.wait_for_devices("nvidia.com/gpu", registrations=registered_before + 1)

        def registered() -> bool:
            annotations = self.cp.api("GET", f"/api/v1/nodes/{self.node}")["metadata"].get("annotations") or {}
            matched = annotations.get(ALLOCATE_BY_POD_RESOURCES) == "nvidia.com/gpu"
            return keys.NODE_NVIDIA_REGISTER in annotations and matched == self.pod_resources

        wait_for(registered, timeout=30, message=f"device plugin registration of {self.node}\n{self.log_tail()}")

    def admit(self, namespace: str, name: str) -> Admitted:
        """Admit the pod as kubelet would; a rejected pod is marked Failed, as kubelet does."""
        try:
            return self.kubelet.admit(self.cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}"))
        except AdmissionError as exc:
            self.cp.api("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                        {"status": {"phase": "Failed", "reason": "UnexpectedAdmissionError", "message": str(exc)}},
                        content_type="application/merge-patch+json")
            raise

    def kill_plugin(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill_plugin()
        self.kubelet.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def gpu_pod(
    name: str,
    scheduler: str,
    memory: int | None = None,
    cores: int | None = None,
    gpus: int = 1,
    extra_limits: dict[str, Any] | None = None,
) -> dict[str, Any]:
    limits: dict[str, Any] = {"nvidia.com/gpu": gpus}
    if memory is not None:
        limits["nvidia.com/gpumem"] = memory
    if cores is not None:
        limits["nvidia.com/gpucores"] = cores
    limits.update(extra_limits or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "schedulerName": scheduler,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "example.invalid/cuda:12", "resources": {"limits": limits}}],
        },
    }


def pods_in(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return list(cp.api("GET", f"/api/v1/namespaces/{namespace}/pods")["items"])


def create_pod(cp: ControlPlane, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    return dict(cp.api("POST", f"/api/v1/namespaces/{namespace}/pods", pod))


def usage_by_device(pods: Iterable[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """(tasks, MiB, cores) per device UUID, from the decisions of bound pods."""
    from hami.annotations.pod_devices import pod_allocation_from_annotations

    usage: dict[str, list[int]] = {}
    for pod in pods:
        if not (pod.get("spec") or {}).get("nodeName"):
            continue
        allocation = pod_allocation_from_annotations(pod["metadata"].get("annotations") or {})
        for container in allocation or ():
            for device in container:
                u = usage.setdefault(device.uuid, [0, 0, 0])
                u[0] += 1
                u[1] += device.usedmem
                u[2] += device.usedcores
    return {k: (v[0], v[1], v[2]) for k, v in usage.items()}


def wait_bound(cp: ControlPlane, namespace: str, count: int, timeout: float) -> list[dict[str, Any]]:
    def bound() -> list[dict[str, Any]] | None:
        pods = pods_in(cp, namespace)
        done = [p for p in pods if (p.get("spec") or {}).get("nodeName")]
        return pods if len(done) >= count else None

    result: list[dict[str, Any]] = wait_for(bound, timeout=timeout, poll=0.5, message=f"{count} pods bound")
    return result


_names = itertools.count()


@pytest.fixture
def stack(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, start_scheduler: Any
) -> Iterator[tuple[HamiScheduler, str]]:
    """`hami scheduler` plus a kube-scheduler profile (named uniquely) that calls it."""
    name = f"hami-{next(_names)}-{namespace}"[:60]
    hami = HamiScheduler(control_plane, tmp_path / "hami", scheduler_name=name).start()
    start_scheduler(hami.extender_config())
    try:
        yield hami, name
    finally:
        hami.stop()
