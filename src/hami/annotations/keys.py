"""HAMi's annotation and label names (exact strings; see docs/compatibility.md)."""

# Node
NODE_NVIDIA_REGISTER = "hami.io/node-nvidia-register"
# Link scores between a node's GPUs (topology-aware policy), kept apart from the registration.
NODE_NVIDIA_SCORE = "hami.io/node-nvidia-score"
NODE_HANDSHAKE = "hami.io/node-handshake"
NODE_LOCK = "hami.io/mutex.lock"
DEVICE_CORDON = "hami.io/device-cordon"

# Pod decision, written by the scheduler at filter time
VGPU_NODE = "hami.io/vgpu-node"
VGPU_TIME = "hami.io/vgpu-time"
DEVICES_TO_ALLOCATE = "hami.io/vgpu-devices-to-allocate"
DEVICES_ALLOCATED = "hami.io/vgpu-devices-allocated"
# NVIDIA MIG: the profile and placement of each MIG device of the decision; the device plugin
# adds the MIG UUID and instance IDs once it created them.
MIG_ALLOCATIONS = "hami.io/vgpu-mig-allocations"
BIND_PHASE = "hami.io/bind-phase"
BIND_TIME = "hami.io/bind-time"
# hami's own (not HAMi's): devices kept for a preempting pod while its victims terminate.
PREEMPTION_NODE = "hami.io/preemption-node"
PREEMPTION_DEVICES = "hami.io/preemption-devices"  # per container, as vgpu-devices-allocated
PREEMPTION_VICTIMS = "hami.io/preemption-victims"  # "namespace/name,…"
PREEMPTION_TIME = "hami.io/preemption-time"  # unix seconds
# Ours, not HAMi's: when the scheduler asked kube-scheduler to try a refused pod again, because
# room for it appeared (hami.scheduler.requeue); any update of a pending pod requeues it.
SCHEDULING_RETRY = "hami.io/scheduling-retry"
# Ours, not HAMi's: why the device plugin marked bind-phase failed.
BIND_FAILURE_REASON = "hami.io/bind-failure-reason"

# Pod selectors and policies, written by users
USE_GPUTYPE = "nvidia.com/use-gputype"
NOUSE_GPUTYPE = "nvidia.com/nouse-gputype"
USE_GPUUUID = "nvidia.com/use-gpuuuid"
NOUSE_GPUUUID = "nvidia.com/nouse-gpuuuid"
VGPU_MODE = "nvidia.com/vgpu-mode"
NUMA_BIND = "nvidia.com/numa-bind"
NODE_SCHEDULER_POLICY = "hami.io/node-scheduler-policy"
GPU_SCHEDULER_POLICY = "hami.io/gpu-scheduler-policy"
DEVICE_SCORING_WEIGHTS = "hami.io/device-scoring-weights"

# Webhook opt-out label (namespace or pod)
WEBHOOK_LABEL = "hami.io/webhook"
WEBHOOK_IGNORE = "ignore"
