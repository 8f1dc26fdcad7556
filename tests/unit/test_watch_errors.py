"""How an informer's watch answers errors: a 410 stops it for a relist, others retry, then raise."""

from __future__ import annotations

from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.types import OnErrorAction

from hami.scheduler.informer import WatchErrors


def api_error(code: int) -> ApiError:
    return ApiError(status=Status(code=code, message="m"))


def test_gone_stops_the_watch_so_the_informer_relists() -> None:
    errors = WatchErrors(max_backoff=2.0)
    assert errors(api_error(500), 1).action is OnErrorAction.RETRY and not errors.gone
    assert errors(api_error(410), 1).action is OnErrorAction.STOP and errors.gone


def test_other_errors_retry_with_capped_backoff_then_raise() -> None:
    errors = WatchErrors(max_backoff=2.0)
    assert [errors(ConnectionError(), n).sleep for n in (0, 1, 2, 3)] == [0.5, 1.0, 2.0, 2.0]
    assert errors(ConnectionError(), 6).action is OnErrorAction.RAISE
