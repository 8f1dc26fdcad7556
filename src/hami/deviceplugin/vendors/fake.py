"""Fake devices from a YAML file, failing as the vendor's management library does.

Every vendor's `--fake-devices FILE` has the same frame; the fields of a device are the vendor's:

    initError: DCMI_ERR_CODE_NOT_REDAY   # optional: discovery fails like the library's init
    devices:
      - uuid: …                          # required, unique (what the vendor registers)
        healthy: true                    # optional
        error: DCMI_ERR_CODE_DEVICE_NOT_EXIST   # optional: the device's queries fail; listed unhealthy
        …                                # the vendor's fields

Error names are the library's own; a name it does not have is refused when the file is read.
The file is read again when it changes: flipping `healthy` (or setting `error`) pushes a health
change, as the library's health query would report it.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from hami.deviceplugin.backend import BackendError, HealthEvent
from hami.deviceplugin.vendors.base import Chip
from hami.errors import HamiError

C = TypeVar("C", bound=Chip)


@dataclass(frozen=True)
class LibraryErrors:
    """A management library's status codes: name -> (number, the library's message)."""

    library: str
    init_call: str
    codes: Mapping[str, tuple[int, str]]

    def check(self, name: Any, where: str) -> str:
        if not isinstance(name, str) or name not in self.codes:
            known = ", ".join(sorted(self.codes))
            raise HamiError(f"{where}: {name!r} is not a {self.library} error (one of {known})")
        return name

    def error(self, name: str, call: str) -> BackendError:
        number, message = self.codes[name]
        return BackendError(name, f"{call} failed: {message} (error code {number})")

    def by_number(self, number: int, call: str) -> BackendError:
        for name, (value, _) in self.codes.items():
            if value == number:
                return self.error(name, call)
        return BackendError(f"{self.library} error {number}", f"{call} failed with error code {number}")


# A vendor's reader of one device entry: (the entry, its position, where it is for messages,
# the file's top-level mapping) -> the device.
ParseItem = Callable[[dict[str, Any], int, str, dict[str, Any]], C]


def whole(item: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    """A whole number >= 0 from a fake device entry."""
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HamiError(f"{where}: '{key}' must be a whole number >= 0, got {value!r}")
    return value


def text(item: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = item.get(key, default)
    if not isinstance(value, str) or not value:
        raise HamiError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


class FakeChips(Generic[C]):
    """A backend over a YAML file of one vendor's devices."""

    def __init__(self, errors: LibraryErrors, parse_item: ParseItem[C], path: str | Path | None = None,
                 data: Any = None) -> None:
        self.errors = errors
        self._parse_item = parse_item
        self._path = Path(path) if path is not None else None
        self._mtime: int | None = None
        self._initialized = False
        self._events: queue.Queue[HealthEvent] = queue.Queue()
        self._init_error: str | None = None
        self._chips: list[C] = []
        self._failing: dict[str, str] = {}
        self.top: dict[str, Any] = {}
        self._load(data if self._path is None else None)

    @property
    def where(self) -> str:
        return str(self._path or "fake devices")

    def _load(self, data: Any = None) -> None:
        if self._path is not None:
            try:
                stat = self._path.stat()
                raw = self._path.read_text()
            except OSError as exc:
                raise HamiError(f"cannot read fake devices {self._path}: {exc.strerror}") from None
            self._mtime = stat.st_mtime_ns
            try:
                data = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise HamiError(f"fake devices {self._path} is not valid YAML: {exc}") from None
        self._init_error, self._chips, self._failing, self.top = self._parse(data)

    def _parse(self, raw: Any) -> tuple[str | None, list[C], dict[str, str], dict[str, Any]]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise HamiError(f"{self.where}: expected a mapping with a 'devices' list")
        init_error = raw.get("initError")
        if init_error is not None:
            init_error = self.errors.check(init_error, f"{self.where}: initError")
        items = raw.get("devices") or []
        if not isinstance(items, list):
            raise HamiError(f"{self.where}: 'devices' must be a list")
        chips: list[C] = []
        failing: dict[str, str] = {}
        for position, item in enumerate(items):
            where = f"{self.where}: devices[{position}]"
            if not isinstance(item, dict):
                raise HamiError(f"{where}: not a mapping")
            chip = self._parse_item(item, position, where, raw)
            if any(c.uuid == chip.uuid for c in chips):
                raise HamiError(f"{where}: uuid {chip.uuid} appears twice")
            healthy = item.get("healthy", True)
            if not isinstance(healthy, bool):
                raise HamiError(f"{where} ({chip.uuid}): 'healthy' must be true or false")
            if item.get("error") is not None:
                failing[chip.uuid] = self.errors.check(item["error"], f"{where} ({chip.uuid}): error")
            chips.append(replace(chip, healthy=healthy and chip.uuid not in failing))
        return init_error, chips, failing, raw

    def init(self) -> None:
        if self._init_error:
            raise self.errors.error(self._init_error, f"{self.errors.init_call} (fake devices)")
        self._initialized = True

    def _require_init(self) -> None:
        if not self._initialized:
            raise BackendError("NOT_INITIALIZED", f"{self.errors.library}: init() was not called")

    def devices(self) -> list[C]:
        self._require_init()
        return list(self._chips)

    def failure(self, uuid: str) -> str | None:
        """The error a device's queries fail with, if any (its name in the library)."""
        return self._failing.get(uuid)

    def set_health(self, uuid: str, healthy: bool, reason: str = "set by test") -> None:
        self._chips = [replace(c, healthy=healthy) if c.uuid == uuid else c for c in self._chips]
        self._events.put(HealthEvent(uuid=uuid, healthy=healthy, reason=reason))

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        before = {c.uuid: c.healthy for c in self._chips}
        try:
            self._load()
        except HamiError:
            self._mtime = mtime  # a half-written file: keep the old view, try again on the next change
            return
        for chip in self._chips:
            if chip.uuid in before and before[chip.uuid] != chip.healthy:
                failing = self._failing.get(chip.uuid)
                reason = (self.errors.error(failing, "health query").message if failing
                          else f"{'healthy' if chip.healthy else 'unhealthy'} in the fake devices file")
                self._events.put(HealthEvent(uuid=chip.uuid, healthy=chip.healthy, reason=reason))

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        self._require_init()
        self._reload_if_changed()
        try:
            return self._events.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None

    def shutdown(self) -> None:
        self._initialized = False
