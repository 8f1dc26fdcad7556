#!/usr/bin/env bash
# Builds the pinned control-plane binaries used by the integration tests:
# kube-apiserver, kube-scheduler, etcd and helm, from the Go modules in this
# directory (go.mod, helm/go.mod).
#
# The binaries go to ${HAMI_CLUSTER_CACHE:-~/.cache/hami}/k8s-<version>/bin.
# A stamp file there holds a hash of every input (go.mod/go.sum files, our
# main sources and this script); when it matches and the binaries exist, the
# script exits in well under a second. The first build compiles all of
# Kubernetes and takes tens of minutes on a small machine; later rebuilds are
# fast thanks to Go's own build cache (GOCACHE) and module cache (GOMODCACHE),
# which are left at their defaults.
#
# Usage: bash tests/cluster/build.sh [--force] [--print-bin-dir]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

force=0
print_only=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --print-bin-dir) print_only=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

mod_version() { # mod_version FILE MODULE -> version required in FILE
    awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1"
}

k8s_version="$(mod_version go.mod k8s.io/kubernetes)"
etcd_version="$(mod_version go.mod go.etcd.io/etcd/server/v3)"
helm_version="$(mod_version helm/go.mod helm.sh/helm/v3)"
if [[ -z "$k8s_version" || -z "$etcd_version" || -z "$helm_version" ]]; then
    echo "build.sh: could not read pinned versions from go.mod files" >&2
    exit 1
fi

cache_root="${HAMI_CLUSTER_CACHE:-$HOME/.cache/hami}"
out="$cache_root/k8s-$k8s_version"
bin="$out/bin"
if [[ "$print_only" == 1 ]]; then
    echo "$bin"
    exit 0
fi

binaries=(kube-apiserver kube-scheduler etcd helm)
inputs=(go.mod go.sum cmd/etcd/main.go helm/go.mod helm/go.sum build.sh)
stamp_want="$(cat "${inputs[@]}" | sha256sum | cut -d' ' -f1) $(go env GOVERSION)"
stamp_file="$out/stamp"

all_present() {
    local b
    for b in "${binaries[@]}"; do
        [[ -x "$bin/$b" ]] || return 1
    done
}

if [[ "$force" == 0 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_want" ]] && all_present; then
    echo "cluster binaries up to date: $bin (kubernetes $k8s_version, etcd $etcd_version, helm $helm_version)"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: the go command is needed to build the cluster binaries" >&2
    exit 1
fi

mkdir -p "$bin"
# One build at a time per cache directory; a second caller waits, then finds the stamp.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$out/.lock"
    flock 9
    if [[ "$force" == 0 && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_want" ]] && all_present; then
        echo "cluster binaries up to date: $bin (built by a concurrent build.sh)"
        exit 0
    fi
fi
rm -f "$stamp_file"
start=$(date +%s)
log() { printf '[build.sh %4ds] %s\n' "$(( $(date +%s) - start ))" "$*"; }

log "building kubernetes $k8s_version, etcd $etcd_version, helm $helm_version into $bin"
log "(a cold build compiles all of Kubernetes: about 20 minutes on 2 cores)"

# Version information that `kubectl version` / helm's capabilities read.
minor="${k8s_version#v1.}"
minor="${minor%%.*}"
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version \
 -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

build_one() { # build_one NAME DIR PACKAGE LDFLAGS
    local name="$1" dir="$2" pkg="$3" ldflags="$4" t0
    t0=$(date +%s)
    log "go build $pkg ..."
    (cd "$dir" && go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$bin/.$name.$$.tmp" "$pkg")
    mv -f "$bin/.$name.$$.tmp" "$bin/$name"
    log "built $name in $(( $(date +%s) - t0 ))s ($(du -h "$bin/$name" | cut -f1))"
}

build_one etcd . ./cmd/etcd "-s -w"
build_one kube-apiserver . k8s.io/kubernetes/cmd/kube-apiserver "$k8s_ldflags"
build_one kube-scheduler . k8s.io/kubernetes/cmd/kube-scheduler "$k8s_ldflags"
build_one helm helm helm.sh/helm/v3/cmd/helm "$helm_ldflags"

echo "$stamp_want" > "$stamp_file"
log "done: $bin"
