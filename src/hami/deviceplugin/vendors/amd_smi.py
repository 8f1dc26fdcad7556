"""AMD GPUs through AMD SMI's Python bindings (the `amdsmi` package over libamd_smi.so).

As HAMi's plugin: each GPU's AMD SMI UUID, PCI address, DRM card and render numbers, market
name, compute units, VRAM and NUMA node; the ROCr UUID (what ROCR_VISIBLE_DEVICES takes) is
the KFD topology's `unique_id` of the GPU's render node. The bindings load libamd_smi.so when
imported, so they are imported only when this backend starts.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from hami.deviceplugin.backend import BackendError, HealthEvent
from hami.deviceplugin.vendors.amd import AMDSMI_ERRORS, DEFAULT_TYPE, AmdGpu
from hami.deviceplugin.vendors.library import LIBRARY_NOT_FOUND, HealthPoller

log = logging.getLogger(__name__)

KFD_TOPOLOGY = Path("/sys/class/kfd/kfd/topology/nodes")


def _bindings() -> Any:
    # The bindings print to stdout when libamd_smi.so is missing, then fail with a KeyError.
    with contextlib.redirect_stdout(io.StringIO()) as said:
        try:
            import amdsmi  # type: ignore[import-untyped]  # no stubs
        except (ImportError, KeyError, OSError) as exc:
            detail = " ".join(said.getvalue().split()) or str(exc)
            raise BackendError(LIBRARY_NOT_FOUND, f"cannot load AMD SMI (libamd_smi.so): {detail}; is ROCm's "
                                                  "amd-smi-lib installed, or ROCM_PATH set?") from None
    return amdsmi


def rocr_uuids(root: Path = KFD_TOPOLOGY) -> dict[int, str]:
    """renderD minor -> `GPU-<unique_id as 16 hex digits>`, from the KFD topology."""
    found = {}
    for props in sorted(root.glob("*/properties")):
        try:
            fields = dict(line.split(None, 1) for line in props.read_text().splitlines() if " " in line)
            render, unique = int(fields.get("drm_render_minor", "0")), int(fields.get("unique_id", "0"))
        except (OSError, ValueError):
            continue
        if render > 0 and unique:
            found[render] = f"GPU-{unique:016x}"
    return found


class AmdSmiBackend:
    """Backend over AMD SMI; errors are BackendError named like amdsmi_status_t."""

    def __init__(self, kfd_topology: Path = KFD_TOPOLOGY, poll_interval_s: float = 5.0,
                 bindings: Any = None) -> None:
        self._kfd = kfd_topology
        self._smi: Any = bindings
        self._handles: dict[str, Any] = {}
        self._poller = HealthPoller(self._problem, poll_interval_s)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._smi.AmdSmiLibraryException as exc:
            raise AMDSMI_ERRORS.by_number(int(exc.get_error_code()), what) from None
        except self._smi.AmdSmiException as exc:
            raise BackendError("AMDSMI_STATUS_API_FAILED", f"{what} failed: {exc}") from None

    def init(self) -> None:
        if self._smi is None:
            self._smi = _bindings()
        self._call("amdsmi_init", self._smi.amdsmi_init, self._smi.AmdSmiInitFlags.INIT_AMD_GPUS)

    def devices(self) -> list[AmdGpu]:
        smi = self._smi
        if smi is None:
            raise BackendError("NOT_INITIALIZED", "AMD SMI: init() was not called")
        rocr = rocr_uuids(self._kfd)
        found = []
        for handle in self._call("amdsmi_get_processor_handles", smi.amdsmi_get_processor_handles):
            uuid = self._call("amdsmi_get_gpu_device_uuid", smi.amdsmi_get_gpu_device_uuid, handle)
            bdf = self._call("amdsmi_get_gpu_device_bdf", smi.amdsmi_get_gpu_device_bdf, handle)
            drm = self._call("amdsmi_get_gpu_enumeration_info", smi.amdsmi_get_gpu_enumeration_info, handle)
            asic = self._call("amdsmi_get_gpu_asic_info", smi.amdsmi_get_gpu_asic_info, handle)
            vram = self._call("amdsmi_get_gpu_vram_info", smi.amdsmi_get_gpu_vram_info, handle)
            numa = self._call("amdsmi_topo_get_numa_node_number", smi.amdsmi_topo_get_numa_node_number, handle)
            card, render = int(drm["drm_card"]), int(drm["drm_render"])
            if render not in rocr:
                log.error("GPU %s (%s): no KFD node has render minor %d; not registered", uuid, bdf, render)
                continue
            product = str(asic.get("market_name") or "")
            self._handles[uuid] = handle
            found.append(AmdGpu(uuid=uuid, index=card, numa=max(int(numa), 0),
                                product=product if product and product != "N/A" else DEFAULT_TYPE,
                                memory_mib=int(vram["vram_size"]), compute_units=int(asic["num_compute_units"]),
                                pci_bdf=str(bdf).lower(), rocr_uuid=rocr[render], card=card, render=render))
        self._poller.watch({g.uuid: g.healthy for g in found})
        return found

    def _problem(self, uuid: str) -> str | None:
        try:
            self._call("amdsmi_get_gpu_device_uuid", self._smi.amdsmi_get_gpu_device_uuid, self._handles[uuid])
        except BackendError as exc:
            return str(exc)
        return None

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        return self._poller.wait_event(timeout_s)

    def shutdown(self) -> None:
        if self._smi is not None and self._handles:
            with contextlib.suppress(Exception):  # the library may already be gone
                self._smi.amdsmi_shut_down()
        self._handles = {}
