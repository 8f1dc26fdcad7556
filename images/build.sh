#!/usr/bin/env bash
# Builds the hami container image without a container daemon, from Debian packages and PyPI
# wheels, and writes it as one image archive that `docker load`, `podman load` and
# `ctr images import` all accept.
#
#   layer 1  Debian (bookworm) minbase + python3, made by mmdebstrap
#   layer 2  hami's Python dependencies (manylinux wheels for CPython 3.11, as Debian has)
#   layer 3  hami itself, /usr/local/bin/hami and /usr/lib/hami/libvgpu.so. libvgpu.so is not
#            for this image: the device plugin mounts it into users' GPU containers, whatever
#            their distribution. It is compiled by gcc in a Debian bullseye chroot (glibc 2.31),
#            so it asks for no glibc symbol newer than 2.17 and loads in Ubuntu 20.04, UBI 8 or
#            CentOS 7 based images; built against bookworm it would need glibc 2.34.
#
# The image is assembled with umoci as an OCI image layout; the archive is that layout plus
# Docker's manifest.json (the format `docker save` writes since Docker 25), see oci_archive.py.
#
# Each layer is cached under ${HAMI_IMAGE_CACHE:-~/.cache/hami/image}, keyed by a hash of what it
# is made from, so a rebuild after a change in src/ redoes layer 3 only (seconds).
#
# Usage: bash images/build.sh [--output DIR] [--tag TAG] [--force]
#   --output DIR  where hami-image-<tag>.tar goes (default: dist/)
#   --tag TAG     image tag (default: the version in pyproject.toml); the name is hami:<TAG>
#   --force       rebuild every layer
# Environment: PYTHON (a python3 >= 3.11 with pip, default python3), HAMI_IMAGE_MIRROR (a Debian
# mirror URI; default: mmdebstrap's), SOURCE_DATE_EPOCH (timestamps; default: the last commit's).
# Needs: mmdebstrap, umoci (Debian packages); root or unprivileged user namespaces for mmdebstrap.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
images="$repo/images"
out="$repo/dist"
tag=""
force=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --output) out="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

started=$SECONDS
say() { echo "[image $((SECONDS - started))s] $*" >&2; }
die() { echo "images/build.sh: $*" >&2; exit 1; }

for tool in mmdebstrap umoci; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (Debian: apt-get install mmdebstrap umoci)"
done
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null \
    || die "$PYTHON must be Python 3.11 or later (set PYTHON=...)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON to one that has)"

suite=bookworm
lib_suite=bullseye   # libvgpu.so's build: an old glibc, see above
pyver=3.11   # bookworm's python3
site="usr/local/lib/python$pyver/dist-packages"
[[ -n "$tag" ]] || tag="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")"
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag: $tag"
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
    SOURCE_DATE_EPOCH="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH
mirror=()
[[ -n "${HAMI_IMAGE_MIRROR:-}" ]] && mirror=("$HAMI_IMAGE_MIRROR")

cache="${HAMI_IMAGE_CACHE:-${HAMI_CLUSTER_CACHE:-$HOME/.cache/hami}/image}"
mkdir -p "$cache" "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/hami-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT

hash_of() { sha256sum | cut -c1-16; }
files_hash() { # files_hash PATH... -> hash of the named files' contents and names
    (cd "$repo" && find "$@" -type f ! -path '*/__pycache__/*' ! -path '*/build/*' -print0 | sort -z \
        | xargs -0 sha256sum) | hash_of
}
# A deterministic tar of a directory: sorted, owned by root, timestamps clamped.
layer_tar() { # layer_tar DIR OUT.tar
    tar --create --file "$2" --directory "$1" --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime --format=posix \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
}
cached() { [[ "$force" == 0 && -s "$1" ]]; }

# ---------------------------------------------------------------- layer 1: Debian + python3
base_packages="python3,ca-certificates"
base_key="$(printf '%s\n' "$suite" "$base_packages" "${mirror[*]-}" "$(sed -n '/^    # layer 1 recipe$/,/^    # end layer 1$/p' "$0")" | hash_of)"
base="$cache/base-$base_key.tar"
if cached "$base"; then
    say "layer 1: Debian $suite + python3 (cached)"
else
    say "layer 1: Debian $suite + python3 with mmdebstrap (downloads about 30 MB)"
    # layer 1 recipe
    mmdebstrap --quiet --variant=minbase --include="$base_packages" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook='rm -f "$1/etc/resolv.conf"; : > "$1/etc/hostname"' \
        "$suite" "$work/base.tar" "${mirror[@]}"
    # end layer 1
    mv "$work/base.tar" "$base"
fi

# ---------------------------------------------------------------- libvgpu, built in a bullseye chroot
lib_key="$(printf '%s %s %s\n' "$lib_suite" "${mirror[*]-}" "$(files_hash libvgpu/Makefile libvgpu/exports.map libvgpu/src libvgpu/include)" | hash_of)"
lib="$cache/libvgpu-$lib_key.so"
if cached "$lib"; then
    say "libvgpu.so (cached)"
