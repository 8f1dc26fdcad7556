"""charts/hami rendered by the pinned helm (`helm lint`, `helm template`): values, options and errors.

The install on the control plane is test_install.py; these need only the helm binary.
"""

from __future__ import annotations

import base64
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hami.cli import build_parser
from hami.config import parse_config
from hami.vendors.registry import VendorSet
from tests.cluster.helmchart import CHART_DIR, by_kind_name, helm_binary, objects, render, volume_file

HAMI_VALUES = Path(__file__).resolve().parents[1] / "data" / "hami-v2.10-values.yaml"


def rendered(namespace: str = "kube-system", values: tuple[Path, ...] = (), **sets: str) -> dict[tuple[str, str], Any]:
    return by_kind_name(objects(render("hami", namespace, values=values, sets=sets).stdout))


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def containers(items: dict[tuple[str, str], Any]) -> dict[str, dict[str, Any]]:
    """Every container of every workload, as "<workload>/<container>"."""
    found = {}
    for (kind, name), item in items.items():
        if kind in ("Deployment", "DaemonSet"):
            spec = item["spec"]["template"]["spec"]
            for c in spec.get("initContainers", []) + spec["containers"]:
                found[f"{name}/{c['name']}"] = c
    return found


UI_EVERYTHING = {"ui.enabled": "true", "ui.prometheus.url": "http://prometheus.monitoring:9090",
                 "ui.authProxy.enabled": "true", "ui.authProxy.caBundle": "PEM",
                 "scheduler.admissionWebhook.mtls.enabled": "true",
                 "scheduler.admissionWebhook.mtls.caConfigMap": "kube-root-ca.crt",
                 "scheduler.admissionWebhook.mtls.allowedNames": "{kube-apiserver-webhook-client}"}


@pytest.mark.parametrize(("values", "sets"), [((), {}), ((HAMI_VALUES,), {}), ((), UI_EVERYTHING)],
                         ids=["defaults", "hami-v2.10-values", "ui-and-client-certificates"])
