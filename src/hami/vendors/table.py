"""Vendors whose whole contract is data: one row each, no code of their own.

A row names the vendor's resources, annotation keys, where its devices come from and which of
HAMi's fit checks apply; `TableVendor` turns a row into a `Vendor`. HAMi has a Go package for
each of these; they differ only in the values below.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.errors import HamiError
from hami.model.allocation import ContainerDevice
from hami.model.devices import DeviceInfo
from hami.model.requests import ContainerRequest
from hami.quantity import QuantityError, parse_whole
from hami.scheduler import reasons as R
from hami.vendors.base import (
    AnnotationKeys,
    IntArray,
    LockKind,
    Need,
    NodeSource,
    Resources,
    Rows,
    Vendor,
    generic_usage_codes,
    resources_of,
)
from hami.vendors.nvidia import set_env

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState


class Checks(enum.Enum):
    GENERIC = "generic"  # HAMi's full loop: slots, memory, cores, exclusive, exhausted
    SLOTS = "slots"  # task slots only (memory and cores are not checked: Biren, Vastai)
    EXCLUSIVE = "exclusive"  # a device nobody uses (Enflame whole GCU)


@dataclass(frozen=True)
class Capacity:
    """Devices synthesised from node capacity: `resource` counts the devices."""

    resource: str
    id_word: str  # device IDs are "<node>-<id_word>-<i>"
    count: int
    devmem: int
    devcore: int


@dataclass(frozen=True)
class Row:
    name: str
    resources: Resources
    keys: AnnotationKeys
    source: NodeSource = NodeSource.JSON
    default_cores: int = 0
    checks: Checks = Checks.GENERIC
    # The ask is this (memreq, mem_percentage, coresreq) whatever else the container names.
    fixed_ask: tuple[int, int, int] | None = None
    capacity: Capacity | None = None
    devcore_override: int | None = None  # HAMi forces a device's cores ("only for calscore use")
    container_name_env: str | None = None  # the webhook sets this env var to the container's name
    cores_per_device: int | None = None  # the webhook asks count × this cores when count > 1
    lock: LockKind = LockKind.SHARED


@dataclass
class TableVendor(Vendor):
    row: Row | None = None

    @staticmethod
    def of(row: Row) -> TableVendor:
        return TableVendor(name=row.name, resources=row.resources, keys=row.keys, source=row.source,
                           default_cores=row.default_cores, lock=row.lock, row=row)

    @property
    def spec(self) -> Row:
        assert self.row is not None
        return self.row

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        fixed = self.spec.fixed_ask
        if fixed is None:
            return super().ask(container)
        count = self.quantity(container, self.resources.count)
        if not count:
            return None
        memreq, percentage, cores = fixed
        return ContainerRequest(nums=count, memreq=memreq, mem_percentage=percentage, coresreq=cores,
                                vendor=self.name)

    def admit(self, container: dict[str, Any], pod: Mapping[str, Any]) -> bool:
        if not self.quantity(container, self.resources.count, limits_only=True):
            return False
        limits, _ = resources_of(container)
        row = self.spec
        if row.cores_per_device and self.resources.cores:
            try:
                count = parse_whole(limits[self.resources.count])
            except QuantityError as exc:
                raise HamiError(f"container {container.get('name')!r}: {self.resources.count}: {exc}") from None
            if count > 1:
                limits[self.resources.cores] = count * row.cores_per_device
        env_names = {e.get("name") for e in container.get("env") or []}
        if row.container_name_env and container.get("name") and row.container_name_env not in env_names:
            set_env(container, row.container_name_env, str(container["name"]))
        return True

    def node_inputs(self, node: Mapping[str, Any]) -> tuple[Any, ...]:
        if self.spec.capacity is not None:
            capacity = (node.get("status") or {}).get("capacity") or {}
            return (str(capacity.get(self.spec.capacity.resource, "")),)
        return super().node_inputs(node)

    def node_devices(self, node: Mapping[str, Any]) -> list[DeviceInfo]:
        spec = self.spec.capacity
        if spec is None:
            devices = super().node_devices(node)
            if self.spec.devcore_override is not None:
                devices = [DeviceInfo(**{**d.__dict__, "devcore": self.spec.devcore_override}) for d in devices]
            return devices
        name = str((node.get("metadata") or {}).get("name"))
        raw = ((node.get("status") or {}).get("capacity") or {}).get(spec.resource)
        if raw is None:
            return []
        try:
            total = parse_whole(raw)
        except QuantityError:
            return []
        return [
            DeviceInfo(id=f"{name}-{spec.id_word}-{i}", count=spec.count, devmem=spec.devmem, devcore=spec.devcore,
                       type=self.name, index=i, vendor=self.name)
            for i in range(total)
        ]

    def usage(self, device: DeviceInfo, placed: ContainerDevice) -> tuple[int, int, int]:
        if self.spec.checks is Checks.SLOTS:
            # HAMi's allocation gives these devices no memory or cores (`uuid,Biren,0,0`); an annotation
            # that names memory anyway (an older hami wrote the whole memory) counts the task only.
            return 1, 0, 0
        return super().usage(device, placed)

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        checks = self.spec.checks
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        if checks is Checks.GENERIC:
            return generic_usage_codes(state, rows, used, usedmem, usedcores, need, ctx.mutex), need
        if checks is Checks.EXCLUSIVE:
            busy = R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT]
            return np.where(used > 0, busy, 0).astype(np.int64), need
        # HAMi gives these vendors' devices no memory or cores (`uuid,Biren,0,0`), whatever the ask says.
        zeros = np.zeros(len(used), dtype=np.int64)
        need = Need(slots=need.slots, mem=zeros, cores=zeros)
        count = state.count[rows]
        codes = np.select(
            [used >= count, ctx.mutex & (used > 0)],
            [R.CODE_OF[R.CARD_TIME_SLICING_EXHAUSTED], R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT]],
            0,
        )
        return codes.astype(np.int64), need


def _json_vendor(name: str, count: str, register: str, handshake: str, word: str, **extra: Any) -> Row:
    return Row(
        name=name,
        resources=Resources(count=count),
        keys=AnnotationKeys(
            register=register, handshake=handshake,
            to_allocate=f"hami.io/{name}-devices-to-allocate", allocated=f"hami.io/{name}-devices-allocated",
            uuid_pairs=((f"{word}/use-gpuuuid", f"{word}/nouse-gpuuuid"),),
        ),
        checks=Checks.SLOTS,
        fixed_ask=(0, 100, 0),
        devcore_override=100,
        **extra,
    )


def _section(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HamiError(f"config: '{what}' must be a mapping")
    return raw


def _name(section: dict[str, Any], key: str, default: str, what: str) -> str:
    value = section.get(key, default)
    if not isinstance(value, str) or not value:
        raise HamiError(f"config: {what}.{key} must be a non-empty string")
    return value


def hygon(raw: Any) -> list[Vendor]:
    section = _section(raw, "hygon")
    factor = section.get("memoryFactor", 1)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise HamiError("config: hygon.memoryFactor must be a whole number of at least 1")
    return [TableVendor.of(Row(
        name="DCU",
        resources=Resources(
            count=_name(section, "resourceCountName", "hygon.com/dcunum", "hygon"),
            memory=_name(section, "resourceMemoryName", "hygon.com/dcumem", "hygon"),
            cores=_name(section, "resourceCoreName", "hygon.com/dcucores", "hygon"),
            memory_factor=factor,
        ),
        keys=AnnotationKeys(
            register="hami.io/node-dcu-register", handshake="hami.io/node-handshake-dcu",
            to_allocate="hami.io/dcu-devices-to-allocate", allocated="hami.io/dcu-devices-allocated",
            use_type="hygon.com/use-dcutype", nouse_type="hygon.com/nouse-dcutype",
            uuid_pairs=(("hygon.com/use-gpuuuid", "hygon.com/nouse-gpuuuid"),),
        ),
        source=NodeSource.CSV,
        default_cores=100,
    ))]


ILUVATAR_CHIPS = ("MR-V100", "MR-V50", "BI-V150", "BI-V100")


def iluvatar(raw: Any) -> list[Vendor]:
    if raw is None:
        raw = [{"commonWord": chip} for chip in ILUVATAR_CHIPS]
    if not isinstance(raw, list):
        raise HamiError("config: 'iluvatars' must be a list of chips")
    vendors: list[Vendor] = []
    for position, entry in enumerate(raw):
        what = f"iluvatars[{position}]"
        section = _section(entry, what)
        word = _name(section, "commonWord", str(section.get("chipName", "")), what)
        vendors.append(TableVendor.of(Row(
            name=word,
            resources=Resources(
                count=_name(section, "resourceCountName", f"iluvatar.ai/{word}-vgpu", what),
                memory=_name(section, "resourceMemoryName", f"iluvatar.ai/{word}.vMem", what),
                cores=_name(section, "resourceCoreName", f"iluvatar.ai/{word}.vCore", what),
                memory_factor=256,
            ),
            keys=AnnotationKeys(
                register=f"hami.io/node-{word}-register", handshake=f"hami.io/node-handshake-{word}",
                to_allocate=f"hami.io/{word}-devices-to-allocate", allocated=f"hami.io/{word}-devices-allocated",
                uuid_pairs=((f"hami.io/use-{word}-uuid", f"hami.io/no-use-{word}-uuid"),),
            ),
            source=NodeSource.CSV,
            container_name_env="SOL_CONTINER_NAME",  # HAMi's spelling, which the vendor's runtime reads
            cores_per_device=100,
        )))
    return vendors


def biren(raw: Any) -> list[Vendor]:
    section = _section(raw, "biren")
    count = _name(section, "resourceCountName", "birentech.com/gpu", "biren")
    return [TableVendor.of(_json_vendor("Biren", count, "hami.io/node-biren-register", "hami.io/node-handshake-biren",
                                        "birentech.com"))]


def enflame_gcu(raw: Any) -> list[Vendor]:
    section = _section(raw, "enflame")
    count = _name(section, "resourceNameGCU", "enflame.com/gcu", "enflame")
    return [TableVendor.of(Row(
        name="GCU",
        resources=Resources(count=count),
        keys=AnnotationKeys(to_allocate="hami.io/enflame-gcu-devices-to-allocate",
                            allocated="hami.io/enflame-gcu-devices-allocated"),
        source=NodeSource.CAPACITY,
        checks=Checks.EXCLUSIVE,
        fixed_ask=(100, 100, 100),
        capacity=Capacity(resource=count, id_word="GCU", count=1, devmem=100, devcore=100),
        lock=LockKind.NONE,
    ))]


# device-config.yaml section -> its vendors.
FACTORIES: list[tuple[str, Any]] = [
    ("hygon", hygon),
    ("iluvatars", iluvatar),
    ("biren", biren),
    ("enflame", enflame_gcu),
]

