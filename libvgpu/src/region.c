/* The shared region file: mapping, the cross-process lock, reservations and
 * reclaiming the usage of dead processes. Layout: include/vgpu_region.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vgpu.h"

vgpu_region_t *vgpu_region;
static vgpu_proc_t *self_slot;
static int region_fd = -1;
static char region_path[4096];
static pthread_mutex_t local_mu = PTHREAD_MUTEX_INITIALIZER;
static int need_reattach;
static vgpu_proc_t fallback_slot; /* used when the region has no free slot */

/* The lock: a process-local mutex (threads share one open file description,
 * and OFD locks do not exclude each other within it) plus an OFD write lock on
 * byte 0 of the file, which the kernel drops when the holder dies. */
static void lock_file(int type) {
    if (region_fd < 0) return;
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = (short)type;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 1;
    while (fcntl(region_fd, type == F_UNLCK ? F_OFD_SETLK : F_OFD_SETLKW, &fl) == -1 && errno == EINTR) {
    }
}

static void reattach_after_fork(void);

static void region_lock(void) {
    pthread_mutex_lock(&local_mu);
    if (unlikely(need_reattach)) reattach_after_fork();
    lock_file(F_WRLCK);
}

static void region_unlock(void) {
    lock_file(F_UNLCK);
    pthread_mutex_unlock(&local_mu);
}

static uint64_t proc_start_time(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!p) return 0;
    /* after ") " come fields 3..; start time is field 22 */
    int field = 2;
    for (p++; *p && field < 22; p++)
        if (*p == ' ') field++;
    return strtoull(p, NULL, 10);
}

static int proc_alive(const vgpu_proc_t *s) {
    if (kill(s->pid, 0) == -1 && errno == ESRCH) return 0;
    if (s->start_time) {
        uint64_t st = proc_start_time(s->pid);
        if (st && st != s->start_time) return 0; /* the pid was reused */
    }
    return 1;
}

/* Under the lock: drop dead processes and recompute every device's used from the slots.
 * Reservations run without the lock (slot first, then the device's used by CAS), so the
 * recomputed sum is stored only if used did not move while the slots were read: a plain
 * store could erase a reservation that succeeded meanwhile and let others pass the limit.
 * When used keeps moving, it is left as it is (it never under-counts on its own). */
static void reclaim_dead(void) {
    vgpu_region_t *r = vgpu_region;
    for (int i = 0; i < VGPU_MAX_PROCS; i++) {
        vgpu_proc_t *s = &r->proc[i];
        if (s->pid && s != self_slot && !proc_alive(s)) {
            LOG_INFO("reclaiming the usage of dead process %d", s->pid);
            memset(s, 0, sizeof *s);
        }
    }
    for (int attempt = 0; attempt < 64; attempt++) {
        uint64_t before[VGPU_MAX_DEVICES], sum[VGPU_MAX_DEVICES] = {0};
        for (int d = 0; d < VGPU_MAX_DEVICES; d++) before[d] = __atomic_load_n(&r->dev[d].used, __ATOMIC_SEQ_CST);
        for (int i = 0; i < VGPU_MAX_PROCS; i++) {
            vgpu_proc_t *s = &r->proc[i];
            if (!s->pid) continue;
            for (int d = 0; d < VGPU_MAX_DEVICES; d++) sum[d] += __atomic_load_n(&s->used[d], __ATOMIC_SEQ_CST);
        }
        if (self_slot == &fallback_slot)
            for (int d = 0; d < VGPU_MAX_DEVICES; d++) sum[d] += fallback_slot.used[d];
        int moved = 0;
        for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
            uint64_t expected = before[d];
            if (expected != sum[d] &&
                !__atomic_compare_exchange_n(&r->dev[d].used, &expected, sum[d], 0, __ATOMIC_SEQ_CST,
                                             __ATOMIC_SEQ_CST))
                moved = 1;
        }
        if (!moved) return;
    }
}

static void register_self(void) {
    vgpu_region_t *r = vgpu_region;
    int pid = getpid();
    vgpu_proc_t *free_slot = NULL;
    self_slot = NULL;
    for (int i = 0; i < VGPU_MAX_PROCS; i++) {
        vgpu_proc_t *s = &r->proc[i];
        if (s->pid == pid) {
            memset(s, 0, sizeof *s); /* a stale entry of an earlier process with our pid */
            if (!free_slot) free_slot = s;
        } else if (!s->pid && !free_slot) {
            free_slot = s;
        }
    }
    if (!free_slot) {
        LOG_ERR("shared region has no free process slot; usage of this process is counted locally only");
        memset(&fallback_slot, 0, sizeof fallback_slot);
        free_slot = &fallback_slot;
    }
    free_slot->start_time = proc_start_time(pid);
    free_slot->priority = vgpu_cfg.priority;
    free_slot->pid = pid;
    self_slot = free_slot;
    reclaim_dead();
}

