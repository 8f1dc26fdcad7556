"""A cluster snapshot: Kubernetes objects as `kubectl get nodes,pods -o yaml` prints them.

Reads a v1 List or a multi-document YAML (documents may themselves be Lists), and turns it
into the engine's inputs: nodes with their registered devices, running pods with their
decisions, and pending pods in file order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.node_register import decode_node_devices
from hami.annotations.pod_devices import pod_allocation_from_annotations
from hami.annotations.selectors import decode_cordon
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.model.allocation import PodAllocation
from hami.model.devices import NodeDevices
from hami.model.requests import PodRequest
from hami.vendors.nvidia import pod_request, requests_managed_resources

ENDED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class RunningPod:
    request: PodRequest
    node: str
    allocation: PodAllocation


@dataclass
class Snapshot:
    nodes: list[NodeDevices] = field(default_factory=list)
    # Nodes present in the file but without a usable registration (no GPUs, or malformed).
    unregistered: list[str] = field(default_factory=list)
    running: list[RunningPod] = field(default_factory=list)
    pending: list[PodRequest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def load_objects(path: str | Path) -> list[dict[str, Any]]:
    """Every Kubernetes object in the file, Lists flattened, in file order."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise HamiError(f"cannot read snapshot {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise HamiError(f"snapshot {path} is not a text file") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise HamiError(f"snapshot {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    objects: list[dict[str, Any]] = []

    def add(obj: Any, where: str) -> None:
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise HamiError(f"snapshot {path}: {where} is not a Kubernetes object (no 'kind')")
        if obj["kind"].endswith("List"):
            items = obj.get("items")
            if not isinstance(items, list):
                raise HamiError(f"snapshot {path}: {where} is a {obj['kind']} without an 'items' list")
            for position, item in enumerate(items):
                add(item, f"{where}, item {position}")
            return
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
            raise HamiError(f"snapshot {path}: {where} ({obj['kind']}) has no metadata.name")
        objects.append(obj)

    for number, document in enumerate(documents, start=1):
        add(document, f"document {number}")
    if not objects:
        raise HamiError(f"snapshot {path} holds no Kubernetes objects")
    return objects


def registered_node(obj: dict[str, Any]) -> NodeDevices | None:
    """The devices a Node object offers; None when it registered none. Raises AnnotationError."""
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    value = annotations.get(keys.NODE_NVIDIA_REGISTER)
    if value is None:
        return None
    devices = decode_node_devices(str(value))
    if not devices:
        return None
    return NodeDevices(
        name=str(metadata.get("name")),
        devices=tuple(devices),
        cordoned=decode_cordon(annotations.get(keys.DEVICE_CORDON)),
    )


def pod_decision(obj: dict[str, Any]) -> tuple[str, PodAllocation] | None:
    """(node, devices) a Pod object holds by its decision annotations; None without one.

    Raises AnnotationError for a malformed decision.
    """
    annotations = {str(k): str(v) for k, v in ((obj.get("metadata") or {}).get("annotations") or {}).items()}
    allocation = pod_allocation_from_annotations(annotations)
    node = annotations.get(keys.VGPU_NODE) or (obj.get("spec") or {}).get("nodeName")
    if allocation is None or not node:
        return None
    return str(node), allocation


def _node(obj: dict[str, Any], snapshot: Snapshot) -> None:
    name = obj["metadata"]["name"]
    try:
        node = registered_node(obj)
    except AnnotationError as exc:
        snapshot.warnings.append(f"node {name}: malformed {keys.NODE_NVIDIA_REGISTER} annotation ({exc}); skipped")
        node = None
    if node is None:
        snapshot.unregistered.append(name)
    else:
        snapshot.nodes.append(node)


def _pod(obj: dict[str, Any], config: HamiConfig, snapshot: Snapshot) -> None:
    if not requests_managed_resources(obj, config.nvidia):
        return
    status = obj.get("status") or {}
    if status.get("phase") in ENDED_PHASES:
        return
    request = pod_request(obj, config.nvidia)
    try:
        decision = pod_decision(obj)
    except AnnotationError as exc:
        snapshot.warnings.append(f"pod {request.key}: malformed decision annotation ({exc}); not counted")
        return
    if decision is not None:
        snapshot.running.append(RunningPod(request=request, node=decision[0], allocation=decision[1]))
        return
    if (obj.get("spec") or {}).get("nodeName"):
        snapshot.warnings.append(f"pod {request.key}: bound to a node without a HAMi decision; not counted")
        return
    snapshot.pending.append(request)


def read_snapshot(path: str | Path, config: HamiConfig) -> Snapshot:
    snapshot = Snapshot()
    seen_nodes: set[str] = set()
    for obj in load_objects(path):
        kind = obj["kind"]
        if kind == "Node":
            name = obj["metadata"]["name"]
            if name in seen_nodes:
                raise HamiError(f"snapshot {path}: node {name} appears twice")
            seen_nodes.add(name)
            _node(obj, snapshot)
        elif kind == "Pod":
            _pod(obj, config, snapshot)
    return snapshot
