"""The kubelet device-plugin API v1beta1 over gRPC, registration, and the plugin's life cycle."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints

from hami.config import HamiConfig
from hami.deviceplugin import devices as dev
from hami.deviceplugin.agent import NodeAgent
from hami.deviceplugin.allocate import (
    AllocateError,
    AllocateSettings,
    ContainerGrant,
    Flow,
    allocate,
    choose_container,
    find_pod,
    nvidia_flow,
    pending_parts,
)
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.api import api_pb2_grpc as _stubs
from hami.deviceplugin.backend import Backend, BackendError
from hami.deviceplugin.podresources import DEFAULT_SOCKET as DEFAULT_POD_RESOURCES_SOCKET
from hami.deviceplugin.podresources import KubeletPods, PodResourcesClient
from hami.deviceplugin.pods import PodSource, PodSourceError
from hami.deviceplugin.vendors import nvidia
from hami.deviceplugin.vendors.base import ChipLike, NodeVendor

log = logging.getLogger(__name__)

# The generated service code is untyped; use it as Any.
api_pb2_grpc: Any = _stubs

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_SOCKET_NAME = "hami-nvidia.sock"


@dataclass(frozen=True)
class PluginOptions:
    node: str
    plugin_dir: str = DEFAULT_PLUGIN_DIR
    socket_name: str = DEFAULT_SOCKET_NAME
    hook_path: str = "/usr/local/vgpu"
    cache_root: str = "/usr/local/vgpu/containers"
    register_interval_s: float = 30.0
    # How often the kubelet socket is checked for a kubelet restart.
    watch_interval_s: float = 1.0
    # Create the grants' host directories and files (off only where the plugin cannot).
    create_cache_dirs: bool = True
    # NVIDIA: publish hami.io/node-nvidia-score (the links between GPUs, for topology-aware pods).
    link_scores: bool = True
    # NVIDIA: how often MIG instances of gone pods are looked for.
    mig_cleanup_interval_s: float = 5.0
    # Kubelet's pod-resources socket, asked which pod kubelet is starting ("" = never ask).
    pod_resources_socket: str = DEFAULT_POD_RESOURCES_SOCKET


# Builds a vendor's node side from the devices its backend found (Ascend's depends on the chip).
VendorFactory = Callable[[list[Any]], NodeVendor[Any]]


class DeviceState:
    """The devices this plugin serves, the share IDs kubelet sees for each, and their health;
    readers wait for changes."""

    def __init__(self, chips: Sequence[ChipLike], share_ids: Callable[[Any], list[str]]) -> None:
        self.chips = list(chips)
        self.shares = {c.uuid: share_ids(c) for c in self.chips}
        self._device_of = {share: uuid for uuid, shares in self.shares.items() for share in shares}
        self.health = {c.uuid: c.healthy for c in self.chips}
        self.version = 0
        self.changed = threading.Condition()

    def set_health(self, uuid: str, healthy: bool) -> bool:
        with self.changed:
            if uuid not in self.health or self.health[uuid] == healthy:
                return False
            self.health[uuid] = healthy
            self.version += 1
            self.changed.notify_all()
            return True

    def kubelet_devices(self) -> list[api_pb2.Device]:
        with self.changed:
            health = dict(self.health)
        return [
            api_pb2.Device(
                ID=share,
                health=dev.HEALTHY if health[c.uuid] else dev.UNHEALTHY,
                topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=c.numa)]),
            )
            for c in self.chips
            for share in self.shares[c.uuid]
        ]

    def gpu_of_share(self, share_id: str) -> str | None:
        """The device a share ID belongs to; None when it is not one this plugin advertised."""
        return self._device_of.get(share_id)

    def share_form(self) -> str:
        """How the share IDs look, for error messages."""
        first = next(iter(self._device_of), None)
        return f"IDs such as {first}" if first else "no IDs (no devices)"


def _abort(context: grpc.ServicerContext, error: AllocateError) -> None:
    code = getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)
    context.abort(code, error.message)


class DevicePluginServicer(api_pb2_grpc.DevicePluginServicer):  # type: ignore[misc]
    def __init__(self, state: DeviceState, source: PodSource, settings: AllocateSettings,
                 resource_name: str, create_cache_dirs: bool, stopping: threading.Event,
                 flow: Flow | None = None, kubelet: Callable[[], KubeletPods] | None = None) -> None:
        self.state = state
        self.source = source
        self.settings = settings
        self.resource_name = resource_name
        self.create_cache_dirs = create_cache_dirs
        self.stopping = stopping
        self.flow = flow or nvidia_flow(settings)
        self.kubelet = kubelet  # which pods kubelet lists (its pod-resources API), when reachable
        self._allocating = threading.Lock()

    def GetDevicePluginOptions(self, request: api_pb2.Empty, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(self, request: api_pb2.Empty, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        seen = -1
        while context.is_active() and not self.stopping.is_set():
            with self.state.changed:
                if self.state.version == seen:
                    self.state.changed.wait(timeout=0.2)
                    continue
                seen = self.state.version
            yield api_pb2.ListAndWatchResponse(devices=self.state.kubelet_devices())

    def GetPreferredAllocation(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """The shares of the GPUs the scheduler chose, so kubelet's accounting matches the decision."""
        responses = []
        try:
            pod: dict[str, Any] | None = find_pod(self.source, self.settings.node, self.flow.key, self.flow.resource,
                                                  self.kubelet)
            parts = pending_parts(pod, self.flow.key) if pod is not None else []
        except AllocateError:
            pod, parts = None, []
        for creq in request.container_requests:
            size = creq.allocation_size
            chosen = list(creq.must_include_deviceIDs)[:size]
            wanted: list[str] = []
            if pod is not None:
                try:
                    index = choose_container(pod, parts, size, self.resource_name, self.flow.key)
                    wanted = [d.uuid for d in parts[index]]
                    parts[index] = ()
                except AllocateError:
                    wanted = []
            for uuid in wanted:
                if len(chosen) >= size or any(self.state.gpu_of_share(c) == uuid for c in chosen):
                    continue
                match = next((a for a in creq.available_deviceIDs
                              if a not in chosen and self.state.gpu_of_share(a) == uuid), None)
                if match is not None:
                    chosen.append(match)
            for available in creq.available_deviceIDs:
                if len(chosen) >= size:
                    break
                if available not in chosen:
                    chosen.append(available)
            responses.append(api_pb2.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        return api_pb2.PreferredAllocationResponse(container_responses=responses)

    def _prepare(self, result: ContainerGrant) -> None:
        """Check the grant against the devices served, then make its host directories and files."""
        for device in result.devices:
            if device.uuid not in self.state.health:
                raise AllocateError(
                    "FAILED_PRECONDITION",
                    f"container {result.container!r}: device {device.uuid} of the scheduler's decision "
                    f"is not a device this plugin serves on node {self.settings.node}",
                )
        if not self.create_cache_dirs:
            return
        where = ""
        try:
            for where in [d for d in (result.cache_dir, *result.host_dirs) if d]:
                os.makedirs(where, exist_ok=True)
                os.chmod(where, 0o777)
            for file in result.host_files:
                where = file.path
                os.makedirs(os.path.dirname(file.path), exist_ok=True)
                with open(file.path, "w") as handle:
                    handle.write(file.content)
        except OSError as exc:
            raise AllocateError(
                "INTERNAL", f"container {result.container!r}: cannot create {where}: {exc.strerror}"
            ) from None

    def Allocate(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        counts = []
        devices: list[frozenset[str]] = []
        for position, creq in enumerate(request.container_requests):
            ids = list(creq.devices_ids)
            unknown = [d for d in ids if self.state.gpu_of_share(d) is None]
            if unknown:
                _abort(context, AllocateError(
                    "INVALID_ARGUMENT",
                    f"container request {position}: unknown device ID(s) {', '.join(unknown)} "
                    f"(this plugin serves {self.resource_name} as {self.state.share_form()})",
                ))
            if not ids:
                _abort(context, AllocateError("INVALID_ARGUMENT", f"container request {position}: no device IDs"))
            counts.append(len(ids))
            devices.append(frozenset(str(self.state.gpu_of_share(d)) for d in ids))
        with self._allocating:
            try:
                grants = allocate(self.source, self.settings, counts, prepare=self._prepare, flow=self.flow,
                                  kubelet=self.kubelet, requested_gpus=devices)
            except AllocateError as exc:
                _abort(context, exc)
        return api_pb2.AllocateResponse(container_responses=[
            api_pb2.ContainerAllocateResponse(
                envs=g.envs,
                mounts=[api_pb2.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
                        for m in g.mounts],
                devices=[api_pb2.DeviceSpec(container_path=d.container_path, host_path=d.host_path,
                                            permissions=d.permissions) for d in g.device_specs],
            )
            for g in grants
        ])

    def PreStartContainer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return api_pb2.PreStartContainerResponse()


def _socket_key(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_ctime_ns


class DevicePlugin:
    """Discovers devices, serves kubelet, re-registers after kubelet restarts, keeps the node annotated.

    `vendor` builds the vendor's node side from the devices found (NVIDIA's when None).
    """

    def __init__(self, backend: Backend, source: PodSource, config: HamiConfig, options: PluginOptions,
                 vendor: VendorFactory | None = None) -> None:
        self.backend = backend
        self.source = source
        self.config = config
        self.options = options
        self._vendor_factory: VendorFactory = vendor or (
            lambda found: nvidia.node_vendor(config, options.node, options.hook_path, options.cache_root,
                                             link_scores=options.link_scores,
                                             mig_cleanup_interval_s=options.mig_cleanup_interval_s))
        self.vendor: NodeVendor[Any] | None = None
        self.resource_name = config.nvidia.resourceCountName if vendor is None else ""
        self.agent = NodeAgent(source, options.node)
        self.stopping = threading.Event()
        self.resync = threading.Event()
        self.registrations = 0
        self._server: grpc.Server | None = None
        self._threads: list[threading.Thread] = []
        self._kubelet_key: tuple[int, int] | None = None
        self.state: DeviceState | None = None
        self.servicer: DevicePluginServicer | None = None
        self.kubelet_pods = PodResourcesClient(options.pod_resources_socket) if options.pod_resources_socket else None

    @property
    def socket_path(self) -> Path:
        return Path(self.options.plugin_dir) / self.options.socket_name

    @property
    def kubelet_socket(self) -> Path:
        return Path(self.options.plugin_dir) / KUBELET_SOCKET

    def start(self) -> None:
        """Open the backend, discover devices, start serving and watching; raises BackendError
        (and HamiError when the devices found do not fit the configuration)."""
        self.backend.init()
        found = self.backend.devices()
        vendor = self.vendor = self._vendor_factory(found)
        chips = vendor.prepare(self.backend, self.source, vendor.usable(found))
        for chip in chips:
            log.info("%s", vendor.describe(chip))
        self.resource_name = vendor.resource_name
        self.state = DeviceState(chips, vendor.share_ids)
        by_uuid = {c.uuid: c for c in chips}
        node = self.options.node
        flow = Flow(vendor.to_allocate_key, vendor.resource_name,
                    lambda pod: vendor.session(pod, by_uuid, lambda: self.source.pods_on_node(node)))
        self.servicer = DevicePluginServicer(self.state, self.source, AllocateSettings(node=node),
                                             self.resource_name, self.options.create_cache_dirs, self.stopping,
                                             flow, self.kubelet_pods.list if self.kubelet_pods is not None else None)
        self._serve()
        self._try_register()
        for target, name in ((self._watch_health, "health"), (self._watch_kubelet, "kubelet-watch"),
                             (self._keep_registered, "node-agent"), (self._background, "vendor")):
            thread = threading.Thread(target=target, name=f"hami-dp-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def registration(self) -> dict[str, str]:
        """The node annotations that register the devices now (the handshake aside)."""
        assert self.state is not None and self.vendor is not None
        with self.state.changed:
            health = dict(self.state.health)
        return self.vendor.registration(self.state.chips, health)

    def _background(self) -> None:
        assert self.vendor is not None
        self.vendor.background(self.stopping)

    def _serve(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
        Path(self.options.plugin_dir).mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="hami-dp-grpc"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(self.servicer, server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server
        log.info("serving %s on %s", self.resource_name, self.socket_path)

    def _try_register(self) -> bool:
        key = _socket_key(self.kubelet_socket)
        if key is None:
            log.info("waiting for kubelet at %s", self.kubelet_socket)
            return False
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.options.socket_name,
            resource_name=self.resource_name,
            options=api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True),
        )
        try:
            with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
                api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=5, wait_for_ready=True)
        except grpc.RpcError as exc:
            log.warning("registration with kubelet failed: %s %s", exc.code(), exc.details())
            return False
        self._kubelet_key = key
        self.registrations += 1
        log.info("registered %s with kubelet (%s)", self.resource_name, self.kubelet_socket)
        return True

    def _watch_kubelet(self) -> None:
        """Kubelet removes plugin sockets and recreates kubelet.sock when it restarts: serve and register again."""
        while not self.stopping.wait(self.options.watch_interval_s):
            key = _socket_key(self.kubelet_socket)
            mine = self.socket_path.exists()
            if key is None:
                continue
            if key != self._kubelet_key or not mine:
                if not mine or self._kubelet_key is not None:
                    log.info("kubelet restarted (%s recreated); serving and registering again", KUBELET_SOCKET)
                    self._serve()
                self._try_register()

    def _watch_health(self) -> None:
        assert self.state is not None
        while not self.stopping.is_set():
            try:
                event = self.backend.wait_event(0.2)
            except BackendError as exc:
                log.error("health watch: %s", exc)
                self.stopping.wait(1.0)
                continue
            if event is not None and self.state.set_health(event.uuid, event.healthy):
                log.warning("device %s is now %s (%s)", event.uuid, "healthy" if event.healthy else "unhealthy",
                            event.reason)
                self.resync.set()

    def _keep_registered(self) -> None:
        assert self.state is not None and self.vendor is not None
        vendor = self.vendor
        while not self.stopping.is_set():
            self.resync.clear()
            try:
                if self.agent.sync_annotations(self.registration(), vendor.handshake_key, vendor.handshake):
                    with self.state.changed:
                        healthy = sum(self.state.health.values())
                    log.info("node %s: registered %d %s(s) (%d healthy)", self.options.node,
                             len(self.state.chips), vendor.noun, healthy)
                # With kubelet's answer, the scheduler binds to this node without HAMi's lock.
                matched = self.kubelet_pods is not None and self.kubelet_pods.available()
                self.agent.advertise_pod_matching(self.resource_name, matched)
            except PodSourceError as exc:
                log.warning("node %s: cannot update annotations: %s", self.options.node, exc)
            self.resync.wait(self.options.register_interval_s)

    def stop(self) -> None:
        self.stopping.set()
        self.resync.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.resource_name:
            try:
                self.agent.advertise_pod_matching(self.resource_name, False)
            except PodSourceError as exc:
                log.warning("node %s: cannot withdraw the pod-matching annotation: %s", self.options.node, exc)
        if self.kubelet_pods is not None:
            self.kubelet_pods.close()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        self.socket_path.unlink(missing_ok=True)
        self.backend.shutdown()
