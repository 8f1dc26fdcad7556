"""The HTTP(S) face of the scheduler process: extender routes, the webhook, health and metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from hami.config import NvidiaConfig
from hami.errors import HamiError
from hami.scheduler.extender import BadRequest, Extender
from hami.webhook.mutate import WebhookOptions, review_response

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024 * 1024


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY:
        raise BadRequest("request body too large")
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body is not a JSON object")
    return data


# Fine buckets (0.25 ms to ~80 s, x1.25 each) so that p50/p99 can be read off the histogram.
LATENCY_BUCKETS = tuple(0.00025 * 1.25**i for i in range(58))


def _handler(work: Callable[[dict[str, Any]], Any], error_shape: Callable[[str], Any],
             latency: Histogram | None = None, inline: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """`inline` work runs on the event loop: short CPU work (filter, prioritize) must not queue
    behind binds, which wait on the API and on node locks in the thread pool."""

    async def handle(request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await _json_body(request)
            result = work(body) if inline else await run_in_threadpool(work, body)
            payload = msgspec.json.encode(result)
            if latency is not None:
                latency.labels(request.url.path.strip("/")).observe(time.perf_counter() - started)
            return Response(payload, media_type="application/json")
        except (BadRequest, HamiError) as exc:
            log.warning("%s: bad request: %s", request.url.path, exc)
            return JSONResponse(error_shape(str(exc)), status_code=400)
        except Exception as exc:  # noqa: BLE001 - answer kube-scheduler instead of dropping the connection
            log.exception("%s failed", request.url.path)
            return JSONResponse(error_shape(f"internal error: {type(exc).__name__}: {exc}"), status_code=500)

    return handle


def build_app(extender: Extender | None, registry: CollectorRegistry | None, webhook: WebhookOptions | None,
              ready: Callable[[], bool], nvidia: NvidiaConfig | None = None) -> Starlette:
    routes: list[Route] = []
    latency = None
    if registry is not None:
        latency = Histogram("hami_extender_request_duration_seconds", "Time to answer an extender call",
                            ["route"], registry=registry, buckets=LATENCY_BUCKETS)
    if extender is not None:
        if latency is not None:
            held = latency.labels("bind-held")  # a bind's own work, once its node is free
            extender.on_bind_held = held.observe
        routes += [
            Route("/filter", _handler(extender.filter,
                                      lambda e: {"NodeNames": [], "FailedNodes": {}, "Error": e}, latency, inline=True),
                  methods=["POST"]),
            Route("/prioritize", _handler(extender.prioritize, lambda e: [], latency, inline=True), methods=["POST"]),
            Route("/bind", _handler(extender.bind, lambda e: {"Error": e}, latency), methods=["POST"]),
        ]
    if webhook is not None:
        resources = nvidia or (extender.cache.config.nvidia if extender is not None else NvidiaConfig())
        routes.append(Route("/webhook", _handler(lambda review: review_response(review, resources, webhook),
                                                 lambda e: {"error": e}), methods=["POST"]))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        if ready():
            return PlainTextResponse("ok")
        return PlainTextResponse("not ready", status_code=503)

    async def metrics(request: Request) -> Response:
        if registry is None:
            return PlainTextResponse("", media_type=CONTENT_TYPE_LATEST)
        payload = await run_in_threadpool(generate_latest, registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    routes += [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    return Starlette(routes=routes)
