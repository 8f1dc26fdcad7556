"""The node agent: keeps a vendor's registration annotations and its handshake up to date,
and says whether this node's plugin tells pods apart through kubelet's pod-resources API.

It writes only when something changed: the device list (a health change, a new config), the
scheduler asking for a report (a handshake that is not `Reported…`), or whether kubelet's
pod-resources API can be asked (ALLOCATE_BY_POD_RESOURCES: with it, the scheduler binds to this
node without HAMi's node lock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from hami.annotations import keys
from hami.annotations.handshake import encode_reported
from hami.annotations.node_register import encode_node_devices
from hami.deviceplugin.pods import PodSource
from hami.model.devices import DeviceInfo
from hami.scheduler.nodelock import ALLOCATE_BY_POD_RESOURCES

log = logging.getLogger(__name__)


class NodeAgent:
    def __init__(
        self, source: PodSource, node: str, now: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.source = source
        self.node = node
        self.now = now

    def sync(self, devices: list[DeviceInfo]) -> bool:
        """NVIDIA's registration: patch the node when its annotations differ from `devices`;
        True when it patched. Raises PodSourceError when the API server cannot be reached."""
        patched = self.sync_annotations({keys.NODE_NVIDIA_REGISTER: encode_node_devices(devices)},
                                        keys.NODE_HANDSHAKE, encode_reported)
        if patched:
            log.info("node %s: registered %d GPU(s) (%d healthy)", self.node, len(devices),
                     sum(d.health for d in devices))
        return patched

    def sync_annotations(self, wanted: Mapping[str, str | None], handshake_key: str | None = None,
                         handshake: Callable[[datetime], str] | None = None) -> bool:
        """Patch the node's annotations to `wanted` (None: the key is removed), and write the
        handshake (`handshake(now)` under `handshake_key`) with any change or when the scheduler
        asks; True when it patched.

        Raises PodSourceError when the API server cannot be reached (the caller retries).
        """
        current = self.source.node_annotations(self.node)
        patch = {k: v for k, v in wanted.items() if current.get(k) != v}
        if handshake_key is not None and handshake is not None and (
            patch or not current.get(handshake_key, "").startswith("Reported")
        ):
            patch[handshake_key] = handshake(self.now())
        if not patch:
            return False
        self.source.patch_node_annotations(self.node, patch)
        return True

    def advertise_pod_matching(self, resource: str, matched: bool) -> bool:
        """Add `resource` to the node's ALLOCATE_BY_POD_RESOURCES list (a comma list: one entry per
        device plugin of the node) when `matched`, else remove it; True when it patched. On
        shutdown the plugin removes it, so that a plugin that replaces it (perhaps HAMi's, which
        needs the node lock) is not assumed to have it."""
        current = self.source.node_annotations(self.node).get(ALLOCATE_BY_POD_RESOURCES, "")
        listed = [r for r in current.split(",") if r]
        wanted = sorted({*listed, resource}) if matched else [r for r in listed if r != resource]
        if wanted == listed:
            return False
        self.source.patch_node_annotations(self.node, {ALLOCATE_BY_POD_RESOURCES: ",".join(wanted) or None})
        log.info("node %s: %s pods are %s", self.node, resource, "told apart by kubelet's pod-resources API"
                 if matched else "found by HAMi's node lock")
        return True
