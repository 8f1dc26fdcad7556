/* Which object answers each lookup path: hooked names must come from
 * libvgpu, the rest from the driver; RTLD_NEXT lookups keep working. */
#include "common.h"

static const char *owner(void *p) {
    Dl_info info;
    if (!p || !dladdr(p, &info) || !info.dli_fname) return "?";
    const char *s = strrchr(info.dli_fname, '/');
    return s ? s + 1 : info.dli_fname;
}

int main(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    const char *hooked[] = {"cuMemAlloc_v2", "cuMemFree_v2", "cuLaunchKernel", "cuLaunchKernelEx",
                            "cuGraphLaunch", "cuMemCreate", "cuGetProcAddress_v2", "cuMemGetInfo_v2"};
    for (size_t i = 0; i < sizeof hooked / sizeof *hooked; i++)
        CHECK(!strcmp(owner(dlsym(h, hooked[i])), "libvgpu.so"), "dlsym %s -> %s", hooked[i],
              owner(dlsym(h, hooked[i])));
    CHECK(!strcmp(owner(dlsym(h, "cuInit")), "libcuda.so.1"), "dlsym cuInit -> driver");
    CHECK(!strcmp(owner((void *)&cuMemAlloc_v2), "libvgpu.so"), "direct cuMemAlloc_v2 -> %s",
          owner((void *)&cuMemAlloc_v2));
    const char *bases[] = {"cuMemAlloc", "cuMemFree", "cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch",
                           "cuMemAllocAsync", "cuLaunchCooperativeKernel", "cuGetProcAddress"};
    for (size_t i = 0; i < sizeof bases / sizeof *bases; i++) {
        CHECK(!strcmp(owner(proc_lookup(bases[i], 0)), "libvgpu.so"), "cuGetProcAddress %s -> %s", bases[i],
              owner(proc_lookup(bases[i], 0)));
        void *pt = proc_lookup(bases[i], 1);
        Dl_info info;
        CHECK(pt && dladdr(pt, &info) && !strcmp(owner(pt), "libvgpu.so"), "per-thread %s -> %s %s", bases[i],
              owner(pt), pt && dladdr(pt, &info) && info.dli_sname ? info.dli_sname : "?");
    }
    CHECK(!strcmp(owner(proc_lookup("cuInit", 0)), "libcuda.so.1"), "cuGetProcAddress cuInit -> driver");
    CHECK(proc_lookup("cuNoSuchFunction", 0) == NULL, "unknown symbol not found");
    void *next_puts = dlsym(RTLD_NEXT, "puts");
    CHECK(next_puts && strstr(owner(next_puts), "libc"), "dlsym(RTLD_NEXT, puts) -> %s", owner(next_puts));
    CHECK(dlsym(RTLD_DEFAULT, "cuMemAlloc_v2") == (void *)&cuMemAlloc_v2, "RTLD_DEFAULT agrees with direct binding");
    printf("failures=%d\n", failures);
    return failures ? 1 : 0;
}
