"""charts/hami rendered by the pinned helm (`helm lint`, `helm template`): values, options and errors.

The install on the control plane is test_install.py; these need only the helm binary.
"""

from __future__ import annotations

import base64
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from hami.cli import build_parser
from hami.config import parse_config
from hami.vendors.registry import VendorSet
from tests.cluster.helmchart import CHART_DIR, by_kind_name, helm_binary, objects, render

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


@pytest.mark.parametrize("values", [(), (HAMI_VALUES,)], ids=["defaults", "hami-v2.10-values"])
def test_helm_lint_is_clean(values: tuple[Path, ...]) -> None:
    args = [str(helm_binary()), "lint", "--strict", str(CHART_DIR)]
    for path in values:
        args += ["--values", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    assert "warning" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("values", [(), (HAMI_VALUES,)], ids=["defaults", "hami-v2.10-values"])
def test_every_hami_command_line_parses(values: tuple[Path, ...]) -> None:
    """The rendered `hami …` command lines are accepted by hami's own argument parser, and the
    device config is one hami reads."""
    items = rendered(values=values)
    commands = {key: c["command"] for key, c in containers(items).items() if c.get("command", [""])[0] == "hami"}
    assert set(commands) == {"hami-scheduler/hami-scheduler", "hami-device-plugin/device-plugin",
                             "hami-device-plugin/monitor"}
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
    items = rendered(**{"scheduler.certManager.enabled": "true"})
    assert ("Secret", "hami-scheduler-tls") not in items and ("Secret", "hami-scheduler-ca") not in items
    assert {k for k in items if k[0] in ("Issuer", "Certificate")} == {
        ("Issuer", "hami-scheduler-selfsigned"), ("Certificate", "hami-scheduler-ca"),
        ("Issuer", "hami-scheduler-ca"), ("Certificate", "hami-scheduler-tls")}
    assert items[("Certificate", "hami-scheduler-tls")]["spec"]["secretName"] == "hami-scheduler-tls"
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
    assert "plugins" not in yaml.safe_load(items[("ConfigMap", "hami-scheduler")]["data"]["config.yaml"])["profiles"][0]
    assert "delete" in pods_verbs(items)


def test_two_replicas_are_replaced_together() -> None:
    """Only the leader is ready: a rolling update waiting for new ready replicas would never end."""
    spec = rendered()[("Deployment", "hami-scheduler")]["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 2}
    spec = rendered(**{"scheduler.leaderElect": "false"})[("Deployment", "hami-scheduler")]["spec"]
    assert spec["replicas"] == 1 and "strategy" not in spec


@pytest.mark.parametrize(("sets", "message"), [
    ({"scheduler.defaultSchedulerPolicy.gpuSchedulerPolicy": "topology-aware"},
     'gpuSchedulerPolicy: "topology-aware" is not supported by hami; use binpack or spread'),
    ({"scheduler.extender.mtls.enabled": "true"}, "hami scheduler has no client-certificate flags"),
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
