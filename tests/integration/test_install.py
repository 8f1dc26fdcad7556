"""`helm install` of charts/hami into the real control plane, and the installed parts at work.

There is no kubelet, so the chart's pods never run. Their processes are started here instead,
each from its container's command line as the API server holds it (the Deployment and the
DaemonSet), with the files its volumes would hold (read from the chart's ConfigMaps and Secrets)
and with its ServiceAccount's own token, so the chart's RBAC is what they get. What a pod gives
that a process here cannot have is swapped in and named: loopback addresses and free ports,
temporary directories for host paths, a kubeconfig for the in-cluster account, fake GPUs.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509

from hami.annotations import keys
from hami.deviceplugin.api import api_pb2 as pb
from hami.deviceplugin.api import api_pb2_grpc as rpc
from tests.cluster import ApiCallError, ControlPlane, free_port, wait_for
from tests.cluster.controlplane import WEBHOOK_CLIENT_NAME, Process
from tests.cluster.helmchart import (
    CHART_DIR,
    allowed_rules,
    can_i,
    objects,
    service_account_kubeconfig,
    service_account_token,
    start_kube_scheduler,
    volume_file,
)
from tests.integration.hami_stack import gpu_node_annotations
from tests.integration.ui_stack import viewer_token

REPO = Path(__file__).resolve().parents[2]
FAKE_DEVICES = REPO / "examples" / "fake-devices.yaml"


class Release:
    """One release of the chart in its own namespace, with the processes started from it."""

    def __init__(self, cp: ControlPlane, namespace: str, workdir: Path) -> None:
        self.cp = cp
        self.namespace = namespace
        self.workdir = workdir
        self.name = f"hami-{uuid.uuid4().hex[:6]}"
        self.scheduler_name = f"{self.name}-scheduler-name"
        self.webhook_port = free_port()
        self.processes: list[Process] = []

    # ------------------------------------------------------------------ helm
    def values(self, **extra: Any) -> Path:
        values: dict[str, Any] = {
            "schedulerName": self.scheduler_name,
            "scheduler": {
                "admissionWebhook": {
                    # No Service routing without kube-proxy: the API server calls the leader directly,
                    # through HAMi's customURL; the chart's certificate then names 127.0.0.1 too.
                    "customURL": {"enabled": True, "host": "127.0.0.1", "port": self.webhook_port,
                                  "path": "/webhook"},
                    # The control plane is shared with other tests: only pods of this namespace.
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
                    # A broken webhook fails pod creation here instead of passing unnoticed.
                    "failurePolicy": "Fail",
                    # The harness's API server presents a client certificate to webhooks: only it may call.
                    "mtls": {"enabled": True, "caBundle": self.cp.webhook_client_ca_file.read_text(),
                             "allowedNames": [WEBHOOK_CLIENT_NAME]},
                },
            },
        }
        for key, value in extra.items():
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        path = self.workdir / f"values-{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.cp.helm(*args, "--namespace", self.namespace, check=False)
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    def manifest(self) -> list[dict[str, Any]]:
        return objects(self.helm("get", "manifest", self.name).stdout)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(self.cp.api("GET", api_path(kind, name, self.namespace)))

    # ------------------------------------------------------------------ processes
    def file_from(self, kind: str, name: str, key: str, path: Path) -> Path:
        """A key of a ConfigMap or Secret written where its volume would put it."""
        data = self.get(kind, name)["data"][key]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data) if kind == "Secret" else data.encode())
        return path

    def mounted(self, pod_spec: dict[str, Any], container: dict[str, Any], root: Path) -> Files:
        """The files a container sees at the paths its command line and configs name, as kubelet
        would mount them from the release's Secrets and ConfigMaps, written under `root`."""
        return Files(self, pod_spec, container, root)

    def run(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        """Start a process with the environment its container would add (`env` runs it)."""
        process = Process(name, ["env", *(f"{k}={v}" for k, v in env.items()), *argv], self.workdir)
        process.start()
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def wait(self, predicate: Any, what: str, timeout: float = 60) -> Any:
        """wait_for, failing with the last lines of every process's log."""
        try:
            return wait_for(predicate, timeout=timeout, message=what)
        except TimeoutError as exc:
            tails = "\n".join(f"--- {p.name}:\n{p.log_tail(25)}" for p in self.processes)
            raise AssertionError(f"{exc}\n{tails}") from None

    def forbidden_in_logs(self) -> list[str]:
        return [f"{p.name}: {line}" for p in self.processes
                for line in p.log_path.read_text(errors="replace").splitlines() if "forbidden" in line.lower()]


class Files:
    """A container's Secret and ConfigMap files, written here; `path()` maps a path in the container."""

    def __init__(self, release: Release, pod_spec: dict[str, Any], container: dict[str, Any], root: Path) -> None:
        self.release = release
        self.pod_spec = pod_spec
        self.container = container
        self.root = root

    def path(self, inside: str) -> Path:
        kind, name, key = volume_file(self.pod_spec, self.container, inside)
        local = self.root / inside.lstrip("/")
        if not local.exists():
            self.release.file_from(kind, name, key, local)
        return local

    def argv(self, argv: list[str]) -> list[str]:
        """`--flag=/a/path` arguments that name a mounted file, pointed at the file here."""
        out = []
        for arg in argv:
            flag, _, value = arg.partition("=")
            out.append(f"{flag}={self.path(value)}" if value.startswith("/") else arg)
        return out


def api_path(kind: str, name: str, namespace: str) -> str:
    kinds = {
        "ConfigMap": ("/api/v1", "configmaps", True),
        "Secret": ("/api/v1", "secrets", True),
        "ServiceAccount": ("/api/v1", "serviceaccounts", True),
        "Service": ("/api/v1", "services", True),
        "Deployment": ("/apis/apps/v1", "deployments", True),
        "DaemonSet": ("/apis/apps/v1", "daemonsets", True),
        "Lease": ("/apis/coordination.k8s.io/v1", "leases", True),
        "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
        "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
        "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
        "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
        "MutatingWebhookConfiguration": ("/apis/admissionregistration.k8s.io/v1",
                                         "mutatingwebhookconfigurations", False),
    }
    prefix, plural, namespaced = kinds[kind]
    return f"{prefix}/namespaces/{namespace}/{plural}/{name}" if namespaced else f"{prefix}/{plural}/{name}"


def object_path(item: dict[str, Any], default_namespace: str) -> str:
    meta = item["metadata"]
    return api_path(item["kind"], meta["name"], meta.get("namespace", default_namespace))


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] + pod_spec.get("initContainers", []) if c["name"] == name)


