/* Launches one-wave kernels as fast as allowed and measures the device
 * utilisation on the fake's clock after a warm-up.
 * Usage: t_sm MODE KIND SECONDS WARMUP NPROCS   KIND: kernel|ex|coop|graph */
#include <sys/wait.h>

#include "common.h"

CUresult cuDeviceGetAttribute(int *, CUdevice_attribute, CUdevice);

static void run(const char *kind, double seconds) {
    if (!setup_ctx(0)) _exit(3);
    int sm = 0;
    cuDeviceGetAttribute(&sm, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0);
    CUfunction f = (CUfunction)0x1000;
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDimX = (unsigned)sm;
    cfg.gridDimY = cfg.gridDimZ = cfg.blockDimX = cfg.blockDimY = cfg.blockDimZ = 1;
    double end = now_s() + seconds;
    long launches = 0;
    while (now_s() < end) {
        CUresult r;
        if (!strcmp(kind, "ex")) r = api.launchKernelEx(&cfg, f, NULL, NULL);
        else if (!strcmp(kind, "coop")) r = api.launchCooperativeKernel(f, (unsigned)sm, 1, 1, 1, 1, 1, 0, NULL, NULL);
        else if (!strcmp(kind, "graph")) r = api.graphLaunch((CUgraphExec)0x2000, NULL);
        else r = api.launchKernel(f, (unsigned)sm, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        if (r != CUDA_SUCCESS) {
            printf("FAIL launch returned %d\n", r);
            _exit(1);
        }
        launches++;
    }
    cuCtxSynchronize();
    printf("launches=%ld\n", launches);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 6) return 2;
    const char *mode = argv[1], *kind = argv[2];
    double seconds = atof(argv[3]), warmup = atof(argv[4]);
    int n = atoi(argv[5]);
    if (load_api(mode) != 0) return 2;
    double t0 = now_s();
    pid_t pids[16];
    for (int i = 0; i < n && i < 16; i++)
        if ((pids[i] = fork()) == 0) {
            run(kind, seconds);
            _exit(0);
        }
    unsigned long long b0, b1, n0, n1;
    double sleep_s = warmup - (now_s() - t0);
    if (sleep_s > 0) usleep((useconds_t)(sleep_s * 1e6));
    fakeCuGetBusy(0, 0, &b0, &n0);
    for (int i = 0; i < n; i++) waitpid(pids[i], NULL, 0);
    fakeCuGetBusy(0, 0, &b1, &n1);
    /* work scheduled before the end has all run by now: measure to the end of the busy time */
    double util = (double)(b1 - b0) / (double)(n1 - n0);
    printf("util=%.4f window_s=%.3f\n", util, (double)(n1 - n0) / 1e9);
    return 0;
}
