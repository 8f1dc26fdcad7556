"""Dynamic MIG on the node (HAMi v2.10's design): discover, create at Allocate, clean up, adopt.

- **Discovery**: for each GPU in MIG mode, the allowed profiles of its model (the config's
  `migProfileAllowlist`) with NVML's memory, SM share and possible placements; published in the
  registration as `migProfiles`.
- **Allocate**: the scheduler reserved a profile and a placement for every MIG device of the
  pod (`hami.io/vgpu-mig-allocations`). The plugin creates exactly that GPU instance and a
  compute instance filling it, answers `NVIDIA_VISIBLE_DEVICES=<MIG UUIDs>` (no libvgpu), and
  writes the MIG UUID and instance IDs back into the annotation, on the pod version it read.
  A container's instances are created all or none.
- **Cleanup**: every few seconds, instances this plugin manages whose reservation no live pod
  names any more are destroyed. A failed pod listing or a malformed annotation destroys
  nothing (fail closed); an instance a process still runs on is never destroyed (NVML refuses
  with NVML_ERROR_IN_USE, and it is tried again on the next pass).
- **Restart**: GPUs no live pod reserves and no process uses are put in MIG mode and emptied;
  instances that live pods' annotations name, with their runtime identity, are adopted after
  checking them against NVML. If the pods cannot be listed, no GPU is emptied.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.mig import MigAllocation, decode_mig_allocations, encode_mig_allocations
from hami.config import HamiConfig
from hami.deviceplugin.backend import (
    CI_PROFILE_BY_SLICES,
    GI_PROFILE_1_SLICE,
    GI_PROFILE_2_SLICE,
    GI_PROFILE_3_SLICE,
    GI_PROFILE_4_SLICE,
    GI_PROFILE_6_SLICE,
    GI_PROFILE_7_SLICE,
    GI_PROFILE_8_SLICE,
    GI_PROFILES_BY_SLICES,
    Backend,
    BackendError,
    GiProfileInfo,
    GpuInfo,
)
from hami.deviceplugin.pods import Pod, PodSource, PodSourceError
from hami.model.mig import MigPlacement, MigProfile

log = logging.getLogger(__name__)

ENDED = ("Succeeded", "Failed")
# Every GPU-instance profile of the plain kinds, for the whole-GPU SM count (HAMi's core share).
_PLAIN_PROFILES = (GI_PROFILE_1_SLICE, GI_PROFILE_2_SLICE, GI_PROFILE_3_SLICE, GI_PROFILE_4_SLICE,
                   GI_PROFILE_6_SLICE, GI_PROFILE_7_SLICE, GI_PROFILE_8_SLICE)


class MigError(Exception):
    """A MIG step that failed; the message names the GPU, profile and placement."""


def slices_of(profile: str) -> int | None:
    """`2g.10gb` -> 2 (HAMi's profileSliceKey); None for a name that is not `<N>g.…`."""
    head = profile.partition(".")[0]
    return int(head[:-1]) if head.endswith("g") and head[:-1].isdigit() else None


# ---- discovery ------------------------------------------------------------------------------

def _profile_info(backend: Backend, uuid: str, name: str) -> GiProfileInfo | None:
    """The NVML profile of an allowed name: among the profiles of its slice count the one NVML
    names `MIG <name>`, else the plain one (HAMi's choice, by slice count only)."""
    slices = slices_of(name)
    candidates = GI_PROFILES_BY_SLICES.get(slices or 0, ())
    plain: GiProfileInfo | None = None
    for index in candidates:
        try:
            info = backend.gi_profile(uuid, index)
        except BackendError:
            continue
        if info.name in (f"MIG {name}", name):
            return info
        if index == candidates[0]:
            plain = info
    return plain


def discover_profiles(backend: Backend, gpu: GpuInfo, allowed: Sequence[str]) -> tuple[MigProfile, ...]:
    """HAMi's discoverMigProfiles: each allowed profile the GPU has, with NVML's memory, the
    percent of the GPU's SMs (rounded up) and every possible placement."""
    full_sms = 0
    for index in _PLAIN_PROFILES:
        try:
            full_sms = max(full_sms, backend.gi_profile(gpu.uuid, index).sm_count)
        except BackendError:
            continue
    found = []
    for name in allowed:
        info = _profile_info(backend, gpu.uuid, name)
        if info is None:
            log.info("GPU %s: no MIG profile %s", gpu.uuid, name)
            continue
        try:
            placements = backend.gi_placements(gpu.uuid, info.index)
        except BackendError as exc:
            log.info("GPU %s: placements of %s: %s", gpu.uuid, name, exc)
            continue
        core = -(-info.sm_count * 100 // full_sms) if full_sms else 0
        found.append(MigProfile(name=name, memory=info.memory_mib, core=core, slices=info.slices,
                                instances=info.instances, placements=tuple(placements)))
    return tuple(found)


def mig_capable(backend: Backend, uuid: str) -> tuple[bool, bool]:
    """(MIG supported, MIG mode on now)."""
    try:
        current, _ = backend.mig_mode(uuid)
    except BackendError as exc:
        if exc.code == "NVML_ERROR_NOT_SUPPORTED":
            return False, False
        raise
    return True, current


# ---- runtime identity -----------------------------------------------------------------------

@dataclass(frozen=True)
class InstanceKey:
    """What the scheduler reserved: a profile at a placement of a GPU (HAMi's migAllocationKey)."""

    gpu: str
    profile: str
    start: int
    size: int

    @staticmethod
    def of(reservation: MigAllocation) -> InstanceKey:
        return InstanceKey(reservation.gpu_uuid, reservation.profile, reservation.placement.start,
                           reservation.placement.size)

    @property
    def placement(self) -> MigPlacement:
        return MigPlacement(self.start, self.size)

    def __str__(self) -> str:
        return f"{self.profile}@{self.start}+{self.size} on {self.gpu}"


@dataclass(frozen=True)
class Realized:
    mig_uuid: str
    gpu_instance: int
    compute_instance: int


class MigManager:
    """The one owner of the node's MIG instances (HAMi's MigInstanceManager), keyed by reservation.

    `profiles` maps each MIG-mode GPU to the profiles it registered (name -> NVML profile index).
    """

    def __init__(self, backend: Backend, profiles: Mapping[str, Mapping[str, int]]) -> None:
        self.backend = backend
        self.profiles = {gpu: dict(names) for gpu, names in profiles.items()}
        self._lock = threading.RLock()  # one MIG change at a time: NVML's MIG calls are node-wide
        self.managed: dict[InstanceKey, Realized] = {}

    def _index(self, key: InstanceKey) -> int:
        index = self.profiles.get(key.gpu, {}).get(key.profile)
        if index is None:
            raise MigError(f"{key}: the GPU is not in MIG mode here or does not offer {key.profile}")
        return index

    def ensure(self, key: InstanceKey) -> tuple[Realized, bool]:
        """HAMi's EnsureAllocation: the instance of a reservation, created if needed; True when
        this call created it. Never another placement; a half-made instance is destroyed."""
        with self._lock:
            known = self.managed.get(key)
            if known is not None:
                return known, False
            index = self._index(key)
            slices = slices_of(key.profile)
            ci_index = CI_PROFILE_BY_SLICES.get(slices or 0)
            if ci_index is None:
                raise MigError(f"{key}: no compute-instance profile for {key.profile}")
            try:
                current, pending = self.backend.mig_mode(key.gpu)
                if not current:
                    raise MigError(f"{key}: MIG mode is off{' (enabling is pending a GPU reset)' if pending else ''}")
                possible = self.backend.gi_placements(key.gpu, index)
                if key.placement not in possible:
                    raise MigError(f"{key}: NVML does not list this placement (it lists "
                                   f"{', '.join(f'{p.start}+{p.size}' for p in possible)})")
                gi = self.backend.create_gpu_instance(key.gpu, index, key.placement)
            except BackendError as exc:
                raise MigError(f"{key}: {exc}") from None
            try:
                ci = self.backend.create_compute_instance(key.gpu, gi, ci_index)
                mig_uuid = next((m.mig_uuid for m in self.backend.gpu_instances(key.gpu)
                                 if m.gpu_instance_id == gi and m.mig_uuid), "")
                if not mig_uuid:
                    raise BackendError("NVML_ERROR_NOT_FOUND", f"no MIG device for GPU instance {gi}")
            except BackendError as exc:
                self._destroy(key.gpu, gi, None)
                raise MigError(f"{key}: {exc}") from None
            realized = Realized(mig_uuid, gi, ci)
            self.managed[key] = realized
            log.info("created MIG instance %s: %s (GPU instance %d, compute instance %d)", key, mig_uuid, gi, ci)
            return realized, True

    def _destroy(self, gpu: str, gi: int, ci: int | None) -> None:
        """Destroy a GPU instance and its compute instance; BackendError when NVML refuses
        (NVML_ERROR_IN_USE: a process runs on it). An instance already gone is not an error."""
        ids = [ci] if ci is not None else []
        if ci is None:
            ids = next((list(m.compute_instance_ids) for m in self.backend.gpu_instances(gpu)
                        if m.gpu_instance_id == gi), [])
        for compute in ids:
            try:
                self.backend.destroy_compute_instance(gpu, gi, compute)
            except BackendError as exc:
                if exc.code != "NVML_ERROR_NOT_FOUND":
                    raise
        try:
            self.backend.destroy_gpu_instance(gpu, gi)
        except BackendError as exc:
            if exc.code != "NVML_ERROR_NOT_FOUND":
                raise

    def release(self, key: InstanceKey) -> bool:
        """Destroy a managed instance; False (and kept) when NVML refuses."""
        with self._lock:
            realized = self.managed.get(key)
            if realized is None:
                return True
            try:
                self._destroy(key.gpu, realized.gpu_instance, realized.compute_instance)
            except BackendError as exc:
                log.warning("MIG instance %s (%s) kept: %s", key, realized.mig_uuid, exc)
                return False
            del self.managed[key]
            log.info("destroyed MIG instance %s (%s)", key, realized.mig_uuid)
            return True

    def reconcile(self, active: Iterable[InstanceKey]) -> list[InstanceKey]:
        """Destroy the managed instances no live reservation names; the keys destroyed."""
        wanted = set(active)
        with self._lock:
            stale = [key for key in self.managed if key not in wanted]
            return [key for key in stale if self.release(key)]

    def adopt(self, reservation: MigAllocation) -> None:
        """Take over an instance a live pod's annotation names with its runtime identity, after
        checking NVML shows exactly it (HAMi's AdoptAllocation). Raises MigError."""
        key = InstanceKey.of(reservation)
        with self._lock:
            try:
                instances = self.backend.gpu_instances(key.gpu)
            except BackendError as exc:
                raise MigError(f"{key}: {exc}") from None
            for m in instances:
                if (m.gpu_instance_id == reservation.gpu_instance_id and m.placement == key.placement
                        and m.mig_uuid == reservation.mig_uuid
                        and reservation.compute_instance_id in m.compute_instance_ids):
                    assert reservation.compute_instance_id is not None
                    self.managed[key] = Realized(m.mig_uuid, m.gpu_instance_id, reservation.compute_instance_id)
                    return
            raise MigError(f"{key}: the annotated instance {reservation.mig_uuid} is not live")

    def reset_idle(self, gpus: Iterable[str], in_use: set[str]) -> list[str]:
        """HAMi's ResetIdleGPUs: MIG mode on and every instance destroyed, on GPUs nobody uses;
        the GPUs reset. Raises MigError (a GPU whose MIG mode waits for a reset)."""
        reset = []
        with self._lock:
            for gpu in gpus:
                if gpu in in_use:
                    continue
                try:
                    current, pending = self.backend.mig_mode(gpu)
                    if current and not pending:
                        raise MigError(f"GPU {gpu}: disabling MIG is pending (current on, pending off)")
                    if not current:
                        if pending:
                            raise MigError(f"GPU {gpu}: enabling MIG is pending; the GPU needs a reset")
                        self.backend.set_mig_mode(gpu, True)
                        current, _ = self.backend.mig_mode(gpu)
                        if not current:
                            raise MigError(f"GPU {gpu}: MIG mode stays off after enabling it (a GPU reset is needed)")
                    for m in self.backend.gpu_instances(gpu):
                        self._destroy(gpu, m.gpu_instance_id, None)
                except BackendError as exc:
                    raise MigError(f"GPU {gpu}: {exc}") from None
                self.managed = {k: v for k, v in self.managed.items() if k.gpu != gpu}
                reset.append(gpu)
        return reset


# ---- pods -----------------------------------------------------------------------------------

def live(pod: Pod) -> bool:
    meta = pod.get("metadata") or {}
    return not meta.get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in ENDED


def reservations_of(pod: Pod) -> list[MigAllocation]:
    """A pod's MIG reservations; AnnotationError for a malformed annotation."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return decode_mig_allocations(annotations.get(keys.MIG_ALLOCATIONS))


def active_keys(pods: Iterable[Pod], gpus: set[str]) -> set[InstanceKey]:
    """Every reservation live pods hold on these GPUs; AnnotationError when one is malformed
    (the caller then destroys nothing)."""
    found = set()
    for pod in pods:
        if live(pod):
            found |= {InstanceKey.of(r) for r in reservations_of(pod) if r.gpu_uuid in gpus}
    return found


def pod_name(pod: Pod) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


class MigNode:
    """MIG on one node: the manager plus what the plugin asks of it at start, Allocate and cleanup."""

    def __init__(self, backend: Backend, source: PodSource, node: str, gpus: Iterable[str],
                 write_attempts: int = 3) -> None:
        self.source = source
        self.node = node
        self.gpus = set(gpus)
        self.manager = MigManager(backend, {})
        self.write_attempts = write_attempts

    def offer(self, profiles: Mapping[str, Sequence[MigProfile] | None]) -> None:
        """The profiles each GPU registered (after discovery): the only ones instances are made of."""
        backend = self.manager.backend
        indexes: dict[str, dict[str, int]] = {}
        for gpu, offered in profiles.items():
            indexes[gpu] = {}
            for profile in offered or ():
                info = _profile_info(backend, gpu, profile.name)
                if info is not None:
                    indexes[gpu][profile.name] = info.index
        self.manager.profiles = indexes

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        """Empty the idle GPUs, then adopt what live pods hold (errors are logged: the plugin
        still serves, and what could not be adopted stays as it is)."""
        try:
            pods = self.source.pods_on_node(self.node)
            reserved = {r.gpu_uuid for pod in pods if live(pod) for r in _safe_reservations(pod)}
        except PodSourceError as exc:
            log.warning("MIG start: cannot list this node's pods (%s); no GPU is emptied", exc)
            pods, reserved = [], set(self.gpus)
        busy = {gpu for gpu in self.gpus if self.manager.backend.busy(gpu)}
        try:
            reset = self.manager.reset_idle(sorted(self.gpus), reserved | busy)
            log.info("MIG start: emptied %s; left as they are (reserved or busy): %s", reset or "none",
                     sorted(reserved | busy) or "none")
        except MigError as exc:
            log.warning("MIG start: %s", exc)
        for pod in pods:
            if not live(pod):
                continue
            for reservation in _safe_reservations(pod):
                if reservation.gpu_uuid not in self.gpus:
                    continue
                if not reservation.realized:
                    continue  # not allocated yet: Allocate creates it
                try:
                    self.manager.adopt(reservation)
                    log.info("MIG start: adopted %s of pod %s", reservation.mig_uuid, pod_name(pod))
                except MigError as exc:
                    log.warning("MIG start: pod %s: %s", pod_name(pod), exc)

    # -- cleanup -----------------------------------------------------------------------------

    def cleanup(self) -> list[InstanceKey]:
        """One pass of the cleanup loop; the instances destroyed. Fails closed: PodSourceError or
        AnnotationError destroys nothing and is raised."""
        pods = self.source.pods_on_node(self.node)
        return self.manager.reconcile(active_keys(pods, self.gpus))

    def run_cleanup(self, stopping: threading.Event, interval_s: float) -> None:
        while not stopping.wait(interval_s):
            try:
                destroyed = self.cleanup()
            except (PodSourceError, AnnotationError) as exc:
                log.warning("MIG cleanup skipped (nothing destroyed): %s", exc)
                continue
            if destroyed:
                log.info("MIG cleanup destroyed %s", ", ".join(str(k) for k in destroyed))

    # -- Allocate ----------------------------------------------------------------------------

    def realize(self, pod: Pod, container_index: int, gpus: Sequence[str]) -> list[str]:
        """Create the instances of one container (its reservations in device order, one per
        device in `gpus`); the MIG UUIDs. All or none: what this call created is destroyed when
        a later one fails. Raises MigError, or PodSourceError when the pods cannot be listed."""
        try:
            mine = sorted((r for r in reservations_of(pod) if r.container_index == container_index),
                          key=lambda r: r.device_index)
        except AnnotationError as exc:
            raise MigError(f"pod {pod_name(pod)}: {keys.MIG_ALLOCATIONS}: {exc}") from None
        if len(mine) != len(gpus):
            raise MigError(f"pod {pod_name(pod)}: container {container_index} has {len(mine)} MIG reservation(s) "
                           f"in {keys.MIG_ALLOCATIONS} for {len(gpus)} device(s)")
        for reservation, gpu in zip(mine, gpus, strict=True):
            if reservation.gpu_uuid != gpu:
                raise MigError(f"pod {pod_name(pod)}: MIG reservation on {reservation.gpu_uuid} does not match "
                               f"the allocated GPU {gpu}")
        try:
            self.cleanup()  # free what gone pods still hold before creating (HAMi reconciles first)
        except AnnotationError as exc:
            log.warning("MIG cleanup before Allocate skipped: %s", exc)
        created: list[InstanceKey] = []
        uuids = []
        try:
            for reservation in mine:
                key = InstanceKey.of(reservation)
                realized, new = self.manager.ensure(key)
                if new:
                    created.append(key)
                uuids.append(realized.mig_uuid)
        except MigError:
            for key in reversed(created):
                self.manager.release(key)
            raise
        return uuids

    def record(self, pod: Pod) -> None:
        """Write the runtime identity of every realized reservation of the pod into its
        annotation, on the version read (re-read and retried when the pod moved on). Raises
        MigError when it cannot be written."""
        meta = pod.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "default")), str(meta.get("name"))
        current: Pod | None = pod
        for _ in range(self.write_attempts):
            if current is None:
                raise MigError(f"pod {namespace}/{name} is gone")
            try:
                reservations = reservations_of(current)
            except AnnotationError as exc:
                raise MigError(f"pod {namespace}/{name}: {keys.MIG_ALLOCATIONS}: {exc}") from None
            updated = []
            for r in reservations:
                realized = self.manager.managed.get(InstanceKey.of(r))
                updated.append(r if realized is None else r.with_runtime(realized.mig_uuid, realized.gpu_instance,
                                                                         realized.compute_instance))
            version = str((current.get("metadata") or {}).get("resourceVersion") or "")
            value = encode_mig_allocations(updated)
            try:
                if not version:
                    self.source.patch_pod_annotations(namespace, name, {keys.MIG_ALLOCATIONS: value})
                    return
                if self.source.patch_pod_annotations_at(namespace, name, {keys.MIG_ALLOCATIONS: value}, version):
                    return
                current = self.source.get_pod(namespace, name)
            except PodSourceError as exc:
                raise MigError(f"pod {namespace}/{name}: cannot record the MIG instances: {exc}") from None
        raise MigError(f"pod {namespace}/{name} kept changing; the MIG instances were not recorded")


def _safe_reservations(pod: Pod) -> list[MigAllocation]:
    try:
        return reservations_of(pod)
    except AnnotationError as exc:
        log.warning("pod %s: %s: %s", pod_name(pod), keys.MIG_ALLOCATIONS, exc)
        return []


# ---- which GPUs run MIG ---------------------------------------------------------------------

def mig_gpus(backend: Backend, gpus: Sequence[GpuInfo], config: HamiConfig, node: str,
             enabled: bool, chosen: Callable[[GpuInfo], bool]) -> dict[str, tuple[MigProfile, ...] | None]:
    """Per GPU that is to run MIG on this node (operating mode mig, the allowlist covers its model,
    `chosen` keeps it): the profiles it offers, or None when MIG is not usable on it now.

    Call after MigNode.start() has put the idle GPUs in MIG mode: discovery needs MIG mode on.
    """
    if not enabled:
        return {}
    found: dict[str, tuple[MigProfile, ...] | None] = {}
    for gpu in gpus:
        allowed = config.nvidia.mig_profiles_for(gpu.name)
        if not allowed or not chosen(gpu):
            continue
        try:
            supported, on = mig_capable(backend, gpu.uuid)
        except BackendError as exc:
            log.warning("GPU %s: MIG mode unknown (%s); not offered", gpu.uuid, exc)
            found[gpu.uuid] = None
            continue
        if not supported:
            continue
        found[gpu.uuid] = discover_profiles(backend, gpu, allowed) if on else None
    return found


def realized_grant_env(mig_uuids: Sequence[str]) -> dict[str, str]:
    """What a container with MIG devices gets: only the devices (HAMi: no libvgpu limits)."""
    return {"NVIDIA_VISIBLE_DEVICES": ",".join(mig_uuids)}
