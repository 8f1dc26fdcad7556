"""The web application: server-rendered pages over the store, shown only as the viewer's RBAC allows.

Every page first establishes who the viewer is (access.py), then asks the API server what they may
see, then renders. No route changes anything in the cluster: POST is used only to send a pod spec
or a report to look at, and for the viewer's own login cookie.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from cryptography.fernet import Fernet, InvalidToken
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hami.commands.schedule import decision_json
from hami.errors import HamiError
from hami.scheduler.engine import PolicyDefaults
from hami.ui import fragmentation, simreport, views, whynot
from hami.ui.access import ApiUnavailable, Identity, NotAuthenticated, Reviewer, Viewer, viewer
from hami.ui.prometheus import Prometheus, Usage
from hami.ui.store import StoreView, UiStore

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "hami_ui_session"
SESSION_SECONDS = 8 * 3600
MAX_FORM_BYTES = simreport.MAX_BYTES + 4096
NODES_PER_PAGE = 10
PODS_PER_PAGE = 100
FRAGMENTATION_AGE = 5.0  # seconds: in a busy cluster the store changes between most views
PENDING_PER_PAGE = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make Chromium send "Origin: null" on our own forms
    "X-Frame-Options": "DENY",
}


@dataclass
class UiOptions:
    defaults: PolicyDefaults = field(default_factory=PolicyDefaults)
    # Trust the proxy's user and group headers: only when every connection must present a client
    # certificate of the proxy's CA (commands/ui.py sets both together).
    proxy_headers: bool = False
    user_header: str = "X-Remote-User"
    group_header: str = "X-Remote-Group"
    session_key: bytes = field(default_factory=Fernet.generate_key, repr=False)
    reports: dict[str, Path] = field(default_factory=dict)
    prometheus: Prometheus | None = None


class Ui:
    def __init__(self, store: UiStore, reviewer: Reviewer, options: UiOptions):
        self.store = store
        self.reviewer = reviewer
        self.options = options
        self.fernet = Fernet(options.session_key)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        )
        self.env.filters["mib"] = _mib
        self.env.filters["size"] = _size
        self.env.filters["pct"] = _pct
        self.env.filters["qs"] = lambda params: urllib.parse.urlencode({k: v for k, v in params.items() if v})
        # (store version, when, result) of the last fragmentation computed.
        self._fragmentation: tuple[int, float, dict[tuple[str, str], tuple[float, float]]] | None = None

    # ---- plumbing ----------------------------------------------------------------------

    def render(self, name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        template = self.env.get_template(name)
        html = template.render(path=request.url.path, ready=self.store.ready, live=self.options.prometheus is not None,
                               **context)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def identity(self, request: Request) -> Identity:
        if self.options.proxy_headers:
            user = request.headers.get(self.options.user_header, "").strip()
            if not user:
                raise NotAuthenticated(f"the authenticating proxy sent no {self.options.user_header} header")
            return Identity(user=user, groups=tuple(request.headers.getlist(self.options.group_header)))
        token = ""
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        elif COOKIE in request.cookies:
            try:
                token = self.fernet.decrypt(request.cookies[COOKIE], ttl=SESSION_SECONDS).decode()
            except InvalidToken:
                token = ""
        if not token:
            raise NotAuthenticated("")
        return self.reviewer.identify(token)

    def page(self, handler: Callable[[Request, Viewer], Response]) -> Callable[[Request], Response]:
        """Wraps a page: who is asking, what they may see, then the page; a login when nobody."""
        def endpoint(request: Request) -> Response:
            try:
                identity = self.identity(request)
            except NotAuthenticated as exc:
                if self.options.proxy_headers:
                    return PlainTextResponse(f"not authenticated: {exc}", status_code=401)
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), status_code=303)
            except ApiUnavailable as exc:
                return self.render("error.html", request, status=503, viewer=None, message=str(exc))
            if request.method == "POST" and not _same_origin(request):
                return PlainTextResponse("cross-site form posts are refused", status_code=403)
            who = viewer(self.reviewer, identity, self.store.namespaces())
            try:
                return handler(request, who)
            except HamiError as exc:
                return self.render("error.html", request, status=400, viewer=who, message=str(exc))
        return endpoint

    def usage(self) -> Usage | None:
        return self.options.prometheus.latest if self.options.prometheus is not None else None

    # ---- pages -------------------------------------------------------------------------

    def overview(self, request: Request, who: Viewer) -> Response:
        usage = self.usage()
        trends: dict[str, Any] = {}
        with self.store.reading() as view:
            rows = self._overview(view) if who.nodes else []
            if usage is not None and who.nodes:
                views.add_type_usage(rows, view, usage)
                if usage.trends:
                    names = sorted(usage.trends)
                    times = usage.trends[names[0]][0]
                    series = [usage.trends[n][1] for n in names if usage.trends[n][0] == times]
                    trends = {"series": [n for n in names if usage.trends[n][0] == times], "data": [times, *series],
                              "x": "time", "y": "device memory in use", "unit": "MiB", "time": True}
            vendor_nodes = views.nodes_per_vendor(view)
            pods = [p for p in view.pods.values() if who.may_see_pods(p.namespace)]
            counts = {
                "nodes": len(view.state.nodes), "unregistered": len(view.unregistered),
                "devices": len(view.state.uuids), "pods": len(pods),
                "pending": sum(1 for p in pods if p.pending),
            }
        vendors: dict[str, views.TypeRow] = {}
        for row in rows:
            total = vendors.setdefault(row.vendor, views.TypeRow(vendor=row.vendor, type="all", fragmented=0.0,
                                                                 nodes=vendor_nodes.get(row.vendor, 0),
                                                                 memory_unit=row.memory_unit))
            for name in ("devices", "unhealthy", "free_devices", "slots", "slots_used", "memory", "memory_used",
                         "cores", "cores_used"):
                setattr(total, name, getattr(total, name) + getattr(row, name))
            total.free_share += row.free_share
            total.fragmented = None if row.fragmented is None or total.fragmented is None \
                else total.fragmented + row.fragmented
        return self.render("overview.html", request, viewer=who, rows=rows, vendors=list(vendors.values()),
                           counts=counts, usage=usage, trends=trends)

    def _overview(self, view: StoreView) -> list[views.TypeRow]:
        """Allocation as it is now; fragmentation (the costly part) at most FRAGMENTATION_AGE old."""
        cached = self._fragmentation
        now = time.monotonic()
        if cached is None or (cached[0] != view.version and now - cached[1] > FRAGMENTATION_AGE):
            requests = [p.request for p in view.pods.values() if p.request is not None]
            cached = (view.version, now, fragmentation.by_type(view.state, requests, self.options.defaults))
            self._fragmentation = cached
        return views.overview(view, cached[2])

    def nodes(self, request: Request, who: Viewer) -> Response:
        if not who.nodes:
            return self.render("denied.html", request, status=403, viewer=who, what="list nodes")
        q = request.query_params
        vendor, dtype, name = q.get("vendor", ""), q.get("type", ""), q.get("q", "").strip()
        problems = q.get("problems", "")
        with self.store.reading() as view:
            summaries = views.node_summaries(view)
            all_vendors = sorted({v for s in summaries for v in s[1].split(", ")})
            all_types = sorted({t for s in summaries for t in s[2].split(", ")})
            wanted = [s[0] for s in summaries
                      if (not vendor or vendor in s[1].split(", ")) and (not dtype or dtype in s[2].split(", "))
                      and (not name or name in s[0])]
            if problems:
                unhealthy = {view.state.names[int(view.state.dev_node[r])]
                             for r in range(len(view.state.uuids)) if not view.state.health[r] or
                             view.state.cordoned[r]}
                not_ready = {n for n, info in view.nodes.items() if not info.ready or info.unschedulable or info.lock}
                wanted = [n for n in wanted if n in unhealthy or n in not_ready]
            first, pages = views.page(len(wanted), _int(q.get("page"), 1), NODES_PER_PAGE)
            number = first // NODES_PER_PAGE + 1
            rows = views.node_rows(view, who.may_see_pods, wanted[first:first + NODES_PER_PAGE])
            unregistered = view.unregistered
        usage = self.usage()
        if usage is not None:
            views.add_device_usage(rows, usage)
        return self.render("nodes.html", request, viewer=who, rows=rows, total=len(wanted), page=number, pages=pages,
                           usage=usage,
                           vendors=all_vendors, types=all_types, unregistered=unregistered,
                           params={"vendor": vendor, "type": dtype, "q": name, "problems": problems})

    def node(self, request: Request, who: Viewer) -> Response:
        if not who.nodes:
            return self.render("denied.html", request, status=403, viewer=who, what="list nodes")
        name = request.path_params["name"]
        with self.store.reading() as view:
            rows = views.node_rows(view, who.may_see_pods, [name])
            pods = views.pod_rows(view, who.may_see_pods, views.pod_keys(view, who.may_see_pods, node=name))
            known = name in view.nodes
        usage = self.usage()
        if usage is not None:
            views.add_device_usage(rows, usage)
            views.add_pod_usage(pods, usage)
        if not rows:
            message = f"node {name} registers no devices" if known else f"there is no node {name}"
            return self.render("error.html", request, status=404, viewer=who, message=message)
        return self.render("node.html", request, viewer=who, node=rows[0], pods=pods, usage=usage)

    def pods(self, request: Request, who: Viewer) -> Response:
        q = request.query_params
        namespace = q.get("namespace", "")
        with self.store.reading() as view:
            keys = views.pod_keys(view, who.may_see_pods, namespace=namespace, pending_only=q.get("pending") == "1")
            first, pages = views.page(len(keys), _int(q.get("page"), 1), PODS_PER_PAGE)
            rows = views.pod_rows(view, who.may_see_pods, keys[first:first + PODS_PER_PAGE])
            namespaces = sorted({p.namespace for p in view.pods.values() if who.may_see_pods(p.namespace)})
        usage = self.usage()
        if usage is not None:
            views.add_pod_usage(rows, usage)
        return self.render("pods.html", request, viewer=who, rows=rows, total=len(keys), usage=usage,
                           page=first // PODS_PER_PAGE + 1, pages=pages, namespaces=namespaces,
                           params={"namespace": namespace, "pending": q.get("pending", "")})

    def pending(self, request: Request, who: Viewer) -> Response:
        q = request.query_params
        with self.store.reading() as view:
            keys = views.pod_keys(view, who.may_see_pods, pending_only=True)
            first, pages = views.page(len(keys), _int(q.get("page"), 1), PENDING_PER_PAGE)
            rows = views.pod_rows(view, who.may_see_pods, keys[first:first + PENDING_PER_PAGE])
            answers = {}
            # Pods of one workload ask alike: the engine is asked once per distinct request.
            asked: dict[object, tuple[str | None, list[whynot.ReasonGroup]]] = {}
            for row in rows:
                pod = row.info.request
                if pod is None or row.decided_node:
                    continue
                alike = (pod.containers, pod.init_count, tuple(sorted(pod.annotations.items())), pod.cpu_milli,
                         pod.memory_mib)
                if alike not in asked:
                    decision = whynot.decide(view.state, pod, self.options.defaults, view.unregistered)
                    asked[alike] = (decision.node, whynot.group_reasons(decision.reasons)[:2])
                answers[row.info.key] = asked[alike]
        return self.render("pending.html", request, viewer=who, rows=rows, total=len(keys), answers=answers,
                           page=first // PENDING_PER_PAGE + 1, pages=pages, params={})

    def pending_pod(self, request: Request, who: Viewer) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["name"]
        key = f"{namespace}/{name}"
        if not who.may_see_pods(namespace):
            return self.render("denied.html", request, status=403, viewer=who, what=f"list pods in {namespace}")
        with self.store.reading() as view:
            info = view.pods.get(key)
            unregistered = view.unregistered
            held = view.holdings.get(key)
        if info is None:
            return self.render("error.html", request, status=404, viewer=who,
                               message=f"there is no pod {key} that asks for devices (it may have ended)")
        if info.request is None:
            return self.render("error.html", request, status=400, viewer=who,
                               message=f"the engine cannot read this pod's requests: {info.error}")
        started = time.perf_counter()
        # The pod's own earlier decision does not count against it.
        with self.store.what_if(without=key) as (state, allocations):
            explanation = whynot.explain(state, info.request, self.options.defaults, unregistered, allocations)
        seconds = time.perf_counter() - started
        return self.render("pending_pod.html", request, viewer=who, info=info, asks=views.asks(info.request),
                           x=explanation, held=held, seconds=seconds)

    def whatif(self, request: Request, who: Viewer) -> Response:
        spec, result, error, hami_json = "", None, "", ""
        names: tuple[str, ...] = ()
        if request.method == "POST":
            spec = _form(request).get("spec", "")
            try:
                pod = parse_pod(spec)
                pod_request = self.store.cache.request_of(pod)
                names = pod_request.names
                if not pod_request.wants_devices:
                    raise HamiError("this pod asks for no device resource the engine manages")
                with self.store.reading() as view:
                    unregistered = view.unregistered
                with self.store.what_if() as (state, allocations):
                    result = whynot.explain(state, pod_request, self.options.defaults, unregistered, allocations)
                out = decision_json(result.decision)
                out["reasons"] = dict(sorted(result.decision.reasons.items()))
                hami_json = _json({"decisions": [out]})
            except HamiError as exc:
                error = str(exc)
        return self.render("whatif.html", request, viewer=who, spec=spec, x=result, error=error, names=names,
                           hami_json=hami_json, status=400 if error else 200)

    def simulator(self, request: Request, who: Viewer) -> Response:
        report, error, source = None, "", ""
        if request.method == "POST":
            text = _form(request).get("report", "")
            source = "the report you sent"
            try:
                report = simreport.parse(text)
            except HamiError as exc:
                error = str(exc)
        elif request.query_params.get("report"):
            source = request.query_params["report"]
            path = self.options.reports.get(source)
            if path is None:
                error = f"no report named {source}"
            else:
                try:
                    report = simreport.parse(path.read_bytes())
                except OSError as exc:
                    error = f"cannot read {path}: {exc.strerror}"
                except HamiError as exc:
                    error = f"{path}: {exc}"
        return self.render("simulator.html", request, viewer=who, report=report, error=error, source=source,
                           reports=sorted(self.options.reports), status=400 if error else 200)

    # ---- login -------------------------------------------------------------------------

    def login(self, request: Request) -> Response:
        if self.options.proxy_headers:
            return RedirectResponse("/", status_code=303)
        next_page = _safe_next(request.query_params.get("next", "/"))
        if request.method == "GET":
            return self.render("login.html", request, viewer=None, next=next_page, error="")
        if not _same_origin(request):
            return PlainTextResponse("cross-site form posts are refused", status_code=403)
        form = _form(request)
        token = form.get("token", "").strip()
        next_page = _safe_next(form.get("next", "/"))
        try:
            if not token:
                raise NotAuthenticated("paste a token")
            self.reviewer.identify(token)
        except (NotAuthenticated, ApiUnavailable) as exc:
            return self.render("login.html", request, status=401, viewer=None, next=next_page, error=str(exc))
        response = RedirectResponse(next_page, status_code=303)
        response.set_cookie(COOKIE, self.fernet.encrypt(token.encode()).decode(), max_age=SESSION_SECONDS,
                            httponly=True, secure=True, samesite="strict", path="/")
        return response

    def logout(self, request: Request) -> Response:
        if not _same_origin(request):
            return PlainTextResponse("cross-site form posts are refused", status_code=403)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="strict")
        return response


def _form(request: Request) -> dict[str, str]:
    """A url-encoded form body (read by the endpoint's thread: Starlette runs sync pages in a pool)."""
    body: bytes = request.scope.get("hami.body", b"")
    if len(body) > MAX_FORM_BYTES:
        raise HamiError("the form is too large")
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}


