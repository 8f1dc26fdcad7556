/*
 * The shared region: one file per container (CUDA_DEVICE_MEMORY_SHARED_CACHE)
 * mapped by every process of the container and read by the node monitor.
 *
 * Layout version 1. Every field has a fixed size and natural alignment; the
 * Python reader (hami.monitor.shared_region) mirrors it and a test checks the
 * offsets. Bump VGPU_REGION_VERSION on any change.
 *
 * Writers hold the region lock (an OFD fcntl lock on byte 0 of the file) for
 * every change to used/proc slots. Fields marked (atomic) are also touched
 * without the lock with C11 atomics (the rate limiter, flags and limits the
 * monitor writes).
 *
 * Every process that uses the region holds a shared OFD lock on byte 1 for
 * as long as it lives (the kernel drops it when the process dies), so the
 * monitor can tell a region in use from a stale one by trying to lock it.
 *
 * Fields may be added in reserved space when zero means what an older writer
 * did (old readers ignore them); any other change bumps VGPU_REGION_VERSION.
 */
#ifndef VGPU_REGION_H
#define VGPU_REGION_H

#include <stdint.h>

#define VGPU_REGION_MAGIC 0x55504756494d4148ULL /* "HAMIVGPU" little-endian */
#define VGPU_REGION_VERSION 1u
#define VGPU_MAX_DEVICES 16
#define VGPU_MAX_PROCS 256
/* A launch after this long without one writes the region file once (same
 * bytes), so that a monitor watching with inotify sees the task wake up. */
#define VGPU_ANNOUNCE_NS 100000000ull

typedef struct {
    uint64_t limit;          /* (atomic) bytes; 0 = no memory limit. Set from the environment when the
                              * region is created; afterwards only the monitor changes it (resize) */
    uint64_t used;           /* bytes reserved by live processes (sum of proc slots) */
    uint64_t total;          /* physical bytes as last seen by a process (0 = unknown) */
    uint32_t sm_limit;       /* (atomic) percent of SMs; 0 or >= 100 = no limit (set like limit) */
    uint32_t sm_count;       /* SMs of the device (0 = unknown) */
    uint32_t suspend;        /* (atomic) monitor: 1 = low-priority launches wait */
    uint32_t relax;          /* (atomic) monitor: 1 = device not shared, "default" policy lifts the SM cap */
    uint32_t util_permille;  /* (atomic) last utilisation measured by the controller, per mille */
    uint32_t reserved0;
    int64_t tokens;          /* (atomic) rate limiter bucket, in thread blocks */
    uint64_t refill_ns;      /* (atomic) CLOCK_MONOTONIC time of the last refill */
    uint64_t rate_milli;     /* (atomic) refill rate, thousandths of a block per second; 0 = not gating yet */
    uint64_t ctl_ns;         /* (atomic) CLOCK_MONOTONIC time of the last controller step */
    uint64_t launched;       /* (atomic) blocks admitted, cumulative */
    uint64_t ctl_launched;   /* (atomic) value of launched at the last controller step */
    uint64_t waits;          /* (atomic) launches that had to wait, cumulative */
    uint64_t cost_bits;      /* (atomic) controller estimate: utilisation per block/s, IEEE double bits */
    uint64_t last_launch_ns[2]; /* (atomic) CLOCK_REALTIME of the latest launch on this device by a process
                                 * of priority 0 / 1 (ms resolution; 0 = none): what the monitor's
                                 * priority rules read */
} vgpu_device_t;

typedef struct {
    int32_t pid;             /* 0 = free slot */
    int32_t priority;        /* CUDA_TASK_PRIORITY: 0 high, 1 low */
    uint64_t start_time;     /* process start time (clock ticks since boot) to detect pid reuse */
    uint64_t last_kernel_ns; /* (atomic) CLOCK_REALTIME of the latest kernel launch, ms resolution */
    uint64_t used[VGPU_MAX_DEVICES]; /* bytes this process holds on each device */
} vgpu_proc_t;

typedef struct {
    uint64_t magic;          /* VGPU_REGION_MAGIC */
    uint32_t version;        /* VGPU_REGION_VERSION */
    uint32_t region_size;    /* sizeof(vgpu_region_t) */
    uint32_t device_size;    /* sizeof(vgpu_device_t) */
    uint32_t proc_size;      /* sizeof(vgpu_proc_t) */
    uint32_t max_devices;    /* VGPU_MAX_DEVICES */
    uint32_t max_procs;      /* VGPU_MAX_PROCS */
    uint32_t device_count;   /* devices with a configured entry */
    uint32_t suspend_any;    /* (atomic) number of devices with suspend set: fast-path check */
    uint64_t created_ns;     /* CLOCK_REALTIME when the region was initialised */
    uint32_t limits_gen;     /* (atomic) bumped by the monitor after it changes limit or sm_limit (resize) */
    uint32_t reserved0;
    uint64_t reserved[2];
    vgpu_device_t dev[VGPU_MAX_DEVICES];
    vgpu_proc_t proc[VGPU_MAX_PROCS];
} vgpu_region_t;

#endif
