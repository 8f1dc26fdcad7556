"""Allocate: which pod is starting, which of its containers kubelet asks for, and what it gets.

Kubelet's Allocate carries device IDs only, no pod and no container. The pod is the one that
kubelet's pod-resources API lists while it still waits for devices (see find_pod); without that
API, the only pod waiting on this node or the owner of HAMi's node lock. The container is the
first one, init containers first in spec order, still waiting for devices in the vendor's
to-allocate annotation (NVIDIA's `hami.io/vgpu-devices-to-allocate`; a `Flow` names another
vendor's) whose device count matches the request. Containers are
known by name: a sidecar without devices, or one put in another position, does not shift the
match, and every error names the container it is about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Protocol

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.pod_devices import (
    BindPhase,
    bind_annotations,
    decode_pod_devices,
    encode_container_devices,
)
from hami.config import NvidiaConfig
from hami.deviceplugin.podresources import KubeletPods, KubeletUnavailable
from hami.deviceplugin.pods import Pod, PodSource, PodSourceError
from hami.model.allocation import ContainerDevice

log = logging.getLogger(__name__)

# Where the enforcement library and its files appear inside the container (HAMi's paths).
CONTAINER_LIBRARY = "/usr/local/vgpu/libvgpu.so"
CONTAINER_PRELOAD = "/etc/ld.so.preload"
CONTAINER_CACHE_DIR = "/usr/local/vgpu/cache"
CACHE_FILE = "vgpu.cache"
LOCK_DIR = "/tmp/vgpulock"
DISABLE_CONTROL_ENV = "CUDA_DISABLE_CONTROL"
# Why a bind failed, for `kubectl get pod -o yaml` readers (not part of HAMi's contract).
BIND_FAILURE_REASON = keys.BIND_FAILURE_REASON
# Every vendor's decision for its plugin: hami.io/<vendor>-devices-to-allocate.
TO_ALLOCATE_SUFFIX = "-devices-to-allocate"


class AllocateError(Exception):
    """A request that cannot be served; `code` is the gRPC status name to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class DeviceSpec:
    """A device node kubelet puts into the container (`permissions`: r, w, m)."""

    container_path: str
    host_path: str
    permissions: str


@dataclass(frozen=True)
class HostFile:
    """A file the plugin writes on the host before the container starts (a vendor's config)."""

    path: str
    content: str


@dataclass(frozen=True)
class ContainerGrant:
    """What one container gets: the answer to one ContainerAllocateRequest."""

    container: str
    devices: tuple[ContainerDevice, ...]
    envs: dict[str, str]
    mounts: tuple[Mount, ...]
    cache_dir: str = ""
    device_specs: tuple[DeviceSpec, ...] = ()
    # Host directories to create (mode 0777) and files to write before answering kubelet.
    host_dirs: tuple[str, ...] = ()
    host_files: tuple[HostFile, ...] = ()


@dataclass(frozen=True)
class AllocateSettings:
    node: str
    nvidia: NvidiaConfig = field(default_factory=NvidiaConfig)
    memory_scaling: float = 1.0
    # Host directory with libvgpu.so and ld.so.preload (the file that names the library).
    hook_path: str = "/usr/local/vgpu"
    # Host directory under which each container gets `<pod uid>_<container name>/`.
    cache_root: str = "/usr/local/vgpu/containers"


def pod_name(pod: Pod) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def containers_in_order(pod: Pod) -> list[dict[str, Any]]:
    """Init containers then app containers, in spec order: the order of the allocation annotation."""
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def _annotations(pod: Pod) -> dict[str, str]:
    return dict((pod.get("metadata") or {}).get("annotations") or {})


