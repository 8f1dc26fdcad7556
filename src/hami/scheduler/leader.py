"""Leader election on a coordination.k8s.io/v1 Lease, so that two replicas never both decide."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from lightkube import ApiError, Client
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(self, client: Client, namespace: str, name: str, identity: str, is_leader: threading.Event,
                 lease_seconds: int = 15, renew_every: float = 5.0,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.is_leader = is_leader
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self.now = now

    def try_acquire(self) -> bool:
        """One round: take or renew the lease if free, expired or ours. True when we lead."""
        now = self.now()
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            lease = Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                          spec=LeaseSpec(holderIdentity=self.identity, leaseDurationSeconds=self.lease_seconds,
                                         acquireTime=now, renewTime=now, leaseTransitions=0))
            try:
                self.client.create(lease)
                return True
            except ApiError as create_exc:
                if create_exc.status.code == 409:
                    return False
                raise
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity
        renewed = spec.renewTime or spec.acquireTime
        duration = timedelta(seconds=spec.leaseDurationSeconds or self.lease_seconds)
        expired = renewed is None or renewed + duration < now
        if holder not in (None, "", self.identity) and not expired:
            return False
        if holder != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = self.lease_seconds
        spec.renewTime = now
        lease.spec = spec
        try:
            self.client.replace(lease)  # carries resourceVersion: a concurrent writer gets 409
            return True
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                leading = self.try_acquire()
            except Exception as exc:  # noqa: BLE001 - keep electing through API trouble
                log.warning("leader election: %s", exc)
                leading = False
            if leading and not self.is_leader.is_set():
                log.info("leader election: %s is now the leader", self.identity)
                self.is_leader.set()
            elif not leading and self.is_leader.is_set():
                log.info("leader election: %s lost the lease", self.identity)
                self.is_leader.clear()
            stop.wait(self.renew_every)
