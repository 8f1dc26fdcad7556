/* NVML hooks: memory figures as the container sees them. */
#include "vgpu.h"

static int nvml_index(nvmlDevice_t device) {
    unsigned int idx;
    if (!vgpu_aux.nvmlDeviceGetIndex || vgpu_aux.nvmlDeviceGetIndex(device, &idx) != NVML_SUCCESS) return -1;
    return idx < VGPU_MAX_DEVICES ? (int)idx : -1;
}

/* Clamp (total, free, used) to the limit: never above the physical figures,
 * never below zero. Returns 1 if a limit applies. */
static int container_view(int dev, unsigned long long *total, unsigned long long *free_b,
                          unsigned long long *used) {
    if (dev < 0) return 0;
    uint64_t lim = region_limit(dev);
    if (!lim) return 0;
    uint64_t t = lim < *total ? lim : *total;
    uint64_t u = region_used(dev);
    if (u > t) u = t;
    uint64_t f = t - u;
    if (f > *free_b) f = *free_b;
    *total = t;
    *used = u;
    *free_b = f;
    return 1;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *mem) {
    vgpu_ensure_init();
    if (!vgpu_real[H_nvmlDeviceGetMemoryInfo]) return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t r = REAL(nvmlDeviceGetMemoryInfo)(device, mem);
    if (r == NVML_SUCCESS && mem) container_view(nvml_index(device), &mem->total, &mem->free, &mem->used);
    return r;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *mem) {
    vgpu_ensure_init();
    if (!vgpu_real[H_nvmlDeviceGetMemoryInfo_v2]) return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t r = REAL(nvmlDeviceGetMemoryInfo_v2)(device, mem);
    if (r == NVML_SUCCESS && mem && container_view(nvml_index(device), &mem->total, &mem->free, &mem->used))
        mem->reserved = 0;
    return r;
}
