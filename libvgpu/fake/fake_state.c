#define _GNU_SOURCE
#include "fake_state.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FAKE_MAGIC 0x4b41464553544154ULL

fake_cfg_t fake_cfg;
static fake_state_t *state;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static uint64_t env_u64(const char *name, uint64_t def) {
    const char *s = getenv(name);
    if (!s || !*s) return def;
    return strtoull(s, NULL, 10);
}

void fake_uuid(int host, char *buf, size_t len) {
    snprintf(buf, len, "GPU-00000000-0000-0000-0000-%012d", host);
    const char *list = getenv("FAKE_CUDA_UUIDS");
    for (int i = 0; list && *list; i++) {
        const char *end = strchr(list, ',');
        size_t n = end ? (size_t)(end - list) : strlen(list);
        if (i == host && n > 0 && n < len) {
            memcpy(buf, list, n);
            buf[n] = 0;
            return;
        }
        list = end ? end + 1 : NULL;
    }
}

/* Like the container runtime: NVIDIA_VISIBLE_DEVICES (indices or UUIDs, comma-separated;
 * unset, empty or "all" = every device; "none"/"void" = none) picks the host devices this
 * process sees, numbered from 0 in that order. */
static void visible_devices(void) {
    const char *v = getenv("NVIDIA_VISIBLE_DEVICES");
    fake_cfg.devices = 0;
    if (!v || !*v || !strcmp(v, "all")) {
        for (int i = 0; i < fake_cfg.host_devices; i++) fake_cfg.host[fake_cfg.devices++] = i;
        return;
    }
    if (!strcmp(v, "none") || !strcmp(v, "void")) return;
    char item[128], uuid[128];
    while (*v && fake_cfg.devices < FAKE_MAX_DEV) {
        const char *end = strchr(v, ',');
        size_t n = end ? (size_t)(end - v) : strlen(v);
        if (n < sizeof item) {
            memcpy(item, v, n);
            item[n] = 0;
            for (int h = 0; h < fake_cfg.host_devices; h++) {
                fake_uuid(h, uuid, sizeof uuid);
                char index[16];
                snprintf(index, sizeof index, "%d", h);
                if (!strcmp(item, uuid) || !strcmp(item, index)) {
                    fake_cfg.host[fake_cfg.devices++] = h;
                    break;
                }
            }
        }
        if (!end) break;
        v = end + 1;
    }
}

