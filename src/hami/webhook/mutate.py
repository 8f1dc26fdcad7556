"""mutate(pod) -> admission verdict and JSON patch. Pure: no I/O, no clock.

What it does to a pod that asks for managed resources, as HAMi's webhook does:
- schedulerName: set to ours when empty or `default-scheduler` (the latter only when
  `overwrite_default_scheduler`); a pod that names another scheduler keeps it.
- a device count of `defaultGPUNum` when a container asks only for memory or cores;
- cores 100 (exclusive) when a container asks for a whole card without cores;
- `CUDA_TASK_PRIORITY` from `nvidia.com/priority`, `GPU_CORE_UTILIZATION_POLICY` from config.
It denies, with a message naming the container: privileged containers with managed
resources, percentages or cores over 100, malformed quantities, and pods with nodeName set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hami.annotations import keys
from hami.config import NvidiaConfig
from hami.errors import HamiError
from hami.quantity import QuantityError, parse_whole
from hami.vendors.nvidia import container_request

TASK_PRIORITY_ENV = "CUDA_TASK_PRIORITY"
CORE_POLICY_ENV = "GPU_CORE_UTILIZATION_POLICY"
DEFAULT_SCHEDULER = "default-scheduler"


@dataclass(frozen=True)
class WebhookOptions:
    scheduler_name: str = "hami-scheduler"
    overwrite_default_scheduler: bool = True


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    patch: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def _managed(container: dict[str, Any], config: NvidiaConfig) -> bool:
    resources = container.get("resources") or {}
    names = (*config.managed_resources, config.resourcePriorityName)
    return any(name in (resources.get(section) or {}) for section in ("limits", "requests") for name in names)


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    env = [e for e in container.get("env") or [] if e.get("name") != name]
    env.append({"name": name, "value": value})
    container["env"] = env


def _mutate_container(container: dict[str, Any], config: NvidiaConfig) -> None:
    """Apply HAMi's webhook defaults to one container (in place). Raises HamiError."""
    name = container.get("name")
    security = container.get("securityContext") or {}
    if security.get("privileged"):
        raise HamiError(f"container {name!r} is privileged and asks for {config.resourceCountName}: "
                        "a privileged container sees every GPU, so its share cannot be enforced")
    container_request(container, config)  # validates every quantity and range, with a clear message
    resources = container.setdefault("resources", {})
    limits = resources.setdefault("limits", {})
    if config.resourceCountName not in limits and config.defaultGPUNum > 0 and any(
        n in limits for n in (config.resourceMemoryName, config.resourceMemoryPercentageName, config.resourceCoreName)
    ):
        limits[config.resourceCountName] = config.defaultGPUNum
    has_count = config.resourceCountName in limits or config.resourceCountName in (resources.get("requests") or {})
    if has_count and config.resourceCoreName not in limits and config.resourceCoreName not in (
        resources.get("requests") or {}
    ):
        percentage = limits.get(config.resourceMemoryPercentageName)
        memory = limits.get(config.resourceMemoryName, (resources.get("requests") or {}).get(config.resourceMemoryName))
        if (percentage is not None and parse_whole(percentage) == 100) or (percentage is None and memory is None):
            limits[config.resourceCoreName] = 100
    priority = limits.get(config.resourcePriorityName)
    if priority is not None:
        try:
            level = parse_whole(priority)
        except QuantityError as exc:
            raise HamiError(f"container {name!r}: {config.resourcePriorityName}: {exc}") from None
        if level > 1:
            raise HamiError(f"container {name!r}: {config.resourcePriorityName} must be 0 (high) or 1 (low)")
        _set_env(container, TASK_PRIORITY_ENV, str(level))
    if config.gpuCorePolicy != "default":
        _set_env(container, CORE_POLICY_ENV, config.gpuCorePolicy)


def mutate(pod: dict[str, Any], config: NvidiaConfig, options: WebhookOptions = WebhookOptions()) -> Verdict:
    metadata = pod.get("metadata") or {}
    if (metadata.get("labels") or {}).get(keys.WEBHOOK_LABEL) == keys.WEBHOOK_IGNORE:
        return Verdict(allowed=True)
    spec = pod.get("spec") or {}
    groups = [
        ("initContainers", list(spec.get("initContainers") or [])),
        ("containers", list(spec.get("containers") or [])),
    ]
    if not any(_managed(c, config) for _, containers in groups for c in containers):
        return Verdict(allowed=True)
    if spec.get("nodeName"):
        return Verdict(allowed=False, message=f"the pod sets spec.nodeName ({spec['nodeName']}) and asks for "
                                              f"{config.resourceCountName}: GPU shares must be placed by the scheduler")
    patch: list[dict[str, Any]] = []
    try:
        for field_name, containers in groups:
            mutated = copy.deepcopy(containers)
            for container in mutated:
                if _managed(container, config):
                    _mutate_container(container, config)
            if mutated != containers:
                patch.append({"op": "replace", "path": f"/spec/{field_name}", "value": mutated})
    except HamiError as exc:
        return Verdict(allowed=False, message=str(exc))
    scheduler = spec.get("schedulerName") or ""
    if not scheduler or (scheduler == DEFAULT_SCHEDULER and options.overwrite_default_scheduler):
        patch.append({"op": "add", "path": "/spec/schedulerName", "value": options.scheduler_name})
    return Verdict(allowed=True, patch=patch)


def review_response(review: dict[str, Any], config: NvidiaConfig, options: WebhookOptions) -> dict[str, Any]:
    """An AdmissionReview v1 response for an AdmissionReview v1 request. Raises HamiError on a bad review."""
    import base64
    import json

    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise HamiError("not an AdmissionReview: missing request.uid")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise HamiError("AdmissionReview request has no object")
    verdict = mutate(pod, config, options)
    response: dict[str, Any] = {"uid": request["uid"], "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": f"hami: {verdict.message}"}
    elif verdict.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(verdict.patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
