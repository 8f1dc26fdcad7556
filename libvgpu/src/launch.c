/* Launch hooks: priority suspension and the SM-share rate limiter.
 *
 * The limiter is a token bucket in the shared region (one per device, shared
 * by all processes of the container), counted in thread blocks. Its refill
 * rate is set by a model-based controller: each period it measures the
 * container's SM utilisation u (NVML process utilisation) and the blocks it
 * admitted, estimates the cost c = u / (blocks per second) with an
 * exponential average, and sets rate = target / c. For a plant that is
 * roughly linear in the launch rate this converges geometrically without
 * overshoot, unlike a bucket refilled by a fixed step up or down.
 *
 * The SM limit is read from the region, not from the environment, so that the
 * monitor can change it while the container runs (resize): it bumps the
 * region's limits_gen, and the next launch of each process notices. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vgpu.h"

int vgpu_sm_active;
static uint32_t seen_limits_gen;
static int ctl_started;
static pthread_mutex_t ctl_mu = PTHREAD_MUTEX_INITIALIZER;

/* Once per millisecond at most: the launch time of this process and of its
 * priority on the current device. A launch after VGPU_ANNOUNCE_NS without one
 * (by this process, or by this priority on the device) writes the file once,
 * which wakes a monitor that watches it with inotify. */
static __attribute__((noinline)) void note_launch(vgpu_proc_t *s, uint64_t ns, uint64_t prev) {
    __atomic_store_n(&s->last_kernel_ns, ns, __ATOMIC_RELAXED);
    int announce = ns - prev >= VGPU_ANNOUNCE_NS;
    CUdevice dev;
    if (vgpu_current_device(&dev) == 0 && dev >= 0 && dev < VGPU_MAX_DEVICES) {
        uint64_t *t = &vgpu_region->dev[dev].last_launch_ns[vgpu_cfg.priority ? 1 : 0];
        uint64_t old = __atomic_load_n(t, __ATOMIC_RELAXED);
        if (ns - old >= VGPU_ANNOUNCE_NS) announce = 1;
        if (ns > old) __atomic_store_n(t, ns, __ATOMIC_RELAXED);
    }
    if (announce) region_announce();
    if (unlikely(!__atomic_load_n(&ctl_started, __ATOMIC_ACQUIRE))) launch_start_controller();
}

static inline void touch_last_kernel(void) {
    vgpu_proc_t *s = region_self();
    if (unlikely(!s)) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    uint64_t ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    uint64_t prev = __atomic_load_n(&s->last_kernel_ns, __ATOMIC_RELAXED);
    if (ns - prev >= 1000000ull) note_launch(s, ns, prev);
}

static uint32_t sm_limit_of(const vgpu_device_t *d) {
    uint32_t sm = __atomic_load_n(&d->sm_limit, __ATOMIC_RELAXED);
    return sm < 100 ? sm : 0;
}

static int cap_in_force(const vgpu_device_t *d) {
    if (vgpu_cfg.policy == POLICY_DISABLE || !sm_limit_of(d)) return 0;
    if (vgpu_cfg.policy == POLICY_DEFAULT && __atomic_load_n(&d->relax, __ATOMIC_RELAXED)) return 0;
    return 1;
}

/* Reads the SM limits from the region: is any in force for this process? */
static void refresh_limits(void);
void launch_refresh_limits(void) { refresh_limits(); }

static void refresh_limits(void) {
    uint32_t gen = __atomic_load_n(&vgpu_region->limits_gen, __ATOMIC_ACQUIRE);
    int active = 0;
    if (vgpu_cfg.policy != POLICY_DISABLE)
        for (int i = 0; i < VGPU_MAX_DEVICES; i++)
            if (sm_limit_of(&vgpu_region->dev[i])) active = 1;
    __atomic_store_n(&vgpu_sm_active, active, __ATOMIC_RELAXED);
    __atomic_store_n(&seen_limits_gen, gen, __ATOMIC_RELEASE);
}

