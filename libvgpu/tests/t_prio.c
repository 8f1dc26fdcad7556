/* Launches small kernels for SECONDS and reports the longest pause between
 * two launches (a suspended low-priority task pauses).
 * Usage: t_prio SECONDS */
#include "common.h"

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2;
    if (load_api("direct") != 0 || !setup_ctx(0)) return 2;
    double end = now_s() + seconds, last = now_s(), max_gap = 0;
    long launches = 0;
    while (now_s() < end) {
        api.launchKernel((CUfunction)0x1000, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        double t = now_s();
        if (t - last > max_gap) max_gap = t - last;
        last = t;
        launches++;
        usleep(2000);
    }
    printf("launches=%ld max_gap_s=%.3f\n", launches, max_gap);
    return 0;
}
