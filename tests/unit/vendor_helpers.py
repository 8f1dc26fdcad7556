"""Builders for vendor tests: Node and Pod objects as the API server returns them."""

from __future__ import annotations

import json
from typing import Any

from hami.config import HamiConfig
from hami.model.devices import NodeDevices
from hami.model.requests import PodRequest
from hami.scheduler.engine import Decision, PolicyDefaults, commit, schedule
from hami.scheduler.state import ClusterState
from hami.vendors.registry import VendorSet

VENDORS = VendorSet.from_config(HamiConfig())


def node_obj(name: str, annotations: dict[str, str] | None = None, capacity: dict[str, Any] | None = None,
             labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
        "status": {"capacity": capacity or {}, "allocatable": capacity or {}},
    }


def json_devices(prefix: str, n: int, **fields: Any) -> str:
    return json.dumps([{"id": f"{prefix}-{i}", "index": i, "health": True, **fields} for i in range(n)])


def csv_devices(prefix: str, n: int, count: int, mem: int, cores: int, dtype: str) -> str:
    return "".join(f"{prefix}-{i},{count},{mem},{cores},{dtype},0,true,{i},hami-core:" for i in range(n))


def registered(obj: dict[str, Any], vendors: VendorSet = VENDORS) -> NodeDevices:
    node, warnings = vendors.registered_node(obj)
    assert not warnings, warnings
    assert node is not None
    return node


def pod_obj(name: str, *containers: dict[str, Any], annotations: dict[str, str] | None = None,
            init: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers)}
    if init:
        spec["initContainers"] = list(init)
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "t", "annotations": annotations or {}},
            "spec": spec}


def ctr(name: str = "c", **limits: Any) -> dict[str, Any]:
    return {"name": name, "resources": {"limits": dict(limits)}}


def request(obj: dict[str, Any], vendors: VendorSet = VENDORS) -> PodRequest:
    return vendors.pod_request(obj)


def state_of(*nodes: dict[str, Any], vendors: VendorSet = VENDORS) -> ClusterState:
    return ClusterState([registered(n, vendors) for n in nodes], vendors)


def place(state: ClusterState, obj: dict[str, Any], **defaults: Any) -> Decision:
    req = request(obj, state.vendors)
    decision = schedule(state, req, PolicyDefaults(**defaults))
    commit(state, req, decision)
    return decision
