"""`hami schedule`: place the pending pods of a cluster snapshot, one after another."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hami.annotations.errors import AnnotationError
from hami.annotations.selectors import NODE_POLICIES, Policy
from hami.errors import HamiError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--snapshot", required=True, metavar="FILE",
                        help="nodes and pods as `kubectl get nodes,pods -o yaml` prints them")
    parser.add_argument("--node-policy", choices=[p.value for p in NODE_POLICIES],
                        help="default node policy (pods may override it; default from config: binpack)")
    parser.add_argument("--gpu-policy", choices=[p.value for p in Policy],
                        help="default GPU policy (pods may override it; default from config: spread)")
    parser.add_argument("--config", metavar="FILE", help="HAMi device config (device-config.yaml shape)")
    parser.add_argument("-o", "--output", choices=["json", "table"],
                        help="output format (default: table on a terminal, json otherwise)")


def _device_json(device: Any, dtype: str) -> dict[str, Any]:
    out: dict[str, Any] = {"uuid": device.uuid, "type": dtype, "memory": device.usedmem, "cores": device.usedcores}
    if device.part is not None:  # an NVIDIA MIG instance: its profile and memory slices
        out["mig"] = {"profile": device.part.profile,
                      "placement": {"start": device.part.start, "size": device.part.size}}
    return out


def decision_json(decision: Any) -> dict[str, Any]:
    return {
        "pod": decision.pod,
        "node": decision.node,
        "containers": [
            [
                _device_json(d, dtype) for d, dtype in zip(container, types, strict=True)
            ]
            for container, types in zip(decision.allocation, decision.device_types, strict=True)
        ],
        "reasons": dict(sorted(decision.reasons.items())),
        "score": decision.score,
    }


def _table(decisions: list[dict[str, Any]]) -> str:
    lines = []
    width = max([len("POD")] + [len(d["pod"]) for d in decisions])
    node_width = max([len("NODE")] + [len(d["node"] or "-") for d in decisions])
    lines.append(f"{'POD':<{width}}  {'NODE':<{node_width}}  DEVICES")
    for d in decisions:
        if d["node"]:
            parts = []
            for position, container in enumerate(d["containers"]):
                if container:
                    devices = ", ".join(f"{x['uuid']} {x['memory']}MiB {x['cores']}%" for x in container)
                    parts.append(f"c{position}: {devices}")
            lines.append(f"{d['pod']:<{width}}  {d['node']:<{node_width}}  {'; '.join(parts)}")
        else:
            lines.append(f"{d['pod']:<{width}}  {'-':<{node_width}}  unschedulable")
            for node, reason in d["reasons"].items():
                lines.append(f"{'':<{width}}    {node}: {reason}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from hami.config import SchedulerConfig, load_config
    from hami.scheduler import reasons as R
    from hami.scheduler.engine import PolicyDefaults, commit, schedule
    from hami.scheduler.state import ClusterState
    from hami.snapshot import read_snapshot

    config = load_config(args.config)
    snapshot = read_snapshot(args.snapshot, config)
    defaults_from_config: SchedulerConfig = config.scheduler
    defaults = PolicyDefaults(
        node_policy=Policy(args.node_policy) if args.node_policy else defaults_from_config.node_policy,
        gpu_policy=Policy(args.gpu_policy) if args.gpu_policy else defaults_from_config.gpu_policy,
    )
    state = ClusterState(snapshot.nodes, snapshot.vendors)
    for running in snapshot.running:
        snapshot.warnings.extend(
            state.add_pod(running.request.key, running.node, running.allocation, running.request.init_count,
                          sidecars=running.request.sidecars, annotations=running.request.annotations)
        )
    for warning in snapshot.warnings:
        print(f"hami schedule: warning: {warning}", file=sys.stderr)

    decisions = []
    for pod in snapshot.pending:
        try:
            decision = schedule(state, pod, defaults)
        except AnnotationError as exc:
            raise HamiError(f"pod {pod.key}: {exc}") from None
        commit(state, pod, decision)
        out = decision_json(decision)
        for name in snapshot.unregistered:
            out["reasons"].setdefault(name, R.NODE_UNREGISTERED)
        out["reasons"] = dict(sorted(out["reasons"].items()))
        decisions.append(out)

    output = args.output or ("table" if sys.stdout.isatty() else "json")
    if output == "json":
        json.dump({"decisions": decisions}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_table(decisions) if decisions else "no pending pods request managed resources")
    return 0
