/* libvgpu internals shared by the source files. */
#ifndef VGPU_INTERNAL_H
#define VGPU_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "cuda_subset.h"
#include "vgpu_region.h"

#define VGPU_EXPORT __attribute__((visibility("default")))
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/*
 * Every hooked entry point: exported name, the base name cuGetProcAddress is
 * asked for, the first driver API version where that base name means this
 * entry, the version from which it no longer does (0 = still current), and
 * whether it is the per-thread-default-stream variant.
 */
#define VGPU_CUDA_HOOKS(X)                                                  \
    X(cuGetProcAddress, "cuGetProcAddress", 11030, 12050, 0)                \
    X(cuGetProcAddress_v2, "cuGetProcAddress", 12050, 0, 0)                 \
    X(cuMemAlloc_v2, "cuMemAlloc", 3020, 0, 0)                              \
    X(cuMemFree_v2, "cuMemFree", 3020, 0, 0)                                \
    X(cuMemAllocPitch_v2, "cuMemAllocPitch", 3020, 0, 0)                    \
    X(cuMemAllocManaged, "cuMemAllocManaged", 6000, 0, 0)                   \
    X(cuMemAllocAsync, "cuMemAllocAsync", 11020, 0, 0)                      \
    X(cuMemAllocAsync_ptsz, "cuMemAllocAsync", 11020, 0, 1)                 \
    X(cuMemAllocFromPoolAsync, "cuMemAllocFromPoolAsync", 11020, 0, 0)      \
    X(cuMemAllocFromPoolAsync_ptsz, "cuMemAllocFromPoolAsync", 11020, 0, 1) \
    X(cuMemFreeAsync, "cuMemFreeAsync", 11020, 0, 0)                        \
    X(cuMemFreeAsync_ptsz, "cuMemFreeAsync", 11020, 0, 1)                   \
    X(cuMemCreate, "cuMemCreate", 10020, 0, 0)                              \
    X(cuMemRelease, "cuMemRelease", 10020, 0, 0)                            \
    X(cuArrayCreate_v2, "cuArrayCreate", 3020, 0, 0)                        \
    X(cuArray3DCreate_v2, "cuArray3DCreate", 3020, 0, 0)                    \
    X(cuArrayDestroy, "cuArrayDestroy", 2000, 0, 0)                         \
    X(cuMemGetInfo_v2, "cuMemGetInfo", 3020, 0, 0)                          \
    X(cuDeviceTotalMem_v2, "cuDeviceTotalMem", 3020, 0, 0)                  \
    X(cuCtxCreate_v2, "cuCtxCreate", 3020, 13000, 0)                        \
    X(cuCtxDestroy_v2, "cuCtxDestroy", 4000, 0, 0)                          \
    X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", 7000, 0, 0)     \
    X(cuDevicePrimaryCtxRelease_v2, "cuDevicePrimaryCtxRelease", 11000, 0, 0) \
    X(cuLaunchKernel, "cuLaunchKernel", 4000, 0, 0)                         \
    X(cuLaunchKernel_ptsz, "cuLaunchKernel", 4000, 0, 1)                    \
    X(cuLaunchKernelEx, "cuLaunchKernelEx", 11060, 0, 0)                    \
    X(cuLaunchKernelEx_ptsz, "cuLaunchKernelEx", 11060, 0, 1)               \
    X(cuLaunchCooperativeKernel, "cuLaunchCooperativeKernel", 9000, 0, 0)   \
    X(cuLaunchCooperativeKernel_ptsz, "cuLaunchCooperativeKernel", 9000, 0, 1) \
    X(cuGraphLaunch, "cuGraphLaunch", 10000, 0, 0)                          \
    X(cuGraphLaunch_ptsz, "cuGraphLaunch", 10000, 0, 1)

#define VGPU_NVML_HOOKS(X)                                  \
    X(nvmlDeviceGetMemoryInfo, "", 0, 0, 0)                 \
    X(nvmlDeviceGetMemoryInfo_v2, "", 0, 0, 0)

enum {
#define X(sym, base, since, until, ptds) H_##sym,
    VGPU_CUDA_HOOKS(X)
    VGPU_NVML_HOOKS(X)
#undef X
    H_COUNT
};

typedef struct {
    const char *name;
    const char *base;
    int since;
    int until;
    int ptds;
    void *wrapper;
} vgpu_hook_t;

extern const vgpu_hook_t vgpu_hooks[H_COUNT];
extern void *vgpu_real[H_COUNT];

