"""The node agent: keeps `hami.io/node-nvidia-register` and the handshake up to date.

It writes only when something changed: the device list (a health change, a new config) or the
scheduler asking for a report (a handshake that is not `Reported …`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
        """Patch the node when its annotations differ from `devices`; True when it patched.

        Raises PodSourceError when the API server cannot be reached (the caller retries).
        """
        current = self.source.node_annotations(self.node)
        wanted = encode_node_devices(devices)
        patch: dict[str, str | None] = {}
        if current.get(keys.NODE_NVIDIA_REGISTER) != wanted:
            patch[keys.NODE_NVIDIA_REGISTER] = wanted
        if patch or not current.get(keys.NODE_HANDSHAKE, "").startswith("Reported"):
            patch[keys.NODE_HANDSHAKE] = encode_reported(self.now())
        if not patch:
            return False
        self.source.patch_node_annotations(self.node, patch)
        log.info("node %s: registered %d GPU(s) (%d healthy)", self.node, len(devices),
                 sum(d.health for d in devices))
        return True