def test_helm_lint_is_clean(values: tuple[Path, ...], sets: dict[str, str]) -> None:
    args = [str(helm_binary()), "lint", "--strict", str(CHART_DIR)]
    for path in values:
        args += ["--values", str(path)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    assert "warning" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize(("values", "sets"), [((), {}), ((HAMI_VALUES,), {}), ((), UI_EVERYTHING)],
                         ids=["defaults", "hami-v2.10-values", "ui-and-client-certificates"])
def test_every_hami_command_line_parses(values: tuple[Path, ...], sets: dict[str, str]) -> None:
    """The rendered `hami …` command lines are accepted by hami's own argument parser, and the
    device config is one hami reads."""
    items = rendered(values=values, **sets)
    commands = {key: c["command"] for key, c in containers(items).items() if c.get("command", [""])[0] == "hami"}
    expected = {"hami-scheduler/hami-scheduler", "hami-device-plugin/device-plugin", "hami-device-plugin/monitor"}
    assert set(commands) == expected | ({"hami-ui/ui"} if sets else set())
    parser = build_parser()
    for key, command in commands.items():
        args = parser.parse_args([a.replace("$(POD_NAME)", "pod-0") for a in command[1:]])
        assert args.command == command[1], key
    for config_map in ("hami-scheduler-device", "hami-device-plugin"):
        parse_config(yaml.safe_load(items[("ConfigMap", config_map)]["data"]["device-config.yaml"]))


def test_hami_values_file_is_honoured_where_it_applies() -> None:
    items = rendered(values=(HAMI_VALUES,))
    found = containers(items)
    # HAMi's Go logging flags are dropped; the image is ours, not HAMi's.
    assert not any(a in ("-v=4", "--debug") for a in found["hami-scheduler/hami-scheduler"]["command"])
    assert found["hami-scheduler/hami-scheduler"]["image"] == "hami:0.1.0"
    kube = found["hami-scheduler/kube-scheduler"]
    assert kube["image"].startswith("registry.cn-hangzhou.aliyuncs.com/google_containers/kube-scheduler:")
    assert kube["command"] == ["kube-scheduler", "--config=/config/config.yaml", "-v=4"]
    service = items[("Service", "hami-scheduler")]["spec"]
    assert service["type"] == "NodePort"
    assert {p["name"]: p.get("nodePort") for p in service["ports"]} == {"http": 31998, "monitor": 31993}
    daemonset = items[("DaemonSet", "hami-device-plugin")]["spec"]["template"]["spec"]
    assert daemonset["nodeSelector"] == {"gpu": "on"}
    assert items[("Deployment", "hami-scheduler")]["spec"]["replicas"] == 1  # HAMi's scheduler.replicas
    # HAMi's example node entry is not taken for a node.
    assert "your-node-name" not in items[("ConfigMap", "hami-device-plugin")]["data"]["device-config.yaml"]
    # The monitor as HAMi's interface has it.
    monitor = found["hami-device-plugin/monitor"]
    assert monitor["command"][:4] == ["hami", "monitor", "--metrics-bind-address", ":9394"]
    env = {e["name"]: e.get("value") for e in monitor["env"]}
    assert env["HOOK_PATH"] == "/usr/local/vgpu" and "NODE_NAME" in env
    # kubelet probes the monitor's own endpoints on its metrics port (plain HTTP).
    assert monitor["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert monitor["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 9394, "protocol": "TCP"} in monitor["ports"]
    # kube-scheduler runs in the pod, so the extender's client certificates are wired as by default.
    assert "certFile" in yaml.safe_load(items[("ConfigMap", "hami-scheduler")]["data"]["config.yaml"])[
        "extenders"][0]["tlsConfig"]
    assert "--extender-allowed-names=kube-scheduler" in found["hami-scheduler/hami-scheduler"]["command"]


def test_one_daemonset_per_vendor_entry() -> None:
    items = rendered(**{"devicePlugin.vendors.ascend.enabled": "true"})
    ascend = items[("DaemonSet", "hami-device-plugin-ascend")]["spec"]["template"]["spec"]
    (plugin,) = ascend["containers"]  # no monitor: it reads libvgpu's regions, an NVIDIA thing
    assert plugin["command"][:3] == ["hami", "device-plugin", "--vendor=ascend"]
    assert "--socket-name=hami-ascend.sock" in plugin["command"]
    assert ascend["nodeSelector"] == {"ascend": "on"}
    assert "initContainers" not in ascend
    nvidia = items[("DaemonSet", "hami-device-plugin")]["spec"]["template"]["spec"]
    assert [c["name"] for c in nvidia["initContainers"]] == ["install-libvgpu"]
    assert "--vendor=nvidia" not in nvidia["containers"][0]["command"]
    # A vendor can be switched off entirely.
    items = rendered(**{"devicePlugin.vendors.nvidia.enabled": "false"})
    assert not [key for key in items if key[0] == "DaemonSet"]


def test_chart_made_certificate_serves_the_service_and_the_custom_url() -> None:
    items = rendered(namespace="gpu", **{"scheduler.admissionWebhook.customURL.enabled": "true",
                                          "scheduler.admissionWebhook.customURL.host": "10.0.0.7"})
    tls = items[("Secret", "hami-scheduler-tls")]["data"]
    ca_secret = items[("Secret", "hami-scheduler-ca")]
    webhook = items[("MutatingWebhookConfiguration", "hami-webhook")]["webhooks"][0]
    assert webhook["clientConfig"]["url"] == "https://10.0.0.7:31998/webhook"
    assert tls["ca.crt"] == ca_secret["data"]["ca.crt"] == webhook["clientConfig"]["caBundle"]
    leaf = x509.load_pem_x509_certificate(base64.b64decode(tls["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(tls["ca.crt"]))
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hami-scheduler.gpu.svc" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    expires = int(ca_secret["metadata"]["annotations"]["hami.io/ca-expires-unix"])
    assert abs(expires - ca.not_valid_after_utc.timestamp()) < 60  # both from the render's clock
    # kube-scheduler reads the CA (only the CA) from the same Secret; a new CA restarts it.
    deployment = items[("Deployment", "hami-scheduler")]["spec"]["template"]
    volumes = {v["name"]: v for v in deployment["spec"]["volumes"]}
    assert volumes["tls-ca"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert "checksum/ca" in deployment["metadata"]["annotations"]


def test_cert_manager_option() -> None:
    items = rendered(**{"scheduler.certManager.enabled": "true", "ui.enabled": "true"})
    # No certificate Secret of the chart's own; the UI's session key is no certificate.
    assert [k for k in items if k[0] == "Secret"] == [("Secret", "hami-ui-session")]
    assert {k for k in items if k[0] in ("Issuer", "Certificate")} == {
        ("Issuer", "hami-scheduler-selfsigned"), ("Certificate", "hami-scheduler-ca"),
        ("Issuer", "hami-scheduler-ca"), ("Certificate", "hami-scheduler-tls"),
        ("Certificate", "hami-kube-scheduler-client"), ("Certificate", "hami-ui-tls")}
    assert items[("Certificate", "hami-scheduler-tls")]["spec"]["secretName"] == "hami-scheduler-tls"
    client = items[("Certificate", "hami-kube-scheduler-client")]["spec"]
    assert (client["secretName"], client["commonName"]) == ("hami-kube-scheduler-client", "kube-scheduler")
    assert "client auth" in client["usages"] and client["issuerRef"]["name"] == "hami-scheduler-ca"
    ui = items[("Certificate", "hami-ui-tls")]["spec"]
    assert "hami-ui.kube-system.svc" in ui["dnsNames"] and ui["issuerRef"]["name"] == "hami-scheduler-ca"
    # Without cert-manager's own: the UI brings its certificate.
    items = rendered(**{"scheduler.certManager.enabled": "true", "ui.enabled": "true",
                        "ui.tls.existingSecret": "my-ui-cert"})
    assert ("Certificate", "hami-ui-tls") not in items
    webhook = items[("MutatingWebhookConfiguration", "hami-webhook")]
    assert webhook["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "kube-system/hami-scheduler-tls"}
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]


def test_service_monitors_where_the_api_exists() -> None:
    api = "monitoring.coreos.com/v1/ServiceMonitor"
    with_api = by_kind_name(objects(render("hami", "kube-system", sets={"prometheus.enabled": "true"},
                                           api_versions=[api]).stdout))
    monitors = {k: v for k, v in with_api.items() if k[0] == "ServiceMonitor"}
    assert {k[1] for k in monitors} == {"hami-scheduler", "hami-device-plugin-monitor"}
    assert monitors[("ServiceMonitor", "hami-scheduler")]["spec"]["endpoints"][0]["port"] == "monitor"
    without = render("hami", "kube-system", sets={"prometheus.enabled": "true"})
    assert not [o for o in objects(without.stdout) if o["kind"] == "ServiceMonitor"]


def test_webhook_off_and_kube_scheduler_off() -> None:
    items = rendered(**{"scheduler.admissionWebhook.enabled": "false", "scheduler.kubeScheduler.enabled": "false"})
    assert not [k for k in items if k[0] == "MutatingWebhookConfiguration"]
    assert ("ConfigMap", "hami-scheduler") not in items
    found = containers(items)
    assert "hami-scheduler/kube-scheduler" not in found
    assert "--no-webhook" in found["hami-scheduler/hami-scheduler"]["command"]
    assert ("ClusterRole", "hami-scheduler-kube-scheduler") not in items


def test_preemption_is_off_unless_asked_and_then_may_delete_pods() -> None:
    def pods_verbs(items: dict[tuple[str, str], Any]) -> list[str]:
        rules = items[("ClusterRole", "hami-scheduler-kube-scheduler")]["rules"]
        return next(r["verbs"] for r in rules if r["resources"] == ["pods"])

    items = rendered()
    profile = yaml.safe_load(items[("ConfigMap", "hami-scheduler")]["data"]["config.yaml"])["profiles"][0]
    assert profile["plugins"]["postFilter"]["disabled"] == [{"name": "DefaultPreemption"}]
    assert "delete" not in pods_verbs(items)
    items = rendered(**{"scheduler.kubeScheduler.preemption": "true"})
    config = yaml.safe_load(items[("ConfigMap", "hami-scheduler")]["data"]["config.yaml"])
    assert "plugins" not in config["profiles"][0]
    assert config["extenders"][0]["preemptVerb"] == "preempt"
    assert "delete" in pods_verbs(items)


def test_two_replicas_are_replaced_together() -> None:
    """Only the leader is ready: a rolling update waiting for new ready replicas would never end."""
    spec = rendered()[("Deployment", "hami-scheduler")]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 2}
    spec = rendered(**{"scheduler.leaderElect": "false"})[("Deployment", "hami-scheduler")]["spec"]
    assert spec["replicas"] == 1 and "strategy" not in spec


@pytest.mark.parametrize(("sets", "message"), [
    ({"scheduler.defaultSchedulerPolicy.gpuSchedulerPolicy": "mutex"},
     'gpuSchedulerPolicy: "mutex" is not supported by hami; use binpack or spread or topology-aware'),
    ({"scheduler.admissionWebhook.mtls.enabled": "true"},
     "scheduler.admissionWebhook.mtls.enabled needs the CA of the API server's webhook client certificate"),
    ({"ui.enabled": "true", "ui.authProxy.enabled": "true"}, "ui.authProxy.enabled needs ui.authProxy.caBundle"),
    # What `helm upgrade --reuse-values` from an older chart version renders with.
    ({"ui": "null"}, "keeps the previous chart's defaults; use --reset-then-reuse-values"),
    ({"scheduler.admissionWebhook.mtls": "null"}, "keeps the previous chart's defaults; use --reset-then-reuse-values"),
    ({"ui.enabled": "true", "scheduler.defaultSchedulerPolicy.nodeSchedulerPolicy": "topology-aware"},
     'nodeSchedulerPolicy: "topology-aware" is not supported by hami'),
    ({"devicePlugin.nodeConfiguration.config": "not json"}, "devicePlugin.nodeConfiguration.config is not valid JSON"),
    ({"device-config.content": "nvidia: [unclosed"}, "device-config.content is not valid YAML"),
    ({"devicePlugin.nodeConfiguration.externalConfigName": "mine"}, "externalConfigName is not supported"),
    ({"scheduler.nodeLockExpire": "five minutes"}, 'a duration must look like 90s, 5m or 1h, got "five minutes"'),
    ({"devicePlugin.vendors.Bad_Name.enabled": "true"}, '"Bad_Name" is not a valid vendor name'),
    ({"devicePlugin.monitor.ctrPath": "/var/hami/regions"}, "devicePlugin.monitor.ctrPath must end in /containers"),
])
def test_bad_values_fail_with_a_clear_message(sets: dict[str, str], message: str) -> None:
    result = render("hami", "kube-system", sets=sets, check=False)
    assert result.returncode != 0, f"rendered with {sets}"
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr  # an error line, not a dump


def test_values_reach_the_device_config_and_the_flags(tmp_path: Path) -> None:
    items = rendered(values=(values_file(tmp_path, {
        "devicePlugin": {"deviceSplitCount": 4, "deviceMemoryScaling": 1.5,
                         "nodeConfiguration": {"config": '{"nodeconfig": [{"name": "n1", "devicesplitcount": 2}]}'}},
        "devices": {"nvidia": {"gpuCorePolicy": "force"}},
        "dcuResourceName": "hygon.com/my-dcu",
        "scheduler": {"defaultSchedulerPolicy": {"nodeSchedulerPolicy": "spread"}, "nodeLockExpire": "90s",
                      "forceOverwriteDefaultScheduler": False,
                      "extender": {"extraArgs": ["--only-best-node", "-v=5"]}},
    }),))
    config = parse_config(yaml.safe_load(items[("ConfigMap", "hami-device-plugin")]["data"]["device-config.yaml"]))
    assert (config.nvidia.deviceSplitCount, config.nvidia.deviceMemoryScaling, config.nvidia.gpuCorePolicy) == (
        4, 1.5, "force")
    assert VendorSet.from_config(config)["DCU"].resources.count == "hygon.com/my-dcu"  # HAMi's top-level name
    override = config.node_override("n1")
    assert override is not None and override.devicesplitcount == 2
    command = containers(items)["hami-scheduler/hami-scheduler"]["command"]
    assert {"--node-policy=spread", "--lock-stale-seconds=90", "--no-overwrite-default-scheduler",
            "--only-best-node"} <= set(command)
    assert "-v=5" not in command
    assert shlex.join(command)  # plain strings only


def pem_of(items: dict[tuple[str, str], Any], kind: str, name: str, key: str) -> bytes:
    data = items[(kind, name)]["data"][key]
    return base64.b64decode(data) if kind == "Secret" else str(data).encode()


def flag(command: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in command if a.startswith(f"{name}=")), None)


def secret_files(pod_spec: dict[str, Any], container: dict[str, Any]) -> set[tuple[str, str]]:
    """(Secret, key) of every Secret item the container mounts."""
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    found = set()
    for mount in container["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is not None:
            found |= {(secret["secretName"], item["key"]) for item in secret["items"]}
    return found


def test_extender_client_certificates_are_wired_by_default() -> None:
    """kube-scheduler presents a certificate of the chart's CA with its own name; hami scheduler takes
    only that CA and that name on the extender routes. Every path resolves to the right Secret key."""
    items = rendered()
    pod = items[("Deployment", "hami-scheduler")]["spec"]["template"]["spec"]
    kube = next(c for c in pod["containers"] if c["name"] == "kube-scheduler")
    hami = next(c for c in pod["containers"] if c["name"] == "hami-scheduler")
    tls_config = yaml.safe_load(items[("ConfigMap", "hami-scheduler")]["data"]["config.yaml"])["extenders"][0][
        "tlsConfig"]
    assert set(tls_config) == {"caFile", "certFile", "keyFile"}  # no `insecure`
    sources = {field: volume_file(pod, kube, path) for field, path in tls_config.items()}
    assert sources == {"caFile": ("Secret", "hami-scheduler-tls", "ca.crt"),
                       "certFile": ("Secret", "hami-kube-scheduler-client", "tls.crt"),
                       "keyFile": ("Secret", "hami-kube-scheduler-client", "tls.key")}
    client_ca = flag(hami["command"], "--extender-client-ca")
    assert client_ca is not None and volume_file(pod, hami, client_ca) == ("Secret", "hami-scheduler-tls", "ca.crt")
    assert flag(hami["command"], "--extender-allowed-names") == "kube-scheduler"
    assert flag(hami["command"], "--webhook-client-ca") is None  # needs the API server's configuration: opt-in

    ca = x509.load_pem_x509_certificate(pem_of(items, "Secret", "hami-scheduler-tls", "ca.crt"))
    client = x509.load_pem_x509_certificate(pem_of(items, "Secret", "hami-kube-scheduler-client", "tls.crt"))
    client.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kube-scheduler"
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    # The serving certificate comes from the same CA but with another name: it cannot call /bind.
    serving = x509.load_pem_x509_certificate(pem_of(items, "Secret", "hami-scheduler-tls", "tls.crt"))
    assert serving.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hami-scheduler"
    # Each process holds only its own key.
    assert secret_files(pod, kube) == {("hami-scheduler-tls", "ca.crt"), ("hami-kube-scheduler-client", "tls.crt"),
                                       ("hami-kube-scheduler-client", "tls.key")}
    assert secret_files(pod, hami) == {("hami-scheduler-tls", "ca.crt"), ("hami-scheduler-tls", "tls.crt"),
                                       ("hami-scheduler-tls", "tls.key")}

    # Another name; or off: no client Secret, no flag, no certificate in kube-scheduler's config.
    items = rendered(**{"scheduler.extender.mtls.clientName": "hami-kube-scheduler"})
    client = x509.load_pem_x509_certificate(pem_of(items, "Secret", "hami-kube-scheduler-client", "tls.crt"))
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hami-kube-scheduler"
    assert flag(containers(items)["hami-scheduler/hami-scheduler"]["command"],
                "--extender-allowed-names") == "hami-kube-scheduler"
    items = rendered(**{"scheduler.extender.mtls.enabled": "false"})
    assert ("Secret", "hami-kube-scheduler-client") not in items
    assert not [a for a in containers(items)["hami-scheduler/hami-scheduler"]["command"] if a.startswith("--extender")]
    assert yaml.safe_load(items[("ConfigMap", "hami-scheduler")]["data"]["config.yaml"])["extenders"][0][
        "tlsConfig"] == {"caFile": "/tls-ca/ca.crt"}
    # Without kube-scheduler in the pod the certificate is still made, for the user's own kube-scheduler.
    items = rendered(**{"scheduler.kubeScheduler.enabled": "false"})
    assert ("Secret", "hami-kube-scheduler-client") in items


def test_webhook_client_certificate_option() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    items = rendered(**{"scheduler.admissionWebhook.mtls.enabled": "true",
                        "scheduler.admissionWebhook.mtls.caBundle": pem,
                        "scheduler.admissionWebhook.mtls.allowedNames": "{kube-apiserver-webhook-client,other}"})
    pod = items[("Deployment", "hami-scheduler")]["spec"]["template"]["spec"]
    hami = next(c for c in pod["containers"] if c["name"] == "hami-scheduler")
    path = flag(hami["command"], "--webhook-client-ca")
    assert path is not None and volume_file(pod, hami, path) == ("ConfigMap", "hami-webhook-client-ca", "ca.crt")
    assert pem_of(items, "ConfigMap", "hami-webhook-client-ca", "ca.crt").decode().strip() == pem
    assert flag(hami["command"], "--webhook-allowed-names") == "kube-apiserver-webhook-client,other"
    # A ConfigMap that is already there (kubeadm's cluster CA in every namespace).
    items = rendered(**{"scheduler.admissionWebhook.mtls.enabled": "true",
                        "scheduler.admissionWebhook.mtls.caConfigMap": "kube-root-ca.crt"})
    pod = items[("Deployment", "hami-scheduler")]["spec"]["template"]["spec"]
    hami = next(c for c in pod["containers"] if c["name"] == "hami-scheduler")
    assert volume_file(pod, hami, "/webhook-client-ca/ca.crt") == ("ConfigMap", "kube-root-ca.crt", "ca.crt")
    assert ("ConfigMap", "hami-webhook-client-ca") not in items
    assert flag(hami["command"], "--webhook-allowed-names") is None
    # No webhook, nothing to protect.
    items = rendered(**{"scheduler.admissionWebhook.enabled": "false",
                        "scheduler.admissionWebhook.mtls.enabled": "true"})
    assert flag(containers(items)["hami-scheduler/hami-scheduler"]["command"], "--webhook-client-ca") is None
    assert ("ConfigMap", "hami-webhook-client-ca") not in items


def ui_objects(items: dict[tuple[str, str], Any]) -> set[tuple[str, str]]:
    return {key for key, item in items.items()
            if item["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "hami-ui"}


def test_ui_is_its_own_deployment_with_list_and_watch_only() -> None:
    assert ui_objects(rendered()) == set()  # off by default
    items = rendered(namespace="gpu", **{"ui.enabled": "true", "ui.tls.dnsNames": "{hami.example.com}"})
    assert ui_objects(items) == {("Deployment", "hami-ui"), ("Service", "hami-ui"), ("ServiceAccount", "hami-ui"),
                                 ("ClusterRole", "hami-ui"), ("ClusterRoleBinding", "hami-ui"),
                                 ("Secret", "hami-ui-tls"), ("Secret", "hami-ui-session")}
    assert items[("ClusterRole", "hami-ui")]["rules"] == [
        {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list", "watch"]}]
    binding = items[("ClusterRoleBinding", "hami-ui")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hami-ui", "namespace": "gpu"}]
    pod = items[("Deployment", "hami-ui")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "hami-ui"
    (ui,) = pod["containers"]
    command = ui["command"]
    assert command[:2] == ["hami", "ui"] and flag(command, "--prometheus") is None
    assert volume_file(pod, ui, str(flag(command, "--tls-cert"))) == ("Secret", "hami-ui-tls", "tls.crt")
    assert volume_file(pod, ui, str(flag(command, "--config"))) == ("ConfigMap", "hami-scheduler-device",
                                                                    "device-config.yaml")
    assert ui["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    # The login cookie is sealed with a key from the chart's Secret: 48 random characters.
    key_file = str(flag(command, "--session-key-file"))
    assert volume_file(pod, ui, key_file) == ("Secret", "hami-ui-session", "session.key")
    assert re.fullmatch(r"[A-Za-z0-9]{48}", pem_of(items, "Secret", "hami-ui-session", "session.key").decode())
    # HTTPS with a certificate of the chart's CA for the Service's names.
    leaf = x509.load_pem_x509_certificate(pem_of(items, "Secret", "hami-ui-tls", "tls.crt"))
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(pem_of(items, "Secret", "hami-scheduler-tls",
                                                                         "ca.crt")))
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["hami-ui", "hami-ui.gpu", "hami-ui.gpu.svc", "hami-ui.gpu.svc.cluster.local", "hami.example.com"]
    service = items[("Service", "hami-ui")]["spec"]
    assert service["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    assert service["sessionAffinity"] == "ClientIP"
    # The scheduler's pod is unchanged by the UI.
    assert [c["name"] for c in items[("Deployment", "hami-scheduler")]["spec"]["template"]["spec"]["containers"]] == [
        "kube-scheduler", "hami-scheduler"]


def test_ui_options_prometheus_proxy_and_own_certificate() -> None:
    items = rendered(**UI_EVERYTHING, **{"ui.tls.existingSecret": "my-ui-cert"})
    pod = items[("Deployment", "hami-ui")]["spec"]["template"]["spec"]
    (ui,) = pod["containers"]
    assert flag(ui["command"], "--prometheus") == "http://prometheus.monitoring:9090"
    assert volume_file(pod, ui, str(flag(ui["command"], "--proxy-client-ca"))) == ("ConfigMap", "hami-ui-proxy-ca",
                                                                                   "ca.crt")
    assert pem_of(items, "ConfigMap", "hami-ui-proxy-ca", "ca.crt") == b"PEM\n"
    assert flag(ui["command"], "--user-header") == "X-Remote-User"
    # Only the proxy's certificate connects: the probes check TCP.
    assert ui["readinessProbe"]["tcpSocket"] == {"port": "https"} and "httpGet" not in ui["livenessProbe"]
    # Behind the proxy the UI asks the API server about the proxy's user itself.
    assert items[("ClusterRole", "hami-ui")]["rules"][1] == {
        "apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}
    assert ("Secret", "hami-ui-tls") not in items
    # No login cookie behind the proxy: no session key.
    assert ("Secret", "hami-ui-session") not in items and flag(ui["command"], "--session-key-file") is None
    assert volume_file(pod, ui, "/tls/tls.key") == ("Secret", "my-ui-cert", "tls.key")


def test_topology_aware_gpu_policy_reaches_the_scheduler() -> None:
    items = rendered(**{"scheduler.defaultSchedulerPolicy.gpuSchedulerPolicy": "topology-aware"})
    container = containers(items)["hami-scheduler/hami-scheduler"]
    args = container.get("args", []) + container.get("command", [])
    assert "--gpu-policy=topology-aware" in args


def test_vendor_entries_mount_their_host_libraries() -> None:
    items = rendered(**{"devicePlugin.vendors.hygon.enabled": "true",
                        "devicePlugin.vendors.hygon.hostMounts[0].hostPath": "/opt/hyhal",
                        "devicePlugin.vendors.hygon.hostMounts[1].hostPath": "/var/run/x",
                        "devicePlugin.vendors.hygon.hostMounts[1].readOnly": "false"})
    spec = items[("DaemonSet", "hami-device-plugin-hygon")]["spec"]["template"]["spec"]
    plugin = next(c for c in spec["containers"] if c["name"] == "device-plugin")
    mounts = {m["name"]: m for m in plugin["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["host-0"] == {"name": "host-0", "mountPath": "/opt/hyhal", "readOnly": True}
    assert mounts["host-1"]["readOnly"] is False
    assert volumes["host-0"]["hostPath"] == {"path": "/opt/hyhal"}
    assert "--vendor=hygon" in plugin["command"]