static void init(void) {
    fake_cfg.host_devices = (int)env_u64("FAKE_CUDA_DEVICES", 1);
    if (fake_cfg.host_devices > FAKE_MAX_DEV) fake_cfg.host_devices = FAKE_MAX_DEV;
    visible_devices();
    fake_cfg.mem_bytes = env_u64("FAKE_CUDA_MEM_MIB", 16384) << 20;
    fake_cfg.sm_count = (int)env_u64("FAKE_CUDA_SM_COUNT", 108);
    if (fake_cfg.sm_count < 1) fake_cfg.sm_count = 1;
    fake_cfg.block_ns = env_u64("FAKE_CUDA_BLOCK_US", 100) * 1000;
    fake_cfg.queue_ns = env_u64("FAKE_CUDA_QUEUE_US", 20000) * 1000;
    fake_cfg.ctx_overhead = env_u64("FAKE_CUDA_CTX_OVERHEAD_MIB", 0) << 20;
    const char *path = getenv("FAKE_CUDA_STATE");
    void *p = MAP_FAILED;
    if (path && *path) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) == 0 &&
                (st.st_size >= (off_t)sizeof(fake_state_t) || ftruncate(fd, sizeof(fake_state_t)) == 0))
                p = mmap(NULL, sizeof(fake_state_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
        }
    }
    if (p == MAP_FAILED)
        p = mmap(NULL, sizeof(fake_state_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    state = p;
    uint64_t zero = 0;
    if (__atomic_compare_exchange_n(&state->magic, &zero, FAKE_MAGIC, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        /* first user: the file is zero-filled, which is the initial state */
    }
}

fake_state_t *fake_state(void) {
    pthread_once(&once, init);
    return state;
}

fake_dev_t *fake_dev(int dev) { return &fake_state()->dev[fake_cfg.host[dev]]; }

uint64_t fake_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t fake_realtime_to_mono_ns(uint64_t realtime_us) {
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    uint64_t rt_ns = (uint64_t)rt.tv_sec * 1000000000ull + (uint64_t)rt.tv_nsec;
    uint64_t mono = fake_now_ns();
    uint64_t t = realtime_us * 1000;
    if (t >= rt_ns) return mono;
    uint64_t ago = rt_ns - t;
    return ago >= mono ? 0 : mono - ago;
}

/* A spin lock in the shared file; a holder that died is detected and replaced. */
void fake_lock(void) {
    fake_state_t *s = fake_state();
    int32_t me = (int32_t)getpid();
    unsigned spins = 0;
    for (;;) {
        int32_t zero = 0;
        if (__atomic_compare_exchange_n(&s->lock, &zero, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
        if (++spins % 1024 == 0) {
            int32_t holder = __atomic_load_n(&s->lock, __ATOMIC_RELAXED);
            if (holder && kill(holder, 0) == -1 && errno == ESRCH)
                __atomic_compare_exchange_n(&s->lock, &holder, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
            sched_yield();
        }
    }
}

void fake_unlock(void) { __atomic_store_n(&fake_state()->lock, 0, __ATOMIC_RELEASE); }

static fake_proc_t *proc_slot(fake_dev_t *d, int pid) {
    for (int i = 0; i < FAKE_PROCS; i++)
        if (d->procs[i].pid == pid) return &d->procs[i];
    fake_proc_t *free_slot = NULL;
    for (int i = 0; i < FAKE_PROCS && !free_slot; i++) {
        if (d->procs[i].pid == 0 || (kill(d->procs[i].pid, 0) == -1 && errno == ESRCH)) {
            if (d->procs[i].pid) d->mem_used -= d->procs[i].mem; /* the driver frees a dead process's memory */
            free_slot = &d->procs[i];
        }
    }
    if (free_slot) {
        memset(free_slot, 0, sizeof *free_slot);
        free_slot->pid = pid;
    }
    return free_slot;
}

static void reclaim_dead(fake_dev_t *d) {
    for (int i = 0; i < FAKE_PROCS; i++)
        if (d->procs[i].pid && kill(d->procs[i].pid, 0) == -1 && errno == ESRCH) {
            d->mem_used -= d->procs[i].mem;
            memset(&d->procs[i], 0, sizeof d->procs[i]);
        }
}

int fake_mem_charge(int dev, uint64_t bytes) {
    fake_dev_t *d = fake_dev(dev);
    int rc = -1;
    fake_lock();
    if (d->mem_used + bytes > fake_cfg.mem_bytes) reclaim_dead(d);
    fake_proc_t *p = proc_slot(d, getpid());
    if (p && d->mem_used + bytes <= fake_cfg.mem_bytes && d->mem_used + bytes >= bytes) {
        d->mem_used += bytes;
        p->mem += bytes;
        rc = 0;
    }
    fake_unlock();
    return rc;
}

void fake_mem_uncharge(int dev, uint64_t bytes) {
    fake_dev_t *d = fake_dev(dev);
    fake_lock();
    fake_proc_t *p = proc_slot(d, getpid());
    if (p) {
        if (bytes > p->mem) bytes = p->mem;
        p->mem -= bytes;
        d->mem_used -= bytes;
    }
    fake_unlock();
}

uint64_t fake_run_kernel(int dev, uint64_t blocks) {
    fake_dev_t *d = fake_dev(dev);
    uint64_t sm = (uint64_t)fake_cfg.sm_count;
    if (blocks == 0) blocks = 1;
    uint64_t waves = (blocks + sm - 1) / sm;
    uint64_t dur = waves * fake_cfg.block_ns;
    uint32_t permille = (uint32_t)(blocks * 1000 / (waves * sm));
    if (!permille) permille = 1;
    int pid = getpid();
    fake_lock();
    uint64_t now = fake_now_ns();
    uint64_t start = d->busy_until_ns > now ? d->busy_until_ns : now;
    uint64_t end = start + dur;
    d->busy_until_ns = end;
    fake_kernel_t *k = &d->ring[d->ring_head];
    k->pid = pid;
    k->permille = permille;
    k->start_ns = start;
    k->end_ns = end;
    d->ring_head = (d->ring_head + 1) % FAKE_RING;
    if (d->ring_count < FAKE_RING) d->ring_count++;
    uint64_t w = dur * permille / 1000;
    d->busy_ns += w;
    fake_proc_t *p = proc_slot(d, pid);
    if (p) p->busy_ns += w;
    fake_unlock();
    /* A full launch queue makes the launch call itself wait, as on a GPU. */
    if (start > now + fake_cfg.queue_ns) {
        uint64_t wait = start - now - fake_cfg.queue_ns;
        struct timespec ts = {(time_t)(wait / 1000000000ull), (long)(wait % 1000000000ull)};
        nanosleep(&ts, NULL);
    }
    return end;
}

double fake_util(int dev, int pid, uint64_t t0, uint64_t t1) {
    if (t1 <= t0) return 0;
    fake_dev_t *d = fake_dev(dev);
    double busy = 0;
    fake_lock();
    uint32_t idx = d->ring_head;
    for (uint32_t n = 0; n < d->ring_count; n++) {
        idx = (idx + FAKE_RING - 1) % FAKE_RING;
        fake_kernel_t *k = &d->ring[idx];
        if (k->end_ns <= t0) break;
        if (pid && k->pid != pid) continue;
        uint64_t s = k->start_ns > t0 ? k->start_ns : t0;
        uint64_t e = k->end_ns < t1 ? k->end_ns : t1;
        if (e > s) busy += (double)(e - s) * k->permille / 1000.0;
    }
    fake_unlock();
    return busy / (double)(t1 - t0);
}
