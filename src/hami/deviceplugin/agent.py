"""The node agent: keeps a vendor's registration annotations and its handshake up to date.

It writes only when something changed: the device list (a health change, a new config) or the
scheduler asking for a report (a handshake that is not `Reported…`).
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
