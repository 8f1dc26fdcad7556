"""A mixed cluster on the real control plane: nodes of several vendors, pods of each, scheduled by
the real kube-scheduler through our extender, with HAMi's annotations on the pods."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hami.config import HamiConfig
from hami.vendors.registry import VendorSet
from tests.cluster import ControlPlane, wait_for
from tests.integration.hami_stack import HamiScheduler, create_pod, gpu_node_annotations

VENDORS = VendorSet.from_config(HamiConfig())


def extender_config(hami: HamiScheduler) -> dict[str, Any]:
    config = hami.extender_config()
    config["extenders"][0]["managedResources"] = [
        {"name": n, "ignoredByScheduler": True} for n in VENDORS.managed_resources()
    ]
    return config


def pod(name: str, scheduler: str, limits: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "schedulerName": scheduler,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "example.invalid/ai:1", "resources": {"limits": limits}}],
        },
    }


def dcu_registration(node: str, n: int) -> str:
    return "".join(f"DCU-{node}-{i},4,16384,100,DCU-Z100,0,true,{i},hami-core:" for i in range(n))


def bound(cp: ControlPlane, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        obj = cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return obj if (obj.get("spec") or {}).get("nodeName") else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, poll=0.3, message=f"pod {name} bound")
    return result


def events_of(cp: ControlPlane, namespace: str, name: str) -> list[str]:
    items = cp.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e.get("message", "") for e in items if (e.get("involvedObject") or {}).get("name") == name]


def test_mixed_cluster_places_each_vendor_by_its_rules(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, start_scheduler: Any, add_node: Any
) -> None:
    cp = control_plane
    name = f"hami-mixed-{namespace}"[:60]
    hami = HamiScheduler(cp, tmp_path / "hami", scheduler_name=name).start()
    start_scheduler(extender_config(hami))
    try:
        gpu_node, dcu_node, both, gcu_node = (f"{namespace}-{s}" for s in ("gpu", "dcu", "both", "gcu"))
        add_node(gpu_node, annotations=gpu_node_annotations(gpu_node, gpus=2, memory=24000))
        add_node(dcu_node, capacity={"hygon.com/dcunum": "8"},
                 annotations={"hami.io/node-dcu-register": dcu_registration(dcu_node, 2),
                              "hami.io/node-handshake-dcu": "Reported 2026-12-01 00:00:00.0 +0000 UTC"})
        add_node(both, capacity={"hygon.com/dcunum": "4"},
                 annotations={**gpu_node_annotations(both, gpus=1, memory=24000),
                              "hami.io/node-dcu-register": dcu_registration(both, 1)})
        add_node(gcu_node, capacity={"enflame.com/gcu": "2"})
        npu_node, mlu_node = f"{namespace}-npu", f"{namespace}-mlu"
        npus = [{"id": f"{npu_node}-npu-{i}", "index": i, "count": 4, "devmem": 65536, "devcore": 20,
                 "type": "Ascend910B3", "health": True, "custominfo": {"NetworkID": 0}} for i in range(2)]
        add_node(npu_node, capacity={"huawei.com/Ascend910B3": "2"},
                 annotations={"hami.io/node-register-Ascend910B3": json.dumps(npus),
                              "hami.io/node-handshake-Ascend910B3": "Reported 2026-12-01 00:00:00.0 +0000 UTC"})
        add_node(mlu_node, capacity={"cambricon.com/mlu.smlu.vcore": "200", "cambricon.com/mlu.smlu.vmemory": "128"})

        # Ascend: the chip's smallest template that holds the memory (the webhook, which rounds
        # the limit itself up to it, is not in this test: the ask stays 12000 MiB).
        create_pod(cp, namespace, pod("npu-a", name, {"huawei.com/Ascend910B3": 1,
                                                      "huawei.com/Ascend910B3-memory": 12000}))
        npu_pod = bound(cp, namespace, "npu-a")
        assert npu_pod["spec"]["nodeName"] == npu_node
        (chosen,) = json.loads(npu_pod["metadata"]["annotations"]["huawei.com/Ascend910B3"])
        assert chosen["temp"] == "vir05_1c_16g"
        assert npu_pod["metadata"]["annotations"]["hami.io/Ascend910B3-devices-allocated"].endswith(
            ",Ascend910B3,12000,0:;")

        # Cambricon: memory in 256 MiB units, HAMi's profile annotation for Cambricon's plugin.
        create_pod(cp, namespace, pod("mlu-a", name, {"cambricon.com/vmlu": 1, "cambricon.com/mlu.smlu.vmemory": 8,
                                                      "cambricon.com/mlu.smlu.vcore": 50}))
        mlu_pod = bound(cp, namespace, "mlu-a")
        assert mlu_pod["spec"]["nodeName"] == mlu_node
        held = mlu_pod["metadata"]["annotations"]["hami.io/cambricon-mlu-devices-allocated"]
        card = held.split(",")[0].rpartition("-")[2]
        assert held == f"{mlu_node}-cambricon-mlu-{card},MLU,2048,50:;" and card in ("0", "1")
        assert mlu_pod["metadata"]["annotations"]["CAMBRICON_DSMLU_PROFILE"] == f"{card}_50_8"

        # Each vendor's pod goes where its devices are, with that vendor's annotations.
        create_pod(cp, namespace, pod("dcu-a", name, {"hygon.com/dcunum": 1, "hygon.com/dcumem": 4000,
                                                      "hygon.com/dcucores": 30}))
        dcu_pod = bound(cp, namespace, "dcu-a")
        annotations = dcu_pod["metadata"]["annotations"]
        assert dcu_pod["spec"]["nodeName"] in (dcu_node, both)
        held = annotations["hami.io/dcu-devices-allocated"]
        assert held == annotations["hami.io/dcu-devices-to-allocate"]
        assert held.endswith(",DCU,4000,30:;") and "hami.io/vgpu-devices-allocated" not in annotations
        assert annotations["hami.io/vgpu-node"] == dcu_pod["spec"]["nodeName"]

        create_pod(cp, namespace, pod("gcu-a", name, {"enflame.com/gcu": 2}))
        gcu_pod = bound(cp, namespace, "gcu-a")
        assert gcu_pod["spec"]["nodeName"] == gcu_node
        assert gcu_pod["metadata"]["annotations"]["hami.io/enflame-gcu-devices-allocated"] == (
            f"{gcu_node}-GCU-1,GCU,100,100:{gcu_node}-GCU-0,GCU,100,100:;")

        # One container asking two vendors lands on the only node with both.
        create_pod(cp, namespace, pod("both-a", name, {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 1000,
                                                       "hygon.com/dcunum": 1, "hygon.com/dcumem": 1000,
                                                       "hygon.com/dcucores": 10}))
        mixed = bound(cp, namespace, "both-a")
        assert mixed["spec"]["nodeName"] == both
        annotations = mixed["metadata"]["annotations"]
        assert annotations["hami.io/vgpu-devices-allocated"] == f"GPU-{both}-0,NVIDIA,1000,0:;"
        assert annotations["hami.io/dcu-devices-allocated"] == f"DCU-{both}-0,DCU,1000,10:;"

        # A GCU pod with no GCU left stays pending with the engine's reason in kube-scheduler's event.
        create_pod(cp, namespace, pod("gcu-b", name, {"enflame.com/gcu": 1}))
        wait_for(lambda: any("ExclusiveDeviceAllocateConflict" in m for m in events_of(cp, namespace, "gcu-b")),
                 timeout=60, poll=0.5, message="gcu-b's FailedScheduling event")
        assert not cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/gcu-b")["spec"].get("nodeName")

        # The DCU agent on dcu_node stops answering (a request unanswered for minutes, the count
        # resource gone): its DCUs are no longer offered; the pod goes to the other DCU node.
        stale = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M:%S")
        node_obj = cp.api("GET", f"/api/v1/nodes/{dcu_node}")
        status = copy.deepcopy(node_obj["status"])
        status["allocatable"]["hygon.com/dcunum"] = "0"
        cp.api("PATCH", f"/api/v1/nodes/{dcu_node}/status", {"status": {"allocatable": status["allocatable"]}},
               content_type="application/strategic-merge-patch+json")
        cp.api("PATCH", f"/api/v1/nodes/{dcu_node}",
               {"metadata": {"annotations": {"hami.io/node-handshake-dcu": f"Requesting_{stale}"}}},
               content_type="application/merge-patch+json")
        create_pod(cp, namespace, pod("dcu-b", name, {"hygon.com/dcunum": 1, "hygon.com/dcumem": 1000,
                                                      "hygon.com/dcucores": 10}))
        assert bound(cp, namespace, "dcu-b")["spec"]["nodeName"] == both
    finally:
        hami.stop()


def test_cambricon_binds_under_its_own_lock_and_lockless_vendors_take_none(
    control_plane: ControlPlane, namespace: str, tmp_path: Path, start_scheduler: Any, add_node: Any
) -> None:
    cp = control_plane
    name = f"hami-locks-{namespace}"[:60]
    hami = HamiScheduler(cp, tmp_path / "hami", scheduler_name=name).start()
    start_scheduler(extender_config(hami))
    mlu = {"cambricon.com/vmlu": 1, "cambricon.com/mlu.smlu.vmemory": 8, "cambricon.com/mlu.smlu.vcore": 50}
    try:
        mlu_node, gcu_node = f"{namespace}-mlu", f"{namespace}-gcu"
        add_node(mlu_node, capacity={"cambricon.com/mlu.smlu.vcore": "200", "cambricon.com/mlu.smlu.vmemory": "128"})
        add_node(gcu_node, capacity={"enflame.com/gcu": "2"})

        # The MLU pod is bound under Cambricon's lock (an RFC 3339 time), not HAMi's shared one;
        # it stays for Cambricon's device plugin to delete once it has allocated the pod.
        before = datetime.now(UTC).replace(microsecond=0)
        create_pod(cp, namespace, pod("mlu-a", name, mlu))
        assert bound(cp, namespace, "mlu-a")["spec"]["nodeName"] == mlu_node
        node_annotations = cp.api("GET", f"/api/v1/nodes/{mlu_node}")["metadata"]["annotations"]
        taken = datetime.fromisoformat(node_annotations["cambricon.com/dsmlu.lock"].replace("Z", "+00:00"))
        assert before <= taken <= datetime.now(UTC)
        assert "hami.io/mutex.lock" not in node_annotations

        # While the lock is younger than two minutes the next MLU pod is refused with HAMi's text...
        create_pod(cp, namespace, pod("mlu-b", name, mlu))
        wait_for(lambda: any("has been locked within 2 minutes" in m for m in events_of(cp, namespace, "mlu-b")),
                 timeout=60, poll=0.5, message="mlu-b's bind refused while the node is locked")
        assert not cp.api("GET", f"/api/v1/namespaces/{namespace}/pods/mlu-b")["spec"].get("nodeName")
        # ... and bound once Cambricon's plugin has released it.
        cp.api("PATCH", f"/api/v1/nodes/{mlu_node}",
               {"metadata": {"annotations": {"cambricon.com/dsmlu.lock": None}}},
               content_type="application/merge-patch+json")
        assert bound(cp, namespace, "mlu-b")["spec"]["nodeName"] == mlu_node

        # A vendor without a node lock (Enflame) binds without writing one.
        create_pod(cp, namespace, pod("gcu-a", name, {"enflame.com/gcu": 1}))
        assert bound(cp, namespace, "gcu-a")["spec"]["nodeName"] == gcu_node
        gcu_annotations = cp.api("GET", f"/api/v1/nodes/{gcu_node}")["metadata"].get("annotations") or {}
        assert not any(key.endswith(".lock") for key in gcu_annotations)
    finally:
        hami.stop()
