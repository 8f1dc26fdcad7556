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
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.model.allocation import PodAllocation
from hami.model.devices import NodeDevices
from hami.model.requests import PodRequest
from hami.vendors.registry import VendorSet, default_vendors
from hami.webhook.mutate import admit_pod

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
    vendors: VendorSet | None = None


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


def registered_node(obj: dict[str, Any], vendors: VendorSet | None = None) -> NodeDevices | None:
    """The devices a Node object offers, over every vendor; None when it registered none.

    Raises AnnotationError for a malformed registration.
    """
    node, warnings = (vendors or default_vendors()).registered_node(obj)
    if warnings:
        raise AnnotationError(warnings[0])
    return node


def pod_decision(obj: dict[str, Any], vendors: VendorSet) -> tuple[str, PodAllocation] | None:
    """(node, devices) a Pod object holds by its decision annotations, over every vendor; None
    without one. Raises AnnotationError for a malformed decision.
    """
    annotations = {str(k): str(v) for k, v in ((obj.get("metadata") or {}).get("annotations") or {}).items()}
    allocation = vendors.allocation_from_annotations(annotations)
    node = annotations.get(keys.VGPU_NODE) or (obj.get("spec") or {}).get("nodeName")
    if allocation is None or not node:
        return None
    return str(node), allocation


def _node(obj: dict[str, Any], vendors: VendorSet, snapshot: Snapshot) -> None:
    node, warnings = vendors.registered_node(obj)
    snapshot.warnings.extend(warnings)
    if node is None:
        snapshot.unregistered.append(obj["metadata"]["name"])
    else:
        snapshot.nodes.append(node)


def _pod(obj: dict[str, Any], vendors: VendorSet, snapshot: Snapshot) -> None:
    if not vendors.names_managed_resource(obj):
        return
    status = obj.get("status") or {}
    if status.get("phase") in ENDED_PHASES:
        return
    request = vendors.pod_request(obj)
    try:
        decision = pod_decision(obj, vendors)
    except AnnotationError as exc:
        snapshot.warnings.append(f"pod {request.key}: malformed decision annotation ({exc}); not counted")
        return
    if decision is not None:
        snapshot.running.append(RunningPod(request=request, node=decision[0], allocation=decision[1]))
        return
    if (obj.get("spec") or {}).get("nodeName"):
        if request.wants_devices:
            snapshot.warnings.append(f"pod {request.key}: bound to a node without a HAMi decision; not counted")
        return
    # What the cluster would do: the webhook's changes first (memory rounding, rewrites).
    try:
        admitted, _ = admit_pod(obj, vendors)
    except HamiError as exc:
        snapshot.warnings.append(f"pod {request.key}: the webhook would deny it ({exc}); not scheduled")
        return
    request = vendors.pod_request(admitted)
    if request.wants_devices:
        snapshot.pending.append(request)


def read_snapshot(path: str | Path, config: HamiConfig) -> Snapshot:
    vendors = VendorSet.from_config(config)
    snapshot = Snapshot(vendors=vendors)
    seen_nodes: set[str] = set()
    for obj in load_objects(path):
        kind = obj["kind"]
        if kind == "Node":
            name = obj["metadata"]["name"]
            if name in seen_nodes:
                raise HamiError(f"snapshot {path}: node {name} appears twice")
            seen_nodes.add(name)
            _node(obj, vendors, snapshot)
        elif kind == "Pod":
            _pod(obj, vendors, snapshot)
    return snapshot
