"""A real, local Kubernetes control plane for tests: etcd, kube-apiserver, kube-scheduler.

The binaries are the pinned ones built by ``tests/cluster/build.sh`` (``make
cluster-binaries``). Everything listens on 127.0.0.1 on free ports and lives in
one working directory: certificates, etcd data, kubeconfig, logs, pid files.

There is no kubelet and no kube-controller-manager. Fake nodes are Node objects
written through the API and kept Ready the way kwok does it: the harness sends
Ready-condition heartbeats and renews each node's Lease in kube-node-lease.
What the controller-manager would do for the tests is done by the harness where
needed: removing the not-ready taint from new Ready nodes, and finalizing
namespaces that tests delete.

Typical use (see tests/integration/conftest.py for the pytest fixtures)::

    with ControlPlane.start(tmp_dir) as cp:
        cp.add_node("node-a", capacity={"nvidia.com/gpu": "10"})
        sched = cp.start_scheduler(config_yaml)
        client = cp.client()            # lightkube.Client, admin credentials
        ...
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import http.client
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from . import pki

CLUSTER_DIR = Path(__file__).resolve().parent
ADMIN_USER = "hami-test-admin"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
NODE_LEASE_NAMESPACE = "kube-node-lease"
NODE_LEASE_SECONDS = 40
# kube-apiserver presents this client certificate to every webhook that asks for one
# (AdmissionConfiguration; its CA is ControlPlane.webhook_client_ca_file).
WEBHOOK_CLIENT_NAME = "kube-apiserver-webhook-client"


class ClusterError(RuntimeError):
    """The control plane (or a part of it) could not be started or used."""


class BinaryNotFound(ClusterError):
    """A pinned binary is missing: run `make cluster-binaries`."""


class PortInUse(ClusterError):
    """A port asked for is taken by another process."""


PORT_ATTEMPTS = 3  # kube-apiserver starts on a fresh free port when the one picked was taken meanwhile


class ApiCallError(ClusterError):
    """The API server answered a raw request with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


# --------------------------------------------------------------------------- binaries


def pinned_versions() -> dict[str, str]:
    """The versions pinned in the Go modules: kubernetes, etcd and helm."""
    versions: dict[str, str] = {}
    wanted = {
        "kubernetes": (CLUSTER_DIR / "go.mod", "k8s.io/kubernetes"),
        "etcd": (CLUSTER_DIR / "go.mod", "go.etcd.io/etcd/server/v3"),
        "helm": (CLUSTER_DIR / "helm" / "go.mod", "helm.sh/helm/v3"),
    }
    for key, (path, module) in wanted.items():
        m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", path.read_text(), re.M)
        if not m:
            raise ClusterError(f"{module} is not pinned in {path}")
        versions[key] = m.group(1)
    return versions


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries: $HAMI_CLUSTER_BIN, else
    ${HAMI_CLUSTER_CACHE:-~/.cache/hami}/k8s-<kubernetes version>/bin."""
    explicit = os.environ.get("HAMI_CLUSTER_BIN")
    if explicit:
        return Path(explicit)
    root = Path(os.environ.get("HAMI_CLUSTER_CACHE") or Path.home() / ".cache" / "hami")
    return root / f"k8s-{pinned_versions()['kubernetes']}" / "bin"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_scheduler: Path
    helm: Path

    @classmethod
    def locate(cls, bin_dir: Path | None = None) -> Binaries:
        """Finds the four binaries, or raises BinaryNotFound naming what is missing."""
        directory = bin_dir or default_bin_dir()
        names = {"etcd": "etcd", "kube_apiserver": "kube-apiserver", "kube_scheduler": "kube-scheduler", "helm": "helm"}
        paths = {attr: directory / name for attr, name in names.items()}
        missing = [str(p) for p in paths.values() if not (p.is_file() and os.access(p, os.X_OK))]
        if missing:
            raise BinaryNotFound(
                "control-plane binaries missing: "
                + ", ".join(missing)
                + ". Build them with `make cluster-binaries` (bash tests/cluster/build.sh); "
                "the first build takes a long time, later ones reuse the cache."
            )
        return cls(**paths)


# --------------------------------------------------------------------------- ports and processes


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS_FROM = 20000
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on `host` right now, below the kernel's range for outgoing connections.

    A port from that range (the kernel's own choice for a bind to port 0) can be taken by any
    connection made before the process it is meant for binds it, which failed a start with
    "address already in use" now and then. Each port is handed out once per test run."""
    low = _ephemeral_low()
    with _ports_lock:
        for _ in range(1000):
            port = random.randrange(_PORTS_FROM, low) if low > _PORTS_FROM + 1000 else 0
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                port = int(s.getsockname()[1])
            _handed_out.add(port)
            return port
    raise PortInUse(f"no free port found on {host} between {_PORTS_FROM} and {low}")


