/* Per-call cost of cuLaunchKernel and cuMemAlloc+cuMemFree against the fake
 * driver; run with and without LD_PRELOAD=libvgpu.so (see run.sh).
 * Usage: bench_libvgpu launch|alloc ITERATIONS */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "cuda_subset.h"
#include "vgpu_region.h"

CUresult cuInit(unsigned int);
CUresult cuDevicePrimaryCtxRetain(CUcontext *, CUdevice);
CUresult cuCtxSetCurrent(CUcontext);
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuLaunchKernel(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **, void **);

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* With an SM limit, open the bucket wide so that the bench measures the
 * limiter's bookkeeping, not its waiting. */
static void open_bucket(void) {
    const char *path = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    if (!path || !getenv("CUDA_DEVICE_SM_LIMIT") || !getenv("LD_PRELOAD")) return;
    int fd = open(path, O_RDWR);
    if (fd < 0) return;
    vgpu_region_t *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (r == MAP_FAILED) return;
    __atomic_store_n(&r->dev[0].rate_milli, 1000000000000000ull, __ATOMIC_RELAXED);
    munmap(r, sizeof *r);
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "launch";
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    CUcontext ctx;
    if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx)) return 2;
    CUdeviceptr p;
    cuMemAlloc_v2(&p, 4096); /* initialise the library before timing */
    cuMemFree_v2(p);
    open_bucket();
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_ns();
        if (!strcmp(what, "alloc")) {
            for (long i = 0; i < n; i++) {
                cuMemAlloc_v2(&p, 1 << 20);
                cuMemFree_v2(p);
            }
        } else {
            for (long i = 0; i < n; i++) cuLaunchKernel((CUfunction)0x1000, 1, 1, 1, 32, 1, 1, 0, NULL, NULL, NULL);
        }
        double per = (now_ns() - t0) / (double)n;
        if (per < best) best = per;
    }
    printf("%s %.1f\n", what, best);
    return 0;
}
