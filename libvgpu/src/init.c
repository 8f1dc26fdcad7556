/* Start-up: configuration from the environment, the real driver entry points,
 * and the two lookup paths besides direct binding: dlsym and cuGetProcAddress. */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vgpu.h"

vgpu_config_t vgpu_cfg;
vgpu_aux_t vgpu_aux;
int vgpu_ready;
void *vgpu_real[H_COUNT];

const vgpu_hook_t vgpu_hooks[H_COUNT] = {
#define X(sym, base, since, until, ptds) {#sym, base, since, until, ptds, (void *)&sym},
    VGPU_CUDA_HOOKS(X) VGPU_NVML_HOOKS(X)
#undef X
};

void vgpu_log(int level, const char *fmt, ...) {
    if (level > vgpu_cfg.log_level) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(buf, sizeof buf, "[libvgpu %d] ", (int)getpid());
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(buf);
    if (len + 1 < sizeof buf) buf[len++] = '\n';
    ssize_t w = write(2, buf, len);
    (void)w;
}

int vgpu_parse_size(const char *s, uint64_t *out) {
    if (!s || !isdigit((unsigned char)*s)) return -1;
    uint64_t v = 0;
    const char *p = s;
    for (; isdigit((unsigned char)*p); p++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    uint64_t mul;
    if (*p == 0) mul = 1;
    else if (!strcmp(p, "k") || !strcmp(p, "K") || !strcmp(p, "Ki")) mul = 1ull << 10;
    else if (!strcmp(p, "m") || !strcmp(p, "M") || !strcmp(p, "Mi")) mul = 1ull << 20;
    else if (!strcmp(p, "g") || !strcmp(p, "G") || !strcmp(p, "Gi")) mul = 1ull << 30;
    else return -1;
    if (v > UINT64_MAX / mul) return -1;
    *out = v * mul;
    return 0;
}

static int env_int(const char *name, int def, int lo, int hi) {
    const char *s = getenv(name);
    if (!s || !*s) return def;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) {
        LOG_ERR("ignoring %s=%s: expected an integer in [%d, %d]", name, s, lo, hi);
        return def;
    }
    return (int)v;
}

static void mem_limit_env(const char *name, uint64_t *dst) {
    const char *s = getenv(name);
    if (!s) return;
    uint64_t v;
    if (vgpu_parse_size(s, &v) != 0) {
        LOG_ERR("ignoring %s=%s: expected bytes or a number with k/m/g/Ki/Mi/Gi", name, s);
        return;
    }
    *dst = v;
}

static void read_config(void) {
    vgpu_cfg.log_level = 1;
    vgpu_cfg.log_level = env_int("LIBCUDA_LOG_LEVEL", 1, 0, 5);
    uint64_t all = 0;
    mem_limit_env("CUDA_DEVICE_MEMORY_LIMIT", &all);
    int sm_all = env_int("CUDA_DEVICE_SM_LIMIT", 0, 0, 100);
    char name[64];
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        vgpu_cfg.mem_limit[i] = all;
        snprintf(name, sizeof name, "CUDA_DEVICE_MEMORY_LIMIT_%d", i);
        mem_limit_env(name, &vgpu_cfg.mem_limit[i]);
        snprintf(name, sizeof name, "CUDA_DEVICE_SM_LIMIT_%d", i);
        int sm = env_int(name, sm_all, 0, 100);
        vgpu_cfg.sm_limit[i] = (sm > 0 && sm < 100) ? (uint32_t)sm : 0;
    }
    mem_limit_env("CUDA_DEVICE_CONTEXT_OVERHEAD", &vgpu_cfg.ctx_overhead);
    const char *pol = getenv("GPU_CORE_UTILIZATION_POLICY");
    vgpu_cfg.policy = POLICY_DEFAULT;
    if (pol && *pol) {
        if (!strcasecmp(pol, "force")) vgpu_cfg.policy = POLICY_FORCE;
        else if (!strcasecmp(pol, "disable")) vgpu_cfg.policy = POLICY_DISABLE;
        else if (strcasecmp(pol, "default") != 0)
            LOG_ERR("ignoring GPU_CORE_UTILIZATION_POLICY=%s: expected default, force or disable", pol);
    }
    vgpu_cfg.priority = env_int("CUDA_TASK_PRIORITY", 1, 0, 1);
    vgpu_cfg.ctl_period_ms = env_int("LIBVGPU_CONTROL_PERIOD_MS", 100, 5, 10000);
    vgpu_cfg.debug_hold_lock_ms = env_int("LIBVGPU_DEBUG_HOLD_LOCK_MS", 0, 0, 600000);
}

/* ---- the real dlsym ---- */
typedef void *(*dlsym_fn)(void *, const char *);
static dlsym_fn real_dlsym_ptr;

static __attribute__((noinline)) dlsym_fn resolve_real_dlsym(void) {
    dlsym_fn f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!f) f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    __atomic_store_n(&real_dlsym_ptr, f, __ATOMIC_RELEASE);
    return f;
}

static void *real_dlsym(void *handle, const char *name) {
    dlsym_fn f = __atomic_load_n(&real_dlsym_ptr, __ATOMIC_ACQUIRE);
    if (!f) f = resolve_real_dlsym();
    return f ? f(handle, name) : NULL;
}

static void *open_lib(const char *env, const char *def) {
    const char *path = getenv(env);
    if (!path || !*path) path = def;
    void *h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    if (!h) LOG_INFO("cannot open %s: %s", path, dlerror());
    return h;
}

