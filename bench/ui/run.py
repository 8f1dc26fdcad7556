"""How long each page of `hami ui` takes on a 1,000-node cluster.

    python -m bench.ui.run                  # 1,000 nodes × 8 GPUs, ~6,000 pods
    python -m bench.ui.run --nodes 200 --repeat 5

Starts the test control plane (build it first with `make cluster-binaries`) only to answer the
viewer's access reviews, as in a cluster: a ServiceAccount that may list nodes and pods, and its
token. The nodes and pods are fed to the UI's store as its informers feed it (the same dicts),
not created in etcd: 1,000 fake nodes with heartbeats would load the machine more than the UI.
The app is served over HTTPS by uvicorn in this process. Prints, per page, the server time
(request to last byte, p50 and max over --repeat requests after one warm-up) and the page size,
then the time headless Chromium takes to load the page (navigation start to the load event,
charts drawn, p50 over --repeat loads).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import uvicorn

from hami.annotations import keys
from hami.annotations.node_register import encode_node_devices
from hami.annotations.pod_devices import encode_pod_devices
from hami.config import HamiConfig
from hami.model import ContainerDevice, DeviceInfo
from hami.ui.access import Endpoint, Reviewer
from hami.ui.app import FRAGMENTATION_AGE, UiOptions, build_app
from hami.ui.store import UiStore
from hami.ui.tls import self_signed
from tests.cluster import ControlPlane, free_port

GPU_TYPES = {"NVIDIA-A100-SXM4-80GB": 81920, "NVIDIA-A10": 23028, "NVIDIA-H100-80GB-HBM3": 81559, "NVIDIA-L4": 23034}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def cluster(nodes: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Nodes of 8 GPUs of one random type; pods (1 GPU, 2–16 GB) on random devices to ~50 % of
    the memory; 200 pending pods, a third of them too big for any GPU."""
    node_objs, pod_objs = [], []
    names = list(GPU_TYPES)
    free: dict[tuple[str, str], int] = {}
    for n in range(nodes):
        gpu_type = names[int(rng.integers(len(names)))]
        devices = [DeviceInfo(id=f"GPU-{n:05d}-{i}", count=10, devmem=GPU_TYPES[gpu_type], devcore=100, type=gpu_type,
                              index=i) for i in range(8)]
        name = f"node-{n:05d}"
        node_objs.append({"metadata": {"name": name, "annotations": {
            keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        for d in devices:
            free[(name, d.id)] = d.devmem
    total = sum(free.values())
    used, k = 0, 0
    places = list(free)
    while used < total // 2:
        node, uuid = places[int(rng.integers(len(places)))]
        mib = int(rng.integers(2000, 16000))
        if free[(node, uuid)] < mib:
            continue
        free[(node, uuid)] -= mib
        used += mib
        cores = int(rng.choice([0, 10, 20, 30]))
        pod_objs.append(_pod(f"team-{k % 40}", f"run-{k}", mib, cores, node,
                             ((ContainerDevice(uuid, "NVIDIA", mib, cores),),)))
        k += 1
    for p in range(200):
        pod_objs.append(_pod(f"team-{p % 40}", f"wait-{p}", 90000 if p % 3 == 0 else int(rng.integers(2000, 16000)),
                             20, None, None))
    return node_objs, pod_objs


def _pod(namespace: str, name: str, mib: int, cores: int, node: str | None, allocation: Any) -> dict[str, Any]:
    annotations = {}
    spec: dict[str, Any] = {"containers": [{"name": "main", "resources": {"limits": {
        "nvidia.com/gpu": "1", "nvidia.com/gpumem": str(mib), "nvidia.com/gpucores": str(cores)}}}]}
    if node:
        annotations = {keys.VGPU_NODE: node, keys.DEVICES_ALLOCATED: encode_pod_devices(allocation),
                       keys.BIND_PHASE: "success"}
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": namespace, "annotations": annotations}, "spec": spec,
            "status": {"phase": "Running" if node else "Pending"}}


def viewer_token(cp: ControlPlane) -> str:
    cp.api("POST", "/api/v1/namespaces/default/serviceaccounts",
           {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bench-viewer"}})
    rules = [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list"]}]
    cp.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", {"metadata": {"name": "bench-viewer"},
                                                                       "rules": rules})
    cp.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "metadata": {"name": "bench-viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "bench-viewer", "namespace": "default"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "bench-viewer"}})
    answer = cp.api("POST", "/api/v1/namespaces/default/serviceaccounts/bench-viewer/token",
                    {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    return str(answer["status"]["token"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--report", type=Path, default=None, help="a report.json for the Simulator page")
    parser.add_argument("--no-browser", action="store_true", help="server times only")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        cp = ControlPlane.start(Path(tmp) / "cp", heartbeat_interval=3600)
        try:
            run(cp, args, rng, Path(tmp))
        finally:
            cp.close()


def run(cp: ControlPlane, args: argparse.Namespace, rng: np.random.Generator, tmp: Path) -> None:
    token = viewer_token(cp)
    store = UiStore(HamiConfig())
    nodes, pods = cluster(args.nodes, rng)
    started = time.perf_counter()
    store.replace_nodes(nodes)
    store.replace_pods(pods)
    with store.reading() as view:
        devices, held = len(view.state.uuids), len(view.holdings)
    print(f"cluster: {args.nodes} nodes, {devices} GPUs, {held} running pods, {len(pods) - held} pending "
          f"(store filled in {time.perf_counter() - started:.2f} s)")
    reports = {"report.json": args.report} if args.report else {}
    reviewer = Reviewer(Endpoint.from_kubeconfig(str(cp.kubeconfig)), cp.new_client())
    app = build_app(store, reviewer, UiOptions(reports=reports))
    cert, key = self_signed(tmp)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ssl_certfile=str(cert),
                                           ssl_keyfile=str(key), log_level="warning", loop="asyncio", http="h11"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"https://127.0.0.1:{port}"
    pages = ["/", "/nodes", "/nodes?page=50", "/nodes/node-00500", "/pods", "/pods?page=30", "/pending",
             "/pending/team-0/wait-0", "/pending/team-1/wait-1", "/whatif"]
    if args.report:
        pages.append("/simulator?report=report.json")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx2.Client(verify=False, headers=headers, timeout=60) as http:
        while not server.started:
            time.sleep(0.1)
        print(f"{'page':34} {'p50 ms':>8} {'max ms':>8} {'KiB':>6}")
        for page in pages:
            times, size = [], 0
            for attempt in range(args.repeat + 1):
                t0 = time.perf_counter()
                response = http.get(url + page)
                elapsed = time.perf_counter() - t0
                assert response.status_code == 200, (page, response.status_code, response.text[:300])
                size = len(response.content)
                if attempt:  # the first request also asks the API server about the viewer
                    times.append(elapsed * 1000)
            print(f"{page:34} {statistics.median(times):8.1f} {max(times):8.1f} {size / 1024:6.0f}")
        t0 = time.perf_counter()
        response = http.post(url + "/whatif", content="spec=" + urllib.parse.quote_plus(WHATIF),
                             headers={"Origin": url, "Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 200 and "verdict" in response.text, response.text[:300]
        print(f"{'POST /whatif (a pod that fits nowhere)':34} {1000 * (time.perf_counter() - t0):8.1f}")
        # In a live cluster the store changes between views: the overview is computed afresh.
        times = []
        for k in range(args.repeat):
            store.upsert_pod(_pod("team-0", f"late-{k}", 1000, 10, None, None))
            t0 = time.perf_counter()
            assert http.get(url + "/").status_code == 200
            times.append(1000 * (time.perf_counter() - t0))
        print(f"{'/ (after a pod changed)':34} {statistics.median(times):8.1f} {max(times):8.1f}")
        # ... and once the fragmentation is older than the UI reuses it: computed afresh too.
        times = []
        for k in range(3):
            time.sleep(FRAGMENTATION_AGE + 0.1)
            store.upsert_pod(_pod("team-0", f"later-{k}", 1000, 10, None, None))
            t0 = time.perf_counter()
            assert http.get(url + "/").status_code == 200
            times.append(1000 * (time.perf_counter() - t0))
        print(f"{'/ (fragmentation recomputed)':34} {statistics.median(times):8.1f} {max(times):8.1f}")
    if not args.no_browser:
        browser_times(url, token, pages, args.repeat)
    server.should_exit = True
    reviewer.close()


WHATIF = """kind: Pod
metadata: {name: huge, namespace: team-0}
spec: {containers: [{name: c, resources: {limits: {nvidia.com/gpu: 1, nvidia.com/gpumem: 90000}}}]}
"""


def browser_times(url: str, token: str, pages: list[str], repeat: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800},
                                      extra_http_headers={"Authorization": f"Bearer {token}"})
        page = context.new_page()
        print(f"\nheadless Chromium, navigation start to load event:\n{'page':34} {'p50 ms':>8} {'max ms':>8}")
        for path in pages:
            times = []
            for _ in range(max(3, repeat // 2)):
                page.goto(url + path, wait_until="load")
                times.append(page.evaluate(
                    "() => { const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd; }"))
            print(f"{path:34} {statistics.median(times):8.1f} {max(times):8.1f}")
        browser.close()


if __name__ == "__main__":
    main()
