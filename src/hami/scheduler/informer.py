"""List + watch, resuming from the last resourceVersion, relisting on 410 Gone, backing off on errors.

Informer: one thread per resource kind (the monitor). AsyncInformer: one asyncio task per
resource kind, on the extender's event loop. Every event goes to the callbacks as a plain dict
(a full list with the time.monotonic() at which it was asked for, when asked to).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from lightkube import ApiError, AsyncClient, Client
from lightkube.core.resource import GlobalResource, NamespacedResource
from lightkube.types import OnErrorAction, OnErrorResult

log = logging.getLogger(__name__)



class WatchErrors:
    """lightkube's `on_error` for a watch: a 410 (our version is too old) stops it so that the
    informer relists and loses no event; other errors retry with backoff, then raise."""

    def __init__(self, max_backoff: float):
        self.max_backoff = max_backoff
        self.gone = False

    def __call__(self, exc: Exception, count: int) -> OnErrorResult:
        if isinstance(exc, ApiError) and exc.status.code == 410:
            self.gone = True
            return OnErrorResult(OnErrorAction.STOP)
        if count > 5:
            return OnErrorResult(OnErrorAction.RAISE)
        return OnErrorResult(OnErrorAction.RETRY, sleep=min(0.5 * 2**count, self.max_backoff))

class Informer:
    def __init__(
        self,
        client: Client,
        resource: type[GlobalResource] | type[NamespacedResource],
        replace: Callable[[Iterable[dict[str, Any]]], None],
        upsert: Callable[[dict[str, Any]], None],
        delete: Callable[[dict[str, Any]], None],
        stop: threading.Event,
        max_backoff: float = 30.0,
        fields: dict[str, str] | None = None,
    ):
        self.client = client
        self.resource: Any = resource
        self.replace = replace
        self.upsert = upsert
        self.delete = delete
        self.stop = stop
        self.max_backoff = max_backoff
        self.fields = fields  # a field selector, e.g. {"spec.nodeName": node}
        self.kind = resource.__name__
        self.relists = 0

    def _list(self) -> str:
        kwargs = self._scope()
        listing: Any = self.client.list(self.resource, **kwargs)
        items = [obj.to_dict() for obj in listing]
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
        on_error = WatchErrors(self.max_backoff)

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
        if on_error.gone:
            log.info("%s: watch expired (410 Gone); relisting", self.kind)


class AsyncInformer:
    """Informer as an asyncio task, on the extender's event loop (no thread competes with
    /filter for the GIL); full lists come with the time.monotonic() at which they were asked for."""

    def __init__(
        self,
        client: AsyncClient,
        resource: type[GlobalResource] | type[NamespacedResource],
        replace: Callable[..., None],
        upsert: Callable[[dict[str, Any]], None],
        delete: Callable[[dict[str, Any]], None],
        max_backoff: float = 5.0,
    ):
        self.client = client
        self.resource: Any = resource
        self.replace = replace
        self.upsert = upsert
        self.delete = delete
        # Short: after the API server comes back, the cache must catch up within seconds.
        self.max_backoff = max_backoff
        self.kind = resource.__name__
        self.relists = 0

    def _scope(self) -> dict[str, Any]:
        return {"namespace": "*"} if issubclass(self.resource, NamespacedResource) else {}

    async def _list(self) -> str:
        # When the list was asked for: what the cache did after it is not in the list.
        asked = time.monotonic()
        listing: Any = self.client.list(self.resource, **self._scope())
        items = [obj.to_dict() async for obj in listing]
        self.replace(items, asked)
        self.relists += 1
        return str(listing.resourceVersion)

    async def run(self) -> None:
        """List and watch until cancelled."""
        backoff = 0.5
        while True:
            try:
                version = await self._list()
                log.info("%s: listed, watching from resourceVersion %s", self.kind, version)
                backoff = 0.5
                await self._watch(version)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                log.warning("%s: API error %s (%s); retrying in %.1fs", self.kind, exc.status.code,
                            exc.status.message, backoff)
            except Exception as exc:  # noqa: BLE001 - any transport error: back off and relist
                log.warning("%s: %s: %s; retrying in %.1fs", self.kind, type(exc).__name__, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _watch(self, version: str) -> None:
        on_error = WatchErrors(self.max_backoff)

        events: Any = self.client.watch(self.resource, resource_version=version, on_error=on_error, **self._scope())
        async for kind, obj in events:
            item = obj.to_dict()
            if kind == "DELETED":
                self.delete(item)
            else:
                self.upsert(item)
        if on_error.gone:
            log.info("%s: watch expired (410 Gone); relisting", self.kind)
