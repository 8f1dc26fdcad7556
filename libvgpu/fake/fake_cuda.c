/* A fake libcuda.so.1 for tests without a GPU: devices, memory and SM count
 * from the environment (FAKE_CUDA_*), the real driver's error behaviour for
 * what we use, and kernels that occupy a simulated device for simulated time. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cuda_subset.h"
#include "fake_state.h"

#define EXPORT __attribute__((visibility("default")))
#define CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE 720

static int initialized;

struct CUctx_st {
    int dev;
    int primary;
};
static struct CUctx_st primary_ctx[FAKE_MAX_DEV];
static int primary_refs[FAKE_MAX_DEV];
static __thread CUcontext current;
static uint64_t last_end[FAKE_MAX_DEV]; /* this process's last kernel end */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- process-local allocation table ---- */
typedef struct {
    uint64_t key, size;
    int dev;
} entry_t;
static entry_t *tab;
static size_t tab_cap, tab_used;
static uint64_t next_addr = 0x7f0000000000ull;

static void tab_put(uint64_t key, int dev, uint64_t size) {
    if ((tab_used + 1) * 2 > tab_cap) {
        size_t ncap = tab_cap ? tab_cap * 2 : 4096;
        entry_t *n = calloc(ncap, sizeof *n);
        for (size_t i = 0; i < tab_cap; i++)
            if (tab[i].key && tab[i].key != UINT64_MAX) {
                size_t j = (tab[i].key >> 9) & (ncap - 1);
                while (n[j].key) j = (j + 1) & (ncap - 1);
                n[j] = tab[i];
            }
        free(tab);
        tab = n;
        tab_cap = ncap;
        size_t live = 0;
        for (size_t i = 0; i < ncap; i++) live += tab[i].key != 0;
        tab_used = live;
    }
    size_t j = (key >> 9) & (tab_cap - 1);
    while (tab[j].key && tab[j].key != UINT64_MAX) j = (j + 1) & (tab_cap - 1);
    tab[j].key = key;
    tab[j].dev = dev;
    tab[j].size = size;
    tab_used++;
}

static int tab_take(uint64_t key, int *dev, uint64_t *size) {
    if (!tab_cap) return 0;
    for (size_t j = (key >> 9) & (tab_cap - 1); tab[j].key; j = (j + 1) & (tab_cap - 1))
        if (tab[j].key == key) {
            *dev = tab[j].dev;
            *size = tab[j].size;
            tab[j].key = UINT64_MAX;
            return 1;
        }
    return 0;
}

#define NEED_INIT()                                         \
    do {                                                    \
        if (!__atomic_load_n(&initialized, __ATOMIC_ACQUIRE)) return CUDA_ERROR_NOT_INITIALIZED; \
    } while (0)
#define NEED_CTX()                                          \
    do {                                                    \
        NEED_INIT();                                        \
        if (!current) return CUDA_ERROR_INVALID_CONTEXT;    \
    } while (0)

static int valid_dev(CUdevice d) { return d >= 0 && d < fake_cfg.devices; }

EXPORT CUresult cuInit(unsigned int flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    fake_state();
    if (fake_cfg.devices < 1) return CUDA_ERROR_NO_DEVICE;
    __atomic_store_n(&initialized, 1, __ATOMIC_RELEASE);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int *v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 12080;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int *n) {
    NEED_INIT();
    if (!n) return CUDA_ERROR_INVALID_VALUE;
    *n = fake_cfg.devices;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    NEED_INIT();
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    NEED_INIT();
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "Fake GPU %d", d);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute attr, CUdevice d) {
    NEED_INIT();
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    if (attr != CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) return CUDA_ERROR_INVALID_VALUE;
    *v = fake_cfg.sm_count;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    NEED_INIT();
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = fake_cfg.mem_bytes;
    return CUDA_SUCCESS;
}

