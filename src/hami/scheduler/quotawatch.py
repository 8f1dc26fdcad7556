"""Feeds the quota book from the ResourceQuota informer, and says on a ResourceQuota (an Event)
when one of its entries on our resources cannot be read and is ignored."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from hami.scheduler.kube import KubeApi
from hami.scheduler.quota import QuotaBook

log = logging.getLogger(__name__)


class QuotaWatch:
    def __init__(self, book: QuotaBook, api: KubeApi | None, is_leader: threading.Event):
        self.book = book
        self.api = api
        self.is_leader = is_leader
        self._told: dict[str, str] = {}  # quota uid -> the problems last told

    def upsert(self, quota: dict[str, Any]) -> None:
        self._tell(quota, self.book.upsert_quota(quota))

    def delete(self, quota: dict[str, Any]) -> None:
        self.book.delete_quota(quota)
        self._told.pop(str((quota.get("metadata") or {}).get("uid")), None)

    def replace(self, quotas: Iterable[dict[str, Any]]) -> None:
        listed = list(quotas)
        self.book.replace_quotas(listed)
        for quota in listed:
            self._tell(quota, self.book.upsert_quota(quota))

    def _tell(self, quota: dict[str, Any], problems: list[str]) -> None:
        uid = str((quota.get("metadata") or {}).get("uid"))
        text = "; ".join(problems)
        if self._told.get(uid, "") == text:
            return
        self._told[uid] = text
        for problem in problems:
            log.warning("%s", problem)
            if self.api is not None and self.is_leader.is_set():
                object_event(self.api, quota, "ResourceQuota", "QuotaNotUnderstood", problem)


def object_event(api: KubeApi, obj: dict[str, Any], kind: str, reason: str, message: str,
                 warning: bool = True) -> None:
    """An Event on a namespaced object of any kind; failures are logged, never raised."""
    metadata = obj.get("metadata") or {}
    now = datetime.now(UTC)
    try:
        api.client.create(Event(
            metadata=ObjectMeta(generateName=f"{metadata.get('name')}.", namespace=metadata.get("namespace")),
            involvedObject=ObjectReference(kind=kind, name=metadata.get("name"), namespace=metadata.get("namespace"),
                                           uid=metadata.get("uid"), apiVersion="v1"),
            reason=reason, message=message[:1024], type="Warning" if warning else "Normal",
            source=EventSource(component=api.component), firstTimestamp=now, lastTimestamp=now, count=1,
        ))
    except ApiError as exc:
        log.warning("could not record event %s on %s %s: %s", reason, kind, metadata.get("name"), exc.status.message)
