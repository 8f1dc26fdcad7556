"""Our scheduler process on the real control plane: `hami scheduler` as a subprocess over HTTPS,
a kube-scheduler profile that calls it as HAMi's chart configures it, and the webhook registered
through a MutatingWebhookConfiguration."""

from __future__ import annotations

import base64
import itertools
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.model import DeviceInfo
from tests.cluster import ControlPlane, free_port, wait_for
from tests.cluster.pki import CertificateAuthority, cert_pem, key_pem

MANAGED = [
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/gpucores",
    "nvidia.com/priority",
]


class HamiScheduler:
    """`hami scheduler` in its own process, serving HTTPS on loopback with a certificate of our own CA."""

    def __init__(self, cp: ControlPlane, workdir: Path, scheduler_name: str, extra_args: Iterable[str] = ()):
        self.cp = cp
        self.workdir = workdir
        self.scheduler_name = scheduler_name
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.ca = CertificateAuthority.create("hami-scheduler-test-ca")
        key, cert = self.ca.issue("hami-scheduler", ip_addresses=("127.0.0.1",), server=True)
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_file = workdir / "tls.crt"
        self.key_file = workdir / "tls.key"
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

    def extender_config(self, weight: int = 10) -> dict[str, Any]:
        """A KubeSchedulerConfiguration with one profile that calls us, as HAMi's chart does."""
        return {
            "profiles": [{"schedulerName": self.scheduler_name}],
            "extenders": [
                {
                    "urlPrefix": self.url,
                    "filterVerb": "filter",
                    "prioritizeVerb": "prioritize",
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
    node: str, gpus: int, memory: int = 24000, split: int = 10, gpu_type: str = "NVIDIA-A10"
) -> dict[str, str]:
    devices = [
        DeviceInfo(id=f"GPU-{node}-{i}", count=split, devmem=memory, devcore=100, type=gpu_type, index=i)
        for i in range(gpus)
    ]
    return {keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)}


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
