"""Every vendor hami knows, built from HAMi's device-config, and what the shells ask of all of them.

A `VendorSet` answers the vendor-spanning questions: a pod's requests (each container asks
any vendors), the devices a Node offers (any vendors at once), the annotations of a decision,
and the allocation a pod holds (merged from each vendor's annotation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from hami.annotations import keys
from hami.annotations.errors import AnnotationError
from hami.annotations.pod_devices import decode_pod_devices
from hami.annotations.selectors import decode_cordon
from hami.config import HamiConfig, NvidiaConfig
from hami.errors import HamiError
from hami.model.allocation import ContainerDevice, PodAllocation
from hami.model.devices import DeviceInfo, NodeDevices
from hami.model.requests import ContainerRequest, PodRequest
from hami.quantity import QuantityError, parse_milli, parse_whole
from hami.vendors.base import PodDecisionInput, Vendor, resources_of
from hami.vendors.nvidia import Nvidia

# device-config.yaml key -> the vendors built from that section (raw YAML in, vendors out).
Factory = Callable[[Any], list[Vendor]]


def _factories() -> list[tuple[str, Factory]]:
    # Imported here: vendor modules import hami.vendors.base, which must load first.
    from hami.vendors import amd, ascend, awsneuron, cambricon, enflame, kunlun, metax, mthreads, table, vastai

    return [
        *table.FACTORIES,
        ("vnpus", ascend.vendors),
        ("kunlun", kunlun.vendors),
        ("awsneuron", awsneuron.vendors),
        ("cambricon", cambricon.cambricon),
        ("mthreads", mthreads.mthreads),
        ("metax", metax.metax),
        ("enflame", enflame.enflame_drs),
        ("amd", amd.amd),
        ("vastai", vastai.vastai),
    ]


class VendorSet:
    """The vendors in use, by name (HAMi's CommonWord), in name order."""

    def __init__(self, vendors: Iterable[Vendor]):
        self._by_name: dict[str, Vendor] = {}
        for vendor in sorted(vendors, key=lambda v: v.name):
            if vendor.name in self._by_name:
                raise HamiError(f"config: vendor {vendor.name} is configured twice")
            self._by_name[vendor.name] = vendor
        self.names = tuple(self._by_name)

    @staticmethod
    def from_config(config: HamiConfig) -> VendorSet:
        vendors: list[Vendor] = [Nvidia.of(config.nvidia)]
        for section, factory in _factories():
            vendors.extend(factory(config.sections.get(section)))
        return VendorSet(vendors)

    def __iter__(self) -> Iterator[Vendor]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Vendor:
        return self._by_name[name]

    def get(self, name: str) -> Vendor | None:
        return self._by_name.get(name)

    # ---- pods -------------------------------------------------------------------------

    def container_request(self, container: Mapping[str, Any]) -> ContainerRequest:
        """Every vendor ask of one container. Raises HamiError."""
        asks = [a for a in (v.ask(container) for v in self) if a is not None]
        return ContainerRequest.of(asks)

    def pod_request(self, pod: Mapping[str, Any], check_node_resources: bool = False) -> PodRequest:
        """All containers of a pod in HAMi's order (init containers first). Raises HamiError."""
        metadata = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        if not isinstance(metadata, dict) or not isinstance(spec, dict):
            raise HamiError("the pod's metadata and spec must be mappings")
        key = f"{metadata.get('namespace') or 'default'}/{metadata.get('name')}"
        init = spec.get("initContainers") or []
        app = spec.get("containers") or []
        if not isinstance(init, list) or not isinstance(app, list):
            raise HamiError(f"pod {key}: initContainers and containers must be lists")
        for container in init + app:
            if not isinstance(container, dict):
                raise HamiError(f"pod {key}: a container is not a mapping")
        try:
            containers = tuple(self.container_request(c) for c in init + app)
            cpu, memory = _cpu_memory(app) if check_node_resources else (0, 0)
        except HamiError as exc:
            raise HamiError(f"pod {key}: {exc}") from None
        annotations = metadata.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise HamiError(f"pod {key}: metadata.annotations must be a mapping")
        return PodRequest(
            key=key,
            containers=containers,
            init_count=len(init),
            names=tuple(str(c.get("name", "")) for c in init + app),
            annotations={str(k): str(v) for k, v in annotations.items()},
            cpu_milli=cpu,
            memory_mib=memory,
            sidecars=frozenset(i for i, c in enumerate(init) if c.get("restartPolicy") == "Always"),
        )

    def wants_devices(self, pod: Mapping[str, Any]) -> bool:
        """Whether the pod asks any vendor for a device (a count of 0 asks for none)."""
        try:
            return self.pod_request(pod).wants_devices
        except HamiError:
            return self.names_managed_resource(pod)

    def names_managed_resource(self, pod: Mapping[str, Any]) -> bool:
        """Whether any container names one of our resources at all (even malformed)."""
        names = self.managed_resources()
        spec = pod.get("spec") or {}
        for container in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
            if not isinstance(container, dict):
                continue
            try:
                limits, requests = resources_of(container)
            except HamiError:
                continue
            if any(n in limits or n in requests for n in names):
                return True
        return False

    @functools.cache  # noqa: B019 - a VendorSet lives as long as its config
    def managed_resources(self) -> tuple[str, ...]:
        """Every resource name we schedule (kube-scheduler's managedResources, ignoredByScheduler)."""
        seen: dict[str, None] = {}
        for vendor in self:
            for name in vendor.managed_resources():
                seen[name] = None
        return tuple(seen)

    # ---- nodes ------------------------------------------------------------------------

    def node_inputs(self, node: Mapping[str, Any], now: datetime | None = None) -> tuple[Any, ...]:
        """What the node's devices depend on (at `now`, with handshake health): equal inputs give
        equal devices."""
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        health = tuple(v.node_health(node, now) for v in self) if now is not None else ()
        return (annotations.get(keys.DEVICE_CORDON), health, *(v.node_inputs(node) for v in self))

    def registered_node(self, node: Mapping[str, Any],
                        now: datetime | None = None) -> tuple[NodeDevices | None, list[str]]:
        """The devices a Node object offers (None: none) and a warning per malformed registration.

        With `now`, a vendor whose node agent left the handshake unanswered offers nothing.
        """
        metadata = node.get("metadata") or {}
        name = str(metadata.get("name"))
        annotations = metadata.get("annotations") or {}
        devices: list[DeviceInfo] = []
        warnings: list[str] = []
        for vendor in self:
            if now is not None and not vendor.node_health(node, now):
                continue
            try:
                devices.extend(vendor.node_devices(node))
            except AnnotationError as exc:
                where = f"{vendor.keys.register} annotation" if vendor.keys.register else "capacity"
                warnings.append(f"node {name}: malformed {where} ({exc}); its {vendor.name} devices are not offered")
        if not devices:
            return None, warnings
        return NodeDevices(name=name, devices=tuple(devices),
                           cordoned=decode_cordon(annotations.get(keys.DEVICE_CORDON))), warnings

    # ---- decisions --------------------------------------------------------------------

    def decision_annotations(self, node: NodeDevices, pod: PodRequest, allocation: PodAllocation,
                             now_ns: int) -> dict[str, str]:
        """Each vendor's annotations for a decision, for the vendors the allocation uses."""
        devices = {d.id: d for d in node.devices}
        result: dict[str, str] = {}
        for vendor in self:
            part = tuple(tuple(d for d in c if devices[d.uuid].vendor == vendor.name) for c in allocation)
            if not any(part):
                continue
            result.update(vendor.decision_annotations(PodDecisionInput(
                node=node.name, allocation=part, devices=devices, annotations=pod.annotations,
                container_names=pod.names, now_ns=now_ns, requests=pod.containers,
            )))
        return result

    def usage_annotations(self, annotations: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
        """The pod annotations that change how its devices count for later pods (Vendor.usage_keys)."""
        if not annotations:
            return ()
        wanted = self._usage_keys()
        return tuple((k, str(annotations[k])) for k in wanted if k in annotations)

    @functools.cache  # noqa: B019 - a VendorSet lives as long as its config
    def _usage_keys(self) -> tuple[str, ...]:
        return tuple(sorted({k for vendor in self for k in vendor.usage_keys}))

    @functools.cache  # noqa: B019 - a VendorSet lives as long as its config
    def decision_keys(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for vendor in self:
            for key in vendor.decision_keys():
                seen[key] = None
        return tuple(seen)

    def allocation_from_annotations(self, annotations: Mapping[str, str]) -> PodAllocation | None:
        """The devices a pod holds, merged over vendors: each vendor's `-allocated` annotation, else
        its `-to-allocate`; None when no vendor's annotation holds a device. Raises AnnotationError."""
        parts: list[PodAllocation] = []
        for vendor in self:
            for key in (vendor.keys.allocated, vendor.keys.to_allocate):
                value = annotations.get(key) if key else None
                if value:
                    allocation = decode_pod_devices(value)
                    if any(allocation):
                        parts.append(vendor.held(annotations, allocation))
                        break
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        width = max(len(p) for p in parts)
        merged: list[tuple[ContainerDevice, ...]] = []
        for position in range(width):
            merged.append(tuple(d for p in parts if position < len(p) for d in p[position]))
        return tuple(merged)


def _cpu_memory(containers: list[dict[str, Any]]) -> tuple[int, int]:
    cpu = memory = 0
    for container in containers:
        _, requests = resources_of(container)
        try:
            if "cpu" in requests:
                cpu += parse_milli(requests["cpu"])
            if "memory" in requests:
                memory += -(-parse_whole(requests["memory"]) // 2**20)
        except QuantityError as exc:
            raise HamiError(f"container {container.get('name')!r}: {exc}") from None
    return cpu, memory


@functools.lru_cache(maxsize=8)
def _for_nvidia(config: NvidiaConfig) -> VendorSet:
    return VendorSet([Nvidia.of(config)])


def vendor_set(config: HamiConfig | NvidiaConfig | VendorSet) -> VendorSet:
    """The vendors of a config: a HamiConfig's all, an NvidiaConfig's NVIDIA alone."""
    if isinstance(config, VendorSet):
        return config
    if isinstance(config, NvidiaConfig):
        return _for_nvidia(config)
    return VendorSet.from_config(config)


def default_vendors() -> VendorSet:
    return _default()


@functools.cache
def _default() -> VendorSet:
    return VendorSet.from_config(HamiConfig())
