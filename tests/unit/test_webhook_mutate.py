"""The webhook's pure mutate(): defaults, scheduler name, priority, and the denials."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from hami.config import NvidiaConfig
from hami.webhook.mutate import WebhookOptions, mutate, review_response

CFG = NvidiaConfig()


def pod(
    *containers: dict[str, Any],
    scheduler: str | None = None,
    node: str | None = None,
    labels: dict[str, str] | None = None,
    init: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": list(containers)}
    if init:
        spec["initContainers"] = list(init)
    if scheduler:
        spec["schedulerName"] = scheduler
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "p", "labels": labels or {}}, "spec": spec}


def ctr(name: str = "c", privileged: bool = False, **limits: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "resources": {"limits": dict(limits)}}
    if privileged:
        c["securityContext"] = {"privileged": True}
    return c


def apply(p: dict[str, Any], options: WebhookOptions | None = None) -> dict[str, Any]:
    verdict = mutate(p, CFG, options or WebhookOptions())
    assert verdict.allowed, verdict.message
    result = json.loads(json.dumps(p))
    for op in verdict.patch:
        field = op["path"].rsplit("/", 1)[1]
        result["spec"][field] = op["value"]
    return result


def limits(p: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return p["spec"]["containers"][i]["resources"]["limits"]  # type: ignore[no-any-return]


def test_pods_without_gpus_are_left_alone() -> None:
    verdict = mutate(pod({"name": "web", "resources": {"limits": {"cpu": "1"}}}), CFG)
    assert verdict.allowed and verdict.patch == []


def test_scheduler_name_is_set_unless_another_scheduler_is_named() -> None:
    assert apply(pod(ctr(**{"nvidia.com/gpu": 1})))["spec"]["schedulerName"] == "hami-scheduler"
    assert apply(pod(ctr(**{"nvidia.com/gpu": 1}), scheduler="default-scheduler"))["spec"]["schedulerName"] == (
        "hami-scheduler"
    )
    kept = apply(
        pod(ctr(**{"nvidia.com/gpu": 1}), scheduler="default-scheduler"),
        WebhookOptions(overwrite_default_scheduler=False),
    )
    assert kept["spec"]["schedulerName"] == "default-scheduler"
    assert apply(pod(ctr(**{"nvidia.com/gpu": 1}), scheduler="volcano"))["spec"]["schedulerName"] == "volcano"


def test_defaults_count_and_exclusive_cores() -> None:
    only_memory = apply(pod(ctr(**{"nvidia.com/gpumem": 3000})))
    assert limits(only_memory) == {"nvidia.com/gpumem": 3000, "nvidia.com/gpu": 1}
    whole = apply(pod(ctr(**{"nvidia.com/gpu": 2})))
    assert limits(whole)["nvidia.com/gpucores"] == 100
    full_percent = apply(pod(ctr(**{"nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": 100})))
    assert limits(full_percent)["nvidia.com/gpucores"] == 100
    shared = apply(pod(ctr(**{"nvidia.com/gpu": 1, "nvidia.com/gpumem": 1000})))
    assert "nvidia.com/gpucores" not in limits(shared)


def test_priority_becomes_env_and_init_containers_are_mutated() -> None:
    p = apply(
        pod(
            ctr(**{"nvidia.com/gpu": 1, "nvidia.com/gpumem": 100, "nvidia.com/priority": 1}),
            init=(ctr("init", **{"nvidia.com/gpumem": 10}),),
        )
    )
    assert {"name": "CUDA_TASK_PRIORITY", "value": "1"} in p["spec"]["containers"][0]["env"]
    assert p["spec"]["initContainers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize(
    "p, message",
    [
        (pod(ctr(privileged=True, **{"nvidia.com/gpu": 1})), "privileged"),
        (pod(ctr(**{"nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": 150})), "over 100"),
        (pod(ctr(**{"nvidia.com/gpu": 1, "nvidia.com/gpucores": 101})), "over 100"),
        (pod(ctr(**{"nvidia.com/gpu": 1}), node="n1"), "nodeName"),
        (pod(ctr(**{"nvidia.com/gpu": "many"})), "not a number"),
        (pod(ctr(**{"nvidia.com/gpu": 1, "nvidia.com/priority": 5})), "0 (high) or 1 (low)"),
    ],
)
def test_denials_name_the_problem(p: dict[str, Any], message: str) -> None:
    verdict = mutate(p, CFG)
    assert not verdict.allowed and message in verdict.message


def test_opt_out_label() -> None:
    p = pod(ctr(privileged=True, **{"nvidia.com/gpu": 1}), labels={"hami.io/webhook": "ignore"})
    assert mutate(p, CFG).allowed and mutate(p, CFG).patch == []


def test_admission_review_round_trip() -> None:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "abc", "object": pod(ctr(**{"nvidia.com/gpu": 1}))},
    }
    response = review_response(review, CFG, WebhookOptions())["response"]
    assert response["uid"] == "abc" and response["allowed"] and response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert {"op": "add", "path": "/spec/schedulerName", "value": "hami-scheduler"} in ops
    denied = review_response(
        {"request": {"uid": "x", "object": pod(ctr(privileged=True, **{"nvidia.com/gpu": 1}))}}, CFG, WebhookOptions()
    )["response"]
    assert denied["allowed"] is False and "privileged" in denied["status"]["message"]
