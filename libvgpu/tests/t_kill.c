/* A process killed while it holds the region lock does not wedge the others,
 * and a process killed while holding memory gives it back.
 * Usage: t_kill MODE LIMIT_MIB */
#include <signal.h>
#include <sys/wait.h>

#include "common.h"

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *mode = argv[1];
    size_t limit = (size_t)atoll(argv[2]) * MiB;
    if (load_api(mode) != 0) return 2;
    /* 1. killed inside the critical section */
    pid_t a = fork();
    if (a == 0) {
        setenv("LIBVGPU_DEBUG_HOLD_LOCK_MS", "20000", 1);
        if (!setup_ctx(0)) _exit(3);
        CUdeviceptr p;
        api.memAlloc(&p, MiB); /* sleeps holding the lock */
        _exit(0);
    }
    usleep(400000);
    kill(a, SIGKILL);
    waitpid(a, NULL, 0);
    /* 2. killed while holding 3/4 of the budget */
    int fds[2];
    if (pipe(fds) != 0) return 2;
    pid_t c = fork();
    if (c == 0) {
        if (!setup_ctx(0)) _exit(3);
        CUdeviceptr p;
        char ok = api.memAlloc(&p, limit / 4 * 3) == CUDA_SUCCESS ? 'y' : 'n';
        if (write(fds[1], &ok, 1) != 1) _exit(4);
        pause();
        _exit(0);
    }
    char ok = 0;
    if (read(fds[0], &ok, 1) != 1) return 2;
    CHECK(ok == 'y', "second child allocated 3/4 of the budget");
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    /* 3. we go on */
    alarm(10);
    double t0 = now_s();
    CHECK(setup_ctx(0) != NULL, "context");
    CUdeviceptr p;
    CUresult r = api.memAlloc(&p, limit / 4 * 3);
    double dt = now_s() - t0;
    printf("elapsed_ms=%.1f\n", dt * 1000);
    CHECK(r == CUDA_SUCCESS, "allocation after the kills succeeds (r=%d)", r);
    CHECK(dt < 2.0, "and does not wait for the dead lock holder (%.3f s)", dt);
    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}