typedef struct {
    CUresult (*cuCtxGetDevice)(CUdevice *);
    CUresult (*cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
    nvmlReturn_t (*nvmlInit_v2)(void);
    nvmlReturn_t (*nvmlDeviceGetHandleByIndex_v2)(unsigned int, nvmlDevice_t *);
    nvmlReturn_t (*nvmlDeviceGetProcessUtilization)(nvmlDevice_t, nvmlProcessUtilizationSample_t *, unsigned int *,
                                                    unsigned long long);
    nvmlReturn_t (*nvmlDeviceGetIndex)(nvmlDevice_t, unsigned int *);
} vgpu_aux_t;
extern vgpu_aux_t vgpu_aux;

#define H_NVML_BEGIN H_nvmlDeviceGetMemoryInfo

/* Prototypes of the exported wrappers (same signatures as the driver's). */
CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned int);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuMemFreeAsync_ptsz(CUdeviceptr, CUstream);
CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
CUresult cuMemRelease(CUmemGenericAllocationHandle);
CUresult cuArrayCreate_v2(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
CUresult cuArray3DCreate_v2(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
CUresult cuArrayDestroy(CUarray);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuDeviceTotalMem_v2(size_t *, CUdevice);
CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
CUresult cuCtxDestroy_v2(CUcontext);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice);
CUresult cuLaunchKernel(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                        unsigned int, CUstream, void **, void **);
CUresult cuLaunchKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                             unsigned int, unsigned int, CUstream, void **, void **);
CUresult cuLaunchKernelEx(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuLaunchCooperativeKernel(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                                   unsigned int, unsigned int, CUstream, void **);
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                                        unsigned int, unsigned int, unsigned int, CUstream, void **);
CUresult cuGraphLaunch(CUgraphExec, CUstream);
CUresult cuGraphLaunch_ptsz(CUgraphExec, CUstream);
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t *);
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t, nvmlMemory_v2_t *);

#define REAL(sym) ((__typeof__(&sym))vgpu_real[H_##sym])

/* Configuration read once from the environment. */
enum { POLICY_DEFAULT = 0, POLICY_FORCE = 1, POLICY_DISABLE = 2 };
typedef struct {
    uint64_t mem_limit[VGPU_MAX_DEVICES]; /* 0 = none */
    uint32_t sm_limit[VGPU_MAX_DEVICES];  /* 0 = none */
    uint64_t ctx_overhead;
    int policy;
    int priority;
    int log_level;
    int ctl_period_ms;
    int debug_hold_lock_ms; /* tests: sleep while holding the region lock */
} vgpu_config_t;
extern vgpu_config_t vgpu_cfg;

/* Set once init has run; the launch fast path reads these. */
extern int vgpu_ready;
extern int vgpu_sm_active; /* some device has an SM cap in force */
extern vgpu_region_t *vgpu_region;

void vgpu_init_slow(void);
void *vgpu_nvml_sym(const char *name);
static inline void vgpu_ensure_init(void) {
    if (unlikely(!__atomic_load_n(&vgpu_ready, __ATOMIC_ACQUIRE))) vgpu_init_slow();
}

void vgpu_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOG_ERR(...) vgpu_log(1, __VA_ARGS__)
#define LOG_INFO(...) vgpu_log(2, __VA_ARGS__)
#define LOG_DEBUG(...) vgpu_log(3, __VA_ARGS__)

/* Parses "3000m", "3g", "1024", "512Mi", "2Gi", "64k"; returns 0 on success. */
int vgpu_parse_size(const char *s, uint64_t *out);

static inline uint64_t vgpu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* region.c */
int region_attach(void);                     /* maps the region and registers this process */
int region_reserve(int dev, uint64_t bytes); /* 0 = reserved, -1 = over the limit */
void region_release(int dev, uint64_t bytes);
uint64_t region_used(int dev);
uint64_t region_limit(int dev);
void region_note_total(int dev, uint64_t total);
vgpu_proc_t *region_self(void);
void region_pids(int32_t *pids, int *n, int max);
void region_announce(void);                  /* an inotify event for the monitor */

/* memory.c */
int vgpu_current_device(CUdevice *dev);

/* launch.c */
void launch_start_controller(void);
void launch_refresh_limits(void);

/* ptrmap.c: process-local tables of allocations */
typedef struct ptrmap ptrmap_t;
extern ptrmap_t vgpu_allocs, vgpu_handles, vgpu_arrays;
void ptrmap_put(ptrmap_t *m, uint64_t key, int dev, uint64_t size);
int ptrmap_take(ptrmap_t *m, uint64_t key, int *dev, uint64_t *size); /* 1 = found and removed */

#endif
