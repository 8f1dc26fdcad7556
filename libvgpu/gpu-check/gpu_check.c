/* Driver-API checks for a real GPU (see gpu-check.sh). Built against our own
 * minimal header; everything is looked up with dlopen/dlsym at run time.
 * Usage: gpu_check mem | sm SECONDS | bench N */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_subset.h"

typedef struct CUmod_st *CUmodule;
#define CU_DEVICE_ATTRIBUTE_CLOCK_RATE 13

static CUresult (*pInit)(unsigned);
static CUresult (*pRetain)(CUcontext *, CUdevice);
static CUresult (*pSetCurrent)(CUcontext);
static CUresult (*pAlloc)(CUdeviceptr *, size_t);
static CUresult (*pFree)(CUdeviceptr);
static CUresult (*pInfo)(size_t *, size_t *);
static CUresult (*pAttr)(int *, int, CUdevice);
static CUresult (*pLoad)(CUmodule *, const void *);
static CUresult (*pGetFn)(CUfunction *, CUmodule, const char *);
static CUresult (*pLaunch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                           CUstream, void **, void **);
static CUresult (*pSync)(void);

static const char *ptx =
    ".version 7.0\n.target sm_70\n.address_size 64\n"
    ".visible .entry spin(.param .u64 cycles)\n{\n"
    "  .reg .u64 %rd<5>;\n  .reg .pred %p;\n"
    "  ld.param.u64 %rd1, [cycles];\n  mov.u64 %rd2, %clock64;\n"
    "LOOP:\n  mov.u64 %rd3, %clock64;\n  sub.u64 %rd4, %rd3, %rd2;\n"
    "  setp.lt.u64 %p, %rd4, %rd1;\n  @%p bra LOOP;\n  ret;\n}\n";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#define LOAD(var, name)                                        \
    do {                                                       \
        *(void **)&var = dlsym(h, name);                       \
        if (!var) {                                            \
            fprintf(stderr, "missing %s\n", name);             \
            exit(2);                                           \
        }                                                      \
    } while (0)

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "mem";
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {
        fprintf(stderr, "no libcuda.so.1\n");
        return 2;
    }
    LOAD(pInit, "cuInit"); LOAD(pRetain, "cuDevicePrimaryCtxRetain"); LOAD(pSetCurrent, "cuCtxSetCurrent");
    LOAD(pAlloc, "cuMemAlloc_v2"); LOAD(pFree, "cuMemFree_v2"); LOAD(pInfo, "cuMemGetInfo_v2");
    LOAD(pAttr, "cuDeviceGetAttribute");
    CUcontext ctx;
    if (pInit(0) || pRetain(&ctx, 0) || pSetCurrent(ctx)) {
        fprintf(stderr, "no context\n");
        return 2;
    }
    if (!strcmp(what, "mem")) {
        size_t f, t;
        pInfo(&f, &t);
        size_t chunk = 64ull << 20, got = 0;
        CUdeviceptr p;
        static CUdeviceptr ptrs[1 << 16];
        int n = 0;
        CUresult r;
        while (n < (1 << 16) && (r = pAlloc(&ptrs[n], chunk)) == CUDA_SUCCESS) got += chunk, n++;
        size_t f2, t2;
        pInfo(&f2, &t2);
        CUresult rest = f2 ? pAlloc(&p, f2) : CUDA_SUCCESS;
        CUresult over = pAlloc(&p, 1);
        printf("mem total_mib=%zu free_mib=%zu allocated_mib=%zu stop=%d rest_fits=%d one_more=%d\n", t >> 20,
               f >> 20, got >> 20, r, rest == CUDA_SUCCESS, over);
        return 0;
    }
    LOAD(pLoad, "cuModuleLoadData"); LOAD(pGetFn, "cuModuleGetFunction");
    LOAD(pLaunch, "cuLaunchKernel"); LOAD(pSync, "cuCtxSynchronize");
    CUmodule mod;
    CUfunction fn;
    if (pLoad(&mod, ptx) || pGetFn(&fn, mod, "spin")) {
        fprintf(stderr, "cannot load the PTX kernel\n");
        return 2;
    }
    int sm = 0, khz = 0;
    pAttr(&sm, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0);
    pAttr(&khz, CU_DEVICE_ATTRIBUTE_CLOCK_RATE, 0);
    if (!strcmp(what, "sm")) {
        double seconds = argc > 2 ? atof(argv[2]) : 10;
        unsigned long long cycles = (unsigned long long)khz * 1; /* about 1 ms per kernel */
        void *params[] = {&cycles};
        long k = 0;
        double t0 = now_s();
        while (now_s() - t0 < seconds) {
            pLaunch(fn, (unsigned)sm, 1, 1, 128, 1, 1, 0, NULL, params, NULL);
            if (++k % 64 == 0) pSync();
        }
        pSync();
        double dt = now_s() - t0;
        printf("sm kernels_per_s=%.1f device_ms_per_s=%.1f\n", k / dt, k / dt * 1.0);
        return 0;
    }
    long n = argc > 2 ? atol(argv[2]) : 100000;
    unsigned long long zero = 0;
    void *params[] = {&zero};
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        pLaunch(fn, 1, 1, 1, 32, 1, 1, 0, NULL, params, NULL);
        if (i % 1000 == 999) pSync();
    }
    pSync();
    double launch_ns = (now_s() - t0) / n * 1e9;
    CUdeviceptr p;
    t0 = now_s();
    for (long i = 0; i < n / 10; i++) {
        pAlloc(&p, 1 << 20);
        pFree(p);
    }
    double alloc_ns = (now_s() - t0) / (n / 10) * 1e9;
    printf("bench launch_ns=%.1f alloc_free_ns=%.1f\n", launch_ns, alloc_ns);
    return 0;
}
