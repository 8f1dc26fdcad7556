"""The Kubernetes API calls the scheduler makes, on lightkube, with plain dicts in and out."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import httpx2
import msgspec
from lightkube import ApiError, Client, KubeConfig
from lightkube.core import decoders
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Node, Pod, ResourceQuota
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.scheduling_v1 import PriorityClass
from lightkube.types import PatchType

log = logging.getLogger(__name__)


def warm_up_decoders() -> None:
    """Build lightkube's msgspec decoding tables for every type we read, in this one thread.

    msgspec builds them on a type's first use; two threads doing that at once crashed the
    process with SIGSEGV (seen when the node and pod informers made their first lists together).
    Call this before starting threads that use the API.
    """
    for resource in (Pod, Node, Lease, Event, Pod.Binding, Pod.Eviction, ResourceQuota, PodDisruptionBudget,
                     PriorityClass):
        decoders.decode_list(b'{"metadata": {}, "items": []}', resource)
        with contextlib.suppress(msgspec.ValidationError):  # the tables exist once it validates
            decoders.decode_object(b"{}", resource)
    decoders.decode_status(b"{}")


def make_client(kubeconfig: str | None, timeout: float = 30.0) -> Client:
    """A client from a kubeconfig file, or the in-cluster service account when None."""
    warm_up_decoders()
    limit = httpx2.Timeout(timeout)
    if kubeconfig:
        return Client(config=KubeConfig.from_file(kubeconfig), timeout=limit, field_manager="hami-scheduler")
    return Client(timeout=limit, field_manager="hami-scheduler")


class KubeApi:
    def __init__(self, client: Client, component: str = "hami-scheduler"):
        self.client = client
        self.component = component

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.client.get(Pod, name=name, namespace=namespace).to_dict()
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client.get(Node, name=name).to_dict()
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    def patch_pod_annotations(self, namespace: str, name: str, annotations: dict[str, str | None],
                              resource_version: str | None = None) -> str:
        """Merge-patch annotations; a None value removes the key. With a resourceVersion, fail
        with 409 if the pod changed since. Returns the pod's new resourceVersion."""
        metadata: dict[str, Any] = {"annotations": annotations}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        pod = self.client.patch(Pod, name, {"metadata": metadata}, namespace=namespace, patch_type=PatchType.MERGE)
        return str(pod.metadata.resourceVersion) if pod.metadata is not None else ""

    def patch_node_annotations(self, name: str, annotations: dict[str, str | None],
                               resource_version: str | None = None) -> str:
        """Merge-patch a node's annotations; with a resourceVersion, fail with 409 if it changed.

        Returns the node's new resourceVersion.
        """
        metadata: dict[str, Any] = {"annotations": annotations}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        node = self.client.patch(Node, name, {"metadata": metadata}, patch_type=PatchType.MERGE)
        return str(node.metadata.resourceVersion) if node.metadata is not None else ""

    def bind(self, namespace: str, name: str, uid: str | None, node: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, **({"uid": uid} if uid else {})},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        binding: Any = Pod.Binding.from_dict(body)
        # The API server answers a binding with a Status, which lightkube tries to read as a
        # Binding; an error status would have raised ApiError before, so this is a success.
        with contextlib.suppress(msgspec.ValidationError):
            self.client.create(binding, name=name, namespace=namespace)

    def event(self, pod: dict[str, Any], reason: str, message: str, warning: bool = True) -> None:
        """Record an Event on the pod; failures are logged, never raised."""
        metadata = pod.get("metadata") or {}
        now = datetime.now(UTC)
        try:
            self.client.create(
                Event(
                    metadata=ObjectMeta(generateName=f"{metadata.get('name')}.", namespace=metadata.get("namespace")),
                    involvedObject=ObjectReference(kind="Pod", name=metadata.get("name"),
                                                   namespace=metadata.get("namespace"), uid=metadata.get("uid")),
                    reason=reason,
                    message=message[:1024],
                    type="Warning" if warning else "Normal",
                    source=EventSource(component=self.component),
                    firstTimestamp=now,
                    lastTimestamp=now,
                    count=1,
                )
            )
        except ApiError as exc:
            log.warning("could not record event %s on pod %s: %s", reason, metadata.get("name"), exc.status.message)
