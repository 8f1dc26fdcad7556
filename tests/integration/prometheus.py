"""A real Prometheus (Debian's `prometheus` binary) for the tests that check what it scrapes:
the dashboard's queries, and the UI's live usage."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster import free_port, wait_for


class Prometheus:
    """Debian's prometheus, scraping the given targets (job name -> host:port) every second;
    returns once it is ready and has scraped each of them."""

    def __init__(self, workdir: Path, targets: dict[str, str]):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: apt-get install prometheus (.ci/run does)")
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in targets.items()],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115 - the child owns it
        try:
            wait_for(self._ready, timeout=60, message=f"prometheus ready\n{self._tail()}")
            for job in targets:
                wait_for(lambda job=job: self.query(f'up{{job="{job}"}} == 1'), timeout=60,
                         message=f"prometheus scraping {job}\n{self._tail()}")
        except BaseException:
            self.stop()
            raise

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self._tail()}")
        try:
            return bool(urllib.request.urlopen(self.url + "/-/ready", timeout=2).status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; fails on an error answer."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
