/* A fake libnvidia-ml.so.1 over the same fake device state as the fake libcuda. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_subset.h"
#include "fake_state.h"

#define EXPORT __attribute__((visibility("default")))

struct nvmlDevice_st {
    int index;
};
static struct nvmlDevice_st devs[FAKE_MAX_DEV];
static int inited;

#define NEED_DEV(d)                                                        \
    do {                                                                   \
        if (!inited) return NVML_ERROR_UNINITIALIZED;                      \
        if (!(d) || (d) < devs || (d) >= devs + fake_cfg.devices) return NVML_ERROR_INVALID_ARGUMENT; \
    } while (0)

EXPORT nvmlReturn_t nvmlInit_v2(void) {
    fake_state();
    for (int i = 0; i < FAKE_MAX_DEV; i++) devs[i].index = i;
    inited = 1;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return nvmlInit_v2();
}
EXPORT nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }
EXPORT const char *nvmlErrorString(nvmlReturn_t r) { return r == NVML_SUCCESS ? "Success" : "Fake NVML error"; }

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    if (!inited) return NVML_ERROR_UNINITIALIZED;
    if (!n) return NVML_ERROR_INVALID_ARGUMENT;
    *n = (unsigned)fake_cfg.devices;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (!inited) return NVML_ERROR_UNINITIALIZED;
    if (!d || i >= (unsigned)fake_cfg.devices) return NVML_ERROR_INVALID_ARGUMENT;
    *d = &devs[i];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *i) {
    NEED_DEV(d);
    if (!i) return NVML_ERROR_INVALID_ARGUMENT;
    *i = (unsigned)d->index;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int len) {
    NEED_DEV(d);
    if (!name) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, len, "Fake GPU %d", d->index);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int len) {
    NEED_DEV(d);
    if (!uuid) return NVML_ERROR_INVALID_ARGUMENT;
    char buf[96];
    fake_uuid(fake_cfg.host[d->index], buf, sizeof buf);
    if (strlen(buf) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(uuid, buf, strlen(buf) + 1);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    NEED_DEV(d);
    if (!m) return NVML_ERROR_INVALID_ARGUMENT;
    uint64_t used = __atomic_load_n(&fake_dev(d->index)->mem_used, __ATOMIC_RELAXED);
    m->total = fake_cfg.mem_bytes;
    m->used = used;
    m->free = used >= m->total ? 0 : m->total - used;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    NEED_DEV(d);
    if (!m || m->version != nvmlMemory_v2) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlMemory_t v1;
    nvmlDeviceGetMemoryInfo(d, &v1);
    m->total = v1.total;
    m->reserved = 0;
    m->used = v1.used;
    m->free = v1.free;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    NEED_DEV(d);
    if (!u) return NVML_ERROR_INVALID_ARGUMENT;
    uint64_t now = fake_now_ns();
    u->gpu = (unsigned)(fake_util(d->index, 0, now > 1000000000ull ? now - 1000000000ull : 0, now) * 100 + 0.5);
    u->memory = 0;
    return NVML_SUCCESS;
}

/* One sample per process that ran kernels since lastSeen (realtime us; 0 = the last second). */
EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *s,
                                                    unsigned int *count, unsigned long long last_seen) {
    NEED_DEV(d);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    uint64_t now = fake_now_ns();
    uint64_t t0 = last_seen ? fake_realtime_to_mono_ns(last_seen) : (now > 1000000000ull ? now - 1000000000ull : 0);
    fake_dev_t *dev = fake_dev(d->index);
    int pids[64];
    int np = 0;
    fake_lock();
    uint32_t idx = dev->ring_head;
    for (uint32_t n = 0; n < dev->ring_count && np < 64; n++) {
        idx = (idx + FAKE_RING - 1) % FAKE_RING;
        if (dev->ring[idx].end_ns <= t0) break;
        if (dev->ring[idx].start_ns >= now) continue;
        int pid = dev->ring[idx].pid, seen = 0;
        for (int k = 0; k < np; k++) seen |= pids[k] == pid;
        if (!seen) pids[np++] = pid;
    }
    fake_unlock();
    if (np == 0) {
        *count = 0;
        return NVML_ERROR_NOT_FOUND;
    }
    if (!s || *count < (unsigned)np) {
        *count = (unsigned)np;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    for (int k = 0; k < np; k++) {
        memset(&s[k], 0, sizeof s[k]);
        s[k].pid = (unsigned)pids[k];
        s[k].timeStamp = (unsigned long long)rt.tv_sec * 1000000ull + (unsigned long long)rt.tv_nsec / 1000;
        s[k].smUtil = (unsigned)(fake_util(d->index, pids[k], t0, now) * 100 + 0.5);
    }
    *count = (unsigned)np;
    return NVML_SUCCESS;
}
