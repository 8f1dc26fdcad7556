"""`hami scheduler` requiring client certificates, on the real control plane.

kube-scheduler calls the extender with the client certificate of its KubeSchedulerConfiguration
(`extenders[].tlsConfig` certFile/keyFile/caFile); kube-apiserver calls the webhook with the one
its AdmissionConfiguration names (the harness gives it one, see tests/cluster). Anyone else is
refused by TLS (a certificate of another CA) or by HTTP (none, or the other route group's), and
nothing changes.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hami.annotations import keys
from tests.cluster import ControlPlane, wait_for
from tests.cluster.controlplane import WEBHOOK_CLIENT_NAME
from tests.cluster.pki import CertificateAuthority, write_pair
from tests.integration.hami_stack import HamiScheduler, create_pod, gpu_node_annotations, gpu_pod, wait_bound

SCHEDULER_CLIENT_NAME = "kube-scheduler"


class MtlsStack:
    def __init__(self, cp: ControlPlane, workdir: Path, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.client_ca = CertificateAuthority.create("hami-extender-clients")
        self.client_ca_file = workdir / "extender-client-ca.crt"
        self.client_ca_file.write_bytes(self.client_ca.cert_pem)
        self.scheduler_cert = self.issue(self.client_ca, SCHEDULER_CLIENT_NAME)
        self.hami = HamiScheduler(cp, workdir / "hami", scheduler_name=name, extra_args=[
            "--extender-client-ca", str(self.client_ca_file),
            "--extender-allowed-names", SCHEDULER_CLIENT_NAME,
            "--webhook-client-ca", str(cp.webhook_client_ca_file),
            "--webhook-allowed-names", WEBHOOK_CLIENT_NAME,
        ])

    def issue(self, ca: CertificateAuthority, name: str) -> tuple[Path, Path]:
        key, cert = ca.issue(name, client=True)
        return write_pair(self.workdir, f"client-{name}-{cert.serial_number % 10**6}", key, cert)

    def scheduler_config(self) -> dict[str, Any]:
        """HAMi's extender configuration, plus kube-scheduler's client certificate."""
        config = self.hami.extender_config()
        server_ca = self.workdir / "hami-server-ca.crt"
        server_ca.write_bytes(self.hami.ca_pem)
        cert, key = self.scheduler_cert
        config["extenders"][0]["tlsConfig"] = {"caFile": str(server_ca), "certFile": str(cert), "keyFile": str(key)}
        return config

    def post(self, path: str, body: dict[str, Any], cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
        context = ssl.create_default_context(cadata=self.hami.ca_pem.decode())
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        connection = http.client.HTTPSConnection("127.0.0.1", self.hami.port, context=context, timeout=30)
        try:
            connection.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()


@pytest.fixture
def mtls(control_plane: ControlPlane, namespace: str, tmp_path: Path, start_scheduler: Any) -> Iterator[MtlsStack]:
    stack = MtlsStack(control_plane, tmp_path, f"hami-mtls-{namespace}"[:60])
    stack.hami.start()  # waits for /readyz: probes need no certificate
    start_scheduler(stack.scheduler_config())
    try:
        yield stack
    finally:
        stack.hami.stop()


def test_kube_scheduler_schedules_through_the_authenticated_extender(
    control_plane: ControlPlane, namespace: str, mtls: MtlsStack, add_node: Any
) -> None:
    node = f"{namespace}-gpu"
    add_node(node, annotations=gpu_node_annotations(node, gpus=2))
    for i in range(3):
        create_pod(control_plane, namespace, gpu_pod(f"p{i}", mtls.hami.scheduler_name, memory=4000, cores=20))
    pods = wait_bound(control_plane, namespace, 3, timeout=90)
    for pod in pods:
        annotations = pod["metadata"]["annotations"]
        assert pod["spec"]["nodeName"] == node and annotations[keys.VGPU_NODE] == node, mtls.hami.log_tail()
        assert annotations[keys.BIND_PHASE] == "allocating"


def test_other_clients_are_refused_and_change_nothing(
    control_plane: ControlPlane, namespace: str, mtls: MtlsStack, add_node: Any
) -> None:
    node = f"{namespace}-gpu"
    add_node(node, annotations=gpu_node_annotations(node, gpus=1))
    # A pod no kube-scheduler serves: only a caller of our extender could place it.
    pod = create_pod(control_plane, namespace, gpu_pod("victim", "nobody", memory=4000, cores=20))
    filter_args = {"Pod": pod, "NodeNames": [node]}
    bind_args = {"PodName": "victim", "PodNamespace": namespace, "PodUID": pod["metadata"]["uid"], "Node": node}

    for path, body in (("/filter", filter_args), ("/prioritize", filter_args), ("/bind", bind_args)):
        # No certificate: refused by HTTP, before the body is read.
        status, text = mtls.post(path, body)
        assert status == 401 and "client certificate is required" in text, (path, status, text)
        # A certificate of another CA, with the right name: refused by the TLS handshake.
        stranger = mtls.issue(CertificateAuthority.create("elsewhere"), SCHEDULER_CLIENT_NAME)
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            mtls.post(path, body, cert=stranger)
        # The API server's webhook certificate is trusted by the process, but not for these routes.
        apiserver = (control_plane.pki_dir / "webhook-client.crt", control_plane.pki_dir / "webhook-client.key")
        status, text = mtls.post(path, body, cert=apiserver)
        assert status == 403 and "--extender-client-ca" in text, (path, status, text)
        # Our CA, another name.
        status, text = mtls.post(path, body, cert=mtls.issue(mtls.client_ca, "intruder"))
        assert status == 403 and "'intruder' is not allowed" in text, (path, status, text)

    stored = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods/victim")
    assert not stored["spec"].get("nodeName")
    assert not any(k.startswith("hami.io/") for k in stored["metadata"].get("annotations") or {})
    node_annotations = control_plane.api("GET", f"/api/v1/nodes/{node}")["metadata"].get("annotations") or {}
    assert keys.NODE_LOCK not in node_annotations
    # The refused /filter calls decided nothing: the scheduler counts no share for the pod.
    status, metrics = mtls.hami.get("/metrics")
    assert status == 200 and 'pod="victim"' not in metrics.decode()

    # The same call with kube-scheduler's certificate goes through (the refusals were the certificates).
    status, text = mtls.post("/filter", filter_args, cert=mtls.scheduler_cert)
    assert status == 200 and json.loads(text)["NodeNames"] == [node], text


def test_the_api_server_calls_the_webhook_with_its_client_certificate(
    control_plane: ControlPlane, namespace: str, mtls: MtlsStack
) -> None:
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u", "object": gpu_pod("direct", "")}}
    status, text = mtls.post("/webhook", review)
    assert status == 401, text
    status, text = mtls.post("/webhook", review, cert=mtls.scheduler_cert)
    assert status == 403 and "--webhook-client-ca" in text, text

    mtls.hami.register_webhook(f"{namespace}-hami", namespace)
    try:
        # The webhook fails closed (failurePolicy: Fail): a pod is created only if the API server's
        # certificate was accepted, and then it carries our mutation.
        def admitted() -> bool:
            probe = gpu_pod("probe", "")
            probe["spec"].pop("schedulerName")
            dry = control_plane.api("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", probe)
            return bool(dry["spec"].get("schedulerName") == mtls.hami.scheduler_name)

        wait_for(admitted, timeout=30, message=f"the webhook to admit pods\n{mtls.hami.log_tail()}")
        pod = gpu_pod("mutated", "")
        pod["spec"].pop("schedulerName")
        created = create_pod(control_plane, namespace, pod)
        assert created["spec"]["schedulerName"] == mtls.hami.scheduler_name
        assert created["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpucores"] == "100"
    finally:
        control_plane.api("DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"
                                    f"{namespace}-hami")