/* ---- contexts ---- */
EXPORT CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, CUdevice d) {
    (void)flags;
    NEED_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    if (fake_cfg.ctx_overhead && fake_mem_charge(d, fake_cfg.ctx_overhead) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    struct CUctx_st *c = calloc(1, sizeof *c);
    c->dev = d;
    *ctx = current = c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    NEED_INIT();
    if (!ctx || ctx->primary) return CUDA_ERROR_INVALID_CONTEXT;
    if (fake_cfg.ctx_overhead) fake_mem_uncharge(ctx->dev, fake_cfg.ctx_overhead);
    if (current == ctx) current = NULL;
    free(ctx);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice d) {
    NEED_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&mu);
    if (primary_refs[d] == 0 && fake_cfg.ctx_overhead && fake_mem_charge(d, fake_cfg.ctx_overhead) != 0) {
        r = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        primary_refs[d]++;
        primary_ctx[d].dev = d;
        primary_ctx[d].primary = 1;
        *ctx = &primary_ctx[d];
    }
    pthread_mutex_unlock(&mu);
    return r;
}

EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) {
    NEED_INIT();
    if (!valid_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&mu);
    if (primary_refs[d] == 0) r = CUDA_ERROR_INVALID_CONTEXT;
    else if (--primary_refs[d] == 0 && fake_cfg.ctx_overhead) fake_mem_uncharge(d, fake_cfg.ctx_overhead);
    pthread_mutex_unlock(&mu);
    return r;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
    NEED_INIT();
    current = ctx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetCurrent(CUcontext *ctx) {
    NEED_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = current;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice *d) {
    NEED_CTX();
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    *d = current->dev;
    return CUDA_SUCCESS;
}

static CUresult sync_dev(int dev) {
    uint64_t end = __atomic_load_n(&last_end[dev], __ATOMIC_RELAXED);
    uint64_t now = fake_now_ns();
    if (end > now) {
        uint64_t w = end - now;
        struct timespec ts = {(time_t)(w / 1000000000ull), (long)(w % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSynchronize(void) {
    NEED_CTX();
    return sync_dev(current->dev);
}

EXPORT CUresult cuStreamSynchronize(CUstream s) {
    (void)s;
    NEED_CTX();
    return sync_dev(current->dev);
}

/* ---- memory ---- */
static CUresult do_alloc(CUdeviceptr *out, size_t size) {
    NEED_CTX();
    if (!out || size == 0) return CUDA_ERROR_INVALID_VALUE;
    int dev = current->dev;
    if (fake_mem_charge(dev, size) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&mu);
    uint64_t addr = next_addr;
    next_addr += (size + 511) & ~511ull;
    tab_put(addr, dev, size);
    pthread_mutex_unlock(&mu);
    *out = addr;
    return CUDA_SUCCESS;
}

static CUresult do_free(uint64_t key) {
    NEED_INIT();
    if (key == 0) return CUDA_SUCCESS;
    int dev;
    uint64_t size;
    pthread_mutex_lock(&mu);
    int found = tab_take(key, &dev, &size);
    pthread_mutex_unlock(&mu);
    if (!found) return CUDA_ERROR_INVALID_VALUE;
    fake_mem_uncharge(dev, size);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t size) { return do_alloc(p, size); }
EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t size, unsigned int flags) {
    if (flags != 1 && flags != 2) return CUDA_ERROR_INVALID_VALUE; /* GLOBAL or HOST */
    return do_alloc(p, size);
}
EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t size, CUstream s) { (void)s; return do_alloc(p, size); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t size, CUstream s) { (void)s; return do_alloc(p, size); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t size, CUmemoryPool pool, CUstream s) {
    (void)s;
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    return do_alloc(p, size);
}
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t size, CUmemoryPool pool, CUstream s) {
    return cuMemAllocFromPoolAsync(p, size, pool, s);
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { return do_free(p); }
EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { (void)s; return p ? do_free(p) : CUDA_ERROR_INVALID_VALUE; }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { return cuMemFreeAsync(p, s); }

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int elem) {
    NEED_CTX();
    if (!p || !pitch || w == 0 || h == 0 || (elem != 4 && elem != 8 && elem != 16)) return CUDA_ERROR_INVALID_VALUE;
    size_t pt = (w + 511) & ~(size_t)511;
    CUresult r = do_alloc(p, pt * h);
    if (r == CUDA_SUCCESS) *pitch = pt;
    return r;
}

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,
                            unsigned long long flags) {
    NEED_INIT();
    if (!h || !prop || size == 0 || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE || !valid_dev(prop->location.id))
        return CUDA_ERROR_INVALID_DEVICE;
    int dev = prop->location.id;
    if (fake_mem_charge(dev, size) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&mu);
    uint64_t key = next_addr;
    next_addr += 512;
    tab_put(key, dev, size);
    pthread_mutex_unlock(&mu);
    *h = key;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
    NEED_INIT();
    return h ? do_free(h) : CUDA_ERROR_INVALID_VALUE;
}

static uint64_t fmt_bytes(CUarray_format f) {
    return (f == 1 || f == 8) ? 1 : (f == 2 || f == 9 || f == 0x10) ? 2 : 4;
}

static CUresult array_alloc(CUarray *a, size_t w, size_t h, size_t d, CUarray_format f, unsigned ch) {
    if (!a || w == 0 || (ch != 1 && ch != 2 && ch != 4)) return CUDA_ERROR_INVALID_VALUE;
    CUdeviceptr p;
    CUresult r = do_alloc(&p, w * (h ? h : 1) * (d ? d : 1) * ch * fmt_bytes(f));
    if (r == CUDA_SUCCESS) *a = (CUarray)(uintptr_t)p;
    return r;
}

EXPORT CUresult cuArrayCreate_v2(CUarray *a, const CUDA_ARRAY_DESCRIPTOR *d) {
    NEED_CTX();
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    return array_alloc(a, d->Width, d->Height, 1, d->Format, d->NumChannels);
}

EXPORT CUresult cuArray3DCreate_v2(CUarray *a, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    NEED_CTX();
    if (!d) return CUDA_ERROR_INVALID_VALUE;
    return array_alloc(a, d->Width, d->Height, d->Depth, d->Format, d->NumChannels);
}

EXPORT CUresult cuArrayDestroy(CUarray a) {
    NEED_INIT();
    return a ? do_free((uint64_t)(uintptr_t)a) : CUDA_ERROR_INVALID_HANDLE;
}

EXPORT CUresult cuMemGetInfo_v2(size_t *free_b, size_t *total) {
    NEED_CTX();
    if (!free_b || !total) return CUDA_ERROR_INVALID_VALUE;
    fake_dev_t *d = fake_dev(current->dev);
    uint64_t used = __atomic_load_n(&d->mem_used, __ATOMIC_RELAXED);
    *total = fake_cfg.mem_bytes;
    *free_b = used >= fake_cfg.mem_bytes ? 0 : fake_cfg.mem_bytes - used;
    return CUDA_SUCCESS;
}

/* ---- launches ---- */
static CUresult launch(CUfunction f, uint64_t gx, uint64_t gy, uint64_t gz, int coop) {
    NEED_CTX();
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (gx == 0 || gy == 0 || gz == 0) return CUDA_ERROR_INVALID_VALUE;
    uint64_t blocks = gx * gy * gz;
    if (coop && blocks > (uint64_t)fake_cfg.sm_count * 32) return CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE;
    int dev = current->dev;
    if (!fake_cfg.block_ns) return CUDA_SUCCESS; /* kernels take no time: nothing to schedule */
    uint64_t end = fake_run_kernel(dev, blocks);
    __atomic_store_n(&last_end[dev], end, __ATOMIC_RELAXED);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                               unsigned bz, unsigned shm, CUstream s, void **params, void **extra) {
    (void)bx, (void)by, (void)bz, (void)shm, (void)s, (void)params, (void)extra;
    return launch(f, gx, gy, gz, 0);
}
EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                    unsigned bz, unsigned shm, CUstream s, void **params, void **extra) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shm, s, params, extra);
}
EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
    (void)params, (void)extra;
    if (!c) return CUDA_ERROR_INVALID_VALUE;
    return launch(f, c->gridDimX, c->gridDimY, c->gridDimZ, 0);
}
EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
    return cuLaunchKernelEx(c, f, params, extra);
}
EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                          unsigned by, unsigned bz, unsigned shm, CUstream s, void **params) {
    (void)bx, (void)by, (void)bz, (void)shm, (void)s, (void)params;
    return launch(f, gx, gy, gz, 1);
}
EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                               unsigned by, unsigned bz, unsigned shm, CUstream s, void **params) {
    return cuLaunchCooperativeKernel(f, gx, gy, gz, bx, by, bz, shm, s, params);
}
/* A graph runs as one full wave of the device. */
EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s) {
    (void)s;
    if (!g) return CUDA_ERROR_INVALID_VALUE;
    return launch((CUfunction)g, (uint64_t)fake_cfg.sm_count, 1, 1, 0);
}
EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s) { return cuGraphLaunch(g, s); }

