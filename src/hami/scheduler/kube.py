"""The Kubernetes API calls the scheduler makes, on lightkube, with plain dicts in and out.

KubeApi blocks; AsyncKubeApi is the same calls for the extender's event loop, where binds
and decision writes run beside /filter without threads (and so without waiting for the GIL).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import httpx2
import msgspec
from lightkube import ApiError, AsyncClient, Client, KubeConfig
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


def make_async_client(kubeconfig: str | None, timeout: float = 30.0) -> AsyncClient:
    """An asyncio client from a kubeconfig file, or the in-cluster service account when None."""
    warm_up_decoders()
    limit = httpx2.Timeout(timeout)
    if kubeconfig:
        return AsyncClient(config=KubeConfig.from_file(kubeconfig), timeout=limit, field_manager="hami-scheduler")
    return AsyncClient(timeout=limit, field_manager="hami-scheduler")


def _annotations_patch(annotations: dict[str, str | None], resource_version: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"annotations": annotations}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {"metadata": metadata}


def _binding(namespace: str, name: str, uid: str | None, node: str, annotations: dict[str, str] | None = None,
             resource_version: str | None = None) -> Any:
    """A Binding. The API server applies its annotations to the pod together with the node
    name, and its UID and resourceVersion as preconditions (409 Conflict when they differ)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if uid:
        metadata["uid"] = uid
    if resource_version:
        metadata["resourceVersion"] = resource_version
    if annotations:
        metadata["annotations"] = annotations
    return Pod.Binding.from_dict({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": metadata,
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    })


def _event(pod: dict[str, Any], reason: str, message: str, warning: bool, component: str) -> Event:
    metadata = pod.get("metadata") or {}
    now = datetime.now(UTC)
    return Event(
        metadata=ObjectMeta(generateName=f"{metadata.get('name')}.", namespace=metadata.get("namespace")),
        involvedObject=ObjectReference(kind="Pod", name=metadata.get("name"), namespace=metadata.get("namespace"),
                                       uid=metadata.get("uid")),
        reason=reason,
        message=message[:1024],
        type="Warning" if warning else "Normal",
        source=EventSource(component=component),
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
    )


def _version(obj: Any) -> str:
    return str(obj.metadata.resourceVersion) if obj.metadata is not None else ""


class AsyncKubeApi:
    """KubeApi's calls as coroutines, on lightkube's AsyncClient."""

    def __init__(self, client: AsyncClient, component: str = "hami-scheduler"):
        self.client = client
        self.component = component

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return (await self.client.get(Pod, name=name, namespace=namespace)).to_dict()
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    async def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            return (await self.client.get(Node, name=name)).to_dict()
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    async def patch_pod_annotations(self, namespace: str, name: str, annotations: dict[str, str | None],
                                    resource_version: str | None = None) -> str:
        """Merge-patch annotations; a None value removes the key. With a resourceVersion, fail
        with 409 if the pod changed since. Returns the pod's new resourceVersion."""
        return _version(await self.client.patch(Pod, name, _annotations_patch(annotations, resource_version),
                                                namespace=namespace, patch_type=PatchType.MERGE))

    async def patch_node_annotations(self, name: str, annotations: dict[str, str | None],
                                     resource_version: str | None = None) -> str:
        """Merge-patch a node's annotations; with a resourceVersion, fail with 409 if it changed.
        Returns the node's new resourceVersion."""
        return _version(await self.client.patch(Node, name, _annotations_patch(annotations, resource_version),
                                                patch_type=PatchType.MERGE))

    async def bind(self, namespace: str, name: str, uid: str | None, node: str,
                   annotations: dict[str, str] | None = None, resource_version: str | None = None) -> None:
        """Bind the pod to `node`, setting `annotations` in the same write (see _binding)."""
        # The API server answers a binding with a Status, which lightkube tries to read as a
        # Binding; an error status would have raised ApiError before, so this is a success.
        with contextlib.suppress(msgspec.ValidationError):
            await self.client.create(_binding(namespace, name, uid, node, annotations, resource_version),
                                     name=name, namespace=namespace)

    async def event(self, pod: dict[str, Any], reason: str, message: str, warning: bool = True) -> None:
        """Record an Event on the pod; failures are logged, never raised."""
        try:
            await self.client.create(_event(pod, reason, message, warning, self.component))
        except Exception as exc:  # noqa: BLE001 - an event is worth a log line, never a failed call
            log.warning("could not record event %s on pod %s: %s", reason, (pod.get("metadata") or {}).get("name"),
                        exc.status.message if isinstance(exc, ApiError) else exc)


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
        return _version(self.client.patch(Pod, name, _annotations_patch(annotations, resource_version),
                                          namespace=namespace, patch_type=PatchType.MERGE))

    def patch_node_annotations(self, name: str, annotations: dict[str, str | None],
                               resource_version: str | None = None) -> str:
        """Merge-patch a node's annotations; with a resourceVersion, fail with 409 if it changed.

        Returns the node's new resourceVersion.
        """
        return _version(self.client.patch(Node, name, _annotations_patch(annotations, resource_version),
                                          patch_type=PatchType.MERGE))

    def bind(self, namespace: str, name: str, uid: str | None, node: str) -> None:
        with contextlib.suppress(msgspec.ValidationError):  # a Status, read as a Binding (see AsyncKubeApi)
            self.client.create(_binding(namespace, name, uid, node), name=name, namespace=namespace)

    def event(self, pod: dict[str, Any], reason: str, message: str, warning: bool = True) -> None:
        """Record an Event on the pod; failures are logged, never raised."""
        try:
            self.client.create(_event(pod, reason, message, warning, self.component))
        except Exception as exc:  # noqa: BLE001 - an event is worth a log line, never a failed call
            log.warning("could not record event %s on pod %s: %s", reason, (pod.get("metadata") or {}).get("name"),
                        exc.status.message if isinstance(exc, ApiError) else exc)
