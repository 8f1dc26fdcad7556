"""The UI's session key from a file (hami.ui.session): one secret, one key, in every process."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from hami.errors import HamiError
from hami.ui.session import session_key


def test_the_same_secret_seals_and_opens_across_processes(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x" * 40 + "\n")
    (tmp_path / "b").write_text("x" * 40)  # the trailing newline is not part of the secret
    sealed = Fernet(session_key(str(tmp_path / "a"))).encrypt(b"token")
    assert Fernet(session_key(str(tmp_path / "b"))).decrypt(sealed) == b"token"
    (tmp_path / "c").write_text("y" * 40)
    with pytest.raises(InvalidToken):
        Fernet(session_key(str(tmp_path / "c"))).decrypt(sealed)


def test_a_short_or_missing_secret_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("too short\n")
    with pytest.raises(HamiError, match=r"short: 9 bytes of secret, at least 32 needed"):
        session_key(str(tmp_path / "short"))
    with pytest.raises(HamiError, match=r"--session-key-file .*missing: No such file"):
        session_key(str(tmp_path / "missing"))


def test_hami_ui_refuses_a_short_key_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hami.cli import main

    (tmp_path / "short").write_text("secret")
    assert main(["ui", "--session-key-file", str(tmp_path / "short"), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "6 bytes of secret, at least 32 needed" in err and "\n" not in err and "Traceback" not in err
