"""What the request checks and client certificates cost the extender.

    python -m bench.http.run                 # both parts
    python -m bench.http.run --rounds 2000

1. The checks every request body goes through before the extender sees it (JSON decode, the
   nesting-depth walk, the Pod shape check) on bodies as kube-scheduler and kube-apiserver send
   them: ExtenderArgs with node names (nodeCacheCapable) or with 1,000 full Node objects, and an
   AdmissionReview. Decoding alone is printed beside it. No I/O.
2. /filter round trips over HTTPS on loopback against `hami.serve` in a child process, with and
   without required client certificates, on one kept-alive connection (as kube-scheduler
   calls) and with a new connection (a TLS handshake) per call.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import ssl
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.model import DeviceInfo
from hami.scheduler.app import RequestLimits, _deeper_than
from hami.scheduler.extender import candidate_names, pod_of
from hami.webhook.mutate import review_response  # noqa: F401 - the webhook runs check_pod the same way
from hami.wire import check_pod


def realistic_pod(name: str) -> dict[str, Any]:
    """A pod as the API server stores it: managed fields, env, mounts, tolerations, affinity."""
    container = {
        "name": "main", "image": "registry.example/train:2024.06", "command": ["python", "train.py"],
        "args": ["--epochs", "10", "--batch", "64"],
        "env": [{"name": f"VAR_{i}", "value": f"value-{i}"} for i in range(10)],
        "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "8k", "nvidia.com/gpucores": "30",
                                 "cpu": "4", "memory": "16Gi"},
                      "requests": {"cpu": "4", "memory": "16Gi"}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "kube-api-access", "mountPath":
                         "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent",
    }
    fields = {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:team": {}}},
              "f:spec": {"f:containers": {'k:{"name":"main"}': {".": {}, "f:env": {
                  f'k:{{"name":"VAR_{i}"}}': {".": {}, "f:name": {}, "f:value": {}} for i in range(10)},
                  "f:resources": {"f:limits": {".": {}, "f:nvidia.com/gpu": {}, "f:nvidia.com/gpumem": {}}}}}}}
    return {
        "metadata": {"name": name, "namespace": "training", "uid": "3f1c7d2e-9a44-4b8e-a0d5-7a1b2c3d4e5f",
                     "resourceVersion": "123456", "creationTimestamp": "2024-06-01T10:00:00Z",
                     "labels": {"app": "train", "team": "vision"},
                     "annotations": {keys.GPU_SCHEDULER_POLICY: "binpack"},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "train",
                                          "uid": "0d9b", "controller": True}],
                     "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                        "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields}]},
        "spec": {"containers": [container], "schedulerName": "hami-scheduler", "restartPolicy": "Never",
                 "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                  "effect": "NoExecute", "tolerationSeconds": 300}],
                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                     "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "In",
                                                                  "values": ["a100", "h100"]}]}]}}},
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]},
        "status": {"phase": "Pending", "qosClass": "Guaranteed"},
    }


def realistic_node(name: str) -> dict[str, Any]:
    gpus = [DeviceInfo(id=f"GPU-{name}-{i}", count=10, devmem=81920, devcore=100, type="NVIDIA-A100-SXM4-80GB",
                       index=i) for i in range(8)]
    return {
        "metadata": {"name": name, "uid": "u-" + name, "resourceVersion": "99",
                     "labels": {f"label-{i}": f"value-{i}" for i in range(15)},
                     "annotations": {keys.NODE_NVIDIA_REGISTER: encode_node_devices(gpus)}},
        "spec": {"podCIDR": "10.0.0.0/24"},
        "status": {"capacity": {"cpu": "128", "memory": "2Ti", "nvidia.com/gpu": "80"},
                   "allocatable": {"cpu": "127", "memory": "2Ti", "nvidia.com/gpu": "80"},
                   "conditions": [{"type": t, "status": "False", "reason": "fine", "message": "fine",
                                   "lastHeartbeatTime": "2024-06-01T10:00:00Z"} for t in
                                  ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable", "Ready")],
                   "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}],
                   "images": [{"names": [f"registry.example/image-{i}@sha256:{'0' * 64}",
                                         f"registry.example/image-{i}:v1"], "sizeBytes": 10**9} for i in range(20)]},
    }


def timed(function: Any, rounds: int, clock: Any = time.perf_counter) -> tuple[float, float]:
    """(p50, p99) in microseconds."""
    samples = []
    for _ in range(rounds):
        started = clock()
        function()
        samples.append((clock() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def checks(rounds: int) -> None:
    limits = RequestLimits()
    bodies = {
        "ExtenderArgs, 1,000 NodeNames": {"Pod": realistic_pod("p"), "NodeNames": [f"node-{i}" for i in range(1000)]},
        "ExtenderArgs, 1,000 full Nodes": {"Pod": realistic_pod("p"),
                                           "Nodes": {"items": [realistic_node(f"node-{i}") for i in range(1000)]}},
        "AdmissionReview": {"request": {"uid": "u", "object": realistic_pod("p")}},
    }
    print("1. Request checks, microseconds of CPU time (p50 / p99)")
    print(f"{'body':34} {'bytes':>10} {'decode':>16} {'decode + checks':>18}")
    for name, document in bodies.items():
        raw = msgspec.json.encode(document)
        n = rounds if len(raw) < 100_000 else max(rounds // 50, 20)

        def decode_only(raw: bytes = raw) -> None:
            msgspec.json.decode(raw)

        def decode_and_check(raw: bytes = raw) -> None:
            data = msgspec.json.decode(raw)
            _deeper_than(data, limits.max_depth)
            if "request" in data:
                check_pod(data["request"]["object"])
            else:
                pod_of(data)
                candidate_names(data)

        d50, d99 = timed(decode_only, n, time.process_time)
        c50, c99 = timed(decode_and_check, n, time.process_time)
        print(f"{name:34} {len(raw):>10,} {d50:>8.0f} / {d99:<6.0f} {c50:>9.0f} / {c99:<6.0f}")


def _server(directory: str, port: int, mtls: bool, ready: Any) -> None:
    import threading

    from prometheus_client import CollectorRegistry

    from hami.clientauth import ClientCertRule
    from hami.config import HamiConfig
    from hami.scheduler.app import build_app
    from hami.scheduler.cache import ClusterCache
    from hami.scheduler.extender import Extender
    from hami.serve import listen, serve

    cache = ClusterCache(HamiConfig())
    cache.replace_nodes([realistic_node(f"node-{i}") for i in range(100)])
    cache.replace_pods([])
    rule = ClientCertRule(f"{directory}/client-ca.crt", frozenset({"kube-scheduler"})) if mtls else None
    app = build_app(Extender(cache, api=None, locker=None), CollectorRegistry(), None, ready=lambda: True,
                    extender_clients=rule)
    sock = listen("127.0.0.1", port)
    ready.set()
    serve(app, "127.0.0.1", port, f"{directory}/server.crt", f"{directory}/server.key", threading.Event(),
          client_cas=[f"{directory}/client-ca.crt"] if mtls else [], sock=sock)


def round_trips(rounds: int) -> None:
    from tests.cluster.controlplane import free_port
    from tests.cluster.pki import CertificateAuthority, serving_cert, write_pair

    print("\n2. /filter over HTTPS on loopback (100 nodes; no decision kept: the pod is filtered again),"
          " milliseconds (p50 / p99)")
    print(f"{'server':28} {'kept-alive connection':>22} {'new connection per call':>24}")
    with tempfile.TemporaryDirectory() as directory:
        tls = serving_cert(Path(directory), stem="server")
        (Path(directory) / "server-ca.crt").write_bytes(tls.ca_pem)
        client_ca = CertificateAuthority.create("clients")
        (Path(directory) / "client-ca.crt").write_bytes(client_ca.cert_pem)
        key, cert = client_ca.issue("kube-scheduler", client=True)
        cert_file, key_file = write_pair(Path(directory), "client", key, cert)
        pod = realistic_pod("p")
        pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpumem"] = "1000000"  # fits nowhere
        body = json.dumps({"Pod": pod, "NodeNames": [f"node-{i}" for i in range(100)]}).encode()
        for mtls in (False, True):
            port = free_port()
            ready = multiprocessing.Event()
            child = multiprocessing.Process(target=_server, args=(directory, port, mtls, ready), daemon=True)
            child.start()
            ready.wait(30)
            context = ssl.create_default_context(cafile=f"{directory}/server-ca.crt")
            context.load_cert_chain(str(cert_file), str(key_file))  # presented only when asked
            time.sleep(1)
            kept = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)

            def call(connection: http.client.HTTPSConnection) -> None:
                connection.request("POST", "/filter", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                assert response.status == 200, response.read()
                response.read()

            def fresh(port: int = port, context: ssl.SSLContext = context) -> None:
                connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
                try:
                    call(connection)
                finally:
                    connection.close()

            call(kept)
            k50, k99 = timed(lambda kept=kept: call(kept), rounds)  # type: ignore[misc]
            f50, f99 = timed(fresh, max(rounds // 4, 50))
            kept.close()
            child.terminate()
            child.join(10)
            label = "client certificate required" if mtls else "no client certificate"
            print(f"{label:28} {k50 / 1000:>12.2f} / {k99 / 1000:<7.2f} {f50 / 1000:>13.2f} / {f99 / 1000:<7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()
    checks(args.rounds)
    round_trips(args.rounds)


if __name__ == "__main__":
    main()
