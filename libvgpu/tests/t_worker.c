/* A container's workload, driven by commands on stdin (one per line), for the
 * monitor's tests and benchmark:
 *   alloc MIB        allocate MIB MiB in one cuMemAlloc; prints "alloc ok" or "alloc oom"
 *   free             free everything allocated; prints "free ok"
 *   launch S US      launch a small kernel every US microseconds for S seconds,
 *                    then print "launch n=<launches>"
 *   launch-log FILE S US   the same, and append the CLOCK_REALTIME ns at which
 *                    each launch returned to FILE, one per line
 *   busy S           launch one-wave kernels as fast as allowed for S seconds; prints
 *                    "busy util=<fraction>", the device's utilisation meanwhile (fake clock)
 *   info             prints "info total=<bytes> free=<bytes>" (cuMemGetInfo)
 *   quit
 * Usage: t_worker [DEVICE]   (the device this process uses, default 0) */
#include "common.h"

static double realtime_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static long launch_for(double seconds, long period_us, FILE *log) {
    double end = now_s() + seconds;
    long n = 0;
    while (now_s() < end) {
        api.launchKernel((CUfunction)0x1000, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        if (log) fprintf(log, "%.0f\n", realtime_s() * 1e9);
        n++;
        if (period_us > 0) usleep((useconds_t)period_us);
    }
    return n;
}

CUresult cuDeviceGetAttribute(int *, CUdevice_attribute, CUdevice);

static double busy_for(int dev, double seconds) {
    int sm = 1;
    cuDeviceGetAttribute(&sm, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
    unsigned long long b0, b1, n0, n1;
    fakeCuGetBusy(dev, 0, &b0, &n0);
    double end = now_s() + seconds;
    while (now_s() < end) api.launchKernel((CUfunction)0x1000, (unsigned)sm, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    cuCtxSynchronize();
    fakeCuGetBusy(dev, 0, &b1, &n1);
    return n1 > n0 ? (double)(b1 - b0) / (double)(n1 - n0) : 0;
}

int main(int argc, char **argv) {
    int dev = argc > 1 ? atoi(argv[1]) : 0;
    if (load_api("direct") != 0 || !setup_ctx(dev)) {
        printf("setup failed\n");
        return 2;
    }
    CUdeviceptr held[4096];
    int nheld = 0;
    char line[4096];
    printf("ready pid=%d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        char cmd[32] = "", file[4000] = "";
        double a = 0;
        long b = 0;
        if (sscanf(line, "%31s", cmd) != 1) continue;
        if (!strcmp(cmd, "alloc") && sscanf(line, "%*s %lf", &a) == 1) {
            CUdeviceptr p = 0;
            int ok = nheld < 4096 && api.memAlloc(&p, (size_t)(a * MiB)) == CUDA_SUCCESS;
            if (ok) held[nheld++] = p;
            printf("alloc %s\n", ok ? "ok" : "oom");
        } else if (!strcmp(cmd, "free")) {
            while (nheld) api.memFree(held[--nheld]);
            printf("free ok\n");
        } else if (!strcmp(cmd, "launch") && sscanf(line, "%*s %lf %ld", &a, &b) == 2) {
            printf("launch n=%ld\n", launch_for(a, b, NULL));
        } else if (!strcmp(cmd, "launch-log") && sscanf(line, "%*s %3999s %lf %ld", file, &a, &b) == 3) {
            FILE *log = fopen(file, "a");
            long n = launch_for(a, b, log);
            if (log) fclose(log);
            printf("launch n=%ld\n", n);
        } else if (!strcmp(cmd, "busy") && sscanf(line, "%*s %lf", &a) == 1) {
            printf("busy util=%.4f\n", busy_for(dev, a));
        } else if (!strcmp(cmd, "info")) {
            size_t f = 0, t = 0;
            api.memGetInfo(&f, &t);
            printf("info total=%zu free=%zu\n", t, f);
        } else if (!strcmp(cmd, "quit")) {
            break;
        } else {
            printf("unknown command: %s", line);
        }
        fflush(stdout);
    }
    return 0;
}
