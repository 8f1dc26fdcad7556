"""The plugin's view of the API server: find pods, patch pod and node annotations.

A small interface so that the gRPC tests run on an in-memory implementation and the daemon
on lightkube (kubeconfig or in-cluster service account).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from hami.errors import HamiError

Pod = dict[str, Any]

log = logging.getLogger(__name__)


class PodSourceError(Exception):
    """The API server could not be asked (network, permissions); worth retrying."""


class PodSource(Protocol):
    def get_pod(self, namespace: str, name: str) -> Pod | None:
        """The pod as the API server returns it (JSON shape), or None when it does not exist."""

    def pods_on_node(self, node: str) -> list[Pod]:
        """Pods bound to the node (spec.nodeName)."""

    def node_annotations(self, node: str) -> dict[str, str]:
        """The node's annotations; PodSourceError when the node does not exist."""

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        """Merge-patch annotations; a None value removes the key."""

    def patch_node_annotations(self, node: str, annotations: Mapping[str, str | None]) -> None:
        """Merge-patch annotations; a None value removes the key."""

    def patch_pod_annotations_at(self, namespace: str, name: str, annotations: Mapping[str, str],
                                 resource_version: str) -> bool:
        """Merge-patch annotations only if the pod is still at `resource_version`; False when it
        changed since (nothing written)."""

    def node_event(self, node: str, reason: str, message: str) -> None:
        """Record a Warning event on the node; failures are logged, never raised."""

    def remove_node_annotation(self, node: str, key: str, value: str) -> bool:
        """Remove the annotation only if it still has `value` (one atomic write); True if removed."""


def _merge(target: dict[str, str], annotations: Mapping[str, str | None]) -> None:
    for key, value in annotations.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


class InMemoryPodSource:
    """Pods and nodes held in memory (tests, and `--pods FILE` runs without an API server)."""

    def __init__(self, pods: list[Pod] | None = None, nodes: dict[str, dict[str, str]] | None = None,
                 log_patches: bool = False) -> None:
        self._lock = threading.Lock()
        self.log_patches = log_patches
        self.pods: dict[tuple[str, str], Pod] = {}
        self.nodes: dict[str, dict[str, str]] = {name: dict(ann) for name, ann in (nodes or {}).items()}
        self.pod_patches: list[tuple[str, str, dict[str, str | None]]] = []
        self.node_patches: list[tuple[str, dict[str, str | None]]] = []
        self.events: list[tuple[str, str, str]] = []  # (node, reason, message)
        self._version = 0
        for pod in pods or []:
            self.add_pod(pod)

    def add_pod(self, pod: Pod) -> None:
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("annotations", {})
        with self._lock:
            self._version += 1
            meta["resourceVersion"] = str(self._version)
            self.pods[(meta["namespace"], meta["name"])] = copy.deepcopy(pod)

    def get_pod(self, namespace: str, name: str) -> Pod | None:
        with self._lock:
            pod = self.pods.get((namespace, name))
            return copy.deepcopy(pod) if pod is not None else None

    def pods_on_node(self, node: str) -> list[Pod]:
        with self._lock:
            return [copy.deepcopy(p) for p in self.pods.values() if (p.get("spec") or {}).get("nodeName") == node]

    def node_annotations(self, node: str) -> dict[str, str]:
        with self._lock:
            if node not in self.nodes:
                raise PodSourceError(f"node {node} not found")
            return dict(self.nodes[node])

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        with self._lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise PodSourceError(f"pod {namespace}/{name} not found")
            _merge(pod["metadata"].setdefault("annotations", {}), annotations)
            self._version += 1
            pod["metadata"]["resourceVersion"] = str(self._version)
            self.pod_patches.append((namespace, name, dict(annotations)))
        if self.log_patches:
            log.info("pod %s/%s annotations: %s", namespace, name, dict(annotations))

    def patch_pod_annotations_at(self, namespace: str, name: str, annotations: Mapping[str, str],
                                 resource_version: str) -> bool:
        with self._lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise PodSourceError(f"pod {namespace}/{name} not found")
            if pod["metadata"].get("resourceVersion") != resource_version:
                return False
            _merge(pod["metadata"].setdefault("annotations", {}), annotations)
            self._version += 1
            pod["metadata"]["resourceVersion"] = str(self._version)
            self.pod_patches.append((namespace, name, dict(annotations)))
        if self.log_patches:
            log.info("pod %s/%s annotations: %s", namespace, name, dict(annotations))
        return True

    def node_event(self, node: str, reason: str, message: str) -> None:
        with self._lock:
            self.events.append((node, reason, message))
        log.warning("node %s: %s: %s", node, reason, message)

    def patch_node_annotations(self, node: str, annotations: Mapping[str, str | None]) -> None:
        with self._lock:
            if node not in self.nodes:
                raise PodSourceError(f"node {node} not found")
            _merge(self.nodes[node], annotations)
            self.node_patches.append((node, dict(annotations)))
        if self.log_patches:
            log.info("node %s annotations: %s", node, dict(annotations))

    def remove_node_annotation(self, node: str, key: str, value: str) -> bool:
        with self._lock:
            if node not in self.nodes:
                raise PodSourceError(f"node {node} not found")
            if self.nodes[node].get(key) != value:
                return False
        self.patch_node_annotations(node, {key: None})
        return True


