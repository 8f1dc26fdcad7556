/* Memory hooks: every allocation is reserved in the shared region before the
 * driver sees it and released on the matching free or on failure. */
#include <pthread.h>
#include <string.h>

#include "vgpu.h"

#define ENTER(sym)                                                       \
    do {                                                                 \
        vgpu_ensure_init();                                              \
        if (unlikely(!vgpu_real[H_##sym])) return CUDA_ERROR_NOT_FOUND; \
    } while (0)

int vgpu_current_device(CUdevice *dev) {
    if (!vgpu_aux.cuCtxGetDevice || vgpu_aux.cuCtxGetDevice(dev) != CUDA_SUCCESS) return -1;
    return (*dev >= 0 && *dev < VGPU_MAX_DEVICES) ? 0 : -1;
}

/* Reserve on the current device. Returns 0 and dev = -1 when there is no
 * usable context (the driver then reports its own error). */
static int reserve_current(uint64_t size, int *dev) {
    CUdevice d;
    if (vgpu_current_device(&d) != 0) {
        *dev = -1;
        return 0;
    }
    *dev = d;
    return region_reserve(d, size);
}

#define ALLOC_BODY(sym, dptr, size, call)                        \
    ENTER(sym);                                                  \
    if (!(dptr) || (size) == 0) return call;                     \
    int dev;                                                     \
    if (reserve_current((size), &dev) != 0) return CUDA_ERROR_OUT_OF_MEMORY; \
    CUresult r = call;                                           \
    if (r != CUDA_SUCCESS) {                                     \
        region_release(dev, (size));                             \
        return r;                                                \
    }                                                            \
    if (dev >= 0) ptrmap_put(&vgpu_allocs, *(dptr), dev, (size)); \
    return r

VGPU_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size) {
    ALLOC_BODY(cuMemAlloc_v2, dptr, size, REAL(cuMemAlloc_v2)(dptr, size));
}

VGPU_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t size, unsigned int flags) {
    ALLOC_BODY(cuMemAllocManaged, dptr, size, REAL(cuMemAllocManaged)(dptr, size, flags));
}

VGPU_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream s) {
    ALLOC_BODY(cuMemAllocAsync, dptr, size, REAL(cuMemAllocAsync)(dptr, size, s));
}

VGPU_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream s) {
    ALLOC_BODY(cuMemAllocAsync_ptsz, dptr, size, REAL(cuMemAllocAsync_ptsz)(dptr, size, s));
}

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream s) {
    ALLOC_BODY(cuMemAllocFromPoolAsync, dptr, size, REAL(cuMemAllocFromPoolAsync)(dptr, size, pool, s));
}

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t size, CUmemoryPool pool, CUstream s) {
    ALLOC_BODY(cuMemAllocFromPoolAsync_ptsz, dptr, size, REAL(cuMemAllocFromPoolAsync_ptsz)(dptr, size, pool, s));
}

static void untrack(ptrmap_t *m, uint64_t key) {
    int dev;
    uint64_t size;
    if (ptrmap_take(m, key, &dev, &size)) region_release(dev, size);
}

VGPU_EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
    ENTER(cuMemFree_v2);
    CUresult r = REAL(cuMemFree_v2)(p);
    if (r == CUDA_SUCCESS && p) untrack(&vgpu_allocs, p);
    return r;
}

VGPU_EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    ENTER(cuMemFreeAsync);
    CUresult r = REAL(cuMemFreeAsync)(p, s);
    if (r == CUDA_SUCCESS && p) untrack(&vgpu_allocs, p);
    return r;
}

VGPU_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) {
    ENTER(cuMemFreeAsync_ptsz);
    CUresult r = REAL(cuMemFreeAsync_ptsz)(p, s);
    if (r == CUDA_SUCCESS && p) untrack(&vgpu_allocs, p);
    return r;
}

/* The pitch is only known after the call: allocate, then reserve the real
 * size, and give the memory back if that passes the limit. */
VGPU_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pitch, size_t width, size_t height,
                                        unsigned int elem) {
    ENTER(cuMemAllocPitch_v2);
    CUresult r = REAL(cuMemAllocPitch_v2)(dptr, pitch, width, height, elem);
    if (r != CUDA_SUCCESS || !dptr || !pitch) return r;
    CUdevice dev;
    if (vgpu_current_device(&dev) != 0) return r;
    uint64_t size = (uint64_t)*pitch * height;
    if (region_reserve(dev, size) != 0) {
        if (vgpu_real[H_cuMemFree_v2]) REAL(cuMemFree_v2)(*dptr);
        *dptr = 0;
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    ptrmap_put(&vgpu_allocs, *dptr, dev, size);
    return r;
}

VGPU_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                                 unsigned long long flags) {
    ENTER(cuMemCreate);
    if (!handle || !prop || size == 0) return REAL(cuMemCreate)(handle, size, prop, flags);
    int dev;
    if (prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE && prop->location.id >= 0 &&
        prop->location.id < VGPU_MAX_DEVICES) {
        dev = prop->location.id;
        if (region_reserve(dev, size) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    } else if (reserve_current(size, &dev) != 0) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUresult r = REAL(cuMemCreate)(handle, size, prop, flags);
    if (r != CUDA_SUCCESS) {
        region_release(dev, size);
        return r;
    }
    if (dev >= 0) ptrmap_put(&vgpu_handles, *handle, dev, size);
    return r;
}

VGPU_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    ENTER(cuMemRelease);
    CUresult r = REAL(cuMemRelease)(handle);
    if (r == CUDA_SUCCESS) untrack(&vgpu_handles, handle);
    return r;
}

static uint64_t format_bytes(CUarray_format f) {
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8: return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF: return 2;
    default: return 4;
    }
}

