"""The shapes of the Kubernetes objects that come in requests (a Pod, a NodeList), as the
extender, the engine and the webhook read them, checked where a request comes in: a mistyped
field is a clear 400, never a TypeError deep inside.

Only the fields that our code reads are declared, with the types the Kubernetes API gives
them; every other field passes through untouched (the webhook's patch keeps them).
"""

from __future__ import annotations

from typing import Any

import msgspec

from hami.errors import HamiError

# What a resource quantity may be in JSON: the API server sends strings ("3k"), people and
# tests write numbers.
Quantity = str | int | float


class _Metadata(msgspec.Struct):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None  # noqa: N815 - the JSON field's name
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class _Resources(msgspec.Struct):
    limits: dict[str, Quantity] | None = None
    requests: dict[str, Quantity] | None = None


class _EnvVar(msgspec.Struct):
    name: str | None = None


class _SecurityContext(msgspec.Struct):
    privileged: bool | None = None


class _Container(msgspec.Struct):
    name: str | None = None
    resources: _Resources | None = None
    env: list[_EnvVar] | None = None
    securityContext: _SecurityContext | None = None  # noqa: N815
    restartPolicy: str | None = None  # noqa: N815 - "Always" marks a sidecar init container


class _Spec(msgspec.Struct):
    containers: list[_Container] | None = None
    initContainers: list[_Container] | None = None  # noqa: N815
    nodeName: str | None = None  # noqa: N815
    schedulerName: str | None = None  # noqa: N815
    runtimeClassName: str | None = None  # noqa: N815


class _Status(msgspec.Struct):
    phase: str | None = None


class _Pod(msgspec.Struct):
    metadata: _Metadata | None = None
    spec: _Spec | None = None
    status: _Status | None = None


class _NodeMetadata(msgspec.Struct):
    name: str


class _Node(msgspec.Struct):
    metadata: _NodeMetadata


class _NodeList(msgspec.Struct):
    items: list[_Node]


class ShapeError(HamiError):
    """An object whose fields do not have the types of the Kubernetes API."""


def check_pod(pod: Any, where: str = "pod") -> dict[str, Any]:
    """`pod` itself when its fields have the API's types; ShapeError naming the first that does not,
    e.g. ``pod: Expected `str`, got `int` - at `$.spec.containers[0].name` ``."""
    try:
        msgspec.convert(pod, _Pod)
    except msgspec.ValidationError as exc:
        raise ShapeError(f"{where}: {exc}") from None
    if not isinstance(pod, dict):  # msgspec accepts no other shape for a Struct; this tells mypy
        raise ShapeError(f"{where} is not an object")
    return pod


def node_names(nodes: Any, where: str = "Nodes") -> list[str]:
    """The names of a NodeList's items; ShapeError when an item has no metadata.name string."""
    try:
        return [node.metadata.name for node in msgspec.convert(nodes, _NodeList).items]
    except msgspec.ValidationError as exc:
        raise ShapeError(f"{where}: {exc}") from None
