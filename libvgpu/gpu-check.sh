#!/usr/bin/env bash
# libvgpu on a real NVIDIA GPU (driver, CUDA and PyTorch installed). Runs in a
# few minutes and prints a small table. Not yet run on hardware.
#   memory limit with the driver API and with torch (OOM at the limit),
#   the container's view in NVML / nvidia-smi, the SM cap (30 vs uncapped),
#   and the per-call cost of cuLaunchKernel and cuMemAlloc+cuMemFree.
set -uo pipefail
cd "$(dirname "$0")"
make -s >/dev/null || exit 1
LIB=$PWD/build/libvgpu.so
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
gcc -O2 -Iinclude -o "$TMP/gpu_check" gpu-check/gpu_check.c -ldl || exit 1
LIMIT_MIB=${LIMIT_MIB:-4096}
PY=${PYTHON:-python3}
# Never put build/ (the fake driver) on the library path here.
unset LD_LIBRARY_PATH
lib() { env LD_PRELOAD="$LIB" CUDA_DEVICE_MEMORY_SHARED_CACHE="$TMP/region-$1" "${@:2}"; }
row() { printf '| %-44s | %-40s | %-8s |\n' "$1" "$2" "$3"; }
ok() { if eval "$1"; then echo PASS; else echo FAIL; fi; }
val() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "| check | measured | result |"
echo "|---|---|---|"

# 1. driver API: fill to the limit
out=$(lib mem env CUDA_DEVICE_MEMORY_LIMIT=${LIMIT_MIB}m timeout 120 "$TMP/gpu_check" mem)
total=$(val total_mib "$out"); got=$(val allocated_mib "$out"); stop=$(val stop "$out")
rest=$(val rest_fits "$out"); more=$(val one_more "$out")
row "driver API: cuMemGetInfo total (MiB)" "$total (limit $LIMIT_MIB)" "$(ok "[ '$total' = '$LIMIT_MIB' ]")"
row "driver API: 64 MiB chunks until OOM" "$got MiB, stop code $stop" "$(ok "[ '$stop' = 2 ] && [ '$got' -le $LIMIT_MIB ]")"
row "driver API: exactly the rest fits, 1 B more OOM" "rest=$rest one_more=$more" "$(ok "[ '$rest' = 1 ] && [ '$more' = 2 ]")"

# 2. torch: OOM at the limit
tout=$(lib torch env CUDA_DEVICE_MEMORY_LIMIT=${LIMIT_MIB}m timeout 180 "$PY" - <<'PY' 2>&1
import torch
free, total = torch.cuda.mem_get_info()
xs, got = [], 0
try:
    while True:
        xs.append(torch.empty(64 << 20, dtype=torch.uint8, device="cuda"))
        got += 64
except torch.cuda.OutOfMemoryError:
    pass
print(f"torch total_mib={total >> 20} allocated_mib={got}")
PY
)
ttotal=$(val total_mib "$tout"); tgot=$(val allocated_mib "$tout")
row "torch: mem_get_info total (MiB)" "${ttotal:-error} (limit $LIMIT_MIB)" "$(ok "[ '$ttotal' = '$LIMIT_MIB' ]")"
row "torch: 64 MiB tensors until OutOfMemoryError" "${tgot:-error} MiB" \
    "$(ok "[ -n '$tgot' ] && [ '$tgot' -le $LIMIT_MIB ] && [ '$tgot' -ge $((LIMIT_MIB - 512)) ]")"

# 3. NVML view (nvidia-smi under the library)
smi=$(lib smi env CUDA_DEVICE_MEMORY_LIMIT=${LIMIT_MIB}m timeout 60 nvidia-smi -i 0 \
      --query-gpu=memory.total,memory.used --format=csv,noheader,nounits 2>&1 | head -1)
row "nvidia-smi memory.total, used (MiB)" "$smi" "$(ok "[ \"\$(echo '$smi' | cut -d, -f1 | tr -d ' ')\" = '$LIMIT_MIB' ]")"

# 4. SM cap: throughput of a busy kernel, capped at 30 vs uncapped
free_k=$(val kernels_per_s "$(timeout 60 "$TMP/gpu_check" sm 15)")
cap_k=$(val kernels_per_s "$(lib sm env CUDA_DEVICE_SM_LIMIT=30 timeout 60 "$TMP/gpu_check" sm 15)")
ratio=$(echo "scale=3; ${cap_k:-0} / ${free_k:-1}" | bc)
row "SM cap 30: kernels/s capped / uncapped" "$cap_k / $free_k = $ratio" "$(ok "[ \$(echo '$ratio >= 0.25 && $ratio <= 0.35' | bc) = 1 ]")"

# 5. per-call overhead
b0=$(timeout 120 "$TMP/gpu_check" bench 200000)
b1=$(lib bench timeout 120 "$TMP/gpu_check" bench 200000)
b2=$(lib bench2 env CUDA_DEVICE_SM_LIMIT=90 timeout 120 "$TMP/gpu_check" bench 200000)
row "cuLaunchKernel ns: none / lib / lib+SM cap" "$(val launch_ns "$b0") / $(val launch_ns "$b1") / $(val launch_ns "$b2")" "info"
row "cuMemAlloc+cuMemFree ns: none / lib" "$(val alloc_free_ns "$b0") / $(val alloc_free_ns "$b1")" "info"
