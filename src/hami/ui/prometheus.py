"""Live usage from Prometheus, as `hami monitor` exports it (HAMi's metric names and labels).

Optional: without `--prometheus` the pages show allocation only. Prometheus answers are the same
for every viewer, so a background thread fetches them for everyone every `interval` seconds; the
pages then show each viewer only the devices and pods their RBAC lets them see. A Prometheus that
is down or slow never delays a page: the pages show the last answer, or a one-line note.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

log = logging.getLogger(__name__)
MIB = 2**20

# Per device: memory in use and utilisation (percent, as HAMi exports it despite the name).
DEVICE_MEMORY = "max by (node, device_uuid) (hami_host_gpu_memory_used_bytes)"
DEVICE_UTILIZATION = "max by (node, device_uuid) (hami_host_gpu_utilization_ratio)"
# Per pod: device memory its containers use, and their busiest device's utilisation.
POD_MEMORY = "sum by (namespace, pod) (hami_vgpu_memory_used_bytes)"
POD_UTILIZATION = "max by (namespace, pod) (hami_container_device_utilization_ratio)"
# Trends per device type, over the last hour.
TYPE_MEMORY = "sum by (device_type) (hami_host_gpu_memory_used_bytes)"
TREND_SECONDS, TREND_POINTS = 3600, 120


class PrometheusError(Exception):
    """Prometheus could not answer; the message says why, in one line."""


@dataclass
class Usage:
    """What the node monitors report, keyed as the pages need it."""

    device_memory: dict[tuple[str, str], int] = field(default_factory=dict)  # (node, uuid) -> MiB
    device_utilization: dict[tuple[str, str], float] = field(default_factory=dict)  # percent
    pod_memory: dict[str, int] = field(default_factory=dict)  # "namespace/pod" -> MiB
    pod_utilization: dict[str, float] = field(default_factory=dict)
    # Per device type: [times], [MiB in use] over the last hour.
    trends: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    error: str = ""


class Prometheus:
    def __init__(self, url: str, ca_file: str | None = None, token_file: str | None = None, timeout: float = 5.0,
                 interval: float = 10.0, clock: Callable[[], float] = time.time):
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.url = url.rstrip("/")
        self.token_file = token_file
        self.interval = interval
        self.clock = clock
        self._http = httpx2.Client(base_url=self.url, verify=verify, timeout=timeout)
        self._latest = Usage(error="no answer from Prometheus yet")

    def run(self, stop: threading.Event) -> None:
        """Refresh until stopped (a thread's target)."""
        while not stop.is_set():
            self.refresh()
            stop.wait(self.interval)

    @property
    def latest(self) -> Usage:
        return self._latest

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        headers = {}
        if self.token_file:  # read each time: a mounted token is rotated in place
            headers["Authorization"] = f"Bearer {Path(self.token_file).read_text().strip()}"
        try:
            response = self._http.get(path, params=params, headers=headers)
        except httpx2.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.url} did not answer: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(f"Prometheus at {self.url} answered {response.status_code}, not JSON") from None
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus: {body.get('error') or response.status_code}")
        result: list[dict[str, Any]] = (body.get("data") or {}).get("result") or []
        return result

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return [(r.get("metric") or {}, float(r["value"][1])) for r in self._get("/api/v1/query", {"query": promql})]

    def query_range(self, promql: str, seconds: int, points: int) -> list[tuple[dict[str, str], list[float],
                                                                               list[float]]]:
        end = self.clock()
        step = max(1, seconds // points)
        params = {"query": promql, "start": str(end - seconds), "end": str(end), "step": str(step)}
        out = []
        for r in self._get("/api/v1/query_range", params):
            values = r.get("values") or []
            out.append((r.get("metric") or {}, [float(t) for t, _ in values], [float(v) for _, v in values]))
        return out

    def refresh(self) -> Usage:
        """Ask Prometheus for everything the pages show; on failure, `error` says why."""
        usage = Usage()
        try:
            for labels, value in self.query(DEVICE_MEMORY):
                usage.device_memory[(labels.get("node", ""), labels.get("device_uuid", ""))] = int(value // MIB)
            for labels, value in self.query(DEVICE_UTILIZATION):
                usage.device_utilization[(labels.get("node", ""), labels.get("device_uuid", ""))] = value
            for labels, value in self.query(POD_MEMORY):
                usage.pod_memory[f"{labels.get('namespace', '')}/{labels.get('pod', '')}"] = int(value // MIB)
            for labels, value in self.query(POD_UTILIZATION):
                usage.pod_utilization[f"{labels.get('namespace', '')}/{labels.get('pod', '')}"] = value
            for labels, times, values in self.query_range(TYPE_MEMORY, TREND_SECONDS, TREND_POINTS):
                usage.trends[labels.get("device_type", "")] = (times, [v / MIB for v in values])
        except PrometheusError as exc:
            log.warning("%s", exc)
            usage = Usage(error=str(exc))
        self._latest = usage  # one reference swap: readers see the old answer or the new, whole
        return usage