/* Test hook: SM-weighted kernel time scheduled for pid (0 = all) on dev. */
EXPORT CUresult fakeCuGetBusy(int dev, int pid, unsigned long long *busy_ns, unsigned long long *now_ns) {
    if (dev < 0 || dev >= FAKE_MAX_DEV || !busy_ns) return CUDA_ERROR_INVALID_VALUE;
    fake_dev_t *d = fake_dev(dev);
    uint64_t b = 0;
    fake_lock();
    if (!pid) b = d->busy_ns;
    else
        for (int i = 0; i < FAKE_PROCS; i++)
            if (d->procs[i].pid == pid) b = d->procs[i].busy_ns;
    fake_unlock();
    *busy_ns = b;
    if (now_ns) *now_ns = fake_now_ns();
    return CUDA_SUCCESS;
}

/* ---- cuGetProcAddress ---- */
CUresult cuGetProcAddress(const char *, void **, int, cuuint64_t);
CUresult cuGetProcAddress_v2(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);

static const struct {
    const char *name;
    void *fn;
} procs[] = {
#define P(n) {#n, (void *)&n}
    P(cuInit), P(cuDriverGetVersion), P(cuDeviceGetCount), P(cuDeviceGet), P(cuDeviceGetName),
    P(cuDeviceGetAttribute), P(cuDeviceTotalMem_v2), P(cuCtxCreate_v2), P(cuCtxDestroy_v2),
    P(cuDevicePrimaryCtxRetain), P(cuDevicePrimaryCtxRelease_v2), P(cuCtxSetCurrent), P(cuCtxGetCurrent),
    P(cuCtxGetDevice), P(cuCtxSynchronize), P(cuStreamSynchronize), P(cuMemAlloc_v2), P(cuMemAllocManaged),
    P(cuMemAllocAsync), P(cuMemAllocAsync_ptsz), P(cuMemAllocFromPoolAsync), P(cuMemAllocFromPoolAsync_ptsz),
    P(cuMemFree_v2), P(cuMemFreeAsync), P(cuMemFreeAsync_ptsz), P(cuMemAllocPitch_v2), P(cuMemCreate),
    P(cuMemRelease), P(cuArrayCreate_v2), P(cuArray3DCreate_v2), P(cuArrayDestroy), P(cuMemGetInfo_v2),
    P(cuLaunchKernel), P(cuLaunchKernel_ptsz), P(cuLaunchKernelEx), P(cuLaunchKernelEx_ptsz),
    P(cuLaunchCooperativeKernel), P(cuLaunchCooperativeKernel_ptsz), P(cuGraphLaunch), P(cuGraphLaunch_ptsz),
    P(cuGetProcAddress), P(cuGetProcAddress_v2),
#undef P
};

static void *find_proc(const char *name) {
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++)
        if (!strcmp(procs[i].name, name)) return procs[i].fn;
    return NULL;
}

static CUresult get_proc(const char *symbol, void **pfn, int version, cuuint64_t flags, int *found_any) {
    if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
    char name[256];
    void *f = NULL;
    *found_any = 0;
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
        snprintf(name, sizeof name, "%s_ptsz", symbol);
        f = find_proc(name);
    }
    if (!f && !strcmp(symbol, "cuGetProcAddress") && version >= 12050) f = find_proc("cuGetProcAddress_v2");
    if (!f && version >= 3020) {
        snprintf(name, sizeof name, "%s_v2", symbol);
        f = find_proc(name);
    }
    if (!f) f = find_proc(symbol);
    *pfn = f;
    *found_any = f != NULL;
    return f ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags) {
    int found;
    return get_proc(symbol, pfn, version, flags, &found);
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *status) {
    int found;
    CUresult r = get_proc(symbol, pfn, version, flags, &found);
    if (status) *status = found ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return r;
}
