"""A vendor's own node lock (`LockKind.OWN`): an RFC 3339 time in the vendor's node annotation.

Cambricon's form (`cambricon.com/dsmlu.lock`, HAMi's pkg/device/cambricon): taken at bind,
refused while younger than two minutes, deleted by the vendor's device plugin once it has
allocated the pod, or by the scheduler when the bind fails. The API calls are in
hami.scheduler.nodelock; the values and the expiry rule are here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

LOCK_EXPIRY = timedelta(minutes=2)


def encode_lock(at: datetime) -> str:
    """The lock value for a lock taken at `at` (RFC 3339 in UTC, whole seconds, as Go formats it)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_lock(value: str) -> datetime | None:
    """When the lock was taken; None for a value that is not an RFC 3339 time."""
    text = value.strip()
    if "T" not in text:
        return None
    try:
        at = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    if at.tzinfo is None:  # RFC 3339 always names its offset; Go rejects a bare local time
        return None
    return at


def lock_is_free(value: str | None, now: datetime) -> bool:
    """Whether a node whose lock annotation is `value` may be locked now.

    Absent, or taken more than two minutes ago: free (HAMi deletes a stale lock and takes it).
    A value that is not a time is also free: HAMi refuses to bind to that node until someone
    edits the annotation by hand, which only strands pods.
    """
    if value is None:
        return True
    at = decode_lock(value)
    return at is None or now - at > LOCK_EXPIRY


def lock_error(node: str) -> str:
    """HAMi's error text for a node whose lock is held."""
    return f"node {node} has been locked within 2 minutes"
