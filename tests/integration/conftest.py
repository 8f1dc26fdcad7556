"""Fixtures for integration tests against a real control plane.

- ``control_plane`` (session): etcd + kube-apiserver from tests/cluster, shared by
  every integration test. Fails with a clear message if the binaries are not
  built (`make cluster-binaries`).
- ``kube`` : the shared lightkube.Client (admin).
- ``namespace`` : a fresh namespace per test, deleted afterwards (with its pods).
- ``add_node`` : ``add_node(name, capacity=..., annotations=..., labels=..., taints=...)``
  creates a fake Ready node (kept Ready by heartbeats) and removes it after the test.
- ``start_scheduler`` : ``start_scheduler(config_yaml_or_dict, name=None)`` starts a
  kube-scheduler with that KubeSchedulerConfiguration and stops it after the test.
- ``loop`` : an asyncio event loop in a thread (LoopThread: run(coro), call(fn, *args)), for
  the extender's binds and informers, which are coroutines.

The cluster is shared, so tests must not depend on being alone: use unique node
names, and give test schedulers their own ``schedulerName`` profiles.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from tests.cluster import ControlPlane, Scheduler
from tests.integration.event_loop import LoopThread


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane.start(tmp_path_factory.mktemp("control-plane"))
    try:
        yield cp
    finally:
        cp.close()


@pytest.fixture
def kube(control_plane: ControlPlane) -> Any:
    """The control plane's shared lightkube.Client (admin credentials)."""
    return control_plane.client()


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    name = control_plane.create_namespace(re.sub(r"^test_", "", request.node.name))
    yield name
    control_plane.delete_namespace(name)


AddNode = Callable[..., dict[str, Any]]


@pytest.fixture
def add_node(control_plane: ControlPlane) -> Iterator[AddNode]:
    added: list[str] = []

    def _add(
        name: str,
        capacity: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        node = control_plane.add_node(name, capacity, annotations, **kwargs)
        added.append(name)
        return node

    yield _add
    for name in added:
        control_plane.remove_node(name)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    """An event loop in its own thread, for the extender's coroutines."""
    thread = LoopThread()
    yield thread
    thread.close()


StartScheduler = Callable[..., Scheduler]


@pytest.fixture
def start_scheduler(control_plane: ControlPlane) -> Iterator[StartScheduler]:
    started: list[Scheduler] = []

    def _start(config: str | Mapping[str, Any], name: str | None = None, extra_args: Sequence[str] = ()) -> Scheduler:
        sched = control_plane.start_scheduler(config, name=name, extra_args=extra_args)
        started.append(sched)
        return sched

    yield _start
    for sched in started:
        sched.stop()

