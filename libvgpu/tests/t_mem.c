/* Memory limit through one lookup path: every allocation kind is counted,
 * frees give the budget back, the limit holds, the view is the container's.
 * Usage: t_mem MODE   (CUDA_DEVICE_MEMORY_LIMIT set by the caller) */
#include "common.h"

static size_t free_now(void) {
    size_t f = 0, t = 0;
    api.memGetInfo(&f, &t);
    return f;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "direct";
    if (load_api(mode) != 0) {
        printf("FAIL cannot load api for %s\n", mode);
        return 2;
    }
    CUdeviceptr p;
    CHECK(api.memAlloc(&p, MiB) == CUDA_ERROR_NOT_INITIALIZED, "alloc before cuInit is NOT_INITIALIZED");
    CHECK(setup_ctx(0) != NULL, "context");
    CHECK(api.memAlloc(NULL, MiB) == CUDA_ERROR_INVALID_VALUE, "alloc to NULL is INVALID_VALUE");

    size_t f0 = 0, total = 0;
    CHECK(api.memGetInfo(&f0, &total) == CUDA_SUCCESS, "cuMemGetInfo");
    printf("total=%zu free=%zu\n", total, f0);
    size_t dt = 0;
    api.deviceTotalMem(&dt, 0);
    CHECK(dt == total, "cuDeviceTotalMem %zu equals cuMemGetInfo total %zu", dt, total);
    nvmlDevice_t nd;
    nvmlMemory_t nm;
    nvmlInit_v2();
    nvmlDeviceGetHandleByIndex_v2(0, &nd);
    CHECK(nvmlDeviceGetMemoryInfo(nd, &nm) == NVML_SUCCESS && nm.total == total && nm.free == f0,
          "NVML view total=%llu free=%llu used=%llu", nm.total, nm.free, nm.used);

    /* each allocation kind takes from the budget and gives it back */
    CUdeviceptr a;
    size_t before = free_now();
    CHECK(api.memAlloc(&a, 10 * MiB) == 0 && before - free_now() == 10 * MiB, "cuMemAlloc counted");
    CHECK(api.memFree(a) == 0 && free_now() == before, "cuMemFree returns budget");
    size_t pitch = 0;
    CHECK(api.memAllocPitch(&a, &pitch, 1000, 1024, 4) == 0 && before - free_now() == pitch * 1024,
          "pitch counted as pitch*height (pitch %zu)", pitch);
    CHECK(api.memFree(a) == 0 && free_now() == before, "pitch freed");
    CHECK(api.memAllocManaged(&a, 8 * MiB, 1) == 0 && before - free_now() == 8 * MiB, "managed counted");
    CHECK(api.memFree(a) == 0 && free_now() == before, "managed freed");
    CHECK(api.memAllocAsync(&a, 6 * MiB, NULL) == 0 && before - free_now() == 6 * MiB, "async counted");
    CHECK(api.memFreeAsync(a, NULL) == 0 && free_now() == before, "async freed");
    CHECK(api.memAllocFromPoolAsync(&a, 4 * MiB, (CUmemoryPool)1, NULL) == 0 && before - free_now() == 4 * MiB,
          "pool counted");
    CHECK(api.memFreeAsync(a, NULL) == 0 && free_now() == before, "pool freed");
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = 1;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CUmemGenericAllocationHandle h;
    CHECK(api.memCreate(&h, 32 * MiB, &prop, 0) == 0 && before - free_now() == 32 * MiB, "cuMemCreate counted");
    CHECK(api.memRelease(h) == 0 && free_now() == before, "cuMemRelease returns budget");
    CUDA_ARRAY_DESCRIPTOR ad = {1024, 1024, CU_AD_FORMAT_FLOAT, 4};
    CUarray arr;
    CHECK(api.arrayCreate(&arr, &ad) == 0 && before - free_now() == 16 * MiB, "array counted");
    CHECK(api.arrayDestroy(arr) == 0 && free_now() == before, "array freed");
    CUDA_ARRAY3D_DESCRIPTOR ad3 = {256, 256, 16, CU_AD_FORMAT_HALF, 2, 0};
    CHECK(api.array3DCreate(&arr, &ad3) == 0 && before - free_now() == 4 * MiB, "3D array counted");
    CHECK(api.arrayDestroy(arr) == 0 && free_now() == before, "3D array freed");
    CHECK(api.memFree(0xdead000) == CUDA_ERROR_INVALID_VALUE && free_now() == before,
          "freeing an unknown pointer fails and changes nothing");

    /* fill up to the limit with 64 MiB chunks */
    CUdeviceptr ptrs[4096];
    int n = 0;
    size_t got = 0;
    CUresult r = CUDA_SUCCESS;
    while (n < 4096 && (r = api.memAlloc(&ptrs[n], 64 * MiB)) == CUDA_SUCCESS) {
        n++;
        got += 64 * MiB;
    }
    CHECK(r == CUDA_ERROR_OUT_OF_MEMORY, "stops with OUT_OF_MEMORY (r=%d) after %zu bytes", r, got);
    printf("allocated=%zu\n", got);
    CHECK(got <= total && total - got < 64 * MiB, "filled to within one chunk of the limit");
    size_t fr = free_now();
    CHECK(fr == total - got, "free %zu = total - allocated", fr);
    nvmlDeviceGetMemoryInfo(nd, &nm);
    CHECK(nm.used == got && nm.free == total - got, "NVML used %llu free %llu", nm.used, nm.free);
    CHECK(api.memAlloc(&a, fr + 1) == CUDA_ERROR_OUT_OF_MEMORY && free_now() == fr, "one byte over fails, no leak");
    if (fr) {
        CHECK(api.memAlloc(&a, fr) == CUDA_SUCCESS && free_now() == 0, "exactly the rest fits");
        api.memFree(a);
    }
    CHECK(api.memCreate(&h, fr + 1, &prop, 0) == CUDA_ERROR_OUT_OF_MEMORY, "cuMemCreate over the limit fails");
    CHECK(api.memAllocManaged(&a, fr + 1, 1) == CUDA_ERROR_OUT_OF_MEMORY, "managed over the limit fails");
    CHECK(api.memAllocAsync(&a, fr + 1, NULL) == CUDA_ERROR_OUT_OF_MEMORY, "async over the limit fails");
    CHECK(api.memAllocPitch(&a, &pitch, fr + 1, 1, 4) == CUDA_ERROR_OUT_OF_MEMORY && free_now() == fr,
          "pitch over the limit fails and is given back");
    for (int i = 0; i < n; i++) api.memFree(ptrs[i]);
    CHECK(free_now() == before, "all freed: free back to %zu", before);
    if (getenv("T_MEM_HOLD")) { /* let the caller read the region */
        printf("holding\n");
        fflush(stdout);
        sleep(30);
    }
    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}
