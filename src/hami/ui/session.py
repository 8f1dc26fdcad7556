"""The key that seals the UI's session cookie (the viewer's token, encrypted with Fernet).

Without a key file each process makes its own, so a restart (or another replica behind the same
Service) logs everyone out. `--session-key-file` names a file of at least 32 bytes of secret
(the chart keeps one in a Secret); the Fernet key is derived from it with HKDF-SHA256, so any
random text will do.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hami.errors import HamiError

MIN_SECRET_BYTES = 32


def session_key(path: str) -> bytes:
    """The Fernet key derived from the secret in `path` (surrounding whitespace ignored)."""
    try:
        with open(path, "rb") as file:
            secret = file.read().strip()
    except OSError as exc:
        raise HamiError(f"--session-key-file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise HamiError(f"--session-key-file {path}: {len(secret)} bytes of secret, at least {MIN_SECRET_BYTES} needed "
                        "(e.g. head -c 48 /dev/urandom | base64 > FILE)")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"hami-ui-session").derive(secret)
    return base64.urlsafe_b64encode(derived)
