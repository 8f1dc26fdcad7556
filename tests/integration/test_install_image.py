"""The container image that the chart runs, built without a daemon by images/build.sh.

The build caches its layers in ~/.cache/hami/image (HAMI_IMAGE_CACHE), so only the first run on
a machine downloads Debian packages and wheels (a few minutes); after a change in src/ only the
top layer is made again. The archive is then read three ways: by its own digests, by skopeo (the
containers/image library behind podman) as both a Docker archive and an OCI archive, and by
containerd, which imports it and runs it with runc. The unpacked image also runs in a chroot.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.controlplane import Process

REPO = Path(__file__).resolve().parents[2]
TAG = "0.1.0-test"
NAME = f"docker.io/library/hami:{TAG}"
# Loads libvgpu.so into the image's python and finds the CUDA entry points it hooks.
LOAD_LIBVGPU = (
    "import ctypes; lib = ctypes.CDLL('/usr/lib/hami/libvgpu.so'); "
    "print('libvgpu', all(hasattr(lib, s) for s in ('cuGetProcAddress', 'cuMemAlloc_v2', 'cuLaunchKernel')))"
)
# The compiled dependencies work with the image's python and glibc.
IMPORTS = ("import grpc, numpy, cryptography.x509, msgspec, yaml, hami.scheduler.app, hami.deviceplugin.server; "
           "print('imports ok')")


# The first build on a machine downloads and assembles every layer (minutes, counted in the
# first test that uses the archive).
pytestmark = pytest.mark.timeout(3600)


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed (Debian packages; .ci/run installs them)")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("mmdebstrap", "umoci")
    out = tmp_path_factory.mktemp("image")
    build = subprocess.run(
        ["bash", str(REPO / "images" / "build.sh"), "--output", str(out), "--tag", TAG],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=3000,
    )
    assert build.returncode == 0, f"images/build.sh failed:\n{build.stderr[-4000:]}"
    path = Path(build.stdout.strip().splitlines()[-1])
    assert path == out / f"hami-image-{TAG}.tar" and path.is_file()
    return path


@pytest.fixture(scope="module")
def layout(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("layout")
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    return directory


def sha256_file(path: Path, opener: object = open) -> str:
    digest = hashlib.sha256()
    with opener(path, "rb") as handle:  # type: ignore[operator]
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def test_archive_is_an_oci_layout_and_a_docker_archive(layout: Path, archive: Path) -> None:
    assert json.loads((layout / "oci-layout").read_text())["imageLayoutVersion"] == "1.0.0"
    (descriptor,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert descriptor["annotations"] == {"org.opencontainers.image.ref.name": TAG, "io.containerd.image.name": NAME}

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    assert sha256_file(blob(descriptor["digest"])) == descriptor["digest"]
    manifest = json.loads(blob(descriptor["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/hami"]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    # Every layer is what its digest says, and unpacks to the diff_id the config records.
    assert len(manifest["layers"]) == len(config["rootfs"]["diff_ids"]) == 3
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert sha256_file(blob(layer["digest"])) == layer["digest"]
        assert sha256_file(blob(layer["digest"]), gzip.open) == diff_id
    # Docker's manifest.json names the same blobs.
    (docker,) = json.loads((layout / "manifest.json").read_text())
    assert docker["RepoTags"] == [f"hami:{TAG}"]
    assert docker["Config"] == f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"
    assert docker["Layers"] == [f"blobs/sha256/{layer['digest'].split(':')[1]}" for layer in manifest["layers"]]

    need("skopeo")
    for reference in (f"docker-archive:{archive}", f"oci-archive:{archive}:{TAG}"):
        answer = subprocess.run(["skopeo", "inspect", reference], capture_output=True, text=True, timeout=300)
        assert answer.returncode == 0, f"skopeo inspect {reference}: {answer.stderr}"
        assert json.loads(answer.stdout)["Labels"]["org.opencontainers.image.version"] == TAG


def test_unpacked_image_runs_hami_and_loads_libvgpu_in_a_chroot(layout: Path, tmp_path: Path) -> None:
    need("umoci", "chroot")
    if os.geteuid() != 0:
        pytest.fail("this test unpacks the image and chroots into it: run it as root (CI does)")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)], check=True, capture_output=True)
    rootfs = bundle / "rootfs"

    def chroot(*argv: str, env: dict[str, str] | None = None) -> str:
        answer = subprocess.run([str(shutil.which("chroot")), str(rootfs), *argv], capture_output=True, text=True,
                                timeout=120, env={"PATH": "/usr/local/bin:/usr/bin:/bin", **(env or {})})
        assert answer.returncode == 0, f"{argv}: {answer.stdout}\n{answer.stderr}"
        return answer.stdout

    # libvgpu.so is mounted into users' containers: it must load with an old glibc (CentOS 7's 2.17).
    need("objdump")
    symbols = subprocess.run(["objdump", "-T", str(rootfs / "usr/lib/hami/libvgpu.so")], capture_output=True,
                             text=True, check=True).stdout
    versions = {tuple(int(part) for part in v.split(".")) for v in re.findall(r"\bGLIBC_([0-9.]+)", symbols)}
    assert versions and max(versions) <= (2, 17), sorted(versions)

    assert "device-plugin" in chroot("hami", "--help")
    for command in ("scheduler", "device-plugin", "webhook"):
        assert "usage: hami " + command in chroot("hami", command, "--help")
    assert chroot("python3", "-c", IMPORTS).strip() == "imports ok"
    assert chroot("python3", "-c", LOAD_LIBVGPU).strip() == "libvgpu True"
    # Preloaded as /etc/ld.so.preload does it in a GPU container, into a process that has no CUDA.
    assert "usage: hami" in chroot("hami", "--help", env={"LD_PRELOAD": "/usr/lib/hami/libvgpu.so"})
    # What the chart's init container runs to put the library on the host.
    host = rootfs / "host-vgpu"
    chroot("sh", "-c", "mkdir -p /host-vgpu && cp /usr/lib/hami/libvgpu.so /host-vgpu/.n && mv -f /host-vgpu/.n "
                       "/host-vgpu/libvgpu.so && cmp -s /usr/lib/hami/libvgpu.so /host-vgpu/libvgpu.so")
    assert (host / "libvgpu.so").stat().st_size > 0


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A containerd of our own (its own root, state and socket), stopped afterwards."""
    need("containerd", "ctr", "runc")
    directory = Path(tempfile.mkdtemp(prefix="ctrd-"))  # short: the socket path is limited
    socket = directory / "containerd.sock"
    (directory / "config.toml").write_text(
        "version = 2\n"
        f'root = "{directory}/root"\nstate = "{directory}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n[ttrpc]\n  address = "{socket}.ttrpc"\n'
    )
    process = Process("containerd", ["containerd", "--config", str(directory / "config.toml")], tmp_path)
    process.start()
    try:
        process.wait_until(lambda: subprocess.run(["ctr", "-a", str(socket), "version"], capture_output=True,
                                                  timeout=10).returncode == 0, "answering", timeout=60)
        yield str(socket), directory
    finally:
        process.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_containerd_imports_and_runs_the_archive(archive: Path, containerd: tuple[str, Path]) -> None:
    socket, _ = containerd

    def ctr(*argv: str) -> str:
        answer = subprocess.run(["ctr", "-a", socket, "-n", "k8s.io", *argv], capture_output=True, text=True,
                                timeout=300)
        assert answer.returncode == 0, f"ctr {' '.join(argv)}: {answer.stdout}\n{answer.stderr}"
        return answer.stdout

    ctr("images", "import", "--snapshotter", "native", str(archive))
    assert NAME in ctr("images", "ls", "--quiet").split()
    run = ("run", "--rm", "--snapshotter", "native")
    assert "device-plugin" in ctr(*run, NAME, "hami-help", "hami", "--help")
    assert ctr(*run, NAME, "hami-libvgpu", "python3", "-c", LOAD_LIBVGPU).strip() == "libvgpu True"