def pending_parts(pod: Pod, key: str = keys.DEVICES_TO_ALLOCATE) -> list[tuple[ContainerDevice, ...]]:
    """The to-allocate annotation `key`, one entry per container (missing trailing parts are empty)."""
    text = _annotations(pod).get(key, "")
    try:
        parts = list(decode_pod_devices(text))
    except AnnotationError as exc:
        raise AllocateError("FAILED_PRECONDITION", f"pod {pod_name(pod)}: {key}: {exc}") from None
    containers = containers_in_order(pod)
    if len(parts) > len(containers):
        raise AllocateError(
            "FAILED_PRECONDITION",
            f"pod {pod_name(pod)}: {key} lists {len(parts)} containers "
            f"but the pod has {len(containers)} (init and app)",
        )
    return parts + [()] * (len(containers) - len(parts))


def _waiting(pod: Pod, node: str, key: str = keys.DEVICES_TO_ALLOCATE) -> bool:
    ann = _annotations(pod)
    if ann.get(keys.BIND_PHASE) != BindPhase.ALLOCATING.value:
        return False
    if ann.get(keys.VGPU_NODE, node) != node:
        return False
    try:
        return any(pending_parts(pod, key))
    except AllocateError:
        return True  # let the caller report the broken annotation for this pod


def others_pending(pod: Pod, key: str) -> bool:
    """Whether another vendor's to-allocate annotation of the pod still holds devices (a pod of
    several vendors is done once every vendor's plugin has served it)."""
    for other, value in _annotations(pod).items():
        if other == key or not other.endswith(TO_ALLOCATE_SUFFIX):
            continue
        try:
            if any(decode_pod_devices(value)):
                return True
        except AnnotationError:
            continue  # that vendor's plugin reports its own broken annotation
    return False


def parse_node_lock(value: str) -> tuple[str, str] | None:
    """`<RFC3339 time>,<namespace>,<pod>` -> (namespace, pod); None for the bare-time form of old HAMi."""
    parts = value.split(",")
    if len(parts) >= 3 and parts[1] and parts[2]:
        return parts[1], parts[2]
    return None


def _key(pod: Pod) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name"))


def _names(pods: Sequence[Pod]) -> str:
    return ", ".join(sorted(pod_name(p) for p in pods))


def _unserved_by_kubelet(pod: Pod, kubelet: KubeletPods, resource: str, key: str) -> bool:
    """Whether a container of `pod` still waits for devices in kubelet's view as well as ours."""
    namespace, name = _key(pod)
    try:
        parts = pending_parts(pod, key)
    except AllocateError:
        return True  # let the caller report the broken annotation for this pod
    for container, part in zip(containers_in_order(pod), parts, strict=True):
        if part and not kubelet.has_devices(namespace, name, str(container.get("name")), resource):
            return True  # no devices yet, or a regular init container (kubelet does not report those)
    return False


def _matching_devices(pod: Pod, count: int, uuids: frozenset[str], resource: str, key: str) -> bool:
    """Whether the container a request for `count` devices would get has exactly these devices."""
    try:
        parts = pending_parts(pod, key)
        index = choose_container(pod, parts, count, resource, key)
    except AllocateError:
        return False
    return frozenset(d.uuid for d in parts[index]) == uuids


def _admitted_by_kubelet(waiting: list[Pod], kubelet: KubeletPods, node: str, resource: str, key: str,
                         requested: Sequence[tuple[int, frozenset[str]]]) -> Pod:
    """The waiting pod that kubelet is admitting now.

    Kubelet lists the pods it has admitted or is admitting (its pod manager), and reports a
    container's devices only once its Allocate succeeded. It admits one pod at a time and
    allocates all of a pod's containers while admitting it, so an admitted pod has no container
    left in our to-allocate annotation: a waiting pod that kubelet lists is the one it is starting.
    """
    admitting = [p for p in waiting if kubelet.lists(*_key(p)) and _unserved_by_kubelet(p, kubelet, resource, key)]
    if len(admitting) > 1 and requested:
        count, uuids = requested[0]
        admitting = [p for p in admitting if _matching_devices(p, count, uuids, resource, key)] or admitting
    if len(admitting) == 1:
        return admitting[0]
    if not admitting:
        unseen = f" (waiting, but not yet admitted by kubelet: {_names(waiting)})" if waiting else ""
        raise AllocateError(
            "NOT_FOUND",
            f"kubelet is admitting no pod that waits for devices on node {node}{unseen}",
        )
    raise AllocateError(
        "FAILED_PRECONDITION",
        f"kubelet lists {len(admitting)} pods on node {node} that wait for devices ({_names(admitting)}) "
        "and the device IDs do not tell them apart; not guessing",
    )


