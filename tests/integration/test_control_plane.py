"""Proof that the test control plane is the real thing: the real kube-apiserver,
etcd and kube-scheduler binaries, talking real wire formats."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec, ResourceRequirements
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Node, Pod
from lightkube.types import PatchType

from tests.cluster import ApiCallError, Binaries, BinaryNotFound, ControlPlane, PortInUse, free_port, wait_for
from tests.cluster.pki import serving_cert
from tests.cluster.testservers import JsonServer

from .conftest import AddNode, StartScheduler

REPO = Path(__file__).resolve().parents[2]


def make_pod(name: str, scheduler: str, limits: dict[str, str] | None = None) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name),
        spec=PodSpec(
            schedulerName=scheduler,
            containers=[Container(name="main", image="busybox", resources=ResourceRequirements(limits=limits))],
        ),
    )


@pytest.mark.timeout(300)
def test_apiserver_is_the_pinned_release(control_plane: ControlPlane, kube: Client) -> None:
    version = control_plane.api("GET", "/version")
    assert version["gitVersion"] == control_plane.versions["kubernetes"]
    namespaces = {ns["metadata"]["name"] for ns in control_plane.api("GET", "/api/v1/namespaces")["items"]}
    assert {"default", "kube-system", "kube-node-lease"} <= namespaces
    apis = control_plane.api("GET", "/apis")
    groups = {g["name"] for g in apis["groups"]}
    assert {"apps", "coordination.k8s.io", "admissionregistration.k8s.io", "rbac.authorization.k8s.io"} <= groups
    # The admin identity comes from the client certificate, authorized by RBAC (system:masters).
    review = control_plane.api(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert "system:masters" in review["status"]["userInfo"]["groups"]


@pytest.mark.timeout(120)
def test_fake_node_is_ready_with_lease_heartbeats(control_plane: ControlPlane, kube: Client, add_node: AddNode) -> None:
    add_node(
        "fake-ready-node",
        capacity={"nvidia.com/gpu": "10"},
        annotations={"hami.io/node-handshake": "Reported 2026-01-01 00:00:00"},
    )
    node = kube.get(Node, "fake-ready-node")
    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions["Ready"] == "True"
    assert conditions["MemoryPressure"] == "False"
    assert not node.spec.taints, "the not-ready taint from admission must be gone"
    assert node.status.capacity["nvidia.com/gpu"] == "10"
    assert node.status.allocatable["nvidia.com/gpu"] == "10"
    assert node.metadata.annotations["hami.io/node-handshake"].startswith("Reported")

    lease = kube.get(Lease, "fake-ready-node", namespace="kube-node-lease")
    assert lease.spec.holderIdentity == "fake-ready-node"
    assert lease.metadata.ownerReferences[0].uid == node.metadata.uid
    first = lease.spec.renewTime

    # The background heartbeat renews the lease and the Ready condition without anyone
    # asking. Node condition times have whole-second precision and the lease is patched
    # before the node, so wait for both rather than reading the node once the lease moved.
    def ready_condition() -> Any:
        return next(c for c in kube.get(Node, "fake-ready-node").status.conditions if c.type == "Ready")

    renewed = wait_for(
        lambda: kube.get(Lease, "fake-ready-node", namespace="kube-node-lease").spec.renewTime > first
        and ready_condition().lastHeartbeatTime > ready_condition().lastTransitionTime,
        timeout=2 * control_plane.heartbeat_interval + 15,
        message="a lease renewal and a later Ready heartbeat",
    )
    assert renewed
    ready = ready_condition()
    assert ready.status == "True"
    assert ready.lastHeartbeatTime > ready.lastTransitionTime


@pytest.mark.timeout(240)
def test_scheduler_calls_extender_with_real_extender_args(
    control_plane: ControlPlane, kube: Client, namespace: str, add_node: AddNode, start_scheduler: StartScheduler
) -> None:
    node_a, node_b = f"{namespace}-a", f"{namespace}-b"

    def extender(path: str, body: Any) -> tuple[int, Any]:
        if path == "/filter":
            names = body["NodeNames"]
            return 200, {
                "NodeNames": [n for n in names if n == node_b],
                "FailedNodes": {n: "1/1 CardInsufficientMemory" for n in names if n != node_b},
                "Error": "",
            }
        if path == "/bind":
            control_plane.api(
                "POST",
                f"/api/v1/namespaces/{body['PodNamespace']}/pods/{body['PodName']}/binding",
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": body["PodName"], "uid": body["PodUID"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": body["Node"]},
                },
            )
            return 200, {"Error": ""}
        return 404, {"Error": f"unknown verb {path}"}

    with JsonServer(extender) as srv:
        for name in (node_a, node_b):
            add_node(name, capacity={"nvidia.com/gpu": "10"})
        scheduler_name = f"hami-test-{namespace}"
        start_scheduler(
            {
                "profiles": [{"schedulerName": scheduler_name}],
                "extenders": [
                    {
                        "urlPrefix": srv.url,
                        "filterVerb": "filter",
                        "bindVerb": "bind",
                        "enableHTTPS": False,
                        "nodeCacheCapable": True,
                        "weight": 1,
                        "httpTimeout": "30s",
                        "managedResources": [
                            {"name": "nvidia.com/gpu", "ignoredByScheduler": True},
                            {"name": "nvidia.com/gpumem", "ignoredByScheduler": True},
                            {"name": "nvidia.com/gpucores", "ignoredByScheduler": True},
                        ],
                    }
                ],
            }
        )
        # gpumem is not in the nodes' capacity: only ignoredByScheduler lets this pod through.
        kube.create(
            make_pod("gpu-pod", scheduler_name, {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"}),
            namespace=namespace,
        )
        scheduled = wait_for(
            lambda: kube.get(Pod, "gpu-pod", namespace=namespace).spec.nodeName, timeout=60, message="gpu-pod bound"
        )
        assert scheduled == node_b

        args = srv.wait_for_request("/filter")
        assert args["Pod"]["metadata"]["name"] == "gpu-pod"
        assert args["Pod"]["metadata"]["namespace"] == namespace
        assert args["Pod"]["spec"]["schedulerName"] == scheduler_name
        # The apiserver stores quantities in canonical form: "3000" comes back as "3k",
        # so an extender must parse resource.Quantity syntax, not plain integers.
        assert args["Pod"]["spec"]["containers"][0]["resources"]["limits"] == {
            "nvidia.com/gpu": "1",
            "nvidia.com/gpumem": "3k",
        }
        assert {node_a, node_b} <= set(args["NodeNames"])
        assert args.get("Nodes") is None, "nodeCacheCapable extenders get names only"
        bind = srv.wait_for_request("/bind")
        pod = kube.get(Pod, "gpu-pod", namespace=namespace)
        assert bind == {"PodName": "gpu-pod", "PodNamespace": namespace, "PodUID": pod.metadata.uid, "Node": node_b}

        # A pod asking for no managed resource never reaches the extender.
        kube.create(make_pod("plain-pod", scheduler_name, {"cpu": "1"}), namespace=namespace)
        plain_node = wait_for(
            lambda: kube.get(Pod, "plain-pod", namespace=namespace).spec.nodeName, timeout=60, message="plain-pod"
        )
        assert plain_node
        assert all(body["Pod"]["metadata"]["name"] == "gpu-pod" for body in srv.requests_to("/filter"))


@pytest.mark.timeout(180)
def test_mutating_webhook_is_called_over_https(
    control_plane: ControlPlane, kube: Client, namespace: str, tmp_path: Path
) -> None:
    tls = serving_cert(tmp_path / "webhook-tls")

    def mutate(path: str, review: Any) -> tuple[int, Any]:
        request = review["request"]
        pod = request["object"]
        patch: list[dict[str, Any]] = []
        if not pod["metadata"].get("annotations"):
            patch.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        patch.append({"op": "add", "path": "/metadata/annotations/hami.test~1mutated", "value": "yes"})
        patch.append({"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"})
        return 200, {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": request["uid"],
                "allowed": True,
                "patchType": "JSONPatch",
                "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
            },
        }

    webhook_name = f"{namespace}-mutator"
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": webhook_name},
        "webhooks": [
            {
                "name": "mutator.hami.test",
                "clientConfig": {
                    "url": None,
                    "caBundle": base64.b64encode(tls.ca_pem).decode(),
                },
                "rules": [
                    {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }
    with JsonServer(mutate, tls=tls) as srv:
        config["webhooks"][0]["clientConfig"]["url"] = f"{srv.url}/mutate"  # type: ignore[index]
        control_plane.api("POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", config)
        try:
            # The apiserver picks up new webhook configurations asynchronously: probe with dry runs.
            def mutated_dry_run() -> bool:
                probe = kube.create(make_pod("probe", "default-scheduler"), namespace=namespace, dry_run=True)
                return bool((probe.metadata.annotations or {}).get("hami.test/mutated") == "yes")

            wait_for(mutated_dry_run, timeout=30, message="the webhook to be active")
            kube.create(make_pod("mutated-pod", "default-scheduler"), namespace=namespace)
            stored = kube.get(Pod, "mutated-pod", namespace=namespace)
            assert stored.metadata.annotations["hami.test/mutated"] == "yes"
            assert stored.spec.schedulerName == "hami-scheduler"

            reviews = [r for r in srv.requests_to("/mutate") if not r["request"].get("dryRun")]
            assert len(reviews) == 1
            request = reviews[0]["request"]
            assert reviews[0]["apiVersion"] == "admission.k8s.io/v1"
            assert reviews[0]["kind"] == "AdmissionReview"
            assert request["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
            assert request["operation"] == "CREATE"
            assert request["namespace"] == namespace
            assert request["object"]["metadata"]["name"] == "mutated-pod"
            assert "system:masters" in request["userInfo"]["groups"]
        finally:
            control_plane.api(
                "DELETE", f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{webhook_name}"
            )


@pytest.mark.timeout(120)
def test_watch_conflict_and_binding_subresource(
    control_plane: ControlPlane, kube: Client, namespace: str, add_node: AddNode
) -> None:
    node_name = f"{namespace}-n"
    add_node(node_name)
    start_rv = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/pods")["metadata"]["resourceVersion"]
    events: list[tuple[str, str, str | None]] = []
    watch_done = threading.Event()

    def watch() -> None:
        with control_plane.new_client() as watcher:
            for op, pod in watcher.watch(Pod, namespace=namespace, resource_version=start_rv, server_timeout=60):
                events.append((op, pod.metadata.name, pod.spec.nodeName))
                if op == "DELETED":
                    break
        watch_done.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    # Nobody schedules this pod: its scheduler does not exist.
    kube.create(make_pod("w", "nobody"), namespace=namespace)
    old = kube.get(Pod, "w", namespace=namespace)
    kube.patch(Pod, "w", {"metadata": {"labels": {"step": "1"}}}, namespace=namespace)

    # Optimistic concurrency: a write carrying a stale resourceVersion gets 409 Conflict.
    with pytest.raises(ApiError) as conflict:
        kube.patch(
            Pod,
            "w",
            {"metadata": {"resourceVersion": old.metadata.resourceVersion, "labels": {"step": "stale"}}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    assert conflict.value.status.code == 409
    assert conflict.value.status.reason == "Conflict"
    with pytest.raises(ApiError) as conflict_put:
        kube.replace(old)
    assert conflict_put.value.status.code == 409
    assert kube.get(Pod, "w", namespace=namespace).metadata.labels == {"step": "1"}

    # pods/binding: what a scheduler (or HAMi's extender) does to bind. The answer is a
    # Status (201 Success), not the Binding, so it is posted raw rather than via lightkube.
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "w"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
    }
    path = f"/api/v1/namespaces/{namespace}/pods/w/binding"
    answer = control_plane.api("POST", path, binding)
    assert (answer["kind"], answer["status"], answer["code"]) == ("Status", "Success", 201)
    assert kube.get(Pod, "w", namespace=namespace).spec.nodeName == node_name
    with pytest.raises(ApiCallError) as rebind:
        control_plane.api("POST", path, binding)
    assert rebind.value.status == 409

    kube.delete(Pod, "w", namespace=namespace, grace_period=0)
    assert watch_done.wait(30), f"watch saw only {events}"
    ops = [op for op, _, _ in events]
    assert ops[0] == "ADDED" and ops[-1] == "DELETED"
    assert "MODIFIED" in ops
    assert any(op == "MODIFIED" and node == node_name for op, _, node in events), events


@pytest.mark.timeout(180)
def test_helm_installs_a_chart(control_plane: ControlPlane, kube: Client, namespace: str, tmp_path: Path) -> None:
    out = control_plane.helm("version", "--short")
    assert out.stdout.startswith(control_plane.versions["helm"])
    chart = tmp_path / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: demo\nversion: 0.1.0\nkubeVersion: '>=1.34.0-0'\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    control_plane.helm("install", "demo", str(chart), "--namespace", namespace, "--set", "greeting=hi")
    cm = kube.get(ConfigMap, "demo-cm", namespace=namespace)
    assert cm.data == {"greeting": "hi", "kube": control_plane.versions["kubernetes"]}
    listed = json.loads(control_plane.helm("list", "--namespace", namespace, "--output", "json").stdout)
    assert [(r["name"], r["status"]) for r in listed] == [("demo", "deployed")]


def test_missing_binaries_fail_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFound) as err:
        Binaries.locate(tmp_path)
    assert "kube-apiserver" in str(err.value)
    assert "make cluster-binaries" in str(err.value)


def test_taken_port_fails_with_a_clear_message(control_plane: ControlPlane, tmp_path: Path) -> None:
    taken = control_plane.apiserver_port
    with pytest.raises(PortInUse) as err:
        ControlPlane.start(tmp_path / "second", apiserver_port=taken)
    assert f"127.0.0.1:{taken}" in str(err.value)
    assert not (tmp_path / "second" / "pids").exists() or not list((tmp_path / "second" / "pids").iterdir())


@pytest.mark.timeout(300)
def test_command_line_up_and_down(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster", "up", "--dir", str(workdir), "--nodes", "2", "--gpus-per-node", "4"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stdout is not None
        line = up.stdout.readline().strip()  # the kubeconfig path, once everything is up
        assert line, f"`up` printed nothing; stderr:\n{up.stderr.read() if up.stderr else ''}"
        kubeconfig = Path(line)
        assert kubeconfig == workdir / "kubeconfig"
        pids = {p.stem: int(p.read_text().split()[0]) for p in (workdir / "pids").glob("*.pid")}
        assert set(pids) == {"etcd", "kube-apiserver", "kube-scheduler"}
        with Client(config=KubeConfig.from_file(kubeconfig), trust_env=False) as client:
            nodes = {n.metadata.name: n for n in client.list(Node)}
            assert set(nodes) == {"node-0", "node-1"}
            assert nodes["node-0"].status.capacity["nvidia.com/gpu"] == "4"
            # The default scheduler of `up` binds a plain pod to a fake node.
            client.create(make_pod("hello", "default-scheduler"), namespace="default")
            assert wait_for(lambda: client.get(Pod, "hello", namespace="default").spec.nodeName, timeout=60) in nodes

        down = subprocess.run(
            [sys.executable, "-m", "tests.cluster", "down", "--dir", str(workdir)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 0, down.stderr
        assert up.wait(60) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids.values()):
            time.sleep(0.1)
        assert not [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()], "stray processes"
        assert not list((workdir / "pids").glob("*.pid"))
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_free_port_is_free() -> None:
    port = free_port()
    assert 1024 <= port < 65536
