/* Prints the region layout (name offset size) so tests and docs can check it. */
#include <stddef.h>
#include <stdio.h>
#include "vgpu_region.h"

#define F(type, field) printf("%s.%s %zu %zu\n", #type, #field, offsetof(type, field), sizeof(((type *)0)->field))

int main(void) {
    printf("vgpu_region_t %zu\nvgpu_device_t %zu\nvgpu_proc_t %zu\n", sizeof(vgpu_region_t), sizeof(vgpu_device_t),
           sizeof(vgpu_proc_t));
    F(vgpu_region_t, magic); F(vgpu_region_t, version); F(vgpu_region_t, region_size);
    F(vgpu_region_t, device_size); F(vgpu_region_t, proc_size); F(vgpu_region_t, max_devices);
    F(vgpu_region_t, max_procs); F(vgpu_region_t, device_count); F(vgpu_region_t, suspend_any);
    F(vgpu_region_t, created_ns); F(vgpu_region_t, limits_gen);
    F(vgpu_region_t, reserved0); F(vgpu_region_t, reserved); F(vgpu_region_t, dev); F(vgpu_region_t, proc);
    F(vgpu_device_t, limit); F(vgpu_device_t, used); F(vgpu_device_t, total); F(vgpu_device_t, sm_limit);
    F(vgpu_device_t, sm_count); F(vgpu_device_t, suspend); F(vgpu_device_t, relax);
    F(vgpu_device_t, util_permille); F(vgpu_device_t, reserved0); F(vgpu_device_t, tokens);
    F(vgpu_device_t, refill_ns); F(vgpu_device_t, rate_milli); F(vgpu_device_t, ctl_ns);
    F(vgpu_device_t, launched); F(vgpu_device_t, ctl_launched); F(vgpu_device_t, waits);
    F(vgpu_device_t, cost_bits); F(vgpu_device_t, last_launch_ns);
    F(vgpu_proc_t, pid); F(vgpu_proc_t, priority); F(vgpu_proc_t, start_time);
    F(vgpu_proc_t, last_kernel_ns); F(vgpu_proc_t, used);
    return 0;
}