def _by_node_lock(source: PodSource, node: str, waiting: list[Pod], key: str) -> Pod:
    """Without kubelet's answer: the only waiting pod, or the one named by HAMi's node lock."""
    if len(waiting) == 1:
        return waiting[0]
    if not waiting:
        raise AllocateError(
            "NOT_FOUND",
            f"no pod on node {node} is waiting for devices ({keys.BIND_PHASE}=allocating "
            f"with containers left in {key})",
        )
    lock = source.node_annotations(node).get(keys.NODE_LOCK, "")
    owner = parse_node_lock(lock) if lock else None
    for pod in waiting:
        if _key(pod) == owner:
            return pod
    raise AllocateError(
        "FAILED_PRECONDITION",
        f"{len(waiting)} pods on node {node} wait for devices ({_names(waiting)}), the node lock names none "
        "of them, and kubelet's pod-resources API cannot be asked: cannot tell which pod kubelet is starting",
    )


def find_pod(source: PodSource, node: str, key: str = keys.DEVICES_TO_ALLOCATE, resource: str = "nvidia.com/gpu",
             kubelet: Callable[[], KubeletPods] | None = None,
             requested: Sequence[tuple[int, frozenset[str]]] = ()) -> Pod:
    """The pod kubelet is starting on this node, with containers left in the vendor's to-allocate
    annotation `key` (of `resource`, the resource kubelet counts).

    Asked of kubelet's pod-resources API when `kubelet` is given and answers; otherwise the only
    pod waiting for devices, or the owner of HAMi's node lock (HAMi's way, which needs the lock
    held from bind until Allocate). `requested` holds, per container request, the device count
    and the GPUs of the device IDs kubelet chose: only used to tell apart pods that kubelet
    lists at the same time. Raises AllocateError (NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE).
    """
    try:
        waiting = [p for p in source.pods_on_node(node) if _waiting(p, node, key)]
        listed = None
        if kubelet is not None:
            try:
                listed = kubelet()
            except KubeletUnavailable as exc:
                log.warning("%s; finding the pod by the node lock instead", exc)
        if listed is not None:
            return _admitted_by_kubelet(waiting, listed, node, resource, key, requested)
        return _by_node_lock(source, node, waiting, key)
    except PodSourceError as exc:
        raise AllocateError("UNAVAILABLE", f"cannot look up the pod being started: {exc}") from None


def _resource_count(container: dict[str, Any], resource: str) -> int | None:
    limits = (container.get("resources") or {}).get("limits") or {}
    value = limits.get(resource)
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def choose_container(
    pod: Pod, parts: Sequence[tuple[ContainerDevice, ...]], count: int, resource: str,
    key: str = keys.DEVICES_TO_ALLOCATE,
) -> int:
    """Index of the container a request for `count` devices is for; AllocateError naming the mismatch."""
    containers = containers_in_order(pod)
    waiting = [i for i, part in enumerate(parts) if part]
    if not waiting:
        raise AllocateError(
            "FAILED_PRECONDITION",
            f"pod {pod_name(pod)}: kubelet asks for {count} device(s) but no container is left "
            f"in {key}",
        )
    # First choice: the container that asks kubelet for exactly this many (its limit), with a
    # decision of that size; then any waiting container with a decision of that size.
    for i in waiting:
        if len(parts[i]) == count and _resource_count(containers[i], resource) == count:
            return i
    for i in waiting:
        if len(parts[i]) == count and _resource_count(containers[i], resource) is None:
            return i
    first = waiting[0]
    listing = ", ".join(f"{containers[i].get('name')!r}={len(parts[i])}" for i in waiting)
    raise AllocateError(
        "FAILED_PRECONDITION",
        f"pod {pod_name(pod)}: device number not matched: kubelet asks for {count} {resource}, but container "
        f"{containers[first].get('name')!r} was assigned {len(parts[first])} by the scheduler "
        f"(containers waiting: {listing})",
    )