else
    say "libvgpu.so: gcc in a Debian $lib_suite chroot (downloads about 60 MB)"
    mkdir -p "$work/libvgpu"
    cp -r "$repo/libvgpu/Makefile" "$repo/libvgpu/exports.map" "$repo/libvgpu/src" "$repo/libvgpu/include" "$work/libvgpu/"
    mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,make \
        --customize-hook='mkdir -p "$1/src"' \
        --customize-hook="copy-in $work/libvgpu /src" \
        --customize-hook='chroot "$1" make -s -C /src/libvgpu build/libvgpu.so' \
        --customize-hook="copy-out /src/libvgpu/build/libvgpu.so $work" \
        "$lib_suite" /dev/null "${mirror[@]}"
    mv "$work/libvgpu.so" "$lib"
fi

# ---------------------------------------------------------------- layer 2: Python dependencies
# Wheels for the image's interpreter whatever the build machine runs: CPython 3.11 on x86_64
# with glibc 2.36 (every manylinux tag up to it).
platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
target_flags=(--only-binary=:all: --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" "${platforms[@]}")
"$PYTHON" - "$repo/pyproject.toml" > "$work/requirements.txt" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
PY
deps_key="$(cat "$work/requirements.txt" <(printf '%s\n' "${target_flags[@]}") | hash_of)"
deps="$cache/deps-$deps_key.tar"
pyc_with=""
if command -v "python$pyver" >/dev/null 2>&1; then pyc_with="python$pyver"; fi
if cached "$deps"; then
    say "layer 2: Python dependencies (cached)"
else
    say "layer 2: Python dependencies from PyPI (about 90 MB of wheels)"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$cache/wheels" \
        "${target_flags[@]}" -r "$work/requirements.txt"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$cache/wheels" \
        --no-compile --target "$work/deps/$site" "${target_flags[@]}" -r "$work/requirements.txt"
    rm -rf "$work/deps/$site/bin"   # console scripts with the build machine's interpreter in #!
    if [[ -n "$pyc_with" ]]; then
        # Bytecode for the image's own Python version: the root filesystem may be read-only.
        "$pyc_with" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$work/deps" -p / "$work/deps/$site" >/dev/null
    fi
    layer_tar "$work/deps" "$work/deps.tar"
    mv "$work/deps.tar" "$deps"
fi

# ---------------------------------------------------------------- layer 3: hami
app_key="$(printf '%s %s %s %s\n' "$lib_key" "$pyc_with" "$SOURCE_DATE_EPOCH" \
    "$(files_hash pyproject.toml README.md src images/hami)" | hash_of)"
app="$cache/app-$app_key.tar"
if cached "$app"; then
    say "layer 3: hami (cached)"
else
    say "layer 3: hami's wheel, /usr/local/bin/hami, libvgpu.so"
    "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$work/wheel" "$repo" >/dev/null
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-index --no-compile \
        --target "$work/app/$site" "$work"/wheel/hami-*.whl
    rm -rf "$work/app/$site/bin"
    if [[ -n "$pyc_with" ]]; then
        "$pyc_with" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$work/app" -p / "$work/app/$site/hami" >/dev/null
    fi
    install -D -m 0755 "$images/hami" "$work/app/usr/local/bin/hami"
    install -D -m 0644 "$lib" "$work/app/usr/lib/hami/libvgpu.so"
    layer_tar "$work/app" "$work/app.tar"
    mv "$work/app.tar" "$app"
fi

# ---------------------------------------------------------------- the image
image_key="$(printf '%s %s %s %s\n' "$base_key" "$deps_key" "$app_key" "$tag" | hash_of)"
archive="$cache/hami-image-$image_key.tar"
if cached "$archive"; then
    say "image (cached)"
else
    say "image: OCI layout with umoci"
    layout="$work/oci"
    ref="$layout:$tag"
    umoci init --layout "$layout"
    umoci new --image "$ref"
    created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
    umoci raw add-layer --image "$ref" --history.created "$created" \
        --history.created_by "mmdebstrap --variant=minbase --include=$base_packages $suite" "$base"
    umoci raw add-layer --image "$ref" --history.created "$created" \
        --history.created_by "pip install --target /$site (hami's dependencies)" "$deps"
    umoci raw add-layer --image "$ref" --history.created "$created" \
        --history.created_by "hami $tag and libvgpu.so" "$app"
    umoci config --image "$ref" --no-history --created "$created" --os linux --architecture amd64 \
        --config.entrypoint /usr/local/bin/hami --config.cmd --help \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --config.env PYTHONUNBUFFERED=1 --config.workingdir / \
        --config.label "org.opencontainers.image.title=hami" \
        --config.label "org.opencontainers.image.version=$tag" \
        --config.label "org.opencontainers.image.description=HAMi-compatible GPU sharing for Kubernetes"
    umoci gc --layout "$layout"
    "$PYTHON" "$images/oci_archive.py" "$layout" "$tag" "hami:$tag" "$work/image.tar"
    mv "$work/image.tar" "$archive"
fi
# Keep the three newest of each kind that changes with the sources (other checkouts may share the cache).
for kind in app hami-image; do
    ls -1t "$cache/$kind"-*.tar 2>/dev/null | tail -n +4 | xargs -r rm -f
done
result="$out/hami-image-$tag.tar"
cp "$archive" "$result.part" && mv "$result.part" "$result"
say "done: $result ($(du -h "$result" | cut -f1); load it with: docker load -i $result, or ctr -n k8s.io images import $result)"
echo "$result"
