"""The FGD authors' published figures are shown only beside a run of the very file they ran."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hami.sim import report
from hami.sim.published import PUBLISHED, TRACE_DIGESTS


def test_every_published_trace_has_the_digest_of_its_file() -> None:
    assert sorted(TRACE_DIGESTS.values()) == sorted(PUBLISHED)
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in TRACE_DIGESTS)


def test_a_trace_is_known_by_its_bytes_not_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = b"name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time\n"
    monkeypatch.setitem(TRACE_DIGESTS, hashlib.sha256(theirs).hexdigest(), "gpushare40")
    renamed = tmp_path / "my-copy.csv"
    renamed.write_bytes(theirs)
    assert report.published_trace(str(renamed)) == "gpushare40"
    assert report.named_like_published(str(renamed)) is None
    edited = tmp_path / "openb_pod_list_gpushare40.csv"
    edited.write_bytes(theirs + b"one-more-row\n")
    assert report.published_trace(str(edited)) is None
    assert report.named_like_published(str(edited)) == "gpushare40"
    assert report.published_trace(str(tmp_path / "missing.csv")) is None
    assert report.named_like_published(str(tmp_path / "openb_pod_list_cpu235.csv")) is None  # none published
