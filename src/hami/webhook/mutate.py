"""mutate(pod) -> admission verdict and JSON patch. Pure: no I/O, no clock.

What it does to a pod that asks for a device of any vendor, as HAMi's webhook does:
- each vendor's changes to each container (hami.vendors: NVIDIA's count and exclusive-cores
  defaults and priority env, Ascend's memory rounding, …) and to the pod;
- schedulerName: set to ours when empty or `default-scheduler` (the latter only when
  `overwrite_default_scheduler`).
A pod that names another scheduler is left alone, as HAMi does. It denies, with a message
naming the container: privileged containers that ask for a device, malformed or
out-of-range quantities, a vendor's invalid request, pods with nodeName set, and (when the
scheduler's quota book is given) pods that would exceed their namespace's GPU quota, as HAMi's
fitResourceQuota: per vendor, the larger of the app containers' sum and the biggest init
container, each counted as memory (or cores) per device times devices.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hami.annotations import keys
from hami.config import HamiConfig, NvidiaConfig
from hami.errors import HamiError
from hami.model.requests import PodRequest
from hami.vendors.registry import VendorSet, vendor_set
from hami.wire import check_pod

if TYPE_CHECKING:
    from hami.scheduler.quota import QuotaBook

DEFAULT_SCHEDULER = "default-scheduler"


@dataclass(frozen=True)
class WebhookOptions:
    scheduler_name: str = "hami-scheduler"
    overwrite_default_scheduler: bool = True
    # The scheduler's quotas and usage (None: `hami webhook` alone, which checks no quota).
    quota: QuotaBook | None = None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    patch: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


def admit_pod(pod: Mapping[str, Any], vendors: VendorSet) -> tuple[dict[str, Any], bool]:
    """A copy of the pod with every vendor's admission changes, and whether it asks any device.

    Raises HamiError when a vendor denies it or a device container is privileged.
    """
    admitted = copy.deepcopy(dict(pod))
    spec = admitted.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise HamiError("the pod's spec is not a mapping")
    found = False
    for field_name in ("initContainers", "containers"):
        containers = spec.get(field_name) or []
        if not isinstance(containers, list):
            raise HamiError(f"spec.{field_name} is not a list")
        for container in containers:
            if not isinstance(container, dict):
                raise HamiError(f"spec.{field_name} holds something that is not a container")
            asks = [v.name for v in vendors if v.admit(container, admitted)]
            if not asks:
                continue
            found = True
            if (container.get("securityContext") or {}).get("privileged"):
                raise HamiError(f"container {container.get('name')!r} is privileged and asks for "
                                f"{', '.join(vendors[a].resources.count for a in asks)}: a privileged container "
                                "sees every device, so its share cannot be enforced")
    return admitted, found


def _is_ours(scheduler: str, options: WebhookOptions) -> bool:
    return (not scheduler or scheduler == options.scheduler_name
            or (scheduler == DEFAULT_SCHEDULER and options.overwrite_default_scheduler))


def quota_asks(request: PodRequest) -> dict[str, tuple[int, int]]:
    """Per vendor, (MiB, cores) a pod asks as HAMi's webhook counts it: per container memory and
    cores times devices; the app containers summed, against the largest init container."""
    apps: dict[str, list[int]] = {}
    inits: dict[str, list[int]] = {}
    for position, container in enumerate(request.containers):
        for ask in container.asks:
            memory, cores = ask.memreq * ask.nums, ask.coresreq * ask.nums
            if request.runs_beside_apps(position):
                total = apps.setdefault(ask.vendor, [0, 0])
                total[0] += memory
                total[1] += cores
            else:
                top = inits.setdefault(ask.vendor, [0, 0])
                top[0], top[1] = max(top[0], memory), max(top[1], cores)
    result = {}
    for vendor in apps.keys() | inits.keys():
        a, i = apps.get(vendor, [0, 0]), inits.get(vendor, [0, 0])
        result[vendor] = (max(a[0], i[0]), max(a[1], i[1]))
    return result


def mutate(pod: dict[str, Any], config: HamiConfig | NvidiaConfig | VendorSet,
           options: WebhookOptions = WebhookOptions(), namespace: str | None = None) -> Verdict:
    metadata = pod.get("metadata") or {}
    if (metadata.get("labels") or {}).get(keys.WEBHOOK_LABEL) == keys.WEBHOOK_IGNORE:
        return Verdict(allowed=True)
    spec = pod.get("spec") or {}
    if not _is_ours(str(spec.get("schedulerName") or ""), options):
        return Verdict(allowed=True)  # another scheduler's pod: not ours to change (HAMi does the same)
    vendors = vendor_set(config)
    try:
        admitted, found = admit_pod(pod, vendors)
    except HamiError as exc:
        return Verdict(allowed=False, message=str(exc))
    if not found:
        return Verdict(allowed=True)
    if spec.get("nodeName"):
        return Verdict(allowed=False, message=f"the pod sets spec.nodeName ({spec['nodeName']}) and asks for "
                                              "devices: device shares must be placed by the scheduler")
    if options.quota is not None:
        try:
            request = vendors.pod_request(admitted)
        except HamiError as exc:
            return Verdict(allowed=False, message=str(exc))
        refusal = options.quota.admits(namespace or metadata.get("namespace") or "default", quota_asks(request))
        if refusal is not None:
            return Verdict(allowed=False, message=refusal)
    patch: list[dict[str, Any]] = []
    new_spec = admitted["spec"]
    for field_name in ("initContainers", "containers"):
        if new_spec.get(field_name) != spec.get(field_name):
            patch.append({"op": "replace", "path": f"/spec/{field_name}", "value": new_spec[field_name]})
    if new_spec.get("runtimeClassName") != spec.get("runtimeClassName"):
        patch.append({"op": "add", "path": "/spec/runtimeClassName", "value": new_spec["runtimeClassName"]})
    new_annotations = (admitted.get("metadata") or {}).get("annotations")
    if new_annotations != metadata.get("annotations"):
        patch.append({"op": "add", "path": "/metadata/annotations", "value": new_annotations})
    if (spec.get("schedulerName") or "") != options.scheduler_name:
        patch.append({"op": "add", "path": "/spec/schedulerName", "value": options.scheduler_name})
    return Verdict(allowed=True, patch=patch)


def review_response(review: dict[str, Any], config: HamiConfig | NvidiaConfig | VendorSet,
                    options: WebhookOptions) -> dict[str, Any]:
    """An AdmissionReview v1 response for an AdmissionReview v1 request. Raises HamiError on a bad review."""
    import base64
    import json

    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise HamiError("not an AdmissionReview: missing request.uid")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise HamiError("AdmissionReview request has no object")
    check_pod(pod, "request.object")  # a mistyped field is a bad review, not a crash in mutate
    namespace = request.get("namespace")
    verdict = mutate(pod, config, options, namespace if isinstance(namespace, str) and namespace else None)
    response: dict[str, Any] = {"uid": request["uid"], "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": f"hami: {verdict.message}"}
    elif verdict.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(verdict.patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