def ensure_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortInUse(f"{what}: port {host}:{port} is already in use ({e.strerror})") from e


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies, so that a
    killed test run leaves no control plane behind (Linux). SIGKILL, not
    SIGTERM: kube-apiserver's graceful shutdown hangs once etcd, killed at the
    same moment, is gone. libc is loaded in the parent; the child only makes
    the one call."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


class Process:
    """One child process with its log file and pid file."""

    def __init__(self, name: str, argv: Sequence[str], workdir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = workdir / "logs" / f"{name}.log"
        self.pid_path = workdir / "pids" / f"{name}.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {dt.datetime.now().isoformat()} {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - started from the main thread
            )
        self.pid_path.write_text(f"{self._proc.pid}\n{Path(self.argv[0]).name}\n")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits until the process is gone."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def stop(self, timeout: float = 15.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float, poll: float = 0.25) -> None:
        """Polls `ready` until it returns True; fails early, with the log tail, if the process exits."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            if not self.alive():
                raise self._failure(f"{self.name} exited with code {self.returncode()} before {what}")
            try:
                if ready():
                    return
            except Exception as e:  # noqa: BLE001 - any failure just means "not ready yet"
                last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                self.stop()
                raise self._failure(f"{self.name} not {what} after {timeout:.0f}s (last error: {last_error or '-'})")
            time.sleep(poll)

    def _failure(self, message: str) -> ClusterError:
        tail = self.log_tail()
        cls: type[ClusterError] = PortInUse if "address already in use" in tail else ClusterError
        return cls(f"{message}\n--- last lines of {self.log_path}:\n{tail}")


# --------------------------------------------------------------------------- scheduler


@dataclass
class Scheduler:
    """A running kube-scheduler started by ControlPlane.start_scheduler."""

    name: str
    config_path: Path
    port: int
    process: Process
    _on_stop: Callable[[Scheduler], None] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        self.process.stop()
        if self._on_stop is not None:
            self._on_stop(self)
            self._on_stop = None

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- control plane


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


DEFAULT_NODE_CAPACITY: dict[str, str] = {
    "cpu": "32",
    "memory": "256Gi",
    "pods": "110",
    "ephemeral-storage": "500Gi",
}


class ControlPlane:
    """etcd + kube-apiserver (+ kube-schedulers on demand) in `workdir`.

    Public attributes after start(): ``kubeconfig`` (Path), ``server`` (URL),
    ``ca_file``, ``admin_cert_file``, ``admin_key_file``, ``etcd_url``,
    ``binaries``, ``versions``, ``workdir``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binaries: Binaries | None = None,
        etcd_port: int | None = None,
        apiserver_port: int | None = None,
        heartbeat_interval: float = 10.0,
        verbosity: int = 1,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.binaries = binaries or Binaries.locate()
        self.versions = pinned_versions()
        self._etcd_port_wanted = etcd_port
        self._apiserver_port_wanted = apiserver_port
        self.heartbeat_interval = heartbeat_interval
        self.verbosity = verbosity
        self.etcd: Process | None = None
        self.apiserver: Process | None = None
        self.etcd_url = ""
        self.server = ""
        self.apiserver_port = 0
        self.pki_dir = self.workdir / "pki"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.ca_file = self.pki_dir / "ca.crt"
        self.admin_cert_file = self.pki_dir / "admin.crt"
        self.admin_key_file = self.pki_dir / "admin.key"
        self.webhook_client_ca_file = self.pki_dir / "webhook-client-ca.crt"
        self._ssl: ssl.SSLContext | None = None
        self._nodes: dict[str, dict[str, Any]] = {}
        self._nodes_lock = threading.Lock()
        self._schedulers: list[Scheduler] = []
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._client: Any = None
        self._counter = itertools.count()
        self._etcd_peer_port = 0

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def start(cls, workdir: Path, **kwargs: Any) -> ControlPlane:
        """Creates the working directory and starts etcd and kube-apiserver; returns when /readyz is ok."""
        cp = cls(workdir, **kwargs)
        try:
            cp._start()
        except BaseException:
            cp.close()
            raise
        return cp

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_port = self._etcd_port_wanted or free_port()
        etcd_peer_port = self._etcd_peer_port = free_port()
        self.apiserver_port = self._apiserver_port_wanted or free_port()
        ensure_port_free(etcd_port, "etcd client port")
        ensure_port_free(etcd_peer_port, "etcd peer port")
        ensure_port_free(self.apiserver_port, "kube-apiserver secure port")
        self._write_pki()
        self._start_etcd(etcd_port, etcd_peer_port)
        for attempt in itertools.count(1):
            try:
                self._start_apiserver()
                break
            except PortInUse:
                # free_port's choice can still be taken before kube-apiserver binds it (another
                # process listening there meanwhile): pick another, unless one was asked for.
                if self._apiserver_port_wanted or attempt == PORT_ATTEMPTS:
                    raise
                self.apiserver_port = free_port()
        self._write_kubeconfig()
        self._ensure_system_namespaces()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="fake-node-heartbeat", daemon=True)
        self._heartbeat.start()

    def close(self) -> None:
        """Stops schedulers, kube-apiserver and etcd (in that order). Safe to call twice."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=30)
            self._heartbeat = None
        for sched in list(self._schedulers):
            sched.stop()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if self.apiserver is not None:
            self.apiserver.stop()
        if self.etcd is not None:
            self.etcd.stop()

    stop = close

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def processes(self) -> list[Process]:
        """Every process this control plane started that is still tracked."""
        procs = [p for p in (self.etcd, self.apiserver) if p is not None]
        return procs + [s.process for s in self._schedulers]

    # ----------------------------------------------------------------- etcd, apiserver

    def _write_pki(self) -> None:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        ca = pki.CertificateAuthority.create("hami-test-cluster-ca")
        self.ca_file.write_bytes(ca.cert_pem)
        (self.pki_dir / "ca.key").write_bytes(pki.key_pem(ca.key))
        key, cert = ca.issue(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=("127.0.0.1", "10.96.0.1"),
            server=True,
        )
        pki.write_pair(self.pki_dir, "apiserver", key, cert)
        key, cert = ca.issue(ADMIN_USER, organizations=("system:masters",), client=True)
        pki.write_pair(self.pki_dir, "admin", key, cert)
        sa_key = pki.new_key()
        (self.pki_dir / "sa.key").write_bytes(pki.key_pem(sa_key))
        (self.pki_dir / "sa.pub").write_bytes(pki.public_key_pem(sa_key))
        self._write_webhook_client_config()

    def _write_webhook_client_config(self) -> None:
        """An AdmissionConfiguration whose kubeconfig gives kube-apiserver a client certificate
        for webhooks (user "*": any webhook that asks for one; those that do not never see it)."""
        ca = pki.CertificateAuthority.create("hami-test-webhook-client-ca")
        self.webhook_client_ca_file.write_bytes(ca.cert_pem)
        key, cert = ca.issue(WEBHOOK_CLIENT_NAME, client=True)
        cert_file, key_file = pki.write_pair(self.pki_dir, "webhook-client", key, cert)
        kubeconfig = self.pki_dir / "webhook-client.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1",
            "kind": "Config",
            "users": [{"name": "*", "user": {"client-certificate": str(cert_file), "client-key": str(key_file)}}],
        }))
        plugin = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "WebhookAdmissionConfiguration",
                  "kubeConfigFile": str(kubeconfig)}
        (self.pki_dir / "admission.yaml").write_text(yaml.safe_dump({
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [{"name": name, "configuration": plugin}
                        for name in ("MutatingAdmissionWebhook", "ValidatingAdmissionWebhook")],
        }))

    def _start_etcd(self, port: int, peer_port: int, fresh: bool = True) -> None:
        data_dir = self.workdir / "etcd"
        if fresh and data_dir.exists():
            shutil.rmtree(data_dir)
        self.etcd_url = f"http://127.0.0.1:{port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self.etcd = Process(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=hami-test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=hami-test={peer_url}",
                f"--initial-cluster-state={'new' if fresh else 'existing'}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.workdir,
        )
        self.etcd.start()

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as r:
                return bool(json.load(r).get("health") == "true")

        self.etcd.wait_until(healthy, "healthy", timeout=60)

    def _start_apiserver(self) -> None:
        p = self.pki_dir
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self.apiserver = Process(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={self.ca_file}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=RBAC",
                # The ServiceAccount admission plugin needs the controller-manager's
                # token controllers; there is none here.
                "--disable-admission-plugins=ServiceAccount",
                f"--admission-control-config-file={p / 'admission.yaml'}",
                # The "kubernetes" Service endpoints would be a loopback address, which
                # Endpoints validation rejects.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
                # ConfigMaps skip the watch cache and are watched straight from etcd, so a test
                # can compact etcd (compact_etcd) and get a real 410 Gone for an old resourceVersion.
                "--watch-cache-sizes=configmaps#0",
                f"--v={self.verbosity}",
            ],
            self.workdir,
        )
        self.apiserver.start()

        def ready() -> bool:
            status, _ = self._raw("GET", "/readyz", timeout=5)
            return status == 200

        self.apiserver.wait_until(ready, "ready (/readyz)", timeout=180, poll=0.5)

    def _write_kubeconfig(self) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "hami-test",
                    "cluster": {"server": self.server, "certificate-authority-data": b64(self.ca_file)},
                }
            ],
            "users": [
                {
                    "name": ADMIN_USER,
                    "user": {
                        "client-certificate-data": b64(self.admin_cert_file),
                        "client-key-data": b64(self.admin_key_file),
                    },
                }
            ],
            "contexts": [{"name": "hami-test", "context": {"cluster": "hami-test", "user": ADMIN_USER}}],
            "current-context": "hami-test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def kubeconfig_through(self, port: int, path: Path) -> Path:
        """A copy of the admin kubeconfig that reaches the API server through 127.0.0.1:`port`
        (a proxy such as tests.cluster.proxy.TcpProxy); written to `path`, returned."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def _ensure_system_namespaces(self) -> None:
        for ns in ("default", "kube-system", NODE_LEASE_NAMESPACE):
            try:
                obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                self.api("POST", "/api/v1/namespaces", obj)
            except ApiCallError as e:
                if e.status != 409:
                    raise

    def stop_api(self) -> None:
        """Stop kube-apiserver and etcd, as an outage would (etcd's data is kept). Clients see
        refused connections until start_api(); schedulers and fake-node heartbeats keep running."""
        if self.apiserver is not None:
            self.apiserver.kill()
        if self.etcd is not None:
            self.etcd.kill()

    def start_api(self) -> None:
        """Start etcd (on its data) and kube-apiserver again, on the same ports; returns when
        /readyz is ok."""
        port = int(self.etcd_url.rsplit(":", 1)[1])
        self._start_etcd(port, self._etcd_peer_port, fresh=False)
        self._start_apiserver()

    # ----------------------------------------------------------------- clients

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context trusting the cluster CA and presenting the admin client certificate."""
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            ctx.load_cert_chain(str(self.admin_cert_file), str(self.admin_key_file))
            self._ssl = ctx
        return self._ssl

    def _raw(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.apiserver_port, context=self.ssl_context(), timeout=timeout
        )
        try:
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def api(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | list[Any] | None = None,
        *,
        content_type: str = "application/json",
    ) -> Any:
        """A raw JSON request as the admin user; returns the decoded body, raises ApiCallError on >= 400.

        `content_type` picks the patch flavour for PATCH, e.g.
        "application/merge-patch+json" or "application/strategic-merge-patch+json".
        """
        data = None if body is None else json.dumps(body).encode()
        status, raw = self._raw(method, path, data, content_type)
        if status >= 400:
            raise ApiCallError(method, path, status, raw.decode(errors="replace"))
        return json.loads(raw) if raw else None

    def client(self) -> Any:
        """A shared lightkube.Client with admin credentials (field manager "hami-tests").

        Do not close it; ControlPlane.close does. Use new_client() for a private one.
        """
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(self, **kwargs: Any) -> Any:
        """A new lightkube.Client for this cluster; the caller closes it."""
        import lightkube

        kwargs.setdefault("field_manager", "hami-tests")
        kwargs.setdefault("trust_env", False)
        return lightkube.Client(config=lightkube.KubeConfig.from_file(self.kubeconfig), **kwargs)

    # ----------------------------------------------------------------- namespaces

    def create_namespace(self, prefix: str = "test", labels: Mapping[str, str] | None = None) -> str:
        """Creates a namespace with a unique name starting with `prefix`; returns the name."""
        base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40] or "test"
        name = f"{base}-{os.getpid() % 10000}-{next(self._counter)}"
        meta: dict[str, Any] = {"name": name}
        if labels:
            meta["labels"] = dict(labels)
        self.api("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        return name

    def delete_namespace(self, name: str) -> None:
        """Deletes the namespace's pods at once (no kubelet to wait for), then the
        namespace, and finalizes it as the namespace controller would."""
        with contextlib.suppress(ApiCallError):
            self.api("DELETE", f"/api/v1/namespaces/{name}/pods", {"gracePeriodSeconds": 0})
        try:
            self.api("DELETE", f"/api/v1/namespaces/{name}")
            ns = self.api("GET", f"/api/v1/namespaces/{name}")
        except ApiCallError as e:
            if e.status == 404:
                return
            raise
        ns.setdefault("spec", {})["finalizers"] = []
        with contextlib.suppress(ApiCallError):
            self.api("PUT", f"/api/v1/namespaces/{name}/finalize", ns)

    # ----------------------------------------------------------------- fake nodes

    def add_node(
        self,
        name: str,
        capacity: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        *,
        allocatable: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        taints: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        """Creates a fake node that stays Ready until removed; returns the Node as a dict.

        `capacity` is merged over DEFAULT_NODE_CAPACITY (cpu 32, memory 256Gi,
        pods 110); `allocatable` defaults to the capacity. Extended resources
        such as nvidia.com/gpu go here. `annotations` are the node's
        annotations (e.g. hami.io/node-nvidia-register). The not-ready taint
        that the TaintNodesByCondition admission plugin puts on new nodes is
        replaced by `taints` once the node is Ready.
        """
        cap = {**DEFAULT_NODE_CAPACITY, **(capacity or {})}
        alloc = dict(allocatable) if allocatable is not None else dict(cap)
        node_labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "hami.io/fake-node": "true",
            **(labels or {}),
        }
        obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": node_labels, "annotations": dict(annotations or {})},
            "spec": {},
        }
        created = self.api("POST", "/api/v1/nodes", obj)
        now = _now()
        status = {
            "capacity": cap,
            "allocatable": alloc,
            "conditions": self._node_conditions(now),
            "addresses": [{"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
                "kernelVersion": "fake",
                "osImage": "fake",
                "containerRuntimeVersion": "fake://0",
                "kubeletVersion": self.versions["kubernetes"],
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "phase": "Running",
        }
        self.api(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            {"status": status},
            content_type="application/merge-patch+json",
        )
        node = self.api(
            "PATCH",
            f"/api/v1/nodes/{name}",
            {"spec": {"taints": [dict(t) for t in taints] or None}},
            content_type="application/merge-patch+json",
        )
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": NODE_LEASE_NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": name, "uid": created["metadata"]["uid"]}
                ],
            },
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": NODE_LEASE_SECONDS,
                "renewTime": micro_time(now),
            },
        }
        try:
            self.api("POST", f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases", lease)
        except ApiCallError as e:
            if e.status != 409:
                raise
            self._renew_lease(name, now)
        with self._nodes_lock:
            self._nodes[name] = node
        return dict(node)

    def remove_node(self, name: str) -> None:
        """Stops the heartbeats and deletes the Node and its Lease (missing ones are fine)."""
        with self._nodes_lock:
            self._nodes.pop(name, None)
        for path in (
            f"/api/v1/nodes/{name}",
            f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{name}",
        ):
            try:
                self.api("DELETE", path)
            except ApiCallError as e:
                if e.status != 404:
                    raise

    def compact_etcd(self) -> int:
        """Compacts etcd's history up to its current revision, as kube-apiserver does every few
        minutes; returns that revision. Watches from older resourceVersions of resources served
        straight from etcd (ConfigMaps here) then get 410 Gone."""

        def post(path: str, body: dict[str, Any]) -> Any:
            request = urllib.request.Request(self.etcd_url + path, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        # etcd's gRPC gateway: a range read returns the current revision in its header.
        revision = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    def node_names(self) -> list[str]:
        with self._nodes_lock:
            return sorted(self._nodes)

    @staticmethod
    def _node_conditions(now: dt.datetime) -> list[dict[str, str]]:
        t = rfc3339(now)
        pressure = [
            ("MemoryPressure", "KubeletHasSufficientMemory"),
            ("DiskPressure", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "KubeletHasSufficientPID"),
        ]
        conds = [
            {"type": typ, "status": "False", "reason": reason, "message": "fake node", "lastHeartbeatTime": t,
             "lastTransitionTime": t}
            for typ, reason in pressure
        ]
        conds.append(
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node is ready",
             "lastHeartbeatTime": t, "lastTransitionTime": t}
        )
        return conds

    def _renew_lease(self, name: str, now: dt.datetime) -> None:
        self.api(
            "PATCH",
            f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{name}",
            {"spec": {"renewTime": micro_time(now), "holderIdentity": name}},
            content_type="application/merge-patch+json",
        )

    def heartbeat(self, name: str) -> None:
        """One heartbeat for a fake node: renew its Lease and refresh the Ready
        condition's lastHeartbeatTime (strategic merge on the condition type)."""
        now = _now()
        self._renew_lease(name, now)
        t = rfc3339(now)
        conds = [{"type": c["type"], "lastHeartbeatTime": t} for c in self._node_conditions(now)]
        self.api(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            {"status": {"conditions": conds}},
            content_type="application/strategic-merge-patch+json",
        )

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            for name in self.node_names():
                if self._stop.is_set():
                    return
                # A node removed meanwhile or a transient error: the next round retries.
                with contextlib.suppress(Exception):
                    self.heartbeat(name)

    # ----------------------------------------------------------------- schedulers

    def start_scheduler(
        self,
        config: str | Mapping[str, Any],
        *,
        name: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 90,
    ) -> Scheduler:
        """Starts a kube-scheduler with a KubeSchedulerConfiguration (YAML text or a dict).

        The harness fills in what only it knows: clientConnection.kubeconfig, and
        leaderElection.leaderElect=false unless the config sets it. apiVersion and
        kind default to kubescheduler.config.k8s.io/v1 KubeSchedulerConfiguration.
        Returns when the scheduler's /readyz is ok; stop it with .stop() (or let
        close() do it). Several schedulers may run at once if their profiles'
        schedulerNames differ.
        """
        cfg: dict[str, Any] = dict(yaml.safe_load(config) if isinstance(config, str) else config)
        cfg.setdefault("apiVersion", "kubescheduler.config.k8s.io/v1")
        cfg.setdefault("kind", "KubeSchedulerConfiguration")
        cfg["clientConnection"] = {**cfg.get("clientConnection", {}), "kubeconfig": str(self.kubeconfig)}
        cfg["leaderElection"] = {"leaderElect": False, **cfg.get("leaderElection", {})}
        sched_name = name or f"kube-scheduler-{next(self._counter)}"
        sched_dir = self.workdir / "schedulers" / sched_name
        sched_dir.mkdir(parents=True, exist_ok=True)
        config_path = sched_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        port = free_port()
        proc = Process(
            sched_name,
            [
                str(self.binaries.kube_scheduler),
                f"--config={config_path}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={sched_dir / 'certs'}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                f"--v={self.verbosity}",
                *extra_args,
            ],
            self.workdir,
        )
        proc.start()
        sched = Scheduler(sched_name, config_path, port, proc, _on_stop=self._forget_scheduler)
        self._schedulers.append(sched)
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE

        def ready() -> bool:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", timeout=2, context=insecure) as r:
                return bool(r.status == 200)

        try:
            proc.wait_until(ready, "ready (/readyz)", timeout=timeout)
        except BaseException:
            sched.stop()
            raise
        return sched

    def _forget_scheduler(self, sched: Scheduler) -> None:
        with contextlib.suppress(ValueError):
            self._schedulers.remove(sched)

    # ----------------------------------------------------------------- helm

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs the pinned helm against this cluster (its own HOME-like dirs under workdir)."""
        helm_home = self.workdir / "helm"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(helm_home),  # client-go's discovery cache goes to $HOME/.kube
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }
        return subprocess.run(
            [str(self.binaries.helm), *args],
            env=env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )


@contextlib.contextmanager
def running_control_plane(workdir: Path, **kwargs: Any) -> Iterator[ControlPlane]:
    """Context manager form of ControlPlane.start(...)/close()."""
    cp = ControlPlane.start(workdir, **kwargs)
    try:
        yield cp
    finally:
        cp.close()


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30, poll: float = 0.2, message: str = "condition"
) -> Any:
    """Polls `predicate` until it returns something truthy, and returns that; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(poll)


