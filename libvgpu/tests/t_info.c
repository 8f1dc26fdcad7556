/* Prints the memory figures a program sees: cuMemGetInfo, cuDeviceTotalMem, NVML. */
#include "common.h"

int main(int argc, char **argv) {
    int dev = argc > 1 ? atoi(argv[1]) : 0;
    if (load_api("direct") != 0 || !setup_ctx(dev)) return 2;
    size_t f = 0, t = 0, dt = 0;
    api.memGetInfo(&f, &t);
    api.deviceTotalMem(&dt, dev);
    nvmlDevice_t nd;
    nvmlMemory_t nm = {0, 0, 0};
    nvmlInit_v2();
    nvmlDeviceGetHandleByIndex_v2((unsigned)dev, &nd);
    nvmlDeviceGetMemoryInfo(nd, &nm);
    printf("total=%zu free=%zu device_total=%zu nvml_total=%llu nvml_free=%llu nvml_used=%llu\n", t, f, dt, nm.total,
           nm.free, nm.used);
    return 0;
}
