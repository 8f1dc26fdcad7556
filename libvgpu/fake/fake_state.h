/* State of the fake GPU, shared by every process that uses the fake driver
 * (a small mmap'ed file named by FAKE_CUDA_STATE), so that memory and kernel
 * time are device-wide like on a real GPU. */
#ifndef FAKE_STATE_H
#define FAKE_STATE_H

#include <stddef.h>
#include <stdint.h>

#define FAKE_MAX_DEV 8
#define FAKE_RING 16384
#define FAKE_PROCS 128

typedef struct {
    int32_t pid;
    uint32_t permille; /* share of the SMs the kernel occupies */
    uint64_t start_ns, end_ns;
} fake_kernel_t;

typedef struct {
    int32_t pid;
    int32_t pad;
    uint64_t mem;
    uint64_t busy_ns; /* SM-weighted kernel time scheduled, cumulative */
} fake_proc_t;

typedef struct {
    uint64_t busy_until_ns; /* the device runs kernels one after another */
    uint64_t mem_used;
    uint64_t busy_ns;
    uint32_t ring_head, ring_count;
    fake_proc_t procs[FAKE_PROCS];
    fake_kernel_t ring[FAKE_RING];
} fake_dev_t;

typedef struct {
    uint64_t magic;
    int32_t lock; /* pid of the holder, 0 = free */
    uint32_t pad;
    fake_dev_t dev[FAKE_MAX_DEV];
} fake_state_t;

typedef struct {
    int devices;             /* devices this process sees (NVIDIA_VISIBLE_DEVICES), numbered from 0 */
    int host[FAKE_MAX_DEV];  /* the host device behind each of them */
    int host_devices;        /* FAKE_CUDA_DEVICES */
    uint64_t mem_bytes;
    int sm_count;
    uint64_t block_ns;       /* one wave of blocks takes this long */
    uint64_t queue_ns;       /* launches block once this much work is queued */
    uint64_t ctx_overhead;   /* bytes a context takes */
} fake_cfg_t;

extern fake_cfg_t fake_cfg;
fake_state_t *fake_state(void);
/* The state of the device this process numbers `dev` (after NVIDIA_VISIBLE_DEVICES). */
fake_dev_t *fake_dev(int dev);
/* The UUID of host device `host`: from FAKE_CUDA_UUIDS, else GPU-00000000-0000-0000-0000-<index>. */
void fake_uuid(int host, char *buf, size_t len);
void fake_lock(void);
void fake_unlock(void);
uint64_t fake_now_ns(void);
uint64_t fake_realtime_to_mono_ns(uint64_t realtime_us);
int fake_mem_charge(int dev, uint64_t bytes);   /* 0 ok, -1 out of memory */
void fake_mem_uncharge(int dev, uint64_t bytes);
/* Schedules a kernel of `blocks` blocks on dev; returns its end time. */
uint64_t fake_run_kernel(int dev, uint64_t blocks);
/* SM utilisation (0..1) of pid (0 = all) on dev over [t0, t1] (monotonic ns). */
double fake_util(int dev, int pid, uint64_t t0, uint64_t t1);

#endif
