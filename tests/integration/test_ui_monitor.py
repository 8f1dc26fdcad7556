"""`hami ui` with the real `hami monitor` behind Prometheus, end to end.

In a module of its own: the browser tests' scene (tests/integration/test_ui.py) has fake GPU nodes
that the scheduler here would also place pods on.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from tests.cluster import ControlPlane, wait_for
from tests.cluster.controlplane import ApiCallError
from tests.integration.conftest import control_plane  # noqa: F401 - the shared fixture
from tests.integration.prometheus import Prometheus
from tests.integration.test_monitor_cluster import GpuNode, gpu_node  # noqa: F401 - a node with hami monitor
from tests.integration.ui_stack import UiProcess, https_get, viewer_token


def test_live_usage_from_a_real_hami_monitor(control_plane: ControlPlane, gpu_node: GpuNode,  # noqa: F811
                                             tmp_path: Path) -> None:
    """End to end: a pod placed by `hami scheduler`, its container a libvgpu process on the fake
    driver that allocates 1000 MiB, `hami monitor` exporting it, Prometheus scraping the monitor,
    and the UI showing it on the Pods and Nodes pages."""
    _, train = gpu_node.run_pod("train", memory=4000, cores=30, priority=1)
    assert train.send("alloc 1000") == "alloc ok"
    prometheus = Prometheus(tmp_path / "prometheus", {"hami-monitor": f"127.0.0.1:{gpu_node.monitor_port}"})
    token = viewer_token(control_plane, gpu_node.namespace, "ui-viewer", cluster=True)
    process = UiProcess(control_plane, tmp_path, ["--prometheus", prometheus.url, "--prometheus-interval", "1"])
    process.start()
    try:
        auth = {"Authorization": f"Bearer {token}"}

        def used_cell() -> str:
            _, _, body = https_get(process.url + f"/pods?namespace={gpu_node.namespace}", auth)
            row = re.search(rf'data-pod="{gpu_node.namespace}/train">.*?<td class="used">(.*?)</td>', body, re.S)
            return row.group(1).strip() if row else ""

        cell = wait_for(lambda: (c := used_cell()).startswith("1000 MiB") and c, timeout=30, poll=0.5,
                        message="the pod's memory in use on the Pods page")
        assert re.fullmatch(r"1000 MiB, \d+ % busy", cell)
        _, _, body = https_get(process.url + f"/nodes/{gpu_node.name}", auth)
        assert "memory in use on device" in body and "1000 MiB / 15.6 GiB" in body
    finally:
        process.stop()
        prometheus.stop()
        for kind in ("clusterrolebindings", "clusterroles"):
            with contextlib.suppress(ApiCallError):  # best effort on a shared cluster
                control_plane.api("DELETE", f"/apis/rbac.authorization.k8s.io/v1/{kind}/{gpu_node.namespace}-ui-viewer")
