"""The node's GPUs as the host sees them: NVML (through nvidia-ml-py), or a fake-devices file.

A source answers a list of HostGpu. With NVML the memory in use and the utilisation are
the driver's; a fake-devices file (the device plugin's format, for machines without GPUs)
knows only the GPUs, and the figures are left to the caller (None).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from hami.deviceplugin.backend import BackendError
from hami.deviceplugin.devices import device_type
from hami.deviceplugin.fake import FakeBackend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostGpu:
    index: int
    uuid: str
    type: str  # HAMi's device type: "NVIDIA-" + NVML's name
    memory_used_bytes: int | None = None
    utilization: float | None = None  # percent, 0-100 (NVML's scale, which HAMi exports as is)
    memory_utilization: float | None = None  # percent


class HostSource(Protocol):
    def gpus(self) -> list[HostGpu]:
        """The GPUs now; an empty list (and a log line) when the driver cannot be asked."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlHost:
    """GPUs and their figures from libnvidia-ml (opened on first use, again after an error)."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._failing = ""

    def _open(self) -> Any:
        if self._nvml is None:
            import pynvml  # type: ignore[import-untyped]  # no stubs

            pynvml.nvmlInit()
            self._nvml = pynvml
        return self._nvml

    def gpus(self) -> list[HostGpu]:
        try:
            nvml = self._open()
            found = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = _text(nvml.nvmlDeviceGetName(handle))
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                util = nvml.nvmlDeviceGetUtilizationRates(handle)
                found.append(
                    HostGpu(
                        index=index,
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        type=f"NVIDIA-{name}",
                        memory_used_bytes=int(memory.used),
                        utilization=float(util.gpu),
                        memory_utilization=float(util.memory),
                    )
                )
        except Exception as exc:  # noqa: BLE001 - NVMLError, or the library missing: no host figures this time
            message = f"{type(exc).__name__}: {exc}"
            if message != self._failing:
                log.warning("NVML: %s; host GPU metrics are left out until it answers", message)
                self._failing = message
            self._nvml = None
            return []
        if self._failing:
            log.info("NVML answers again")
            self._failing = ""
        return found


class FakeHost:
    """GPUs from a fake-devices YAML file; no figures of their own."""

    def __init__(self, path: str) -> None:
        self._backend = FakeBackend(path)

    def gpus(self) -> list[HostGpu]:
        try:
            self._backend.init()
            infos = self._backend.devices()
        except BackendError as exc:
            log.warning("fake devices: %s", exc)
            return []
        return [HostGpu(index=g.index, uuid=g.uuid, type=device_type(g)) for g in infos]
