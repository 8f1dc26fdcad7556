"""A real local Kubernetes control plane (etcd, kube-apiserver, kube-scheduler) for tests.

Binaries: built from the pinned Go modules here by build.sh (`make cluster-binaries`).
Harness: controlplane.ControlPlane. Command line: `python -m tests.cluster up --dir DIR`
and `python -m tests.cluster down --dir DIR`. See docs/testing.md.
"""

from .controlplane import (
    ApiCallError,
    Binaries,
    BinaryNotFound,
    ClusterError,
    ControlPlane,
    PortInUse,
    Scheduler,
    default_bin_dir,
    free_port,
    pinned_versions,
    running_control_plane,
    wait_for,
)

__all__ = [
    "ApiCallError",
    "BinaryNotFound",
    "Binaries",
    "ClusterError",
    "ControlPlane",
    "PortInUse",
    "Scheduler",
    "default_bin_dir",
    "free_port",
    "pinned_versions",
    "running_control_plane",
    "wait_for",
]
