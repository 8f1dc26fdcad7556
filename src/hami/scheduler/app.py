"""The HTTP(S) face of the scheduler process: extender routes, the webhook, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from hami.clientauth import ClientCertRule
from hami.config import HamiConfig
from hami.errors import HamiError
from hami.scheduler.extender import BadRequest, Extender
from hami.serve import client_certificate
from hami.vendors.registry import VendorSet, default_vendors, vendor_set
from hami.webhook.mutate import WebhookOptions, review_response

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestLimits:
    """What a request body may be; beyond it the answer is a 4xx, never a crash."""

    max_body_bytes: int = 64 * 1024 * 1024  # 413 above (a 5,000-node NodeList fits)
    body_timeout: float = 30.0  # 408 when the whole body has not arrived by then
    max_depth: int = 100  # JSON nesting; Kubernetes objects stay under 40


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests more than `limit` levels. Level by level, without recursion (deep
    data must not recurse here); a level's scalars are skipped by their types, in C, so that a long
    list of node names costs little."""
    level = [value]
    for _ in range(limit):
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            kinds = set(map(type, children))
            if dict in kinds or list in kinds:
                below += [c for c in children if type(c) is dict or type(c) is list]
        if not below:
            return False
        level = below
    return True


async def _read_body(request: Request, limits: RequestLimits) -> bytes:
    declared = request.headers.get("content-length", "")
    too_large = f"request body over the limit of {limits.max_body_bytes} bytes"
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise BadRequest(too_large, 413)  # answered at once; uvicorn reads and drops the rest
    body = bytearray()
    try:
        async with asyncio.timeout(limits.body_timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    raise BadRequest(too_large, 413)
    except TimeoutError:
        raise BadRequest(f"request body not received within {limits.body_timeout:g} s", 408) from None
    return bytes(body)


async def _json_body(request: Request, limits: RequestLimits) -> dict[str, Any]:
    body = await _read_body(request, limits)
    too_deep = f"JSON nested over {limits.max_depth} levels"
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    except RecursionError:  # deeper than Python's own limit
        raise BadRequest(too_deep) from None
    if not isinstance(data, dict):
        raise BadRequest("body is not a JSON object")
    if _deeper_than(data, limits.max_depth):
        raise BadRequest(too_deep)
    return data


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "bad request"


# Fine buckets (0.25 ms to ~80 s, x1.25 each) so that p50/p99 can be read off the histogram.
LATENCY_BUCKETS = tuple(0.00025 * 1.25**i for i in range(58))


def _handler(work: Callable[[dict[str, Any]], Any], error_shape: Callable[[str, int], Any], limits: RequestLimits,
             clients: ClientCertRule | None = None, latency: Histogram | None = None,
             inline: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """`inline` work runs on the event loop: short CPU work (filter, prioritize) must not queue
    behind other work in the thread pool; a coroutine function (bind) is awaited on the loop.
    `clients`: who may call the route (checked before the body is read)."""

    async def handle(request: Request) -> Response:
        started = time.perf_counter()
        try:
            if clients is not None:
                refused = clients.refusal(client_certificate(request.scope))
                if refused is not None:
                    raise BadRequest(refused[1], refused[0])
            body = await _json_body(request, limits)
            if inspect.iscoroutinefunction(work):
                result = await work(body)
            else:
                result = work(body) if inline else await run_in_threadpool(work, body)
            payload = msgspec.json.encode(result)
            if latency is not None:
                latency.labels(request.url.path.strip("/")).observe(time.perf_counter() - started)
            return Response(payload, media_type="application/json")
        except (BadRequest, HamiError) as exc:
            status = exc.status if isinstance(exc, BadRequest) else 400
            reason = _one_line(str(exc))
            log.warning("%s: %d: %s", request.url.path, status, reason)
            # A client that stalled mid-body gets the connection closed; any other keeps it.
            headers = {"Connection": "close"} if status == 408 else None
            return JSONResponse(error_shape(reason, status), status_code=status, headers=headers)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it
        except Exception as exc:  # noqa: BLE001 - answer kube-scheduler instead of dropping the connection
            log.exception("%s failed", request.url.path)
            return JSONResponse(error_shape(_one_line(f"internal error: {type(exc).__name__}: {exc}"), 500),
                                status_code=500)

    return handle


# metav1.StatusReason for the codes we answer with.
_STATUS_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 408: "Timeout",
                   413: "RequestEntityTooLarge", 500: "InternalError"}


def _api_status(reason: str, code: int) -> dict[str, Any]:
    """A metav1.Status: kube-apiserver shows its message when a webhook call fails."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"hami webhook: {reason}", "reason": _STATUS_REASONS.get(code, "BadRequest"), "code": code}


def build_app(extender: Extender | None, registry: CollectorRegistry | None, webhook: WebhookOptions | None,
              ready: Callable[[], bool], vendors: HamiConfig | VendorSet | None = None,
              limits: RequestLimits = RequestLimits(),
              extender_clients: ClientCertRule | None = None, webhook_clients: ClientCertRule | None = None,
              background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
              ) -> Starlette:
    """The routes; `vendors`: what the webhook mutates (default: the extender's, else every vendor
    with HAMi's defaults). `extender_clients` / `webhook_clients`: who may call the extender routes
    and /webhook (None: anyone who reaches the port). Health, readiness and metrics stay open.
    `background`: coroutines run on the server's event loop while it serves (the informers)."""
    routes: list[Route] = []
    latency = None
    if registry is not None and extender is not None:
        latency = Histogram("hami_extender_request_duration_seconds", "Time to answer an extender call",
                            ["route"], registry=registry, buckets=LATENCY_BUCKETS)
    if extender is not None:
        if latency is not None:
            held = latency.labels("bind-held")  # a bind's own work, once its node is free
            extender.on_bind_held = held.observe

        def route(path: str, work: Callable[[dict[str, Any]], Any], error_shape: Callable[[str, int], Any],
                  inline: bool = False) -> Route:
            return Route(path, _handler(work, error_shape, limits, extender_clients, latency, inline),
                         methods=["POST"])

        routes += [
            route("/filter", extender.filter, lambda e, _: {"NodeNames": [], "FailedNodes": {}, "Error": e},
                  inline=True),
            # HostPriorityList has no error field; kube-scheduler reads no body of a non-200 answer.
            route("/prioritize", extender.prioritize, lambda e, _: {"Error": e}, inline=True),
            route("/bind", extender.bind, lambda e, _: {"Error": e}),
        ]
        if extender.preemptor is not None:
            # ExtenderPreemptionResult has no error field; kube-scheduler reads no body of a non-200 answer.
            routes.append(route("/preempt", extender.preemptor.preempt_verb,
                                lambda e, _: {"NodeNameToMetaVictims": {}, "Error": e}))
    if webhook is not None:
        resources = vendor_set(vendors) if vendors is not None else (
            extender.cache.vendors if extender is not None else default_vendors())
        routes.append(Route("/webhook", _handler(lambda review: review_response(review, resources, webhook),
                                                 _api_status, limits, webhook_clients),
                            methods=["POST"]))

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

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(run()) for run in background]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()

    return Starlette(routes=routes, lifespan=lifespan)
