"""Who may call a route: a client certificate issued by a CA in a file, optionally with one of
a list of common names (as kube-apiserver's `--requestheader-allowed-names`).

The TLS layer has already verified the certificate's chain and dates against every client CA
the server trusts (see `hami.serve`); this says whether that certificate may call *this* route,
so that kube-scheduler's certificate cannot call the webhook nor the API server's call /bind.
The CA file is read again when it changes: a CA removed from it is refused from then on.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from hami.errors import HamiError

log = logging.getLogger(__name__)
_CACHE_SIZE = 256  # verdicts kept per rule: one per distinct client certificate


def load_ca_file(path: str) -> list[x509.Certificate]:
    """The certificates of a PEM file; HamiError when there is none."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise HamiError(f"client CA file {path}: {exc.strerror}") from None
    try:
        cas = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise HamiError(f"client CA file {path} holds no PEM certificate: {exc}") from None
    return cas


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass
class ClientCertRule:
    """Callers of a route must present a certificate issued by a CA in `ca_file`, and, when
    `allowed_names` is not empty, whose subject common name is one of them."""

    ca_file: str
    allowed_names: frozenset[str] = frozenset()
    flag: str = "the client CA file"  # how messages name the setting
    _cas: list[x509.Certificate] = field(default_factory=list, init=False, repr=False)
    _mtime: int = field(default=-1, init=False, repr=False)
    _verdicts: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._reload()  # a missing or empty file is an error at start, not at the first call

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.ca_file).st_mtime_ns
        except OSError as exc:
            raise HamiError(f"client CA file {self.ca_file}: {exc.strerror}") from None
        if mtime != self._mtime:
            self._cas = load_ca_file(self.ca_file)
            self._mtime = mtime
            self._verdicts.clear()

    def _current(self) -> None:
        try:
            self._reload()
        except HamiError as exc:  # a file being rewritten: keep the CAs we had
            log.warning("%s %s: keeping the CAs read before: %s", self.flag, self.ca_file, exc)

    def refusal(self, client_cert_pem: str | None) -> tuple[int, str] | None:
        """None when the certificate may call the route, else (HTTP status, one-line reason)."""
        if not client_cert_pem:
            return 401, "a client certificate is required"
        with self._lock:
            self._current()
            if client_cert_pem in self._verdicts:
                reason = self._verdicts[client_cert_pem]
            else:
                reason = self._judge(client_cert_pem)
                if len(self._verdicts) >= _CACHE_SIZE:
                    self._verdicts.clear()
                self._verdicts[client_cert_pem] = reason
        return None if reason is None else (403, reason)

    def _judge(self, pem: str) -> str | None:
        try:
            leaf = x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            return "the client certificate cannot be read"
        if not any(_issued_by(leaf, ca) for ca in self._cas):
            return f"the client certificate is not issued by a CA of {self.flag}"
        if self.allowed_names:
            names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if not any(name in self.allowed_names for name in names):
                shown = names[0] if names else ""
                return f"the client certificate's common name {shown!r} is not allowed here"
        return None
