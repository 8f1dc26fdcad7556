#!/usr/bin/env bash
# Added nanoseconds per intercepted call: the fake driver called directly
# against the same program under LD_PRELOAD=libvgpu.so (no SM limit, then an
# SM limit with the bucket held open). Best of 5 runs of N calls each.
set -euo pipefail
cd "$(dirname "$0")/../.."
make -s -C libvgpu >/dev/null
B=$PWD/libvgpu/build
N=${N:-1000000}
NA=${NA:-200000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export LD_LIBRARY_PATH=$B FAKE_CUDA_STATE=$tmp/fake FAKE_CUDA_BLOCK_US=0
# One region per configuration: a region keeps the limits it was created with.
plain=$tmp/region-plain sm=$tmp/region-sm
run() { "$@" | awk '{print $2}'; }
min() { printf '%s\n' "$@" | sort -g | head -1; }
# Three interleaved rounds; the minimum of each configuration is reported.
bl=() ba=() ll=() la=() sl=()
for _ in 1 2 3; do
  bl+=("$(run "$B/bench_libvgpu" launch "$N")")
  ll+=("$(CUDA_DEVICE_MEMORY_SHARED_CACHE=$plain LD_PRELOAD=$B/libvgpu.so CUDA_DEVICE_MEMORY_LIMIT=8g run "$B/bench_libvgpu" launch "$N")")
  sl+=("$(CUDA_DEVICE_MEMORY_SHARED_CACHE=$sm LD_PRELOAD=$B/libvgpu.so CUDA_DEVICE_MEMORY_LIMIT=8g CUDA_DEVICE_SM_LIMIT=50 run "$B/bench_libvgpu" launch "$N")")
  ba+=("$(run "$B/bench_libvgpu" alloc "$NA")")
  la+=("$(CUDA_DEVICE_MEMORY_SHARED_CACHE=$plain LD_PRELOAD=$B/libvgpu.so CUDA_DEVICE_MEMORY_LIMIT=8g run "$B/bench_libvgpu" alloc "$NA")")
done
base_l=$(min "${bl[@]}"); lib_l=$(min "${ll[@]}"); sm_l=$(min "${sl[@]}"); base_a=$(min "${ba[@]}"); lib_a=$(min "${la[@]}")
printf '| call | fake driver ns | with libvgpu ns | added ns |\n|---|---:|---:|---:|\n'
printf '| cuLaunchKernel, no SM limit | %s | %s | %.1f |\n' "$base_l" "$lib_l" "$(echo "$lib_l - $base_l" | bc)"
printf '| cuLaunchKernel, SM limit 50 | %s | %s | %.1f |\n' "$base_l" "$sm_l" "$(echo "$sm_l - $base_l" | bc)"
printf '| cuMemAlloc + cuMemFree | %s | %s | %.1f |\n' "$base_a" "$lib_a" "$(echo "$lib_a - $base_a" | bc)"