def rewrite(argv: list[str], replace: dict[str, str]) -> list[str]:
    """Swap the values of `--flag=value` arguments named in `replace`; the rest stays as rendered."""
    out = []
    for arg in argv:
        flag = arg.split("=", 1)[0]
        out.append(f"{flag}={replace[flag]}" if flag in replace and "=" in arg else arg)
    return out


def https_status(url: str, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def post(port: int, path: str, body: dict[str, Any], ca: Path,
         cert: tuple[Path, Path] | None = None) -> tuple[int, str]:
    """POST JSON to 127.0.0.1:port over HTTPS, with a client certificate or none: (status, body)."""
    status, _, text = https_call(port, "POST", path, ca, body=json.dumps(body).encode(), cert=cert,
                                 headers={"Content-Type": "application/json"})
    return status, text


def https_call(port: int, method: str, path: str, ca: Path, *, server_name: str = "127.0.0.1",
               body: bytes | None = None, headers: dict[str, str] | None = None,
               cert: tuple[Path, Path] | None = None) -> tuple[int, dict[str, str], str]:
    """One HTTPS request to 127.0.0.1:port, checking the server's certificate against `ca` for
    `server_name`, not following redirects: (status, headers, body)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    connection = LoopbackHTTPS(port, context, server_name)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


class LoopbackHTTPS(http.client.HTTPSConnection):
    """HTTPS to a process on 127.0.0.1 that serves a certificate for a Service name."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__("127.0.0.1", port, context=context, timeout=30)
        self.context = context
        self.server_name = server_name

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.context.wrap_socket(raw, server_hostname=self.server_name)


def leaf_certificate(release: Release, secret: str) -> x509.Certificate:
    data = release.get("Secret", secret)["data"]["tls.crt"]
    return x509.load_pem_x509_certificate(base64.b64decode(data))


@pytest.fixture
def release(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Release]:
    rel = Release(control_plane, namespace, tmp_path)
    yield rel
    rel.stop_all()
    control_plane.helm("uninstall", rel.name, "--namespace", namespace, check=False)


# Every (apiGroup, resource, verb, name) each ServiceAccount may use in its namespace beyond what
# every account may (the discovery and self-review rules of system:basic-user), as the chart
# means it (docs/install.md, "RBAC"). `name` "*" is any object.
SCHEDULER_RULES = {
    # hami scheduler
    *{("", "pods", v, "*") for v in ("get", "list", "watch", "patch")},
    ("", "pods/binding", "create", "*"),
    *{("", "nodes", v, "*") for v in ("get", "list", "watch", "patch")},
    ("", "events", "create", "*"),
    ("", "pods/eviction", "create", "*"),
    ("scheduling.k8s.io", "priorityclasses", "get", "*"),
    *{("", "resourcequotas", v, "*") for v in ("list", "watch")},
    # both: leader election on the chart's Leases
    ("coordination.k8s.io", "leases", "create", "*"),
    # kube-scheduler (Kubernetes' own system:kube-scheduler and system:volume-scheduler rules,
    # less pod delete)
    *{(g, "events", v, "*") for g in ("", "events.k8s.io") for v in ("create", "patch", "update")},
    *{("", r, v, "*") for r in ("namespaces", "services", "replicationcontrollers") for v in ("get", "list", "watch")},
    ("", "bindings", "create", "*"),
    *{("", "pods/status", v, "*") for v in ("patch", "update")},
    ("", "pods/finalizers", "update", "*"),
    *{("", r, v, "*") for r in ("persistentvolumes", "persistentvolumeclaims")
      for v in ("get", "list", "watch", "patch", "update")},
    *{("apps", r, v, "*") for r in ("replicasets", "statefulsets") for v in ("get", "list", "watch")},
    *{("policy", "poddisruptionbudgets", v, "*") for v in ("get", "list", "watch")},
    *{("storage.k8s.io", r, v, "*")
      for r in ("storageclasses", "csinodes", "csidrivers", "csistoragecapacities", "volumeattachments")
      for v in ("get", "list", "watch")},
    *{("resource.k8s.io", r, v, "*") for r in ("deviceclasses", "resourceslices") for v in ("get", "list", "watch")},
    *{("resource.k8s.io", r, v, "*") for r in ("resourceclaims", "resourceclaims/status")
      for v in ("get", "list", "watch", "patch", "update")},
    *{("resource.k8s.io", "resourceclaims", v, "*") for v in ("create", "delete")},
    *{("resource.k8s.io", "resourceclaims/binding", v, "*") for v in ("patch", "update")},
    ("authentication.k8s.io", "tokenreviews", "create", "*"),
    ("authorization.k8s.io", "subjectaccessreviews", "create", "*"),
}
DEVICE_PLUGIN_RULES = {
    *{("", "pods", v, "*") for v in ("get", "list", "watch", "patch")},
    *{("", "nodes", v, "*") for v in ("get", "patch")},
}


def leases_rules(release: Release) -> set[tuple[str, str, str, str]]:
    return {("coordination.k8s.io", "leases", verb, name)
            for verb in ("get", "update")
            for name in (release.scheduler_name, f"{release.scheduler_name}-extender")}


def test_install_schedules_mutates_upgrades_and_uninstalls(
    control_plane: ControlPlane, namespace: str, release: Release, add_node: Any
) -> None:
    cp = control_plane
    sched = f"{release.name}-scheduler"
    plugin = f"{release.name}-device-plugin"

    # 1. helm install: every object of the release is accepted and is there.
    first_values = release.values()
    release.helm("install", release.name, str(CHART_DIR), "--values", str(first_values))
    installed = release.manifest()
    kinds = sorted({item["kind"] for item in installed})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Deployment", "Lease",
                     "MutatingWebhookConfiguration", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount"]
    for item in installed:
        live = cp.api("GET", object_path(item, namespace))
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name

    deployment = release.get("Deployment", sched)
    assert deployment["spec"]["replicas"] == 2
    pod_spec = deployment["spec"]["template"]["spec"]
    work = Path(tempfile.mkdtemp(prefix="hami-install-", dir=release.workdir))
    hami = container(pod_spec, "hami-scheduler")
    kube = container(pod_spec, "kube-scheduler")
    hami_files = release.mounted(pod_spec, hami, work / "hami-scheduler")
    kube_files = release.mounted(pod_spec, kube, work / "kube-scheduler")
    tls_cert, tls_key = hami_files.path("/tls/tls.crt"), hami_files.path("/tls/tls.key")
    ca = kube_files.path("/tls-ca/ca.crt")
    sched_kubeconfig = service_account_kubeconfig(cp, namespace, sched, work / "scheduler.kubeconfig")

    # 2. Two hami scheduler replicas from the Deployment's command line, as the scheduler's account:
    #    one leads (ready), the other waits (not ready).
    assert hami["command"][:2] == ["hami", "scheduler"]
    replicas = []
    for index, port in enumerate((release.webhook_port, free_port())):
        argv = rewrite(hami_files.argv(hami["command"][1:]), {
            "--host": "127.0.0.1", "--port": str(port), "--metrics-port": str(free_port()),
            "--identity": f"{sched}-replica-{index}",
        })
        argv = [sys.executable, "-m", "hami", *argv, f"--kubeconfig={sched_kubeconfig}"]
        process = release.run(f"hami-scheduler-{index}", argv, {"PYTHONUNBUFFERED": "1"})
        process.wait_until(lambda p=port: https_status(f"https://127.0.0.1:{p}/healthz", ca) == 200,
                           "serving /healthz", timeout=60)
        replicas.append((process, port))
        if index == 0:
            process.wait_until(lambda p=port: https_status(f"https://127.0.0.1:{p}/readyz", ca) == 200,
                               "leading (/readyz)", timeout=60)
    assert https_status(f"https://127.0.0.1:{replicas[1][1]}/readyz", ca) == 503
    lease = release.get("Lease", f"{release.scheduler_name}-extender")
    assert lease["spec"]["holderIdentity"] == f"{sched}-replica-0"

    # 3. kube-scheduler with the rendered KubeSchedulerConfiguration, as the same account, with the
    #    client certificate its tlsConfig names. The Service address is swapped for the leader's;
    #    the serving certificate is still checked for it.
    config = yaml.safe_load(release.get("ConfigMap", sched)["data"]["config.yaml"])
    (extender,) = config["extenders"]
    service_host = re.match(r"https://([^:/]+):\d+$", extender["urlPrefix"]).group(1)  # type: ignore[union-attr]
    assert service_host == f"{sched}.{namespace}.svc"
    extender["urlPrefix"] = f"https://127.0.0.1:{release.webhook_port}"
    assert set(extender["tlsConfig"]) == {"caFile", "certFile", "keyFile"}
    client_cert = kube_files.path(extender["tlsConfig"]["certFile"])
    client_key = kube_files.path(extender["tlsConfig"]["keyFile"])
    extender["tlsConfig"] = {"caFile": str(ca), "certFile": str(client_cert), "keyFile": str(client_key),
                             "serverName": service_host}
    assert kube["command"][:2] == ["kube-scheduler", "--config=/config/config.yaml"]
    release.processes.append(start_kube_scheduler(cp, config, sched_kubeconfig, work / "kube-scheduler",
                                                  f"kube-scheduler-{release.name}", extra_args=kube["command"][2:]))

    # 4. The device plugin from the DaemonSet's command line, as its own account, with fake GPUs.
    node = f"{namespace}-gpu"[:63]
    add_node(node, capacity={"nvidia.com/gpu": "30"}, labels={"gpu": "on"})
    daemonset = release.get("DaemonSet", plugin)
    assert daemonset["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "on"}
    plugin_container = container(daemonset["spec"]["template"]["spec"], "device-plugin")
    kubelet_dir = Path(tempfile.mkdtemp(prefix="kl-"))  # short: unix socket paths are limited
    plugin_argv = rewrite(plugin_container["command"][1:], {
        "--config": str(release.file_from("ConfigMap", plugin, "device-config.yaml", work / "dp" / "config.yaml")),
        "--device-plugin-path": str(kubelet_dir), "--hook-path": str(work / "vgpu"),
        "--cache-dir": str(work / "vgpu" / "containers"),
    })
    dp_kubeconfig = service_account_kubeconfig(cp, namespace, plugin, work / "device-plugin.kubeconfig")
    release.run("device-plugin", [sys.executable, "-m", "hami", *plugin_argv, f"--fake-devices={FAKE_DEVICES}",
                                  f"--kubeconfig={dp_kubeconfig}"], {"NODE_NAME": node, "PYTHONUNBUFFERED": "1"})
    # hami monitor beside it, from the same pod's command line, as the same account.
    monitor = container(daemonset["spec"]["template"]["spec"], "monitor")
    assert monitor["command"][1:4] == ["monitor", "--metrics-bind-address", ":9394"]
    monitor_port = free_port()
    monitor_env = {e["name"]: e["value"] for e in monitor["env"] if "value" in e}
    assert monitor_env["HOOK_PATH"] == "/usr/local/vgpu"  # its containers/ is the plugin's --cache-dir
    monitor_argv = [f"127.0.0.1:{monitor_port}" if a == ":9394" else a for a in monitor["command"][1:]]
    release.run("monitor", [sys.executable, "-m", "hami", *monitor_argv, f"--fake-devices={FAKE_DEVICES}",
                            f"--kubeconfig={dp_kubeconfig}"],
                {**monitor_env, "HOOK_PATH": str(work / "vgpu"), "NODE_NAME": node})
    release.wait(lambda: b"hami_" in http_get(f"http://127.0.0.1:{monitor_port}/metrics"), "the monitor's metrics")
    release.wait(lambda: keys.NODE_NVIDIA_REGISTER in (cp.api("GET", f"/api/v1/nodes/{node}")["metadata"]
                                                        .get("annotations") or {}),
                 "the device plugin's registration on the node")

    # 5. A GPU pod that names no scheduler: the chart's webhook (the chart's certificate) sends it
    #    to the chart's scheduler, which binds it to the fake node's GPUs.
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cuda"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "containers": [{"name": "main", "image": "example.invalid/cuda:12",
                            "resources": {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 3000}}}],
        },
    }
    created = cp.api("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert created["spec"]["schedulerName"] == release.scheduler_name  # mutated by the webhook
    bound = release.wait(lambda: (p := cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/cuda"))["spec"]
                         .get("nodeName") and p, "the GPU pod bound")
    assert bound["spec"]["nodeName"] == node
    assert bound["metadata"]["annotations"][keys.BIND_PHASE] == "allocating"

    # 6. That pod went through kube-scheduler's client certificate and the API server's. Any other
    #    caller (a pod of the cluster has neither certificate) is refused and changes nothing: none
    #    (401), or the chart's serving certificate (its CA, another name: 403) on the extender routes;
    #    none, or kube-scheduler's, on the webhook.
    stray = cp.api("POST", f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray"},
        "spec": {"schedulerName": "nobody-serves-this", "containers": [
            {"name": "main", "image": "example.invalid/cuda:12", "resources": {"limits": {"nvidia.com/gpu": 1}}}]},
    })
    extender_args = {"Pod": stray, "NodeNames": [node]}
    bind_args = {"PodName": "stray", "PodNamespace": namespace, "PodUID": stray["metadata"]["uid"], "Node": node}
    for path, body in (("/filter", extender_args), ("/prioritize", extender_args), ("/bind", bind_args)):
        assert post(release.webhook_port, path, body, ca)[0] == 401, path
        status, text = post(release.webhook_port, path, body, ca, cert=(tls_cert, tls_key))
        assert status == 403 and "is not allowed" in text, (path, status, text)
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
              "request": {"uid": "u", "object": stray}}
    assert post(release.webhook_port, "/webhook", review, ca)[0] == 401
    assert post(release.webhook_port, "/webhook", review, ca, cert=(client_cert, client_key))[0] == 403
    stored = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/stray")
    assert not stored["spec"].get("nodeName")
    assert not any(k.startswith("hami.io/") for k in stored["metadata"].get("annotations") or {})

    # 7. kubelet's Allocate on the plugin's socket: the pod's limits come back.
    with grpc.insecure_channel(f"unix://{kubelet_dir}/hami-nvidia.sock") as channel:
        stub = rpc.DevicePluginStub(channel)
        shares = [d.ID for d in next(stub.ListAndWatch(pb.Empty())).devices]
        chosen = bound["metadata"]["annotations"][keys.DEVICES_ALLOCATED].split(",")[0]
        share = next(s for s in shares if s.startswith(chosen))
        answer = stub.Allocate(pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=[share])]))
    envs = answer.container_responses[0].envs
    assert envs["NVIDIA_VISIBLE_DEVICES"] == chosen and envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    release.wait(lambda: cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/cuda")["metadata"]["annotations"]
                 .get(keys.BIND_PHASE) == "success", "bind-phase success", timeout=30)

    # 8. Every process had the rights it needed: nothing was forbidden.
    assert release.forbidden_in_logs() == []

    # 9. And nothing more: exactly the rules the chart means, checked by the API server.
    baseline_sa = "nobody"
    cp.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": baseline_sa}})
    baseline = allowed_rules(cp, service_account_token(cp, namespace, baseline_sa), namespace)
    sched_rules = allowed_rules(cp, service_account_token(cp, namespace, sched), namespace) - baseline
    assert sched_rules == SCHEDULER_RULES | leases_rules(release)
    plugin_rules = allowed_rules(cp, service_account_token(cp, namespace, plugin), namespace) - baseline
    assert plugin_rules == DEVICE_PLUGIN_RULES
    for sa in (sched, plugin):
        assert not can_i(cp, namespace, sa, "get", "secrets")  # cluster-wide
        assert not can_i(cp, namespace, sa, "list", "secrets", namespace=namespace)
        assert not can_i(cp, namespace, sa, "get", "secrets", namespace=namespace, name=f"{release.name}-scheduler-ca")
        assert not can_i(cp, namespace, sa, "delete", "pods", namespace=namespace)
        assert not can_i(cp, namespace, sa, "create", "pods", namespace=namespace)
        assert not can_i(cp, namespace, sa, "delete", "nodes")
        assert not can_i(cp, namespace, sa, "update", "nodes")
        assert not can_i(cp, namespace, sa, "create", "serviceaccounts", subresource="token", namespace=namespace,
                         name=sa)
        assert not can_i(cp, namespace, sa, "update", "leases", group="coordination.k8s.io",
                         namespace="kube-system", name="kube-scheduler")
    assert can_i(cp, namespace, sched, "create", "pods", subresource="binding", namespace="anywhere")
    assert can_i(cp, namespace, sched, "get", "configmaps", namespace="kube-system",
                 name="extension-apiserver-authentication")
    assert not can_i(cp, namespace, sched, "get", "configmaps", namespace="kube-system", name="other")
    assert can_i(cp, namespace, plugin, "patch", "nodes", name=node)
    assert not can_i(cp, namespace, plugin, "create", "pods", subresource="binding", namespace=namespace)
    assert not can_i(cp, namespace, plugin, "list", "nodes")

    # 10. helm upgrade with other values: changes applied, objects no longer rendered removed, the
    #     CA kept (the webhook's caBundle does not change), the serving and client certificates
    #     issued anew.
    ca_before = release.get("Secret", f"{release.name}-scheduler-ca")["data"]["ca.crt"]
    leaf_before = leaf_certificate(release, f"{release.name}-scheduler-tls")
    client_before = leaf_certificate(release, f"{release.name}-kube-scheduler-client")
    release.helm("upgrade", release.name, str(CHART_DIR), "--values", str(release.values(**{
        "scheduler.defaultSchedulerPolicy.gpuSchedulerPolicy": "binpack",
        "scheduler.replicas": 3,
        "devicePlugin.monitor.enabled": False,
        "devicePlugin.deviceSplitCount": 4,
        "scheduler.admissionWebhook.enabled": False,
    })))
    upgraded = release.manifest()
    gone = kinds_and_names(installed) - kinds_and_names(upgraded)
    assert gone == {("MutatingWebhookConfiguration", f"{release.name}-webhook"),
                    ("ConfigMap", f"{release.name}-webhook-client-ca"),
                    ("Service", f"{plugin}-monitor")}
    for kind, name in gone:
        with pytest.raises(ApiCallError) as missing:
            cp.api("GET", api_path(kind, name, namespace))
        assert missing.value.status == 404
    deployment = release.get("Deployment", sched)
    assert deployment["spec"]["replicas"] == 3
    argv = container(deployment["spec"]["template"]["spec"], "hami-scheduler")["command"]
    assert "--gpu-policy=binpack" in argv and "--no-webhook" in argv
    assert not [a for a in argv if a.startswith("--webhook-client-ca")]
    daemonset = release.get("DaemonSet", plugin)
    assert [c["name"] for c in daemonset["spec"]["template"]["spec"]["containers"]] == ["device-plugin"]
    assert "deviceSplitCount: 4" in release.get("ConfigMap", plugin)["data"]["device-config.yaml"]
    assert release.get("Secret", f"{release.name}-scheduler-ca")["data"]["ca.crt"] == ca_before
    leaf_after = leaf_certificate(release, f"{release.name}-scheduler-tls")
    assert leaf_after.serial_number != leaf_before.serial_number
    assert leaf_after.issuer == leaf_before.issuer
    leaf_after.verify_directly_issued_by(x509.load_pem_x509_certificate(base64.b64decode(ca_before)))
    client_after = leaf_certificate(release, f"{release.name}-kube-scheduler-client")
    assert client_after.serial_number != client_before.serial_number and client_after.subject == client_before.subject
    client_after.verify_directly_issued_by(x509.load_pem_x509_certificate(base64.b64decode(ca_before)))
    # The running leader picks the new certificate up from its file.
    tls_cert.write_bytes(base64.b64decode(release.get("Secret", f"{release.name}-scheduler-tls")["data"]["tls.crt"]))
    tls_key.write_bytes(base64.b64decode(release.get("Secret", f"{release.name}-scheduler-tls")["data"]["tls.key"]))
    release.wait(lambda: served_serial(release.webhook_port, ca) == leaf_after.serial_number,
                 "the leader serving the new certificate", timeout=30)

    # 11. helm uninstall (the pods would go with it; here their processes stop first): nothing of
    #     the release is left, cluster-scoped or namespaced, the Leases included.
    release.stop_all()
    release.helm("uninstall", release.name)
    leftovers = labelled_objects(cp, f"app.kubernetes.io/instance={release.name}")
    assert leftovers == []
    secrets = cp.api("GET", f"/api/v1/namespaces/{namespace}/secrets")["items"]
    assert [s["metadata"]["name"] for s in secrets] == []  # helm's release records too


