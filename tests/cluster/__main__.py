"""Start or stop a local control plane by hand.

    python -m tests.cluster up --dir DIR [--nodes N] [--gpus-per-node G]
                                [--scheduler-config FILE | --no-scheduler]
    python -m tests.cluster down --dir DIR
    python -m tests.cluster build          # same as `make cluster-binaries`

`up` prints the kubeconfig path and runs until interrupted (Ctrl-C, SIGTERM
or `down` from another shell); then it stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .controlplane import CLUSTER_DIR, ClusterError, ControlPlane, _process_matches, _terminate, stop_pid_files

DEFAULT_SCHEDULER_CONFIG = """\
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
  - schedulerName: default-scheduler
"""


def _up_pid_alive(workdir: Path) -> int | None:
    pid_file = workdir / "up.pid"
    if not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().split()[0])
    except (ValueError, IndexError):
        return None
    if pid != os.getpid() and _process_matches(pid, ""):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if b"tests.cluster" in cmdline:
            return pid
    return None


def cmd_up(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    running = _up_pid_alive(workdir)
    if running:
        print(f"a control plane is already running from {workdir} (pid {running}); run `down` first", file=sys.stderr)
        return 1
    workdir.mkdir(parents=True, exist_ok=True)
    stop_pid_files(workdir)  # leftovers of an `up` that was killed hard
    (workdir / "up.pid").write_text(f"{os.getpid()}\n")

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    t0 = time.monotonic()
    cp: ControlPlane | None = None
    try:
        cp = ControlPlane.start(
            workdir, etcd_port=args.etcd_port, apiserver_port=args.apiserver_port, verbosity=args.v
        )
        for i in range(args.nodes):
            capacity = {"nvidia.com/gpu": str(args.gpus_per_node)} if args.gpus_per_node else {}
            cp.add_node(f"node-{i}", capacity=capacity)
        if not args.no_scheduler:
            config = Path(args.scheduler_config).read_text() if args.scheduler_config else DEFAULT_SCHEDULER_CONFIG
            sched = cp.start_scheduler(config, name="kube-scheduler")
            print(f"kube-scheduler: https://127.0.0.1:{sched.port} (log {sched.log_path})", file=sys.stderr)
        print(
            f"control plane up in {time.monotonic() - t0:.1f}s: kube-apiserver {cp.server}, etcd {cp.etcd_url}, "
            f"logs in {workdir / 'logs'}",
            file=sys.stderr,
        )
        print(f"export KUBECONFIG={cp.kubeconfig}   # stop with: python -m tests.cluster down --dir {workdir}",
              file=sys.stderr)
        print(cp.kubeconfig, flush=True)
        while not stop.wait(1.0):
            dead = [p.name for p in cp.processes() if not p.alive()]
            if dead:
                print(f"{', '.join(dead)} exited; see {workdir / 'logs'}; stopping", file=sys.stderr)
                return 1
        return 0
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if cp is not None:
            cp.close()
        (workdir / "up.pid").unlink(missing_ok=True)
        print("control plane stopped", file=sys.stderr)


def cmd_down(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    pid = _up_pid_alive(workdir)
    if pid:
        _terminate(pid, timeout=60)
    stopped = stop_pid_files(workdir)
    (workdir / "up.pid").unlink(missing_ok=True)
    if pid or stopped:
        print(f"stopped the control plane in {workdir}" + (f" (and stray {', '.join(stopped)})" if stopped else ""))
    else:
        print(f"nothing running from {workdir}")
    return 0


def cmd_build(_args: argparse.Namespace) -> int:
    return subprocess.call(["bash", str(CLUSTER_DIR / "build.sh")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start etcd, kube-apiserver (and kube-scheduler) and wait")
    up.add_argument("--dir", required=True, help="working directory: pki, etcd data, kubeconfig, logs, pid files")
    up.add_argument("--nodes", type=int, default=0, help="fake Ready nodes to create (node-0, node-1, ...)")
    up.add_argument("--gpus-per-node", type=int, default=0, help="nvidia.com/gpu capacity of each fake node")
    up.add_argument("--scheduler-config", help="KubeSchedulerConfiguration file (default: one default profile)")
    up.add_argument("--no-scheduler", action="store_true", help="do not start kube-scheduler")
    up.add_argument("--etcd-port", type=int, default=None)
    up.add_argument("--apiserver-port", type=int, default=None)
    up.add_argument("-v", type=int, default=1, help="log verbosity of the components")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop what `up --dir DIR` started")
    down.add_argument("--dir", required=True)
    down.set_defaults(func=cmd_down)
    build = sub.add_parser("build", help="build or reuse the pinned binaries (tests/cluster/build.sh)")
    build.set_defaults(func=cmd_build)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
