/* N forked processes race for the last bytes of one budget; the sum they get
 * never passes the limit, and the usage of the dead is reclaimed.
 * Usage: t_race MODE NPROCS CHUNK_MIB LIMIT_MIB */
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "common.h"

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    const char *mode = argv[1];
    int n = atoi(argv[2]);
    size_t chunk = (size_t)atoi(argv[3]) * MiB, limit = (size_t)atoll(argv[4]) * MiB;
    if (load_api(mode) != 0) return 2;
    /* Touch the library before fork (as a framework that forks workers would). */
    size_t tm = 0;
    cuInit(0);
    api.deviceTotalMem(&tm, 0);
    volatile size_t *got = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    volatile int *go = (volatile int *)(got + 256);
    pid_t pids[64];
    for (int i = 0; i < n && i < 64; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            if (!setup_ctx(0)) _exit(3);
            size_t mine = 0;
            CUdeviceptr p;
            while (api.memAlloc(&p, chunk) == CUDA_SUCCESS) mine += chunk;
            got[i] = mine;
            __atomic_fetch_add(&got[255], 1, __ATOMIC_SEQ_CST);
            while (!*go) usleep(1000);
            _exit(0); /* exit holding the memory: the region must reclaim it */
        }
    }
    while (__atomic_load_n(&got[255], __ATOMIC_SEQ_CST) < (size_t)n) usleep(1000);
    size_t sum = 0;
    for (int i = 0; i < n; i++) sum += got[i];
    printf("sum=%zu limit=%zu\n", sum, limit);
    CHECK(sum <= limit, "racing processes got %zu <= limit %zu", sum, limit);
    CHECK(limit - sum < chunk, "and they filled it (%zu left, chunk %zu)", limit - sum, chunk);
    *go = 1;
    for (int i = 0; i < n; i++) waitpid(pids[i], NULL, 0);
    CHECK(setup_ctx(0) != NULL, "parent context");
    CUdeviceptr p;
    CHECK(api.memAlloc(&p, limit) == CUDA_SUCCESS, "after they exit the whole budget is free again");
    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}
