"""Kubelet's pod-resources API (v1, `List`): the pods kubelet has admitted or is admitting, and
the devices it has given each of their containers so far. Allocate asks it which pod kubelet is
starting (see allocate.find_pod and docs/device-plugin.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type hints

from hami.deviceplugin.api import podresources_pb2
from hami.deviceplugin.api import podresources_pb2_grpc as _stubs

log = logging.getLogger(__name__)

# The generated service code is untyped; use it as Any.
podresources_grpc: Any = _stubs

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"


class KubeletUnavailable(Exception):
    """Kubelet's pod-resources socket cannot be asked (missing, not serving, or too slow)."""


@dataclass(frozen=True)
class KubeletPods:
    """One answer of `List`: per (namespace, name), per container name, the resource names of
    which kubelet has given it devices. Regular init containers are not reported by kubelet."""

    containers: Mapping[tuple[str, str], Mapping[str, frozenset[str]]]

    def lists(self, namespace: str, name: str) -> bool:
        return (namespace, name) in self.containers

    def has_devices(self, namespace: str, name: str, container: str, resource: str) -> bool | None:
        """Whether kubelet gave `container` devices of `resource`; None when kubelet does not report it."""
        pod = self.containers.get((namespace, name))
        if pod is None or container not in pod:
            return None
        return resource in pod[container]


def kubelet_pods(response: Any) -> KubeletPods:
    containers: dict[tuple[str, str], dict[str, frozenset[str]]] = {}
    for pod in response.pod_resources:
        containers[(pod.namespace, pod.name)] = {
            c.name: frozenset(d.resource_name for d in c.devices if d.device_ids) for c in pod.containers
        }
    return KubeletPods(containers)


class PodResourcesClient:
    """A client of kubelet's pod-resources socket; one channel, reconnected by gRPC as needed."""

    def __init__(self, socket: str = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel: Any = None
        self._lock = threading.Lock()

    def _stub(self) -> Any:
        with self._lock:
            if self._channel is None:
                self._channel = grpc.insecure_channel(f"unix://{self.socket}")
            return podresources_grpc.PodResourcesListerStub(self._channel)

    def list(self) -> KubeletPods:
        """Raises KubeletUnavailable when kubelet cannot be asked."""
        try:
            response = self._stub().List(podresources_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise KubeletUnavailable(f"kubelet pod-resources API at {self.socket}: {exc.code().name} "
                                     f"{exc.details()}") from None
        return kubelet_pods(response)

    def available(self) -> bool:
        try:
            self.list()
        except KubeletUnavailable as exc:
            log.debug("%s", exc)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