UI_RULES = {("", resource, verb, "*") for resource in ("nodes", "pods") for verb in ("list", "watch")}


def test_install_serves_the_ui(control_plane: ControlPlane, namespace: str, release: Release, add_node: Any) -> None:
    """`ui.enabled`: hami ui from its Deployment's command line, files and account, over HTTPS with
    the chart's CA, showing a viewer what their token may see and nothing to others."""
    cp = control_plane
    ui = f"{release.name}-ui"
    node = f"{namespace}-gpu"[:63]
    add_node(node, annotations=gpu_node_annotations(node, gpus=2))
    prometheus = f"http://127.0.0.1:{free_port()}"  # nothing listens: the pages say so and still answer
    release.helm("install", release.name, str(CHART_DIR), "--values", str(release.values(**{
        "ui.enabled": True, "ui.prometheus.url": prometheus})))
    assert {("Deployment", ui), ("Service", ui), ("ServiceAccount", ui), ("ClusterRole", ui),
            ("ClusterRoleBinding", ui), ("Secret", f"{ui}-tls"), ("Secret", f"{ui}-session")} <= kinds_and_names(
        release.manifest())
    assert release.get("Service", ui)["spec"]["ports"][0]["port"] == 443

    pod_spec = release.get("Deployment", ui)["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == ui
    (ui_container,) = pod_spec["containers"]
    assert ui_container["command"][:2] == ["hami", "ui"]
    work = Path(tempfile.mkdtemp(prefix="hami-ui-", dir=release.workdir))
    files = release.mounted(pod_spec, ui_container, work / "ui")
    port = free_port()
    argv = rewrite(files.argv(ui_container["command"][1:]), {"--host": "127.0.0.1", "--port": str(port)})
    assert f"--prometheus={prometheus}" in argv
    kubeconfig = service_account_kubeconfig(cp, namespace, ui, work / "ui.kubeconfig")
    release.run("hami-ui", [sys.executable, "-m", "hami", *argv, f"--kubeconfig={kubeconfig}"],
                {"PYTHONUNBUFFERED": "1"})
    # The chart's CA, the UI's Service name: what a browser or an Ingress checks.
    ca = release.file_from("Secret", f"{release.name}-scheduler-tls", "ca.crt", work / "ca.crt")

    def get(path: str, token: str | None = None) -> tuple[int, dict[str, str], str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return https_call(port, "GET", path, ca, server_name=f"{ui}.{namespace}.svc", headers=headers)

    def ready() -> bool:
        try:
            return get("/readyz")[0] == 200
        except OSError:  # not listening yet
            return False

    release.wait(ready, "the UI ready (its first list of nodes and pods)")

    viewer = viewer_token(cp, namespace, "viewer", cluster=True)  # may list nodes and pods
    try:
        status, _, page = get(f"/nodes/{node}", viewer)
        assert status == 200 and f"GPU-{node}-0" in page and f"GPU-{node}-1" in page, page[-2000:]
        assert viewer not in page
        # No identity: the login page. An identity without the right: a refusal naming it.
        status, headers, _ = get(f"/nodes/{node}")
        assert status == 303 and headers["location"].startswith("/login"), headers
        cp.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts",
               {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}})
        nobody = service_account_token(cp, namespace, "nobody")
        status, _, page = get(f"/nodes/{node}", nobody)
        assert status == 403 and "list nodes" in page and f"GPU-{node}-0" not in page
    finally:
        for kind in ("clusterrolebindings", "clusterroles"):
            cp.api("DELETE", f"/apis/rbac.authorization.k8s.io/v1/{kind}/{namespace}-viewer")

    # The UI's own account: list and watch of nodes and pods, nothing else; and it needed nothing else.
    baseline = allowed_rules(cp, nobody, namespace)
    assert allowed_rules(cp, service_account_token(cp, namespace, ui), namespace) - baseline == UI_RULES
    assert not can_i(cp, namespace, ui, "get", "secrets", namespace=namespace)
    assert not can_i(cp, namespace, ui, "create", "subjectaccessreviews", group="authorization.k8s.io")
    assert release.forbidden_in_logs() == []

    release.stop_all()
    # The session key is made once: an upgrade keeps it, so logged-in viewers stay logged in.
    key = release.get("Secret", f"{ui}-session")["data"]["session.key"]
    release.helm("upgrade", release.name, str(CHART_DIR), "--values", str(release.values(**{
        "ui.enabled": True, "ui.prometheus.url": prometheus})))
    assert release.get("Secret", f"{ui}-session")["data"]["session.key"] == key
    release.helm("uninstall", release.name)
    assert labelled_objects(cp, f"app.kubernetes.io/instance={release.name}") == []


def http_get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bytes(answer.read())
    except OSError:
        return b""


def kinds_and_names(items: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(i["kind"], i["metadata"]["name"]) for i in items}


def served_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def labelled_objects(cp: ControlPlane, selector: str) -> list[str]:
    """Every object in the cluster, of every listable kind, that carries the label selector."""
    found = []
    groups = [("", "v1")] + [
        (g["name"], v["version"]) for g in cp.api("GET", "/apis")["groups"] for v in g["versions"][:1]
    ]
    for group, version in groups:
        base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        for resource in cp.api("GET", base)["resources"]:
            if "/" in resource["name"] or "list" not in resource.get("verbs", []):
                continue
            try:
                items = cp.api("GET", f"{base}/{resource['name']}?labelSelector={selector}")["items"]
            except ApiCallError:
                continue
            found += [f"{resource['kind']} {i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items]
    return found