/* A new region: the header, then the limits from the environment, then the
 * magic, so that a reader (the monitor) never sees a region without its limits.
 * A region that exists keeps its limits: the monitor may have resized them,
 * and every process of a container has the same environment anyway. */
static void init_region(vgpu_region_t *r) {
    memset(r, 0, sizeof *r);
    r->version = VGPU_REGION_VERSION;
    r->region_size = sizeof(vgpu_region_t);
    r->device_size = sizeof(vgpu_device_t);
    r->proc_size = sizeof(vgpu_proc_t);
    r->max_devices = VGPU_MAX_DEVICES;
    r->max_procs = VGPU_MAX_PROCS;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    uint32_t count = 0;
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        r->dev[d].limit = vgpu_cfg.mem_limit[d];
        r->dev[d].sm_limit = vgpu_cfg.sm_limit[d];
        if (vgpu_cfg.mem_limit[d] || vgpu_cfg.sm_limit[d]) count = (uint32_t)d + 1;
    }
    r->device_count = count;
    __atomic_store_n(&r->magic, VGPU_REGION_MAGIC, __ATOMIC_RELEASE);
}

/* A shared lock on byte 1 for the life of this open file description: the
 * monitor's sign that the region is in use (see vgpu_region.h). */
static void hold_alive_lock(void) {
    if (region_fd < 0) return;
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_RDLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 1;
    fl.l_len = 1;
    while (fcntl(region_fd, F_OFD_SETLKW, &fl) == -1 && errno == EINTR) {
    }
}

