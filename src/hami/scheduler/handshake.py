"""The scheduler's side of HAMi's node handshake, for vendors whose node agent reports.

Every 15 s (HAMi's register loop) the leader reads the nodes, asks each vendor agent that
answered to report again (`Requesting_<time>`), and hands the nodes to the cache, which drops
the devices of an agent that left a request unanswered for 60 s (Vendor.node_health).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from lightkube import ApiError

from hami.scheduler.cache import ClusterCache
from hami.scheduler.kube import KubeApi

log = logging.getLogger(__name__)
INTERVAL_S = 15.0


class HandshakeKeeper:
    def __init__(self, api: KubeApi, cache: ClusterCache, is_leader: threading.Event,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.api = api
        self.cache = cache
        self.is_leader = is_leader
        self.now = now

    def tick(self) -> int:
        """One round; returns how many handshake requests were written."""
        if not self.is_leader.is_set():
            return 0
        written = 0
        now = self.now()
        for node in self.cache.node_objects():
            name = str((node.get("metadata") or {}).get("name"))
            patch: dict[str, str | None] = {}
            for vendor in self.cache.vendors:
                value = vendor.handshake_request(node, now)
                if value is not None and vendor.keys.handshake is not None:
                    patch[vendor.keys.handshake] = value
            if patch:
                try:
                    self.api.patch_node_annotations(name, patch)
                    written += len(patch)
                except ApiError as exc:
                    log.warning("node %s: could not write the handshake request: %s", name, exc.status.message)
            self.cache.upsert_node(node)  # re-judges health at this time
        return written

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(INTERVAL_S):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a failed round is retried on the next
                log.warning("handshake round failed: %s: %s", type(exc).__name__, exc)
