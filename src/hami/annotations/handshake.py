"""`hami.io/node-handshake`: liveness between the node agent and the scheduler.

The node agent writes `Reported <time>`; the scheduler writes `Requesting_<YYYY-MM-DD HH:MM:SS>`
when it asks the agent to report again, and `Deleted_<...>` once it gave the node up.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from hami.annotations.errors import AnnotationError

_SCHEDULER_TIME = "%Y-%m-%d %H:%M:%S"  # Go's time.DateTime


class HandshakeState(enum.Enum):
    REPORTED = "Reported"
    REQUESTING = "Requesting"
    DELETED = "Deleted"


@dataclass(frozen=True)
class Handshake:
    state: HandshakeState
    # The time as written; `at` is parsed when the format allows it.
    text: str
    at: datetime | None


def encode_reported(now: datetime) -> str:
    """What the node agent writes; the time in Go's time.Time.String() layout."""
    return "Reported " + now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")


def encode_requesting(now: datetime) -> str:
    return "Requesting_" + now.astimezone(UTC).strftime(_SCHEDULER_TIME)


def encode_deleted(now: datetime) -> str:
    return "Deleted_" + now.astimezone(UTC).strftime(_SCHEDULER_TIME)


def decode_handshake(value: str) -> Handshake:
    if value.startswith("Reported"):
        text = value[len("Reported") :].strip()
        return Handshake(HandshakeState.REPORTED, text, _parse_go_time(text))
    for state in (HandshakeState.REQUESTING, HandshakeState.DELETED):
        prefix = state.value + "_"
        if value.startswith(prefix):
            text = value[len(prefix) :]
            try:
                at = datetime.strptime(text, _SCHEDULER_TIME).replace(tzinfo=UTC)
            except ValueError:
                raise AnnotationError(f"{state.value} time {text!r} is not YYYY-MM-DD HH:MM:SS") from None
            return Handshake(state, text, at)
    raise AnnotationError(f"unknown handshake value {value!r}")


def _parse_go_time(text: str) -> datetime | None:
    """Parse Go's `2006-01-02 15:04:05.999999999 -0700 MST [m=+1.2]`; None if it is not that."""
    parts = text.split()
    if len(parts) < 3:
        return None
    date, clock, offset = parts[0], parts[1], parts[2]
    if "." in clock:
        whole, frac = clock.split(".", 1)
        clock = f"{whole}.{frac[:6].ljust(6, '0')}"
    else:
        clock += ".000000"
    try:
        return datetime.strptime(f"{date} {clock} {offset}", "%Y-%m-%d %H:%M:%S.%f %z")
    except ValueError:
        return None