static uint64_t array_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned ch) {
    uint64_t n = (uint64_t)w * (h ? h : 1) * (d ? d : 1) * (ch ? ch : 1);
    return n * format_bytes(f);
}

#define ARRAY_BODY(sym, arr, desc, bytes, call)                     \
    ENTER(sym);                                                     \
    if (!(arr) || !(desc)) return call;                             \
    uint64_t size = (bytes);                                        \
    int dev;                                                        \
    if (reserve_current(size, &dev) != 0) return CUDA_ERROR_OUT_OF_MEMORY; \
    CUresult r = call;                                              \
    if (r != CUDA_SUCCESS) {                                        \
        region_release(dev, size);                                  \
        return r;                                                   \
    }                                                               \
    if (dev >= 0) ptrmap_put(&vgpu_arrays, (uint64_t)(uintptr_t)*(arr), dev, size); \
    return r

VGPU_EXPORT CUresult cuArrayCreate_v2(CUarray *arr, const CUDA_ARRAY_DESCRIPTOR *desc) {
    ARRAY_BODY(cuArrayCreate_v2, arr, desc, array_bytes(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels),
               REAL(cuArrayCreate_v2)(arr, desc));
}

VGPU_EXPORT CUresult cuArray3DCreate_v2(CUarray *arr, const CUDA_ARRAY3D_DESCRIPTOR *desc) {
    ARRAY_BODY(cuArray3DCreate_v2, arr, desc,
               array_bytes(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels),
               REAL(cuArray3DCreate_v2)(arr, desc));
}

VGPU_EXPORT CUresult cuArrayDestroy(CUarray arr) {
    ENTER(cuArrayDestroy);
    CUresult r = REAL(cuArrayDestroy)(arr);
    if (r == CUDA_SUCCESS && arr) untrack(&vgpu_arrays, (uint64_t)(uintptr_t)arr);
    return r;
}

/* ---- the container's view of memory ---- */
VGPU_EXPORT CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total_b) {
    ENTER(cuMemGetInfo_v2);
    CUresult r = REAL(cuMemGetInfo_v2)(free_b, total_b);
    CUdevice dev;
    if (r != CUDA_SUCCESS || !free_b || !total_b || vgpu_current_device(&dev) != 0) return r;
    region_note_total(dev, *total_b);
    uint64_t lim = region_limit(dev);
    if (!lim) return r;
    uint64_t total = lim < *total_b ? lim : *total_b;
    uint64_t used = region_used(dev);
    uint64_t fr = used >= total ? 0 : total - used;
    if (fr > *free_b) fr = *free_b;
    *total_b = total;
    *free_b = fr;
    return r;
}

VGPU_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    ENTER(cuDeviceTotalMem_v2);
    CUresult r = REAL(cuDeviceTotalMem_v2)(bytes, dev);
    if (r != CUDA_SUCCESS || !bytes || dev < 0 || dev >= VGPU_MAX_DEVICES) return r;
    region_note_total(dev, *bytes);
    uint64_t lim = region_limit(dev);
    if (lim && lim < *bytes) *bytes = lim;
    return r;
}

/* ---- contexts: a configured overhead is charged once per device ---- */
static int ctx_count[VGPU_MAX_DEVICES];
static pthread_mutex_t ctx_mu = PTHREAD_MUTEX_INITIALIZER;

static int ctx_charge(int dev) {
    if (dev < 0 || dev >= VGPU_MAX_DEVICES) return 0;
    pthread_mutex_lock(&ctx_mu);
    int rc = 0;
    if (ctx_count[dev] == 0 && vgpu_cfg.ctx_overhead) rc = region_reserve(dev, vgpu_cfg.ctx_overhead);
    if (rc == 0) ctx_count[dev]++;
    pthread_mutex_unlock(&ctx_mu);
    return rc;
}

static void ctx_uncharge(int dev) {
    if (dev < 0 || dev >= VGPU_MAX_DEVICES) return;
    pthread_mutex_lock(&ctx_mu);
    if (ctx_count[dev] > 0 && --ctx_count[dev] == 0 && vgpu_cfg.ctx_overhead)
        region_release(dev, vgpu_cfg.ctx_overhead);
    pthread_mutex_unlock(&ctx_mu);
}

VGPU_EXPORT CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, CUdevice dev) {
    ENTER(cuCtxCreate_v2);
    if (!ctx) return REAL(cuCtxCreate_v2)(ctx, flags, dev);
    if (ctx_charge(dev) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = REAL(cuCtxCreate_v2)(ctx, flags, dev);
    if (r != CUDA_SUCCESS) ctx_uncharge(dev);
    else ptrmap_put(&vgpu_handles, (uint64_t)(uintptr_t)*ctx | (1ull << 63), dev, 0);
    return r;
}

VGPU_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    ENTER(cuCtxDestroy_v2);
    CUresult r = REAL(cuCtxDestroy_v2)(ctx);
    int dev;
    uint64_t size;
    if (r == CUDA_SUCCESS && ctx && ptrmap_take(&vgpu_handles, (uint64_t)(uintptr_t)ctx | (1ull << 63), &dev, &size))
        ctx_uncharge(dev);
    return r;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev) {
    ENTER(cuDevicePrimaryCtxRetain);
    if (!ctx) return REAL(cuDevicePrimaryCtxRetain)(ctx, dev);
    if (ctx_charge(dev) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = REAL(cuDevicePrimaryCtxRetain)(ctx, dev);
    if (r != CUDA_SUCCESS) ctx_uncharge(dev);
    return r;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    ENTER(cuDevicePrimaryCtxRelease_v2);
    CUresult r = REAL(cuDevicePrimaryCtxRelease_v2)(dev);
    if (r == CUDA_SUCCESS) ctx_uncharge(dev);
    return r;
}
