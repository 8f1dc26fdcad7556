"""Write an OCI image layout (one image) as an archive that every loader accepts.

The archive is the layout itself (oci-layout, index.json, blobs/sha256/...) plus Docker's
manifest.json pointing at the same blobs: the format `docker save` writes since Docker 25.
`docker load` (any version) reads manifest.json; `ctr images import` and `podman load` read
index.json, where the image name goes into containerd's annotation.

Usage: python3 oci_archive.py LAYOUT_DIR TAG NAME OUT.tar
  TAG   the tag of the image in the layout (umoci's reference)
  NAME  the image name to record, e.g. hami:0.1.0 (containerd gets docker.io/library/hami:0.1.0)
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


def full_name(name: str) -> str:
    """docker.io/library/hami:0.1.0 for hami:0.1.0, as Docker and containerd normalise it."""
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def blob_path(digest: str) -> str:
    algorithm, value = digest.split(":", 1)
    return f"blobs/{algorithm}/{value}"


def build(layout: Path, tag: str, name: str) -> tuple[dict[str, object], list[dict[str, object]]]:
    """The new index.json and manifest.json for the image tagged `tag` in `layout`."""
    index = json.loads((layout / "index.json").read_text())
    found = [m for m in index.get("manifests", []) if (m.get("annotations") or {}).get(REF_NAME) == tag]
    if len(found) != 1:
        raise SystemExit(f"oci_archive: expected one image tagged {tag!r} in {layout}, found {len(found)}")
    descriptor = dict(found[0])
    manifest = json.loads((layout / blob_path(descriptor["digest"])).read_text())
    if manifest.get("mediaType", OCI_MANIFEST) != OCI_MANIFEST:
        raise SystemExit(f"oci_archive: {descriptor['digest']} is not an OCI image manifest")
    descriptor["annotations"] = {REF_NAME: tag, CONTAINERD_NAME: full_name(name)}
    new_index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
    docker = [{
        "Config": blob_path(manifest["config"]["digest"]),
        "RepoTags": [name],
        "Layers": [blob_path(layer["digest"]) for layer in manifest["layers"]],
    }]
    return new_index, docker


def write(layout: Path, index: dict[str, object], docker: list[dict[str, object]], out: Path) -> None:
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))

    def add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = mtime
        info.mode = 0o644
        archive.addfile(info, io.BytesIO(data))

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        add_bytes(archive, "oci-layout", (layout / "oci-layout").read_bytes())
        add_bytes(archive, "index.json", json.dumps(index, separators=(",", ":")).encode())
        add_bytes(archive, "manifest.json", json.dumps(docker, separators=(",", ":")).encode())
        for path in sorted((layout / "blobs").rglob("*")):
            if path.is_file():
                info = archive.gettarinfo(str(path), str(path.relative_to(layout)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = mtime
                info.mode = 0o644
                with path.open("rb") as handle:
                    archive.addfile(info, handle)


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    layout, tag, name, out = Path(argv[1]), argv[2], argv[3], Path(argv[4])
    index, docker = build(layout, tag, name)
    write(layout, index, docker, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