static void *nvml_handle;
void *vgpu_nvml_sym(const char *name) { return nvml_handle ? real_dlsym(nvml_handle, name) : NULL; }

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void do_init(void) {
    read_config();
    void *cuda = open_lib("LIBVGPU_CUDA_LIBRARY", "libcuda.so.1");
    void *nvml = open_lib("LIBVGPU_NVML_LIBRARY", "libnvidia-ml.so.1");
    nvml_handle = nvml;
    for (int i = 0; i < H_COUNT; i++) {
        void *h = i >= H_NVML_BEGIN ? nvml : cuda;
        vgpu_real[i] = h ? real_dlsym(h, vgpu_hooks[i].name) : NULL;
    }
    if (cuda) {
        vgpu_aux.cuCtxGetDevice = (__typeof__(vgpu_aux.cuCtxGetDevice))real_dlsym(cuda, "cuCtxGetDevice");
        vgpu_aux.cuDeviceGetAttribute =
            (__typeof__(vgpu_aux.cuDeviceGetAttribute))real_dlsym(cuda, "cuDeviceGetAttribute");
    }
    if (nvml) {
        vgpu_aux.nvmlInit_v2 = (__typeof__(vgpu_aux.nvmlInit_v2))real_dlsym(nvml, "nvmlInit_v2");
        vgpu_aux.nvmlDeviceGetHandleByIndex_v2 =
            (__typeof__(vgpu_aux.nvmlDeviceGetHandleByIndex_v2))real_dlsym(nvml, "nvmlDeviceGetHandleByIndex_v2");
        vgpu_aux.nvmlDeviceGetProcessUtilization = (__typeof__(vgpu_aux.nvmlDeviceGetProcessUtilization))real_dlsym(
            nvml, "nvmlDeviceGetProcessUtilization");
        vgpu_aux.nvmlDeviceGetIndex = (__typeof__(vgpu_aux.nvmlDeviceGetIndex))real_dlsym(nvml, "nvmlDeviceGetIndex");
    }
    region_attach();
    __atomic_store_n(&vgpu_ready, 1, __ATOMIC_RELEASE);
    launch_refresh_limits(); /* the controller thread starts with the first launch */
}

void vgpu_init_slow(void) { pthread_once(&init_once, do_init); }

/* ---- dlsym: hand out our wrappers for what we hook ---- */
static void *hook_by_name(const char *name) {
    for (int i = 0; i < H_COUNT; i++)
        if (!strcmp(vgpu_hooks[i].name, name)) return vgpu_hooks[i].wrapper;
    return NULL;
}

VGPU_EXPORT void *dlsym(void *handle, const char *name) {
    const char *n = name;
    __asm__("" : "+r"(n)); /* glibc declares name nonnull; callers may still pass NULL */
    if (n && ((n[0] == 'c' && n[1] == 'u') || (n[0] == 'n' && n[1] == 'v' && n[2] == 'm'))) {
        void *w = hook_by_name(n);
        if (w) return w;
    }
    /* A tail call, so that glibc sees the caller's return address (RTLD_NEXT). */
    dlsym_fn f = __atomic_load_n(&real_dlsym_ptr, __ATOMIC_ACQUIRE);
    if (unlikely(!f)) f = resolve_real_dlsym();
    return f(handle, name);
}

/* ---- cuGetProcAddress ---- */
static int has_ptsz_variant(const char *base) {
    for (int i = 0; i < H_NVML_BEGIN; i++)
        if (vgpu_hooks[i].ptds && !strcmp(vgpu_hooks[i].base, base)) return 1;
    return 0;
}

static void *map_proc(const char *symbol, void *real, int version, cuuint64_t flags) {
    if (!real) return real;
    for (int i = 0; i < H_NVML_BEGIN; i++)
        if (vgpu_real[i] == real) return vgpu_hooks[i].wrapper;
    /* The driver handed out an entry we do not know by address: match by name and version. */
    int ptds = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) ? 1 : 0;
    for (int i = 0; i < H_NVML_BEGIN; i++) {
        const vgpu_hook_t *h = &vgpu_hooks[i];
        if (strcmp(h->base, symbol) != 0 || version < h->since || (h->until && version >= h->until)) continue;
        if (h->ptds != ptds && (h->ptds || has_ptsz_variant(h->base))) continue;
        if (!vgpu_real[i]) continue;
        LOG_DEBUG("cuGetProcAddress(%s, %d): matched %s by name", symbol, version, h->name);
        return h->wrapper;
    }
    return real;
}

VGPU_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    vgpu_ensure_init();
    if (!vgpu_real[H_cuGetProcAddress]) return CUDA_ERROR_NOT_FOUND;
    CUresult r = REAL(cuGetProcAddress)(symbol, pfn, cudaVersion, flags);
    if (r == CUDA_SUCCESS && pfn && symbol) *pfn = map_proc(symbol, *pfn, cudaVersion, flags);
    return r;
}

VGPU_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *status) {
    vgpu_ensure_init();
    if (!vgpu_real[H_cuGetProcAddress_v2]) return CUDA_ERROR_NOT_FOUND;
    CUresult r = REAL(cuGetProcAddress_v2)(symbol, pfn, cudaVersion, flags, status);
    if (r == CUDA_SUCCESS && pfn && symbol) *pfn = map_proc(symbol, *pfn, cudaVersion, flags);
    return r;
}
