"""Helpers for testing the Helm chart on the control plane of this package.

- ``render`` runs ``helm template`` and returns the objects;
- ``service_account_kubeconfig`` writes a kubeconfig holding a ServiceAccount's token (from the
  API server's TokenRequest), so that a process runs with exactly the rights the chart gave it,
  as it would in its pod;
- ``can_i`` asks the API server a SubjectAccessReview for a ServiceAccount;
- ``allowed_rules`` lists what a ServiceAccount may do in a namespace (SelfSubjectRulesReview,
  asked with its own token);
- ``start_kube_scheduler`` runs the pinned kube-scheduler with a given config and kubeconfig;
- ``volume_file`` says which key of which Secret or ConfigMap a container sees at a path.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .controlplane import Binaries, ClusterError, ControlPlane, Process, free_port

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "hami"


def helm_binary() -> Path:
    return Binaries.locate().helm


def render(
    release: str,
    namespace: str,
    values: Sequence[Path] = (),
    sets: Mapping[str, str] | None = None,
    api_versions: Sequence[str] = (),
    chart: Path = CHART_DIR,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`helm template` of the chart; `.stdout` holds the manifests."""
    args = [str(helm_binary()), "template", release, str(chart), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    for version in api_versions:
        args += ["--api-versions", version]
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=120)


def objects(manifests: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifests) if doc]


def by_kind_name(items: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(item["kind"], item["metadata"]["name"]): item for item in items}


def service_account_token(cp: ControlPlane, namespace: str, name: str, seconds: int = 3600) -> str:
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
               "spec": {"expirationSeconds": seconds}}
    answer = cp.api("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", request)
    return str(answer["status"]["token"])


def service_account_kubeconfig(cp: ControlPlane, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig for the ServiceAccount: what its pod's in-cluster configuration would give."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": {
            "server": cp.server, "certificate-authority-data": base64.b64encode(cp.ca_file.read_bytes()).decode()}}],
        "users": [{"name": name, "user": {"token": service_account_token(cp, namespace, name)}}],
        "contexts": [{"name": name, "context": {"cluster": "cluster", "user": name, "namespace": namespace}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def service_account_user(namespace: str, name: str) -> tuple[str, list[str]]:
    return (f"system:serviceaccount:{namespace}:{name}",
            ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"])


def can_i(cp: ControlPlane, sa_namespace: str, sa_name: str, verb: str, resource: str, *, group: str = "",
          namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> bool:
    """A SubjectAccessReview: may this ServiceAccount do it? (`kubectl auth can-i --as`)"""
    user, groups = service_account_user(sa_namespace, sa_name)
    attributes: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if namespace is not None:
        attributes["namespace"] = namespace
    if name is not None:
        attributes["name"] = name
    if subresource is not None:
        attributes["subresource"] = subresource
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
              "spec": {"user": user, "groups": groups, "resourceAttributes": attributes}}
    answer = cp.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review)
    return bool(answer["status"].get("allowed"))


def allowed_rules(cp: ControlPlane, token: str, namespace: str) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, resourceName or "*") the token's user may use in `namespace`,
    cluster-wide rules included: a SelfSubjectRulesReview asked with the token itself."""
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    request = urllib.request.Request(
        f"{cp.server}/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        data=json.dumps(review).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            status = json.load(response)["status"]
    except urllib.error.HTTPError as exc:
        raise ClusterError(f"SelfSubjectRulesReview: HTTP {exc.code}: {exc.read()[:500]!r}") from None
    if status.get("incomplete"):
        raise ClusterError(f"SelfSubjectRulesReview incomplete: {status.get('evaluationError')}")
    rules = set()
    for rule in status.get("resourceRules", []):
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    for name in rule.get("resourceNames") or ["*"]:
                        rules.add((group, resource, verb, name))
    return rules


def start_kube_scheduler(cp: ControlPlane, config: Mapping[str, Any], kubeconfig: Path, workdir: Path,
                         name: str, extra_args: Sequence[str] = (), timeout: float = 90) -> Process:
    """The pinned kube-scheduler with `config` (a KubeSchedulerConfiguration), talking to the API
    server as `kubeconfig`'s user for everything, as it does in-cluster with its pod's account."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = dict(config)
    cfg["clientConnection"] = {**cfg.get("clientConnection", {}), "kubeconfig": str(kubeconfig)}
    config_path = workdir / "kube-scheduler.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    process = Process(name, [
        str(cp.binaries.kube_scheduler),
        f"--config={config_path}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        *extra_args,
    ], workdir)
    process.start()
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE

    def ready() -> bool:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=2, context=insecure) as answer:
            return bool(answer.status == 200)

    process.wait_until(ready, "ready (/readyz)", timeout=timeout)
    return process


def volume_file(pod_spec: Mapping[str, Any], container: Mapping[str, Any], path: str) -> tuple[str, str, str]:
    """(kind, name, key) of the Secret or ConfigMap item that `container` sees at `path`, as kubelet
    mounts it; ClusterError when no volume of the container holds that file."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume = volumes[mount["name"]]
        relative = path[len(prefix):]
        for kind, field, name_field in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            if field in volume:
                items = volume[field].get("items")
                if items is None:  # every key, each as a file of its name
                    return kind, volume[field][name_field], relative
                for item in items:
                    if item["path"] == relative:
                        return kind, volume[field][name_field], item["key"]
    raise ClusterError(f"no volume of container {container['name']} holds {path}")