static void use_private_region(void) {
    void *p = mmap(NULL, sizeof(vgpu_region_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        static vgpu_region_t static_region;
        p = &static_region;
    }
    vgpu_region = p;
    init_region(vgpu_region);
    if (region_fd >= 0) close(region_fd);
    region_fd = -1;
}

static int open_region_file(void) {
    region_fd = open(region_path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (region_fd < 0) {
        LOG_ERR("cannot open shared region %s (%s); limits apply to this process alone", region_path,
                strerror(errno));
        return -1;
    }
    return 0;
}

static void atfork_prepare(void) { pthread_mutex_lock(&local_mu); }
static void atfork_parent(void) { pthread_mutex_unlock(&local_mu); }
static void atfork_child(void) {
    pthread_mutex_init(&local_mu, NULL);
    need_reattach = 1;
}

int region_attach(void) {
    const char *path = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    if (!path || !*path) path = "/tmp/cudevshr.cache";
    snprintf(region_path, sizeof region_path, "%s", path);
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);

    pthread_mutex_lock(&local_mu);
    if (open_region_file() == 0) {
        lock_file(F_WRLCK);
        struct stat st;
        void *p = MAP_FAILED;
        int other = 0;
        if (fstat(region_fd, &st) == 0) {
            if (st.st_size > 0 && st.st_size < (off_t)sizeof(vgpu_region_t)) other = 1; /* never resize it */
            else if (st.st_size >= (off_t)sizeof(vgpu_region_t) || ftruncate(region_fd, sizeof(vgpu_region_t)) == 0)
                p = mmap(NULL, sizeof(vgpu_region_t), PROT_READ | PROT_WRITE, MAP_SHARED, region_fd, 0);
        }
        if (other) {
            LOG_ERR("shared region %s has another layout (size %lld); limits apply to this process alone",
                    region_path, (long long)st.st_size);
            lock_file(F_UNLCK);
            use_private_region();
        } else if (p == MAP_FAILED) {
            LOG_ERR("cannot map shared region %s (%s); limits apply to this process alone", region_path,
                    strerror(errno));
            lock_file(F_UNLCK);
            use_private_region();
        } else {
            vgpu_region_t *r = p;
            if (r->magic == 0) {
                init_region(r);
            } else if (r->magic != VGPU_REGION_MAGIC || r->version != VGPU_REGION_VERSION ||
                       r->region_size != sizeof(vgpu_region_t)) {
                LOG_ERR("shared region %s has another layout (version %u); limits apply to this process alone",
                        region_path, r->magic == VGPU_REGION_MAGIC ? r->version : 0);
                lock_file(F_UNLCK);
                munmap(p, sizeof(vgpu_region_t));
                p = NULL;
                use_private_region();
            }
            if (p) {
                vgpu_region = r;
                hold_alive_lock();
            }
        }
    } else {
        use_private_region();
    }
    register_self();
    lock_file(F_UNLCK);
    pthread_mutex_unlock(&local_mu);
    return 0;
}

/* Called with local_mu held, in a child after fork: it shares the parent's
 * open file description, so it needs its own for the OFD lock to exclude. */
static void reattach_after_fork(void) {
    need_reattach = 0;
    if (region_fd >= 0) {
        close(region_fd);
        if (open_region_file() != 0) {
            /* keep working on the shared mapping without the file lock */
        }
        hold_alive_lock();
    }
    lock_file(F_WRLCK);
    register_self();
    lock_file(F_UNLCK);
}

vgpu_proc_t *region_self(void) {
    if (unlikely(need_reattach)) {
        region_lock();
        region_unlock();
    }
    return self_slot;
}

/* Reservations are lock-free: the process adds to its own slot first, then
 * moves the device's used with a compare-and-swap that refuses to pass the
 * limit, so two processes racing for the last bytes cannot both win. The
 * lock is only taken on the way to a refusal, to reclaim dead processes and
 * recompute used from the slots. That recomputation can only over-count a
 * reservation in flight (never under-count), and the next refusal corrects it. */
static int try_reserve(vgpu_device_t *d, uint64_t *mine, uint64_t bytes) {
    __atomic_fetch_add(mine, bytes, __ATOMIC_SEQ_CST);
    uint64_t old = __atomic_load_n(&d->used, __ATOMIC_SEQ_CST);
    for (;;) {
        uint64_t lim = __atomic_load_n(&d->limit, __ATOMIC_RELAXED);
        uint64_t nw = old + bytes;
        if (nw < old || (lim && nw > lim)) {
            __atomic_fetch_sub(mine, bytes, __ATOMIC_SEQ_CST);
            return -1;
        }
        if (__atomic_compare_exchange_n(&d->used, &old, nw, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return 0;
    }
}

int region_reserve(int dev, uint64_t bytes) {
    if (dev < 0 || dev >= VGPU_MAX_DEVICES || !vgpu_region) return 0;
    vgpu_proc_t *me = region_self();
    vgpu_device_t *d = &vgpu_region->dev[dev];
    if (likely(!vgpu_cfg.debug_hold_lock_ms) && try_reserve(d, &me->used[dev], bytes) == 0) return 0;
    region_lock();
    if (unlikely(vgpu_cfg.debug_hold_lock_ms)) usleep((useconds_t)vgpu_cfg.debug_hold_lock_ms * 1000u);
    reclaim_dead();
    int rc = try_reserve(d, &self_slot->used[dev], bytes);
    region_unlock();
    if (rc) LOG_INFO("device %d: %llu bytes more would pass the limit of %llu", dev, (unsigned long long)bytes,
                     (unsigned long long)d->limit);
    return rc;
}

static void sub_sat(uint64_t *v, uint64_t bytes) {
    uint64_t old = __atomic_load_n(v, __ATOMIC_SEQ_CST), nw;
    do {
        nw = old >= bytes ? old - bytes : 0;
    } while (!__atomic_compare_exchange_n(v, &old, nw, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
}

/* Device first, then the slot: a recomputation in between over-counts. */
void region_release(int dev, uint64_t bytes) {
    if (dev < 0 || dev >= VGPU_MAX_DEVICES || !vgpu_region) return;
    vgpu_proc_t *me = region_self();
    uint64_t mine = __atomic_load_n(&me->used[dev], __ATOMIC_SEQ_CST);
    if (bytes > mine) bytes = mine;
    sub_sat(&vgpu_region->dev[dev].used, bytes);
    sub_sat(&me->used[dev], bytes);
}

uint64_t region_used(int dev) {
    if (dev < 0 || dev >= VGPU_MAX_DEVICES || !vgpu_region) return 0;
    return __atomic_load_n(&vgpu_region->dev[dev].used, __ATOMIC_RELAXED);
}

uint64_t region_limit(int dev) {
    if (dev < 0 || dev >= VGPU_MAX_DEVICES || !vgpu_region) return 0;
    return __atomic_load_n(&vgpu_region->dev[dev].limit, __ATOMIC_RELAXED);
}

void region_note_total(int dev, uint64_t total) {
    if (dev < 0 || dev >= VGPU_MAX_DEVICES || !vgpu_region) return;
    __atomic_store_n(&vgpu_region->dev[dev].total, total, __ATOMIC_RELAXED);
}

/* Rewrites the magic (same bytes) through the file, not the mapping: writes
 * to a mapping raise no inotify event, this write does. */
void region_announce(void) {
    if (region_fd < 0) return;
    uint64_t magic = VGPU_REGION_MAGIC;
    ssize_t w = pwrite(region_fd, &magic, sizeof magic, 0);
    (void)w;
}

void region_pids(int32_t *pids, int *n, int max) {
    int k = 0;
    for (int i = 0; i < VGPU_MAX_PROCS && k < max; i++) {
        int32_t pid = __atomic_load_n(&vgpu_region->proc[i].pid, __ATOMIC_RELAXED);
        if (pid) pids[k++] = pid;
    }
    *n = k;
}
