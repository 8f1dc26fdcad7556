"""`hami monitor`'s probes (hami.monitor.endpoint) on a real NodeMonitor and PodIndex, through
the WSGI app with a clock we move. The served endpoint is checked with the monitor process in
tests/unit/test_monitor_node.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from prometheus_client import CollectorRegistry, Gauge

from hami.monitor.endpoint import STALL_AFTER_S, Health, app
from hami.monitor.node import MonitorOptions, NodeMonitor
from hami.monitor.pods import PodIndex


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[NodeMonitor, PodIndex, Clock, Any]]:
    pods = PodIndex()
    monitor = NodeMonitor(MonitorOptions(root=tmp_path / "containers"), pods)
    clock = Clock()
    registry = CollectorRegistry()
    Gauge("hami_example", "a metric", registry=registry).set(7)
    yield monitor, pods, clock, app(registry, Health(monitor, pods, clock))
    monitor.close()


def get(wsgi: Any, path: str) -> tuple[str, str]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    answer: list[str] = []
    body = b"".join(wsgi(environ, lambda status, headers: answer.append(status)))
    return answer[0], body.decode()


def test_ready_after_the_pods_and_the_first_pass(parts: tuple[NodeMonitor, PodIndex, Clock, Any]) -> None:
    monitor, pods, clock, wsgi = parts
    assert get(wsgi, "/readyz") == ("503 Service Unavailable", "waiting for the first list of this node's pods\n")
    pods.replace([])
    assert get(wsgi, "/readyz") == ("503 Service Unavailable", "waiting for the monitor's first pass\n")
    monitor.last_pass = clock.now
    assert get(wsgi, "/readyz") == ("200 OK", "ok\n")


def test_live_until_the_loop_stalls(parts: tuple[NodeMonitor, PodIndex, Clock, Any]) -> None:
    monitor, _, clock, wsgi = parts
    assert get(wsgi, "/healthz") == ("200 OK", "ok\n")  # starting: no pass yet, within the grace
    clock.now += STALL_AFTER_S + 1
    status, body = get(wsgi, "/healthz")
    assert status == "503 Service Unavailable" and "has not finished a pass for 31 s" in body
    monitor.last_pass = clock.now - 5
    assert get(wsgi, "/healthz") == ("200 OK", "ok\n")
    clock.now += STALL_AFTER_S
    assert get(wsgi, "/healthz")[0] == "503 Service Unavailable"


def test_other_paths_are_the_metrics(parts: tuple[NodeMonitor, PodIndex, Clock, Any]) -> None:
    *_, wsgi = parts
    for path in ("/metrics", "/"):
        status, body = get(wsgi, path)
        assert status.startswith("200") and "hami_example 7.0" in body
