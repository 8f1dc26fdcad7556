"""What the plugin adds to plain GPU sharing on a node: link scores and dynamic MIG.

The NVIDIA node vendor (hami.deviceplugin.vendors.nvidia) calls this module before serving
(which GPUs it serves, and how), when it registers the node (the MIG profiles and the
`hami.io/node-nvidia-score` annotation), at Allocate (MIG devices are made then, MigSession) and
in the background (MIG cleanup).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from hami.annotations.node_score import encode_pair_scores
from hami.config import HamiConfig
from hami.deviceplugin import devices as dev
from hami.deviceplugin import topology
from hami.deviceplugin.allocate import AllocateError, ContainerGrant, NvidiaSession, containers_in_order
from hami.deviceplugin.backend import Backend, BackendError, GpuInfo
from hami.deviceplugin.mig import MigError, MigNode, discover_profiles, mig_capable, realized_grant_env
from hami.deviceplugin.pods import Pod, PodSource, PodSourceError
from hami.model.devices import MIG_MODE, DeviceInfo
from hami.model.mig import MigProfile

log = logging.getLogger(__name__)


class NodeFeatures:
    def __init__(self, backend: Backend, source: PodSource, config: HamiConfig, node: str,
                 settings: dev.NodeSettings, link_scores: bool = True) -> None:
        self.backend = backend
        self.source = source
        self.config = config
        self.node = node
        self.settings = settings
        self.link_scores = link_scores
        self.mig: MigNode | None = None
        # Per MIG-mode GPU, its profiles (None: MIG not usable on it now, so it is not offered).
        self.plan: dict[str, tuple[MigProfile, ...] | None] = {}
        self.scores: str | None = None

    def start(self, gpus: Sequence[GpuInfo]) -> list[GpuInfo]:
        """Prepare MIG (empty idle GPUs, adopt live instances, discover profiles) and measure the
        links; the GPUs this plugin serves."""
        if self.settings.mode == MIG_MODE:
            self._start_mig(gpus)
        served = [g for g in gpus if self.plan.get(g.uuid, ()) is not None]
        if self.link_scores and len(served) > 1:
            self._measure(served)
        return served

    def _start_mig(self, gpus: Sequence[GpuInfo]) -> None:
        candidates = []
        for gpu in gpus:
            try:
                supported, on = mig_capable(self.backend, gpu.uuid)
            except BackendError as exc:
                log.warning("GPU %s: MIG mode unknown (%s); not offered", gpu.uuid, exc)
                self.plan[gpu.uuid] = None
                continue
            allowed = self.config.nvidia.mig_profiles_for(gpu.name)
            if supported and allowed and self.settings.wants_mig(gpu):
                candidates.append(gpu)
            elif on:
                log.warning("GPU %s (%s) has MIG mode on but is not to run MIG here (allowlist, migdevices); "
                            "not offered: a MIG-mode GPU cannot be shared", gpu.uuid, gpu.name)
                self.plan[gpu.uuid] = None
        if not candidates:
            log.warning("node %s: operatingmode mig, but no GPU both supports MIG and is in migProfileAllowlist",
                        self.node)
            return
        self.mig = MigNode(self.backend, self.source, self.node, [g.uuid for g in candidates])
        self.mig.start()
        for gpu in candidates:
            try:
                on = mig_capable(self.backend, gpu.uuid)[1]
            except BackendError:
                on = False
            profiles = discover_profiles(self.backend, gpu, self.config.nvidia.mig_profiles_for(gpu.name)) if on else ()
            if not profiles:
                log.warning("GPU %s: MIG mode is %s and no allowed profile was found; not offered", gpu.uuid,
                            "on" if on else "off (busy, or waiting for a reset)")
            self.plan[gpu.uuid] = profiles or None
            log.info("GPU %s: MIG profiles %s", gpu.uuid, ", ".join(p.name for p in profiles) or "none")
        self.mig.offer(self.plan)

    def _measure(self, gpus: Sequence[GpuInfo]) -> None:
        try:
            links = topology.measure(self.backend, gpus)
        except BackendError as exc:
            log.warning("node %s: GPU links not measured (%s); %s is not published", self.node, exc,
                        "hami.io/node-nvidia-score")
            return
        self.scores = encode_pair_scores(links.scores)
        if links.asymmetric:
            pairs = ", ".join(f"{a}<->{b}" for a, b in links.asymmetric)
            self.source.node_event(self.node, topology.ASYMMETRIC_REASON,
                                   f"GPU pairs with asymmetric P2P link data scored 0 (possible NVLink hardware or "
                                   f"driver issue): {pairs}")

    def registration(self, gpus: Sequence[GpuInfo], health: dict[str, bool]) -> list[DeviceInfo]:
        return dev.registration(gpus, health, self.settings, self.plan if self.mig is not None else None)

    # ---- Allocate and cleanup --------------------------------------------------------------

    def realize(self, pod: Pod, index: int, grant: ContainerGrant) -> ContainerGrant:
        """A container's MIG devices made now: the grant names the MIG UUIDs only."""
        uuids = [d.uuid for d in grant.devices]
        on_mig = [u in self.plan for u in uuids]
        if self.mig is None or not any(on_mig):
            return grant
        if not all(on_mig):
            raise AllocateError("FAILED_PRECONDITION", f"container {grant.container!r}: the decision mixes MIG "
                                                       "instances and shared GPUs")
        try:
            mig_uuids = self.mig.realize(pod, index, uuids)
            self.mig.record(pod)
        except PodSourceError as exc:
            raise AllocateError("UNAVAILABLE", f"container {grant.container!r}: {exc}") from None
        except MigError as exc:
            raise AllocateError("FAILED_PRECONDITION", f"container {grant.container!r}: {exc}") from None
        return replace(grant, envs=realized_grant_env(mig_uuids), mounts=(), cache_dir="")

    def run_cleanup(self, stopping: threading.Event, interval_s: float) -> None:
        if self.mig is not None:
            self.mig.run_cleanup(stopping, interval_s)


@dataclass
class MigSession:
    """NVIDIA's Allocate session where MIG runs: shares as ever, MIG devices made now."""

    plain: NvidiaSession
    pod: Pod
    features: NodeFeatures

    def grant(self, container: dict[str, Any], devices: tuple[Any, ...]) -> ContainerGrant:
        result = self.plain.grant(container, devices)
        names = [str(c.get("name", "")) for c in containers_in_order(self.pod)]
        return self.features.realize(self.pod, names.index(str(container.get("name", ""))), result)

    def annotations(self) -> dict[str, str]:
        return {}  # the MIG runtime identity is written as each instance is made (on the pod's version)

