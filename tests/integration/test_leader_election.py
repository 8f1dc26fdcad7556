"""Leader election against the real API server: never two leaders, whatever the replicas' wall
clocks say, and a leader whose renewal hangs stops leading before the other replica takes over."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hami.scheduler.kube import make_client
from hami.scheduler.leader import LeaderElector, Leadership
from tests.cluster import ControlPlane, wait_for
from tests.cluster.proxy import TcpProxy

# Short, so that the tests take seconds: the defaults are 15 s, 10 s and 2 s.
LEASE, DEADLINE, RETRY = 3, 2.0, 0.2


def elector(client: object, lease: str, identity: str, skew: float = 0.0) -> LeaderElector:
    def clock() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=skew)

    return LeaderElector(client, "kube-system", lease, identity, Leadership(), lease_seconds=LEASE,  # type: ignore[arg-type]
                         renew_deadline=DEADLINE, retry_period=RETRY, now=clock)


@contextmanager
def running(*electors: LeaderElector) -> Iterator[threading.Event]:
    stop = threading.Event()
    threads = [threading.Thread(target=e.run, args=(stop,), daemon=True) for e in electors]
    for thread in threads:
        thread.start()
    try:
        yield stop
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


class Watch:
    """Samples who leads every few milliseconds, in its own thread."""

    def __init__(self, **leaders: Leadership) -> None:
        self.leaders = leaders
        self.samples: list[tuple[float, frozenset[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.samples.append((time.monotonic(), frozenset(n for n, lead in self.leaders.items() if lead.is_set())))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def overlap(self) -> int:
        """Samples in which more than one replica led."""
        return sum(1 for _, who in self.samples if len(who) > 1)

    def first(self, predicate: Callable[[frozenset[str]], bool]) -> float | None:
        return next((t for t, who in self.samples if predicate(who)), None)


@pytest.mark.timeout(120)
def test_clocks_20_seconds_apart_never_give_two_leaders(control_plane: ControlPlane, namespace: str) -> None:
    lease = f"skew-{namespace}"[:60]
    kubeconfig = str(control_plane.kubeconfig)
    a = elector(make_client(kubeconfig), lease, "a")
    b = elector(make_client(kubeconfig), lease, "b", skew=20.0)  # its wall clock runs 20 s ahead
    with running(a) as _:
        wait_for(a.leadership.is_set, timeout=30, message="a leads")
        watch = Watch(a=a.leadership, b=b.leadership)
        with running(b):
            time.sleep(3 * LEASE)
        watch.stop()
    assert watch.overlap() == 0
    # a kept renewing, so b never took over.
    assert all(who == {"a"} for _, who in watch.samples), {who for _, who in watch.samples}


@pytest.mark.timeout(120)
def test_a_leader_whose_renewal_hangs_steps_down_before_the_other_takes_over(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    lease = f"hang-{namespace}"[:60]
    with TcpProxy("127.0.0.1", control_plane.apiserver_port) as proxy:
        through_proxy = control_plane.kubeconfig_through(proxy.port, tmp_path / "kubeconfig")
        a = elector(make_client(str(through_proxy), timeout=60), lease, "a")  # a hung call waits a minute
        b = elector(make_client(str(control_plane.kubeconfig)), lease, "b")
        with running(a) as stop_a:
            wait_for(a.leadership.is_set, timeout=30, message="a leads")
            with running(b):
                time.sleep(2 * RETRY)  # b has seen the lease held by a
                watch = Watch(a=a.leadership, b=b.leadership)
                frozen_at = time.monotonic()
                proxy.freeze()  # a's next renewal hangs
                wait_for(b.leadership.is_set, timeout=30, message="b takes over")
                time.sleep(0.5)
                watch.stop()
            stop_a.set()
            proxy.thaw()
    assert watch.overlap() == 0
    a_out = watch.first(lambda who: "a" not in who)
    b_in = watch.first(lambda who: "b" in who)
    assert a_out is not None and b_in is not None and a_out < b_in
    # a stopped within the renew deadline of its last renewal, sent before the freeze.
    assert a_out - frozen_at <= DEADLINE + 0.1
    # b waited a whole lease, by its own clock, after it last saw the lease change.
    assert b_in - frozen_at >= LEASE - RETRY - 0.1
