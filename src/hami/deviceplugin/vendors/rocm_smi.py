"""Hygon DCUs through Hygon's rocm_smi (librocm_smi64.so, the library of hy-smi), over ctypes.

The calls are those of HAMi's plugin (through Hygon's dcu-dcgm): the device count, each DCU's
serial number, device ID (its model, by Hygon's table), VRAM and PCI address. The DRM card and
render nodes and the NUMA node come from sysfs, under the DCU's PCI address.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

from hami.deviceplugin.backend import BackendError, HealthEvent
from hami.deviceplugin.vendors.hygon import MODEL_CUS, RSMI_ERRORS, Dcu
from hami.deviceplugin.vendors.library import HealthPoller, load_library, sysfs_int

log = logging.getLogger(__name__)

LIBRARY_PATHS = ("/opt/hyhal/lib/librocm_smi64.so", "/opt/rocm/lib/librocm_smi64.so", "librocm_smi64.so")
SYSFS_PCI = Path("/sys/bus/pci/devices")
RSMI_MEM_TYPE_VRAM = 0
NAME_LEN = 256
# Hygon's device IDs and their models (HAMi's dcu-dcgm table).
MODELS = {
    "51b7": "Z200SM_80", "52b7": "ZIFANG 8182", "54b7": "Z100", "55b7": "Z100L", "56b7": "Z200SM_81",
    "57b7": "ZIFANG 8185", "61b7": "K500SM", "62b7": "K100", "6210": "K100_AI", "6211": "K100_LC_E_AI",
    "6212": "K100_LC_AI", "6213": "K100_AI_i", "6214": "HG Design DCU K500", "62a0": "K500SM_AI",
    "62b0": "K500SM_AI", "62c7": "K100-LC", "55c7": "Z200SM_71", "55d7": "Z200SM_71_S", "61a7": "K500SM_B",
    "61c7": "K500SM_B", "61d7": "K500SM", "61f7": "HG Design DCU K500", "61e7": "K500SM", "1d94": "K500SM",
}


def pci_bus_id(bdfid: int) -> str:
    """rocm_smi's packed BDF as dcu-dcgm prints it: `0000:3B:00.0`."""
    domain, bus, device, function = (bdfid >> 32) & 0xFFFFFFFF, (bdfid >> 8) & 0xFF, (bdfid >> 3) & 0x1F, bdfid & 0x7
    return f"{domain:04X}:{bus:02X}:{device:02X}.{function:X}"


def drm_minors(pci: str, root: Path = SYSFS_PCI) -> tuple[int, int]:
    """The DCU's /dev/dri card and renderD numbers, from /sys/bus/pci/devices/<bdf>/drm; -1 when absent."""
    card = render = -1
    try:
        names = [p.name for p in (root / pci.lower() / "drm").iterdir()]
    except OSError:
        return card, render
    for name in names:
        if name.startswith("renderD") and name[7:].isdigit():
            render = int(name[7:])
        elif name.startswith("card") and name[4:].isdigit():
            card = int(name[4:])
    return card, render


class RsmiBackend:
    """Backend over librocm_smi64.so; errors are BackendError named like rocm_smi's status codes."""

    def __init__(self, library: str | None = None, sysfs_root: Path = SYSFS_PCI, poll_interval_s: float = 5.0):
        self._candidates = (library,) if library else LIBRARY_PATHS
        self._sysfs = sysfs_root
        self._lib: Any = None
        self._index: dict[str, int] = {}
        self._poller = HealthPoller(self._problem, poll_interval_s)

    def _call(self, name: str, *args: Any) -> None:
        code = getattr(self._lib, name)(*args)
        if code != 0:
            raise RSMI_ERRORS.by_number(code & 0xFFFFFFFF, name)

    def init(self) -> None:
        self._lib = load_library(self._candidates, "Hygon's rocm_smi (librocm_smi64.so)",
                                 "is Hygon's DCU driver (hyhal) installed and /opt/hyhal mounted?")
        self._call("rsmi_init", ctypes.c_uint64(0))

    def devices(self) -> list[Dcu]:
        if self._lib is None:
            raise BackendError("NOT_INITIALIZED", "rocm_smi: init() was not called")
        count = ctypes.c_uint32()
        self._call("rsmi_num_monitor_devices", ctypes.byref(count))
        found = []
        for i in range(count.value):
            serial = ctypes.create_string_buffer(NAME_LEN)
            dev_id, vram, bdf = ctypes.c_uint16(), ctypes.c_uint64(), ctypes.c_uint64()
            self._call("rsmi_dev_serial_number_get", ctypes.c_uint32(i), serial, ctypes.c_uint32(NAME_LEN))
            self._call("rsmi_dev_id_get", ctypes.c_uint32(i), ctypes.byref(dev_id))
            self._call("rsmi_dev_memory_total_get", ctypes.c_uint32(i), RSMI_MEM_TYPE_VRAM, ctypes.byref(vram))
            self._call("rsmi_dev_pci_id_get", ctypes.c_uint32(i), ctypes.byref(bdf))
            model = MODELS.get(f"{dev_id.value:x}", f"{dev_id.value:x}")
            pci = pci_bus_id(bdf.value)
            card, render = drm_minors(pci, self._sysfs)
            uuid = f"DCU-{serial.value.decode(errors='replace')}"
            self._index[uuid] = i
            if model not in MODEL_CUS:
                log.warning("DCU %s: model %s has no known compute-unit count; it gets no vdev", uuid, model)
            found.append(Dcu(uuid=uuid, index=i, numa=max(sysfs_int(self._sysfs / pci.lower() / "numa_node"), 0),
                             name=model, memory_mib=vram.value // (1024 * 1024), compute_units=MODEL_CUS.get(model, 0),
                             pci_bus_id=pci, card=card, render=render))
        self._poller.watch({d.uuid: d.healthy for d in found})
        return found

    def _problem(self, uuid: str) -> str | None:
        vram = ctypes.c_uint64()
        try:
            self._call("rsmi_dev_memory_total_get", ctypes.c_uint32(self._index[uuid]), RSMI_MEM_TYPE_VRAM,
                       ctypes.byref(vram))
        except BackendError as exc:
            return str(exc)
        return None

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        return self._poller.wait_event(timeout_s)

    def shutdown(self) -> None:
        if self._lib is not None:
            self._lib.rsmi_shut_down()
            self._lib = None
