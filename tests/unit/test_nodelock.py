"""HAMi's node-lock values and when a held lock may be taken over (the API side is in
tests/integration: test_extender_races, test_hami_scheduler)."""

from __future__ import annotations

from datetime import UTC, datetime

from hami.annotations import keys
from hami.scheduler.nodelock import LockValue, _no_longer_holds, decode_lock, encode_lock

AT = datetime(2026, 1, 1, tzinfo=UTC)


def test_lock_values_as_hami_writes_them() -> None:
    assert encode_lock(AT, "ns", "p") == "2026-01-01T00:00:00Z,ns,p"
    assert decode_lock("2026-01-01T00:00:00Z,ns,p") == LockValue(AT, "ns", "p")
    # Older HAMi: a bare time, naming no pod (honoured until stale).
    assert decode_lock("2026-01-01T00:00:00Z") == LockValue(AT, "", "")
    assert decode_lock("2026-01-01T00:00:00+00:00") == LockValue(AT, "", "")
    for junk in ("", "yesterday", "2026-01-01T00:00:00Z,ns", "a,b,c,d"):
        assert decode_lock(junk) is None


def pod(node: str | None = None, phase: str | None = None, status: str = "Pending") -> dict[str, object]:
    annotations = {keys.BIND_PHASE: phase} if phase else {}
    return {"metadata": {"namespace": "ns", "name": "p", "annotations": annotations},
            "spec": {"nodeName": node} if node else {}, "status": {"phase": status}}


def test_an_owner_holds_the_lock_while_it_waits_for_its_devices() -> None:
    assert _no_longer_holds(pod("n", "allocating"), None) == ""
    assert _no_longer_holds(pod("n", "success"), None) == "is no longer waiting for devices (bind-phase success)"
    assert _no_longer_holds(pod("n", "failed"), None).startswith("is no longer waiting")
    assert _no_longer_holds(pod("n", "allocating", status="Failed"), None) == "has ended"
    # Never bound: held while its bind runs here, not after (the scheduler died mid-bind).
    assert _no_longer_holds(pod(), lambda ns, name: (ns, name) == ("ns", "p")) == ""
    assert _no_longer_holds(pod(), lambda ns, name: False) == "was never bound and no bind of it is running"
