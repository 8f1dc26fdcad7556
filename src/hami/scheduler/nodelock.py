"""HAMi's node lock, `hami.io/mutex.lock: <RFC3339 time>,<namespace>,<pod name>`.

Taken with an optimistic write (the node's resourceVersion), so two schedulers can never
both hold it, and held from bind until the device plugin has allocated the pod, which is how
HAMi's device plugin knows the pod kubelet is starting. A lock older than `stale_after` seconds,
or whose owner pod no longer needs it, is taken over.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError

from hami.annotations import keys
from hami.annotations.pod_devices import BindPhase
from hami.scheduler.kube import AsyncKubeApi
from hami.vendors import ownlock

log = logging.getLogger(__name__)

# Ours, not HAMi's. A node annotation our device plugin sets to the resource names (comma
# separated) whose pods it tells apart through kubelet's pod-resources API. Pods that ask only
# for those are bound to the node without HAMi's lock; everywhere else the lock is held from
# bind until the device plugin has allocated the pod, as HAMi's device plugin needs it.
ALLOCATE_BY_POD_RESOURCES = "hami.io/node-allocate-by-pod-resources"


@dataclass(frozen=True)
class LockValue:
    at: datetime
    namespace: str
    name: str


def encode_lock(at: datetime, namespace: str, name: str) -> str:
    return f"{at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')},{namespace},{name}"


def decode_lock(value: str) -> LockValue | None:
    """None for a value that is not a lock (it is then treated as stale). Older HAMi writes a
    bare RFC3339 time, naming no pod: namespace and name are then empty (HAMi's ParseNodeLock)."""
    parts = value.split(",")
    if len(parts) not in (1, 3):
        return None
    try:
        at = datetime.fromisoformat(parts[0].replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if len(parts) == 1:
        return LockValue(at=at, namespace="", name="")
    return LockValue(at=at, namespace=parts[1], name=parts[2])


class NodeLockError(Exception):
    pass


OWN_LOCK_ATTEMPTS = 5  # HAMi's retries for a vendor's own lock


def _no_longer_holds(owner: dict[str, Any], in_flight: Callable[[str, str], bool] | None) -> str:
    """Why the lock's owner pod no longer needs the lock ("" while it does)."""
    metadata = owner.get("metadata") or {}
    if (owner.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return "has ended"
    if not (owner.get("spec") or {}).get("nodeName"):
        running = in_flight is not None and in_flight(str(metadata.get("namespace")), str(metadata.get("name")))
        return "" if running else "was never bound and no bind of it is running"
    phase = (metadata.get("annotations") or {}).get(keys.BIND_PHASE)
    if phase != BindPhase.ALLOCATING.value:
        return f"is no longer waiting for devices (bind-phase {phase or 'unset'})"
    return ""


class NodeLocker:
    def __init__(
        self, api: AsyncKubeApi, stale_after: float = 60.0, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ):
        self.api = api
        self.stale_after = stale_after
        self.now = now
        # Per node, the resourceVersion our last release wrote (the lock was free then). The next
        # lock tries that version first and reads the node only when something changed it since.
        self._released_at: dict[str, str] = {}
        self._released_guard = threading.Lock()

    async def _free_or_takeable(self, node: dict[str, Any], namespace: str, name: str,
                          in_flight: Callable[[str, str], bool] | None = None) -> bool:
        """Whether the node's lock is free, ours, or may be taken over.

        A lock is held from bind until the device plugin has allocated the pod (HAMi's
        protocol). It is taken over when it is stale, or when its pod is gone, has ended, is no
        longer waiting for devices, or was never bound and no bind of it runs here (a scheduler
        that died between locking and binding).
        """
        node_name = (node.get("metadata") or {}).get("name")
        value = ((node.get("metadata") or {}).get("annotations") or {}).get(keys.NODE_LOCK)
        if not value:
            return True
        lock = decode_lock(value)
        if lock is None:
            log.warning("node %s: unreadable lock %r taken over", node_name, value)
            return True
        if (lock.namespace, lock.name) == (namespace, name):
            return True
        if (self.now() - lock.at).total_seconds() > self.stale_after:
            log.info("node %s: lock %r is stale, taken over", node_name, value)
            return True
        if not lock.name:
            return False  # a lock naming no pod is honoured until it expires, as HAMi does
        owner = await self.api.get_pod(lock.namespace, lock.name)
        if owner is None:
            log.info("node %s: lock owner %s/%s is gone, taken over", node_name, lock.namespace, lock.name)
            return True
        why = _no_longer_holds(owner, in_flight)
        if why:
            log.info("node %s: lock owner %s/%s %s, taken over", node_name, lock.namespace, lock.name, why)
            return True
        return False

    async def lock(self, node_name: str, namespace: str, name: str, wait: float = 10.0,
             in_flight: Callable[[str, str], bool] | None = None) -> str:
        """Take the lock, waiting up to `wait` seconds while another pod's bind holds it.

        Returns the node's resourceVersion after the lock was written (for a cheap release).
        """
        with self._released_guard:
            known = self._released_at.pop(node_name, None)
        if known:
            try:
                return await self.api.patch_node_annotations(
                    node_name, {keys.NODE_LOCK: encode_lock(self.now(), namespace, name)}, resource_version=known)
            except ApiError as exc:
                if exc.status.code not in (404, 409):
                    raise
        deadline = time.monotonic() + wait
        pause = 0.02
        while True:
            node = await self.api.get_node(node_name)
            if node is None:
                raise NodeLockError(f"node {node_name} not found")
            if await self._free_or_takeable(node, namespace, name, in_flight):
                try:
                    return await self.api.patch_node_annotations(
                        node_name, {keys.NODE_LOCK: encode_lock(self.now(), namespace, name)},
                        resource_version=node["metadata"].get("resourceVersion"),
                    )
                except ApiError as exc:
                    if exc.status.code != 409:
                        raise
            if time.monotonic() > deadline:
                holder = ((node.get("metadata") or {}).get("annotations") or {}).get(keys.NODE_LOCK)
                raise NodeLockError(f"node {node_name} is locked by another pod ({holder}) for more than {wait:g}s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def release(self, node_name: str, namespace: str, name: str, resource_version: str | None = None) -> None:
        """Remove the lock if this pod holds it; never raises for a lock already gone.

        With the resourceVersion our lock write returned, one PATCH does it when nothing else
        touched the node since; otherwise the node is read again.
        """
        if resource_version:
            try:
                released = await self.api.patch_node_annotations(node_name, {keys.NODE_LOCK: None},
                                                                 resource_version=resource_version)
                with self._released_guard:
                    self._released_at[node_name] = released
                return
            except ApiError as exc:
                if exc.status.code != 409:
                    log.warning("node %s: could not release lock of %s/%s: %s", node_name, namespace, name,
                                exc.status.message)
                    return
            except Exception as exc:  # noqa: BLE001 - unreachable API: a lock left behind is taken over later
                log.warning("node %s: could not release lock of %s/%s: %s", node_name, namespace, name, exc)
                return
        try:
            node = await self.api.get_node(node_name)
            if node is None:
                return
            value = ((node.get("metadata") or {}).get("annotations") or {}).get(keys.NODE_LOCK)
            lock = decode_lock(value) if value else None
            if lock is None or (lock.namespace, lock.name) != (namespace, name):
                return
            await self.api.patch_node_annotations(node_name, {keys.NODE_LOCK: None},
                                                  resource_version=node["metadata"].get("resourceVersion"))
        except Exception as exc:  # noqa: BLE001 - a lock left behind is taken over later; never fail here
            log.warning("node %s: could not release lock of %s/%s: %s", node_name, namespace, name,
                        exc.status.message if isinstance(exc, ApiError) else exc)

    # ---- a vendor's own lock (LockKind.OWN: Cambricon's `cambricon.com/dsmlu.lock`) ----------

    async def lock_own(self, node_name: str, key: str) -> None:
        """Take the vendor's lock `key` on the node, or raise NodeLockError with HAMi's text
        while another bind holds it (younger than two minutes). The write is conditional on the
        node's resourceVersion, so two schedulers never both take it."""
        for _ in range(OWN_LOCK_ATTEMPTS):
            node = await self.api.get_node(node_name)
            if node is None:
                raise NodeLockError(f"node {node_name} not found")
            metadata = node.get("metadata") or {}
            if not ownlock.lock_is_free((metadata.get("annotations") or {}).get(key), self.now()):
                raise NodeLockError(ownlock.lock_error(node_name))
            try:
                await self.api.patch_node_annotations(node_name, {key: ownlock.encode_lock(self.now())},
                                                      resource_version=metadata.get("resourceVersion"))
                return
            except ApiError as exc:
                if exc.status.code != 409:
                    raise
        raise NodeLockError(f"node {node_name}: {key} kept changing while it was taken ({OWN_LOCK_ATTEMPTS} tries)")

    async def release_own(self, node_name: str, key: str) -> None:
        """Delete the vendor's lock after a bind that did not happen; never raises (a lock left
        behind expires after two minutes)."""
        try:
            await self.api.patch_node_annotations(node_name, {key: None})
        except Exception as exc:  # noqa: BLE001
            log.warning("node %s: could not release %s: %s", node_name, key,
                        exc.status.message if isinstance(exc, ApiError) else exc)
