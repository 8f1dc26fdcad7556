"""Ascend NPUs through Huawei's DCMI (libdcmi.so, part of the NPU driver), over ctypes.

The calls are those of HAMi's plugin (through Ascend's devmanager): the cards, the NPUs on
each, their logic and physical IDs, the VDIE die ID as the NPU's UUID, the chip name, and the
health (0 is healthy). The library is loaded only when this backend starts.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from hami.deviceplugin.backend import BackendError, HealthEvent
from hami.deviceplugin.vendors.ascend import DCMI_ERRORS, Npu
from hami.deviceplugin.vendors.library import HealthPoller, load_library

log = logging.getLogger(__name__)

LIBRARY_PATHS = ("/usr/local/Ascend/driver/lib64/driver/libdcmi.so", "/usr/local/dcmi/libdcmi.so", "libdcmi.so")
MAX_CARDS = 64  # MAX_CARD_NUM in dcmi_interface_api.h
DIE_ID_COUNT = 5
CHIP_NAME_LEN = 32
VDIE = 1  # enum dcmi_die_type: NDIE, VDIE, …


class DieId(ctypes.Structure):
    _fields_ = [("soc_die", ctypes.c_uint * DIE_ID_COUNT)]


class ChipInfo(ctypes.Structure):
    _fields_ = [
        ("chip_type", ctypes.c_ubyte * CHIP_NAME_LEN),
        ("chip_name", ctypes.c_ubyte * CHIP_NAME_LEN),
        ("chip_ver", ctypes.c_ubyte * CHIP_NAME_LEN),
        ("aicore_cnt", ctypes.c_uint),
    ]


def die_uuid(die: DieId) -> str:
    """Ascend's spelling of a die ID: five 8-digit upper-case hex words joined by `-`."""
    return "-".join(f"{word:08X}" for word in die.soc_die)


def _text(raw: Any) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


class DcmiBackend:
    """Backend over libdcmi.so; errors are BackendError named like DCMI's return codes."""

    def __init__(self, library: str | None = None, poll_interval_s: float = 5.0) -> None:
        self._candidates = (library,) if library else LIBRARY_PATHS
        self._lib: Any = None
        self._where: dict[str, tuple[int, int]] = {}  # uuid -> (card, device)
        self._poller = HealthPoller(self._problem, poll_interval_s)

    def _call(self, name: str, *args: Any) -> None:
        code = getattr(self._lib, name)(*args)
        if code != 0:
            raise DCMI_ERRORS.by_number(code, name)

    def init(self) -> None:
        self._lib = load_library(self._candidates, "DCMI (libdcmi.so)",
                                 "is the Ascend NPU driver installed and its lib64/driver mounted?")
        self._call("dcmi_init")

    def devices(self) -> list[Npu]:
        if self._lib is None:
            raise BackendError("NOT_INITIALIZED", "DCMI: init() was not called")
        count = ctypes.c_int()
        cards = (ctypes.c_int * MAX_CARDS)()
        self._call("dcmi_get_card_list", ctypes.byref(count), cards, MAX_CARDS)
        found = []
        for card in cards[: max(0, min(count.value, MAX_CARDS))]:
            in_card = ctypes.c_int()
            self._call("dcmi_get_device_num_in_card", card, ctypes.byref(in_card))
            for device in range(in_card.value):
                logic, phy, die, info = ctypes.c_int(), ctypes.c_uint(), DieId(), ChipInfo()
                self._call("dcmi_get_device_logic_id", ctypes.byref(logic), card, device)
                self._call("dcmi_get_device_phyid_from_logicid", ctypes.c_uint(logic.value), ctypes.byref(phy))
                self._call("dcmi_get_device_die_v2", card, device, VDIE, ctypes.byref(die))
                self._call("dcmi_get_device_chip_info", card, device, ctypes.byref(info))
                uuid = die_uuid(die)
                self._where[uuid] = (card, device)
                found.append((logic.value, Npu(uuid=uuid, index=0, phy_id=phy.value, logic_id=logic.value,
                                               card_id=card, device_id=device, chip_name=_text(info.chip_name),
                                               healthy=self._problem(uuid) is None)))
        found.sort(key=lambda item: item[0])  # HAMi lists NPUs by logic ID
        npus = [Npu(**{**npu.__dict__, "index": i}) for i, (_, npu) in enumerate(found)]
        self._poller.watch({n.uuid: n.healthy for n in npus})
        return npus

    def _problem(self, uuid: str) -> str | None:
        card, device = self._where[uuid]
        health = ctypes.c_uint()
        try:
            self._call("dcmi_get_device_health", card, device, ctypes.byref(health))
        except BackendError as exc:
            return str(exc)
        return None if health.value == 0 else f"dcmi_get_device_health: {health.value} (0 is healthy)"

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        return self._poller.wait_event(timeout_s)

    def shutdown(self) -> None:
        self._lib = None  # DCMI has no shutdown call
