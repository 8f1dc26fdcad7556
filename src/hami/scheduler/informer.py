"""List + watch, resuming from the last resourceVersion, relisting on 410 Gone, backing off on errors.

One thread per resource kind; every event goes to the cache as a plain dict (a full list with
the time.monotonic() at which it was asked for, when `list_time`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lightkube import ApiError, Client
from lightkube.core.resource import GlobalResource, NamespacedResource
from lightkube.types import OnErrorAction, OnErrorResult

log = logging.getLogger(__name__)


class Informer:
    def __init__(
        self,
        client: Client,
        resource: type[GlobalResource] | type[NamespacedResource],
        replace: Callable[..., None],
        upsert: Callable[[dict[str, Any]], None],
        delete: Callable[[dict[str, Any]], None],
        stop: threading.Event,
        max_backoff: float = 30.0,
        fields: dict[str, str] | None = None,
        list_time: bool = False,
    ):
        self.client = client
        self.resource: Any = resource
        self.replace = replace
        self.upsert = upsert
        self.delete = delete
        self.stop = stop
        self.max_backoff = max_backoff
        self.fields = fields  # a field selector, e.g. {"spec.nodeName": node}
        self.list_time = list_time  # replace(items, time asked) instead of replace(items)
        self.kind = resource.__name__
        self.relists = 0

    def _list(self) -> str:
        kwargs = self._scope()
        # When the list was asked for: what the cache did after it is not in the list.
        asked = time.monotonic()
        listing: Any = self.client.list(self.resource, **kwargs)
        items = [obj.to_dict() for obj in listing]
        if self.list_time:
            self.replace(items, asked)
        else:
            self.replace(items)
        self.relists += 1
        return str(listing.resourceVersion)

    def _scope(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"namespace": "*"} if issubclass(self.resource, NamespacedResource) else {}
        if self.fields:
            kwargs["fields"] = self.fields
        return kwargs

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                version = self._list()
                log.info("%s: listed, watching from resourceVersion %s", self.kind, version)
                backoff = 0.5
                self._watch(version)
            except ApiError as exc:
                log.warning("%s: API error %s (%s); retrying in %.1fs", self.kind, exc.status.code,
                            exc.status.message, backoff)
            except Exception as exc:  # noqa: BLE001 - any transport error: back off and relist
                log.warning("%s: %s: %s; retrying in %.1fs", self.kind, type(exc).__name__, exc, backoff)
            if self.stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff)

    def _watch(self, version: str) -> None:
        gone = False

        def on_error(exc: Exception, count: int) -> OnErrorResult:
            nonlocal gone
            if isinstance(exc, ApiError) and exc.status.code == 410:
                gone = True  # our version is too old: stop and relist so no event is lost
                return OnErrorResult(OnErrorAction.STOP)
            if count > 5:
                return OnErrorResult(OnErrorAction.RAISE)
            return OnErrorResult(OnErrorAction.RETRY, sleep=min(0.5 * 2**count, self.max_backoff))

        kwargs = self._scope()
        events: Any = self.client.watch(self.resource, resource_version=version, on_error=on_error, **kwargs)
        for kind, obj in events:
            if self.stop.is_set():
                return
            item = obj.to_dict()
            if kind == "DELETED":
                self.delete(item)
            else:
                self.upsert(item)
        if gone:
            log.info("%s: watch expired (410 Gone); relisting", self.kind)
