"""A kubelet stand-in for device plugins: kubelet's side of the device-plugin API and its
pod-resources API, over real gRPC on unix sockets, built from kubelet's own protos.

It admits pods the way kubelet v1.36 does (pkg/kubelet/kubelet.go HandlePodAdditions and
pkg/kubelet/cm/devicemanager/manager.go), in whatever order the test asks:

- the pod enters the pod manager first, so the pod-resources `List` shows it (containers
  without devices) while it is being admitted;
- its containers are allocated one at a time, init containers first, then app containers,
  each in spec order; for a container that asks for n devices of a registered resource,
  GetPreferredAllocation is called when more than n are free, then Allocate with one
  ContainerAllocateRequest, and the devices are recorded (and listed) only once Allocate
  succeeded;
- a failed Allocate rejects the pod: it leaves the list and its devices are free again.

Regular init containers are not reported by `List`, as in kubelet. What it does not do:
NUMA alignment, checkpoints, container restarts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hami.deviceplugin.api import api_pb2, api_pb2_grpc, podresources_pb2, podresources_pb2_grpc


class AdmissionError(Exception):
    """The pod was rejected: an Allocate (or GetPreferredAllocation) call failed."""

    def __init__(self, pod: str, container: str, error: grpc.RpcError) -> None:
        super().__init__(f"pod {pod} container {container!r}: {error.code().name}: {error.details()}")
        self.code = error.code()
        self.details = error.details()


@dataclass
class _Pod:
    namespace: str
    name: str
    spec: dict[str, Any]
    # container name -> resource -> device IDs, for containers whose Allocate succeeded
    devices: dict[str, dict[str, list[str]]] = field(default_factory=dict)


@dataclass
class Admitted:
    """What kubelet got for each container it allocated: (container name, resource, device IDs, response)."""

    pod: str
    containers: list[tuple[str, str, list[str], Any]]

    def envs(self, container: str) -> dict[str, str]:
        for name, _, _, response in self.containers:
            if name == container:
                return dict(response.envs)
        raise KeyError(container)


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletStandIn) -> None:
        self.kubelet = kubelet

    def Register(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.kubelet._registered(request.resource_name, request.endpoint,
                                 request.options.get_preferred_allocation_available)
        return api_pb2.Empty()


class _PodResources(podresources_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: KubeletStandIn) -> None:
        self.kubelet = kubelet

    def List(self, request: Any, context: Any) -> Any:  # noqa: N802
        return podresources_pb2.ListPodResourcesResponse(pod_resources=self.kubelet._listed())


def _reported(pod: _Pod) -> list[dict[str, Any]]:
    """Containers as kubelet's List reports them: restartable init containers, then app containers."""
    init = [c for c in pod.spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return init + list(pod.spec.get("containers") or [])


def _device_count(container: dict[str, Any], resource: str) -> int:
    value = ((container.get("resources") or {}).get("limits") or {}).get(resource)
    return int(str(value)) if value is not None else 0


class KubeletStandIn:
    def __init__(self, plugin_dir: Path, pod_resources_socket: Path) -> None:
        self.plugin_dir = plugin_dir
        self.pod_resources_socket = pod_resources_socket
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._endpoints: dict[str, tuple[str, bool]] = {}  # resource -> (socket name, preferred allocation)
        self._devices: dict[str, dict[str, str]] = {}  # resource -> device ID -> health
        self._watches: list[Any] = []
        self._registered_event = threading.Condition(self._lock)
        self._server: grpc.Server | None = None
        self.serve_pod_resources = True
        self.registrations = 0  # Register calls so far (a plugin registers again after a restart)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> KubeletStandIn:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.pod_resources_socket.parent.mkdir(parents=True, exist_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        api_pb2_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{self.plugin_dir / 'kubelet.sock'}")
        if self.serve_pod_resources:
            podresources_pb2_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self), server)
            server.add_insecure_port(f"unix://{self.pod_resources_socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        for call in self._watches:
            call.cancel()
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def __enter__(self) -> KubeletStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- device plugins ----------------------------------------------------------------

    def _registered(self, resource: str, endpoint: str, preferred: bool) -> None:
        with self._lock:
            self._endpoints[resource] = (endpoint, preferred)
            self._devices.pop(resource, None)  # until the new ListAndWatch answers
            self.registrations += 1
            self._registered_event.notify_all()
        threading.Thread(target=self._watch, args=(resource, endpoint), daemon=True,
                         name=f"kubelet-standin-watch-{resource}").start()

    def _watch(self, resource: str, endpoint: str) -> None:
        """ListAndWatch, as kubelet keeps it open: every answer replaces the resource's devices."""
        with grpc.insecure_channel(f"unix://{self.plugin_dir / endpoint}") as channel:
            call = api_pb2_grpc.DevicePluginStub(channel).ListAndWatch(api_pb2.Empty())
            self._watches.append(call)
            try:
                for response in call:
                    with self._lock:
                        self._devices[resource] = {d.ID: d.health for d in response.devices}
                        self._registered_event.notify_all()
            except grpc.RpcError:
                return  # the plugin went away; it registers again when it comes back

    def wait_for_devices(self, resource: str, timeout: float = 30.0, registrations: int = 1) -> int:
        """Wait until a plugin for `resource` has registered (at least `registrations` times in
        all) and listed devices; returns their count."""
        with self._lock:
            if not self._registered_event.wait_for(
                    lambda: self.registrations >= registrations and self._devices.get(resource), timeout):
                raise TimeoutError(f"no device plugin for {resource} registered and listed devices in {timeout:g}s")
            return len(self._devices[resource])

    @contextmanager
    def _plugin(self, resource: str) -> Iterator[tuple[Any, bool]]:
        with self._lock:
            endpoint, preferred = self._endpoints[resource]
        with grpc.insecure_channel(f"unix://{self.plugin_dir / endpoint}") as channel:
            yield api_pb2_grpc.DevicePluginStub(channel), preferred

    # ---- pods --------------------------------------------------------------------------

    def _listed(self) -> list[Any]:
        with self._lock:
            pods = list(self._pods.values())
            return [
                podresources_pb2.PodResources(
                    name=pod.name, namespace=pod.namespace,
                    containers=[
                        podresources_pb2.ContainerResources(
                            name=c["name"],
                            devices=[podresources_pb2.ContainerDevices(resource_name=r, device_ids=ids)
                                     for r, ids in sorted(pod.devices.get(c["name"], {}).items())],
                        )
                        for c in _reported(pod)
                    ],
                )
                for pod in pods
            ]

    def _free(self, resource: str) -> list[str]:
        used = {d for pod in self._pods.values() for per in pod.devices.values() for d in per.get(resource, [])}
        healthy = (d for d, health in self._devices.get(resource, {}).items() if health == "Healthy")
        return sorted(d for d in healthy if d not in used)

    def admit(self, pod: dict[str, Any], timeout: float = 30.0) -> Admitted:
        """Admit one pod (a Pod as the API server returns it); AdmissionError when kubelet would reject it."""
        meta = pod["metadata"]
        admitting = _Pod(meta.get("namespace", "default"), meta["name"], pod["spec"])
        key = (admitting.namespace, admitting.name)
        with self._lock:
            self._pods[key] = admitting
            resources = dict(self._endpoints)
        admitted = Admitted(f"{key[0]}/{key[1]}", [])
        containers = list(pod["spec"].get("initContainers") or []) + list(pod["spec"].get("containers") or [])
        for container in containers:
            for resource in resources:
                needed = _device_count(container, resource)
                if not needed:
                    continue
                try:
                    ids, response = self._allocate(resource, needed, timeout)
                except grpc.RpcError as exc:
                    with self._lock:
                        del self._pods[key]
                    raise AdmissionError(admitted.pod, container["name"], exc) from None
                with self._lock:
                    admitting.devices.setdefault(container["name"], {})[resource] = ids
                admitted.containers.append((container["name"], resource, ids, response))
        return admitted

    def _allocate(self, resource: str, needed: int, timeout: float) -> tuple[list[str], Any]:
        with self._lock:
            free = self._free(resource)
        if len(free) < needed:
            raise AssertionError(f"only {len(free)} free {resource} devices, {needed} asked")
        with self._plugin(resource) as (plugin, preferred):
            chosen: list[str] = []
            if preferred and needed < len(free):
                answer = plugin.GetPreferredAllocation(api_pb2.PreferredAllocationRequest(container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=free, allocation_size=needed)
                ]), timeout=timeout)
                chosen = [d for d in answer.container_responses[0].deviceIDs if d in free][:needed]
            chosen += [d for d in free if d not in chosen][: needed - len(chosen)]
            response = plugin.Allocate(api_pb2.AllocateRequest(container_requests=[
                api_pb2.ContainerAllocateRequest(devices_ids=chosen)
            ]), timeout=timeout)
        return chosen, response.container_responses[0]

    def remove(self, namespace: str, name: str) -> None:
        """The pod ended or was deleted: it leaves the list and frees its devices."""
        with self._lock:
            self._pods.pop((namespace, name), None)