def stop_pid_files(workdir: Path, timeout: float = 15.0) -> list[str]:
    """Stops processes recorded in `workdir`/pids (what `up` started) and returns their names.

    A pid is signalled only if the process's executable still has the recorded name.
    """
    stopped: list[str] = []
    pid_dir = Path(workdir) / "pids"
    for pid_file in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
        lines = pid_file.read_text().split()
        if not lines:
            continue
        pid = int(lines[0])
        exe_name = lines[1] if len(lines) > 1 else ""
        if _process_matches(pid, exe_name):
            _terminate(pid, timeout)
            stopped.append(pid_file.stem)
        pid_file.unlink(missing_ok=True)
    return stopped


def _process_matches(pid: int, exe_name: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    first = Path(cmdline[0].decode(errors="replace")).name if cmdline and cmdline[0] else ""
    return not exe_name or first == exe_name


def _gone(pid: int) -> bool:
    """True if `pid` has exited (a zombie waiting for its parent counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


__all__ = [
    "ApiCallError",
    "BinaryNotFound",
    "Binaries",
    "ClusterError",
    "ControlPlane",
    "DEFAULT_NODE_CAPACITY",
    "PortInUse",
    "Process",
    "Scheduler",
    "default_bin_dir",
    "ensure_port_free",
    "free_port",
    "pinned_versions",
    "running_control_plane",
    "stop_pid_files",
    "wait_for",
]