static void sleep_ns(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

static void refill(vgpu_device_t *d, uint64_t now, uint64_t rate) {
    uint64_t last = __atomic_load_n(&d->refill_ns, __ATOMIC_RELAXED);
    if (now <= last) return;
    uint64_t dt = now - last;
    if (dt > 1000000000ull) dt = 1000000000ull;
    int64_t add = (int64_t)((__int128)dt * rate / 1000000000000ll);
    if (add < 1) return;
    if (!__atomic_compare_exchange_n(&d->refill_ns, &last, now, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return;
    int64_t cap = (int64_t)(rate / 100000ull); /* 10 ms worth */
    if (cap < 1) cap = 1;
    int64_t t = __atomic_load_n(&d->tokens, __ATOMIC_RELAXED);
    int64_t n;
    do {
        n = t + add;
        if (n > cap) n = cap;
        if (n < t) return; /* already above the cap: leave it */
    } while (!__atomic_compare_exchange_n(&d->tokens, &t, n, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
}

static void limiter_acquire(vgpu_device_t *d, uint64_t cost) {
    int waited = 0;
    for (;;) {
        uint64_t rate = __atomic_load_n(&d->rate_milli, __ATOMIC_RELAXED);
        if (rate == 0) break; /* the controller has not measured yet */
        uint64_t now = vgpu_now_ns();
        refill(d, now, rate);
        int64_t t = __atomic_load_n(&d->tokens, __ATOMIC_RELAXED);
        if (t > 0) {
            __atomic_fetch_sub(&d->tokens, (int64_t)cost, __ATOMIC_RELAXED);
            break;
        }
        if (!waited++) __atomic_fetch_add(&d->waits, 1, __ATOMIC_RELAXED);
        uint64_t wait = (uint64_t)((__int128)(1 - t) * 1000000000000ll / rate);
        if (wait < 20000) wait = 20000;
        if (wait > 2000000) wait = 2000000;
        sleep_ns(wait);
    }
    __atomic_fetch_add(&d->launched, cost, __ATOMIC_RELAXED);
}

static __attribute__((noinline)) void gate_slow(uint64_t cost) {
    if (__atomic_load_n(&vgpu_region->limits_gen, __ATOMIC_ACQUIRE) !=
        __atomic_load_n(&seen_limits_gen, __ATOMIC_ACQUIRE))
        refresh_limits();
    CUdevice dev;
    if (vgpu_current_device(&dev) != 0) return;
    vgpu_device_t *d = &vgpu_region->dev[dev];
    if (vgpu_cfg.priority >= 1)
        while (__atomic_load_n(&d->suspend, __ATOMIC_ACQUIRE)) sleep_ns(500000);
    if (!cap_in_force(d)) return;
    if (unlikely(!__atomic_load_n(&ctl_started, __ATOMIC_ACQUIRE))) launch_start_controller();
    limiter_acquire(d, cost);
}

static inline void launch_gate(uint64_t cost) {
    touch_last_kernel();
    vgpu_region_t *r = vgpu_region;
    if (likely(!__atomic_load_n(&vgpu_sm_active, __ATOMIC_RELAXED) &&
               !__atomic_load_n(&r->suspend_any, __ATOMIC_RELAXED) &&
               __atomic_load_n(&r->limits_gen, __ATOMIC_RELAXED) ==
                   __atomic_load_n(&seen_limits_gen, __ATOMIC_RELAXED)))
        return;
    gate_slow(cost);
}

static inline uint64_t blocks(unsigned x, unsigned y, unsigned z) { return (uint64_t)x * y * z; }

#define ENTER(sym)                                                       \
    do {                                                                 \
        vgpu_ensure_init();                                              \
        if (unlikely(!vgpu_real[H_##sym])) return CUDA_ERROR_NOT_FOUND; \
    } while (0)

VGPU_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                    unsigned bz, unsigned shm, CUstream s, void **params, void **extra) {
    ENTER(cuLaunchKernel);
    launch_gate(blocks(gx, gy, gz));
    return REAL(cuLaunchKernel)(f, gx, gy, gz, bx, by, bz, shm, s, params, extra);
}

VGPU_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                         unsigned by, unsigned bz, unsigned shm, CUstream s, void **params,
                                         void **extra) {
    ENTER(cuLaunchKernel_ptsz);
    launch_gate(blocks(gx, gy, gz));
    return REAL(cuLaunchKernel_ptsz)(f, gx, gy, gz, bx, by, bz, shm, s, params, extra);
}

VGPU_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra) {
    ENTER(cuLaunchKernelEx);
    if (cfg) launch_gate(blocks(cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ));
    return REAL(cuLaunchKernelEx)(cfg, f, params, extra);
}

VGPU_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *cfg, CUfunction f, void **params, void **extra) {
    ENTER(cuLaunchKernelEx_ptsz);
    if (cfg) launch_gate(blocks(cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ));
    return REAL(cuLaunchKernelEx_ptsz)(cfg, f, params, extra);
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                               unsigned by, unsigned bz, unsigned shm, CUstream s, void **params) {
    ENTER(cuLaunchCooperativeKernel);
    launch_gate(blocks(gx, gy, gz));
    return REAL(cuLaunchCooperativeKernel)(f, gx, gy, gz, bx, by, bz, shm, s, params);
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                                    unsigned by, unsigned bz, unsigned shm, CUstream s,
                                                    void **params) {
    ENTER(cuLaunchCooperativeKernel_ptsz);
    launch_gate(blocks(gx, gy, gz));
    return REAL(cuLaunchCooperativeKernel_ptsz)(f, gx, gy, gz, bx, by, bz, shm, s, params);
}

/* A graph's work is unknown here: count it as one full wave of the device. */
static uint64_t graph_cost(void) {
    if (!__atomic_load_n(&vgpu_sm_active, __ATOMIC_RELAXED)) return 1;
    CUdevice dev;
    if (vgpu_current_device(&dev) != 0) return 1;
    vgpu_device_t *d = &vgpu_region->dev[dev];
    uint32_t sm = __atomic_load_n(&d->sm_count, __ATOMIC_RELAXED);
    if (!sm && vgpu_aux.cuDeviceGetAttribute) {
        int v = 0;
        if (vgpu_aux.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev) == CUDA_SUCCESS && v > 0)
            sm = (uint32_t)v;
        __atomic_store_n(&d->sm_count, sm, __ATOMIC_RELAXED);
    }
    return sm ? sm : 1;
}

VGPU_EXPORT CUresult cuGraphLaunch(CUgraphExec g, CUstream s) {
    ENTER(cuGraphLaunch);
    launch_gate(graph_cost());
    return REAL(cuGraphLaunch)(g, s);
}

VGPU_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec g, CUstream s) {
    ENTER(cuGraphLaunch_ptsz);
    launch_gate(graph_cost());
    return REAL(cuGraphLaunch_ptsz)(g, s);
}

/* ---- the controller ---- */
static nvmlDevice_t nvml_dev[VGPU_MAX_DEVICES];
static int nvml_ok;
static nvmlReturn_t (*nvml_device_util)(nvmlDevice_t, nvmlUtilization_t *);

/* The container's SM utilisation on dev over the last window_ns, 0..1, or -1. */
static double measure_util(int dev, uint64_t window_ns) {
    if (nvml_ok && !nvml_dev[dev] && vgpu_aux.nvmlDeviceGetHandleByIndex_v2((unsigned)dev, &nvml_dev[dev]) != NVML_SUCCESS)
        nvml_dev[dev] = NULL;
    if (!nvml_ok || !nvml_dev[dev]) return -1;
    nvmlProcessUtilizationSample_t samples[512];
    unsigned int n = 512;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now_us = (uint64_t)ts.tv_sec * 1000000ull + (uint64_t)ts.tv_nsec / 1000;
    uint64_t since = now_us - window_ns / 1000;
    nvmlReturn_t r = vgpu_aux.nvmlDeviceGetProcessUtilization(nvml_dev[dev], samples, &n, since);
    if (r != NVML_SUCCESS) return r == NVML_ERROR_NOT_FOUND ? 0 : -1; /* NOT_FOUND: no samples, idle */
    int32_t pids[VGPU_MAX_PROCS];
    int np;
    region_pids(pids, &np, VGPU_MAX_PROCS);
    double total = 0;
    int matched = 0;
    for (int k = 0; k < np; k++) {
        double sum = 0;
        int cnt = 0;
        for (unsigned i = 0; i < n; i++)
            if ((int32_t)samples[i].pid == pids[k]) {
                sum += samples[i].smUtil;
                cnt++;
            }
        if (cnt) {
            total += sum / cnt;
            matched++;
        }
    }
    if (!matched && n > 0 && nvml_device_util) {
        /* Our pids are not the ones NVML sees (a pid namespace): fall back to
         * the whole device, which can only over-estimate our share. */
        nvmlUtilization_t u;
        if (nvml_device_util(nvml_dev[dev], &u) == NVML_SUCCESS) total = u.gpu;
    }
    return total / 100.0;
}

/* One controller step on dev (one process per container steps each period): measure the
 * container's utilisation (for the monitor's metrics) and, with `gate`, set the refill rate. */
static void ctl_step(int dev, uint64_t period_ns, int gate) {
    vgpu_device_t *d = &vgpu_region->dev[dev];
    uint64_t now = vgpu_now_ns();
    uint64_t last = __atomic_load_n(&d->ctl_ns, __ATOMIC_ACQUIRE);
    if (last && now > last && now - last < period_ns * 9 / 10) return; /* another process stepped */
    if (!__atomic_compare_exchange_n(&d->ctl_ns, &last, now, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return;
    uint64_t launched = __atomic_load_n(&d->launched, __ATOMIC_RELAXED);
    uint64_t prev = __atomic_exchange_n(&d->ctl_launched, launched, __ATOMIC_ACQ_REL);
    if (!last || now <= last || now - last > 10 * period_ns) return; /* first step or a long pause: baseline */
    uint64_t dt = now - last;
    double u = measure_util(dev, dt);
    if (u < 0) return;
    __atomic_store_n(&d->util_permille, (uint32_t)(u * 1000), __ATOMIC_RELAXED);
    if (!gate) return;
    uint64_t consumed = launched - prev;
    if (consumed == 0 || u < 0.005) return; /* idle: nothing to learn */
    double per_s = (double)consumed * 1e9 / (double)dt;
    double c = u / per_s;
    double c_hat;
    uint64_t bits = __atomic_load_n(&d->cost_bits, __ATOMIC_RELAXED);
    memcpy(&c_hat, &bits, sizeof c_hat);
    c_hat = (bits == 0 || c_hat <= 0) ? c : c_hat + 0.5 * (c - c_hat);
    memcpy(&bits, &c_hat, sizeof bits);
    __atomic_store_n(&d->cost_bits, bits, __ATOMIC_RELAXED);
    double target = sm_limit_of(d) / 100.0;
    double rate = target / c_hat * 1000.0;
    if (rate < 1000.0) rate = 1000.0; /* at least one block per second */
    if (rate > 1e15) rate = 1e15;
    __atomic_store_n(&d->rate_milli, (uint64_t)rate, __ATOMIC_RELAXED);
    LOG_DEBUG("device %d: util %.3f target %.2f blocks/s %.0f -> rate %.0f", dev, u, target, per_s, rate / 1000);
}

static void *controller(void *arg) {
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (vgpu_aux.nvmlInit_v2 && vgpu_aux.nvmlDeviceGetHandleByIndex_v2 && vgpu_aux.nvmlDeviceGetProcessUtilization &&
        vgpu_aux.nvmlInit_v2() == NVML_SUCCESS) {
        nvml_ok = 1; /* device handles are taken on first use: a resize may cap a device later */
    } else {
        if (__atomic_load_n(&vgpu_sm_active, __ATOMIC_RELAXED))
            LOG_ERR("NVML is not available: the SM limit cannot be measured and is not enforced");
        else
            LOG_INFO("NVML is not available: utilisation is not measured");
    }
    uint64_t period = (uint64_t)vgpu_cfg.ctl_period_ms * 1000000ull;
    for (;;) {
        sleep_ns(period);
        for (int i = 0; i < VGPU_MAX_DEVICES; i++)
            if (cap_in_force(&vgpu_region->dev[i])) ctl_step(i, period, 1);
            else if (__atomic_load_n(&vgpu_region->dev[i].last_launch_ns[0], __ATOMIC_RELAXED) ||
                     __atomic_load_n(&vgpu_region->dev[i].last_launch_ns[1], __ATOMIC_RELAXED))
                ctl_step(i, period, 0); /* no cap: measured for the monitor only */
    }
    return NULL;
}

static void launch_atfork_child(void) { ctl_started = 0; }

/* Starts the controller thread of this process (once), and re-reads the SM limits. Called on
 * the first launch: every container with work has its utilisation measured. */
void launch_start_controller(void) {
    refresh_limits();
    if (__atomic_load_n(&ctl_started, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&ctl_mu);
    if (!ctl_started) {
        static int atfork_done;
        if (!atfork_done++) pthread_atfork(NULL, NULL, launch_atfork_child);
        nvml_device_util = (__typeof__(nvml_device_util))vgpu_nvml_sym("nvmlDeviceGetUtilizationRates");
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, controller, NULL) == 0) __atomic_store_n(&ctl_started, 1, __ATOMIC_RELEASE);
        pthread_attr_destroy(&attr);
    }
    pthread_mutex_unlock(&ctl_mu);
}
