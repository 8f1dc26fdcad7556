/* Shared by the libvgpu test programs: the driver entry points reached through
 * one of the three lookup paths (direct binding, dlopen+dlsym, cuGetProcAddress). */
#ifndef VGPU_TEST_COMMON_H
#define VGPU_TEST_COMMON_H
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_subset.h"

/* Entry points of the fake driver that the program binds directly. */
CUresult cuInit(unsigned int);
CUresult cuDeviceGet(CUdevice *, int);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuCtxSynchronize(void);
CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemAllocPitch_v2(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
CUresult cuMemAllocManaged(CUdeviceptr *, size_t, unsigned int);
CUresult cuMemAllocAsync(CUdeviceptr *, size_t, CUstream);
CUresult cuMemAllocFromPoolAsync(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
CUresult cuMemFreeAsync(CUdeviceptr, CUstream);
CUresult cuMemCreate(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
CUresult cuMemRelease(CUmemGenericAllocationHandle);
CUresult cuArrayCreate_v2(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
CUresult cuArray3DCreate_v2(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
CUresult cuArrayDestroy(CUarray);
CUresult cuMemGetInfo_v2(size_t *, size_t *);
CUresult cuDeviceTotalMem_v2(size_t *, CUdevice);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxCreate_v2(CUcontext *, unsigned int, CUdevice);
CUresult cuCtxDestroy_v2(CUcontext);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);
CUresult cuLaunchKernelEx(const CUlaunchConfig *, CUfunction, void **, void **);
CUresult cuLaunchCooperativeKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                   CUstream, void **);
CUresult cuGraphLaunch(CUgraphExec, CUstream);
CUresult fakeCuGetBusy(int, int, unsigned long long *, unsigned long long *);
nvmlReturn_t nvmlInit_v2(void);
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int, nvmlDevice_t *);
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t *);

typedef struct {
    CUresult (*memAlloc)(CUdeviceptr *, size_t);
    CUresult (*memFree)(CUdeviceptr);
    CUresult (*memAllocPitch)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
    CUresult (*memAllocManaged)(CUdeviceptr *, size_t, unsigned int);
    CUresult (*memAllocAsync)(CUdeviceptr *, size_t, CUstream);
    CUresult (*memAllocFromPoolAsync)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
    CUresult (*memFreeAsync)(CUdeviceptr, CUstream);
    CUresult (*memCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *, unsigned long long);
    CUresult (*memRelease)(CUmemGenericAllocationHandle);
    CUresult (*arrayCreate)(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
    CUresult (*array3DCreate)(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
    CUresult (*arrayDestroy)(CUarray);
    CUresult (*memGetInfo)(size_t *, size_t *);
    CUresult (*deviceTotalMem)(size_t *, CUdevice);
    CUresult (*launchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             CUstream, void **, void **);
    CUresult (*launchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
    CUresult (*launchCooperativeKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                                        unsigned, CUstream, void **);
    CUresult (*graphLaunch)(CUgraphExec, CUstream);
} api_t;

static api_t api __attribute__((unused));

static inline void *proc_lookup(const char *name, int per_thread) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    CUresult (*gpa)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *) =
        (__typeof__(gpa))dlsym(h, "cuGetProcAddress_v2");
    void *fn = NULL;
    CUdriverProcAddressQueryResult st;
    if (!gpa || gpa(name, &fn, 12080, per_thread ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM : 0, &st) != 0)
        return NULL;
    return fn;
}

/* mode: "direct", "dlsym" or "procaddr" (add "-ptsz" for per-thread-stream launches). */
static inline int load_api(const char *mode) {
    if (!strcmp(mode, "direct")) {
        api.memAlloc = cuMemAlloc_v2;
        api.memFree = cuMemFree_v2;
        api.memAllocPitch = cuMemAllocPitch_v2;
        api.memAllocManaged = cuMemAllocManaged;
        api.memAllocAsync = cuMemAllocAsync;
        api.memAllocFromPoolAsync = cuMemAllocFromPoolAsync;
        api.memFreeAsync = cuMemFreeAsync;
        api.memCreate = cuMemCreate;
        api.memRelease = cuMemRelease;
        api.arrayCreate = cuArrayCreate_v2;
        api.array3DCreate = cuArray3DCreate_v2;
        api.arrayDestroy = cuArrayDestroy;
        api.memGetInfo = cuMemGetInfo_v2;
        api.deviceTotalMem = cuDeviceTotalMem_v2;
        api.launchKernel = cuLaunchKernel;
        api.launchKernelEx = cuLaunchKernelEx;
        api.launchCooperativeKernel = cuLaunchCooperativeKernel;
        api.graphLaunch = cuGraphLaunch;
        return 0;
    }
    if (!strcmp(mode, "dlsym")) {
        void *h = dlopen("libcuda.so.1", RTLD_NOW);
        if (!h) return -1;
#define L(field, name) api.field = (__typeof__(api.field))dlsym(h, name)
        L(memAlloc, "cuMemAlloc_v2"); L(memFree, "cuMemFree_v2"); L(memAllocPitch, "cuMemAllocPitch_v2");
        L(memAllocManaged, "cuMemAllocManaged"); L(memAllocAsync, "cuMemAllocAsync");
        L(memAllocFromPoolAsync, "cuMemAllocFromPoolAsync"); L(memFreeAsync, "cuMemFreeAsync");
        L(memCreate, "cuMemCreate"); L(memRelease, "cuMemRelease"); L(arrayCreate, "cuArrayCreate_v2");
        L(array3DCreate, "cuArray3DCreate_v2"); L(arrayDestroy, "cuArrayDestroy");
        L(memGetInfo, "cuMemGetInfo_v2"); L(deviceTotalMem, "cuDeviceTotalMem_v2");
        L(launchKernel, "cuLaunchKernel"); L(launchKernelEx, "cuLaunchKernelEx");
        L(launchCooperativeKernel, "cuLaunchCooperativeKernel"); L(graphLaunch, "cuGraphLaunch");
#undef L
        return 0;
    }
    if (!strncmp(mode, "procaddr", 8)) {
        int pt = strstr(mode, "ptsz") != NULL;
#define P(field, name) api.field = (__typeof__(api.field))proc_lookup(name, pt)
        P(memAlloc, "cuMemAlloc"); P(memFree, "cuMemFree"); P(memAllocPitch, "cuMemAllocPitch");
        P(memAllocManaged, "cuMemAllocManaged"); P(memAllocAsync, "cuMemAllocAsync");
        P(memAllocFromPoolAsync, "cuMemAllocFromPoolAsync"); P(memFreeAsync, "cuMemFreeAsync");
        P(memCreate, "cuMemCreate"); P(memRelease, "cuMemRelease"); P(arrayCreate, "cuArrayCreate");
        P(array3DCreate, "cuArray3DCreate"); P(arrayDestroy, "cuArrayDestroy"); P(memGetInfo, "cuMemGetInfo");
        P(deviceTotalMem, "cuDeviceTotalMem"); P(launchKernel, "cuLaunchKernel");
        P(launchKernelEx, "cuLaunchKernelEx"); P(launchCooperativeKernel, "cuLaunchCooperativeKernel");
        P(graphLaunch, "cuGraphLaunch");
#undef P
        return api.memAlloc ? 0 : -1;
    }
    return -1;
}

static int failures __attribute__((unused));
#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (cond) {                                        \
            printf("PASS " __VA_ARGS__);                   \
        } else {                                           \
            failures++;                                    \
            printf("FAIL line %d: ", __LINE__);            \
            printf(__VA_ARGS__);                           \
        }                                                  \
        printf("\n");                                      \
        fflush(stdout);                                    \
    } while (0)

static inline CUcontext setup_ctx(int dev) {
    CUcontext ctx = NULL;
    if (cuInit(0) != CUDA_SUCCESS) return NULL;
    if (cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS) return NULL;
    cuCtxSetCurrent(ctx);
    return ctx;
}

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#define MiB (1024ull * 1024ull)
#endif
