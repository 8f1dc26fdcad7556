"""Leader election on a coordination.k8s.io/v1 Lease, so that two replicas never both decide.

Clocks of different machines are never compared (client-go's rule). A replica that does not
hold the lease times it by its own monotonic clock: the holder's lease is expired once the
Lease record has not changed for leaseDurationSeconds since this replica first saw it as it
is. The holder leads only until `renew_deadline` seconds after it *sent* its last successful
renewal, a bound shorter than the lease: when renewal fails or hangs, it stops leading
before any other replica may take over, however long the hung call takes to return.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError, Client
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


class Leadership(threading.Event):
    """Whether this replica leads now: a threading.Event (set, clear, is_set; the parts that
    read it take it as one) plus a deadline: leadership granted with hold_until() ends by itself
    at that monotonic time. Do not wait() on it: the deadline does not wake waiters."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._monotonic = monotonic
        self._until: float | None = None  # None: not leading; inf: leading without a deadline
        self._lock = threading.Lock()

    def set(self) -> None:
        with self._lock:
            self._until = float("inf")

    def clear(self) -> None:
        with self._lock:
            self._until = None

    def hold_until(self, deadline: float) -> None:
        with self._lock:
            self._until = deadline

    def is_set(self) -> bool:
        with self._lock:
            return self._until is not None and self._monotonic() < self._until


def _record(spec: LeaseSpec) -> tuple[Any, ...]:
    return (spec.holderIdentity, spec.renewTime, spec.acquireTime, spec.leaseTransitions, spec.leaseDurationSeconds)


class LeaderElector:
    def __init__(self, client: Client, namespace: str, name: str, identity: str, leadership: Leadership,
                 lease_seconds: int = 15, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 monotonic: Callable[[], float] = time.monotonic):
        if not 0 < renew_deadline < lease_seconds:
            raise ValueError("renew_deadline must be positive and shorter than the lease")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.leadership = leadership
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.now = now  # only written into the Lease, for people reading it
        self.monotonic = monotonic
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    def _observe(self, spec: LeaseSpec, at: float) -> None:
        record = _record(spec)
        if record != self._observed:
            self._observed, self._observed_at = record, at

    def try_acquire(self) -> bool:
        """One round: take or renew the lease if free, expired or ours. True when we lead now,
        False when another replica does; API errors propagate (leadership then runs out by itself)."""
        sent = self.monotonic()
        now = self.now()
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            spec = LeaseSpec(holderIdentity=self.identity, leaseDurationSeconds=self.lease_seconds,
                             acquireTime=now, renewTime=now, leaseTransitions=0)
            try:
                self.client.create(Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace), spec=spec))
            except ApiError as create_exc:
                if create_exc.status.code == 409:
                    return False
                raise
            return self._leading(spec, sent)
        spec = lease.spec or LeaseSpec()
        self._observe(spec, sent)
        holder = spec.holderIdentity
        if holder not in (None, "", self.identity):
            duration = spec.leaseDurationSeconds or self.lease_seconds
            if sent < self._observed_at + duration:
                return False
            log.info("leader election: the lease of %s has not been renewed for %ss; taking it", holder, duration)
        if holder != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = self.lease_seconds
        spec.renewTime = now
        lease.spec = spec
        try:
            self.client.replace(lease)  # carries resourceVersion: a concurrent writer gets 409
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        return self._leading(spec, sent)

    def _leading(self, spec: LeaseSpec, sent: float) -> bool:
        self._observe(spec, sent)
        # Measured from when the renewal was sent, not answered: the lease was renewed no
        # earlier than that, so every other replica waits at least lease_seconds from then.
        self.leadership.hold_until(sent + self.renew_deadline)
        return True

    def run(self, stop: threading.Event) -> None:
        leading = False
        while not stop.is_set():
            try:
                if not self.try_acquire():
                    self.leadership.clear()
            except Exception as exc:  # noqa: BLE001 - keep electing through API trouble
                log.warning("leader election: %s", exc)
            now_leading = self.leadership.is_set()
            if now_leading != leading:
                log.info("leader election: %s %s", self.identity, "is now the leader" if now_leading
                         else "is no longer the leader")
                leading = now_leading
            stop.wait(self.retry_period)
