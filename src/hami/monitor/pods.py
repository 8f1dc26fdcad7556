"""The pods of this node, as the monitor needs them: who a cache directory belongs to, and
which GPUs (and how much of each) the scheduler gave each container.

Fed by an informer on the node's pods (or a file). A container's devices are its part of
the pod's decision annotation, in order: the i-th device is the container's device index
i (the order of NVIDIA_VISIBLE_DEVICES and of CUDA_DEVICE_MEMORY_LIMIT_<i>).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hami.annotations.errors import AnnotationError
from hami.annotations.pod_devices import pod_allocation_from_annotations
from hami.model.allocation import ContainerDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContainerInfo:
    namespace: str
    pod: str
    container: str
    pod_uid: str
    devices: tuple[ContainerDevice, ...]  # empty when the pod has no (readable) decision


def _containers(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [str(c.get("name")) for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]


def container_infos(pod: dict[str, Any]) -> dict[str, ContainerInfo]:
    """Per container name, what the monitor knows of it."""
    metadata = pod.get("metadata") or {}
    namespace = str(metadata.get("namespace") or "default")
    name = str(metadata.get("name"))
    uid = str(metadata.get("uid") or "")
    try:
        allocation = pod_allocation_from_annotations(dict(metadata.get("annotations") or {})) or ()
    except AnnotationError as exc:
        log.warning("pod %s/%s: unreadable decision annotation (%s); its GPUs are unknown", namespace, name, exc)
        allocation = ()
    return {
        container: ContainerInfo(namespace, name, container, uid, allocation[i] if i < len(allocation) else ())
        for i, container in enumerate(_containers(pod))
    }


class PodIndex:
    """Thread-safe: the informer writes, the monitor loop and the metrics scrape read."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._by_uid: dict[str, dict[str, ContainerInfo]] = {}
        self.synced = False
        self.on_change = on_change

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def replace(self, pods: Iterable[dict[str, Any]]) -> None:
        by_uid: dict[str, dict[str, ContainerInfo]] = {}
        for pod in pods:
            uid = str((pod.get("metadata") or {}).get("uid") or "")
            if uid:
                by_uid[uid] = container_infos(pod)
        with self._lock:
            self._by_uid = by_uid
            self.synced = True
        self._changed()

    def upsert(self, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        infos = container_infos(pod)
        with self._lock:
            if self._by_uid.get(uid) == infos:
                return
            self._by_uid[uid] = infos
        self._changed()

    def delete(self, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        with self._lock:
            self._by_uid.pop(uid, None)
        self._changed()

    def known(self, uid: str) -> bool:
        with self._lock:
            return uid in self._by_uid

    def container(self, uid: str, name: str) -> ContainerInfo | None:
        with self._lock:
            return self._by_uid.get(uid, {}).get(name)