def parse_pod(text: str) -> dict[str, Any]:
    """A pod from pasted YAML or JSON: a Pod, or the pod template of a workload."""
    if not text.strip():
        raise HamiError("paste a pod spec first")
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HamiError(f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise HamiError("the spec is not a mapping")
    kind = obj.get("kind", "Pod")
    metadata: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
    if kind == "CronJob":
        obj = (((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        obj = (obj.get("spec") or {}).get("template") or {}
    elif kind != "Pod":
        raise HamiError(f"a {kind} has no pod to place; paste a Pod or a workload with a pod template")
    if not isinstance(obj, dict) or not isinstance(obj.get("spec"), dict):
        raise HamiError("the pod has no spec")
    if not isinstance(obj["spec"].get("containers"), list) or not obj["spec"]["containers"]:
        raise HamiError("the pod has no containers")
    pod_meta = dict(obj.get("metadata") or {})
    pod_meta.setdefault("name", metadata.get("name") or "what-if")
    pod_meta.setdefault("namespace", metadata.get("namespace") or "default")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": obj["spec"]}


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    return bool(origin) and urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "")


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _mib(value: int | None) -> str:
    """Exact, as pods ask for it."""
    return "–" if value is None else f"{value} MiB"


def _size(value: int | None) -> str:
    """Rounded, for device and cluster totals."""
    if value is None:
        return "–"
    return f"{value / 1024:.1f} GiB" if value >= 10240 else f"{value} MiB"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _json(obj: object) -> str:
    return json.dumps(obj, indent=2)


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.method == "POST":  # read here, on the loop: the sync page runs in a thread
            request.scope["hami.body"] = await request.body()
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def build_app(store: UiStore, reviewer: Reviewer, options: UiOptions) -> Starlette:
    ui = Ui(store, reviewer, options)

    def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    def ready(request: Request) -> Response:
        return PlainTextResponse("ok" if store.ready else "syncing", status_code=200 if store.ready else 503)

    routes = [
        Route("/", ui.page(ui.overview)),
        Route("/nodes", ui.page(ui.nodes)),
        Route("/nodes/{name}", ui.page(ui.node)),
        Route("/pods", ui.page(ui.pods)),
        Route("/pending", ui.page(ui.pending)),
        Route("/pending/{namespace}/{name}", ui.page(ui.pending_pod)),
        Route("/whatif", ui.page(ui.whatif), methods=["GET", "POST"]),
        Route("/simulator", ui.page(ui.simulator), methods=["GET", "POST"]),
        Route("/login", ui.login, methods=["GET", "POST"]),
        Route("/logout", ui.logout, methods=["POST"]),
        Route("/healthz", health),
        Route("/readyz", ready),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Headers)])
    app.state.ui = ui
    return app