def _go_bool(value: str) -> bool:
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _env_value(container: dict[str, Any], name: str) -> str | None:
    for item in container.get("env") or []:
        if isinstance(item, dict) and item.get("name") == name:
            value = item.get("value")
            return value if isinstance(value, str) else None
    return None


def grant(pod: Pod, container: dict[str, Any], devices: tuple[ContainerDevice, ...],
          settings: AllocateSettings) -> ContainerGrant:
    """The env and mounts for one container (HAMi's names and values)."""
    name = str(container.get("name", ""))
    uid = str((pod.get("metadata") or {}).get("uid") or pod_name(pod).replace("/", "_"))
    cache_dir = str(PurePosixPath(settings.cache_root) / f"{uid}_{name}")
    envs = {"NVIDIA_VISIBLE_DEVICES": ",".join(d.uuid for d in devices)}
    for i, device in enumerate(devices):
        envs[f"CUDA_DEVICE_MEMORY_LIMIT_{i}"] = f"{device.usedmem}m"
    envs["CUDA_DEVICE_SM_LIMIT"] = str(devices[0].usedcores)
    envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"] = f"{CONTAINER_CACHE_DIR}/{CACHE_FILE}"
    priority = _resource_count(container, settings.nvidia.resourcePriorityName)
    if priority is not None:
        envs["CUDA_TASK_PRIORITY"] = str(priority)
    if settings.memory_scaling > 1:
        envs["CUDA_OVERSUBSCRIBE"] = "true"
    if settings.nvidia.gpuCorePolicy != "default":
        envs["GPU_CORE_UTILIZATION_POLICY"] = settings.nvidia.gpuCorePolicy
    if settings.nvidia.libCudaLogLevel:
        envs["LIBCUDA_LOG_LEVEL"] = str(settings.nvidia.libCudaLogLevel)
    hook = PurePosixPath(settings.hook_path)
    mounts = [
        Mount(CONTAINER_LIBRARY, str(hook / "libvgpu.so"), True),
        Mount(CONTAINER_CACHE_DIR, cache_dir, False),
        Mount(LOCK_DIR, LOCK_DIR, False),
    ]
    if not _go_bool(_env_value(container, DISABLE_CONTROL_ENV) or ""):
        mounts.append(Mount(CONTAINER_PRELOAD, str(hook / "ld.so.preload"), True))
    return ContainerGrant(container=name, devices=devices, envs=envs, mounts=tuple(mounts), cache_dir=cache_dir)


def _encode_parts(parts: Sequence[tuple[ContainerDevice, ...]]) -> str:
    return "".join(encode_container_devices(p) + ";" for p in parts)


def release_node_lock(source: PodSource, node: str, pod: Pod) -> None:
    """Remove the node lock when this pod holds it (another pod's lock is left alone, even one
    that replaced this pod's between our read and our write)."""
    meta = pod.get("metadata") or {}
    lock = source.node_annotations(node).get(keys.NODE_LOCK)
    if lock is None:
        return
    if parse_node_lock(lock) in (None, (meta.get("namespace", "default"), meta.get("name"))):
        source.remove_node_annotation(node, keys.NODE_LOCK, lock)


def mark_failed(source: PodSource, node: str, pod: Pod, reason: str, now: datetime) -> None:
    meta = pod.get("metadata") or {}
    try:
        patch: dict[str, str | None] = dict(bind_annotations(BindPhase.FAILED, now))
        patch[BIND_FAILURE_REASON] = reason
        source.patch_pod_annotations(meta.get("namespace", "default"), str(meta.get("name")), patch)
        release_node_lock(source, node, pod)
    except PodSourceError as exc:
        log.error("pod %s: could not record the failed bind: %s", pod_name(pod), exc)