def in_memory_from_list(data: Any, what: str) -> InMemoryPodSource:
    """From `kubectl get pods,nodes -o yaml` output (a List), or a single Pod or Node."""
    if not isinstance(data, dict):
        raise HamiError(f"{what}: expected a Kubernetes object or a List")
    items = data.get("items") if data.get("kind") == "List" or "items" in data else [data]
    if not isinstance(items, list):
        raise HamiError(f"{what}: 'items' must be a list")
    source = InMemoryPodSource()
    for position, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance((item.get("metadata") or {}).get("name"), str):
            raise HamiError(f"{what}: item {position} has no metadata.name")
        if item.get("kind") == "Node":
            source.nodes[item["metadata"]["name"]] = dict(item["metadata"].get("annotations") or {})
        elif item.get("kind", "Pod") == "Pod":
            source.add_pod(item)
    return source


class KubePodSource:
    """The real API server, through lightkube."""

    def __init__(self, kubeconfig: str | None = None) -> None:
        from lightkube import Client, KubeConfig

        from hami.scheduler.kube import warm_up_decoders

        warm_up_decoders()  # before the gRPC and annotation threads use the client
        try:
            config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        except Exception as exc:  # lightkube raises several types for a missing or bad config
            raise HamiError(f"cannot load Kubernetes config: {exc}") from None
        self._client = Client(config=config)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from lightkube import ApiError

        try:
            return fn(*args, **kwargs)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise PodSourceError(f"{what}: {exc.status.code} {exc.status.message}") from None
        except Exception as exc:  # httpx transport errors: the API server is unreachable
            raise PodSourceError(f"{what}: {exc}") from None

    def get_pod(self, namespace: str, name: str) -> Pod | None:
        from lightkube.resources.core_v1 import Pod as PodResource

        found = self._call(f"get pod {namespace}/{name}", self._client.get, PodResource, name, namespace=namespace)
        return None if found is None else dict(found.to_dict())

    def pods_on_node(self, node: str) -> list[Pod]:
        from lightkube.resources.core_v1 import Pod as PodResource

        def fetch() -> list[Pod]:
            return [
                dict(p.to_dict())
                for p in self._client.list(PodResource, namespace="*", fields={"spec.nodeName": node})
            ]

        result: list[Pod] | None = self._call(f"list pods on {node}", fetch)
        return result or []

    def node_annotations(self, node: str) -> dict[str, str]:
        from lightkube.resources.core_v1 import Node

        found = self._call(f"get node {node}", self._client.get, Node, node)
        if found is None:
            raise PodSourceError(f"node {node} not found")
        return dict(found.metadata.annotations or {})

    def patch_pod_annotations(self, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
        from lightkube.resources.core_v1 import Pod as PodResource

        patch = {"metadata": {"annotations": dict(annotations)}}
        done = self._call(f"patch pod {namespace}/{name}", self._client.patch, PodResource, name, patch,
                          namespace=namespace)
        if done is None:
            raise PodSourceError(f"pod {namespace}/{name} not found")

    def patch_node_annotations(self, node: str, annotations: Mapping[str, str | None]) -> None:
        from lightkube.resources.core_v1 import Node

        patch = {"metadata": {"annotations": dict(annotations)}}
        if self._call(f"patch node {node}", self._client.patch, Node, node, patch) is None:
            raise PodSourceError(f"node {node} not found")

    def patch_pod_annotations_at(self, namespace: str, name: str, annotations: Mapping[str, str],
                                 resource_version: str) -> bool:
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Pod as PodResource

        # A merge patch that names a resourceVersion fails with 409 when the pod moved on.
        patch = {"metadata": {"resourceVersion": resource_version, "annotations": dict(annotations)}}
        try:
            self._client.patch(PodResource, name, patch, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise PodSourceError(f"patch pod {namespace}/{name}: {exc.status.code} {exc.status.message}") from None
        except Exception as exc:  # httpx transport errors: the API server is unreachable
            raise PodSourceError(f"patch pod {namespace}/{name}: {exc}") from None
        return True

    def node_event(self, node: str, reason: str, message: str) -> None:
        from datetime import UTC, datetime

        from lightkube import ApiError
        from lightkube.models.core_v1 import EventSource, ObjectReference
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import Event

        now = datetime.now(UTC)
        try:
            self._client.create(Event(
                metadata=ObjectMeta(generateName=f"{node}.", namespace="default"),
                involvedObject=ObjectReference(kind="Node", name=node, apiVersion="v1"),
                reason=reason, message=message[:1024], type="Warning",
                source=EventSource(component="hami-device-plugin", host=node),
                firstTimestamp=now, lastTimestamp=now, count=1,
            ))
        except ApiError as exc:
            log.warning("node %s: could not record event %s: %s", node, reason, exc.status.message)
        except Exception as exc:  # httpx transport errors
            log.warning("node %s: could not record event %s: %s", node, reason, exc)

    def remove_node_annotation(self, node: str, key: str, value: str) -> bool:
        from lightkube import ApiError
        from lightkube.resources.core_v1 import Node
        from lightkube.types import PatchType

        # A JSON patch whose `test` fails leaves the node as it is: compare and remove in one write.
        path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        patch = [{"op": "test", "path": path, "value": value}, {"op": "remove", "path": path}]
        try:
            self._client.patch(Node, node, patch, patch_type=PatchType.JSON)
        except ApiError as exc:
            if exc.status.code in (409, 422):  # the test failed: the annotation changed or is gone
                return False
            raise PodSourceError(f"patch node {node}: {exc.status.code} {exc.status.message}") from None
        except Exception as exc:  # httpx transport errors: the API server is unreachable
            raise PodSourceError(f"patch node {node}: {exc}") from None
        return True