class Session(Protocol):
    """One Allocate call of one pod, for one vendor: a grant per container, then the pod
    annotations to record with the allocation."""

    def grant(self, container: dict[str, Any], devices: tuple[ContainerDevice, ...]) -> ContainerGrant:
        """What the container gets; raises AllocateError."""

    def annotations(self) -> dict[str, str]:
        """Pod annotations to write with the allocation (none for most vendors)."""


@dataclass(frozen=True)
class Flow:
    """What the Allocate flow asks of a vendor: the pod annotation with the scheduler's decision,
    the resource kubelet counts, and a session of grants for the pod being started."""

    key: str
    resource: str
    session: Callable[[Pod], Session]


@dataclass
class NvidiaSession:
    pod: Pod
    settings: AllocateSettings

    def grant(self, container: dict[str, Any], devices: tuple[ContainerDevice, ...]) -> ContainerGrant:
        return grant(self.pod, container, devices, self.settings)

    def annotations(self) -> dict[str, str]:
        return {}


def nvidia_flow(settings: AllocateSettings) -> Flow:
    return Flow(keys.DEVICES_TO_ALLOCATE, settings.nvidia.resourceCountName,
                lambda pod: NvidiaSession(pod, settings))


def allocate(
    source: PodSource,
    settings: AllocateSettings,
    requests: Sequence[int],
    prepare: Callable[[ContainerGrant], None] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    flow: Flow | None = None,
    kubelet: Callable[[], KubeletPods] | None = None,
    requested_gpus: Sequence[frozenset[str]] = (),
) -> list[ContainerGrant]:
    """Serve one Allocate call: `requests` holds the device count of each ContainerAllocateRequest
    (and `requested_gpus` the devices of its IDs); `kubelet` answers which pods kubelet lists.

    `flow` says whose devices these are (NVIDIA's when None). On success the served containers'
    parts of to-allocate are blanked; once none is left (of any vendor) the pod is marked
    bind-phase success and the node lock released. On a mismatch the pod is marked failed (with
    the reason) and the lock released, and AllocateError is raised.
    """
    flow = flow or nvidia_flow(settings)
    pod = find_pod(source, settings.node, flow.key, flow.resource, kubelet,
                   list(zip(requests, requested_gpus, strict=False)))
    meta = pod.get("metadata") or {}
    namespace, name = str(meta.get("namespace", "default")), str(meta.get("name"))
    containers = containers_in_order(pod)
    try:
        parts = pending_parts(pod, flow.key)
        try:
            session = flow.session(pod)
        except PodSourceError as exc:
            raise AllocateError("UNAVAILABLE", f"pod {namespace}/{name}: {exc}") from None
        grants = []
        for count in requests:
            index = choose_container(pod, parts, count, flow.resource, flow.key)
            result = session.grant(containers[index], parts[index])
            if prepare is not None:
                prepare(result)
            grants.append(result)
            parts[index] = ()
        extra = session.annotations()
    except AllocateError as exc:
        log.warning("Allocate failed: %s", exc.message)
        if exc.code != "UNAVAILABLE":
            mark_failed(source, settings.node, pod, exc.message, now())
        raise
    try:
        patch: dict[str, str | None] = {flow.key: _encode_parts(parts), **extra}
        done = not any(parts) and not others_pending(pod, flow.key)
        if done:
            patch.update(bind_annotations(BindPhase.SUCCESS, now()))
        source.patch_pod_annotations(namespace, name, patch)
        if done:
            release_node_lock(source, settings.node, pod)
    except PodSourceError as exc:
        raise AllocateError("UNAVAILABLE", f"pod {namespace}/{name}: cannot record the allocation: {exc}") from None
    for g in grants:
        log.info("pod %s container %r: %s", pod_name(pod), g.container, ",".join(d.uuid for d in g.devices))
    return grants
