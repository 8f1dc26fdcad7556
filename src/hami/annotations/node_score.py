"""`hami.io/node-nvidia-score`: how well each pair of a node's GPUs is linked.

HAMi's JSON: `[{"uuid":"GPU-a","score":{"GPU-b":400,…}},…]`, one entry per GPU with its score
towards every other GPU of the node (higher is a faster link; see docs/topology.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from hami.annotations.errors import AnnotationError

PairScores = dict[str, dict[str, int]]


def encode_pair_scores(scores: Mapping[str, Mapping[str, int]]) -> str:
    """HAMi's list, in the order given (the plugin gives GPUs in index order)."""
    return json.dumps([{"uuid": uuid, "score": dict(peers)} for uuid, peers in scores.items()],
                      separators=(",", ":"))


def decode_pair_scores(value: str) -> PairScores:
    """Per GPU UUID, its score towards each other GPU; raises AnnotationError."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    if data is None:
        return {}
    if not isinstance(data, list):
        raise AnnotationError("JSON value is not a list")
    result: PairScores = {}
    for position, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise AnnotationError(f"entry {position}: not an object")
        uuid = entry.get("uuid", "")  # omitempty in HAMi
        if not isinstance(uuid, str):
            raise AnnotationError(f"entry {position}: 'uuid' must be a string")
        peers = entry.get("score") or {}
        if not isinstance(peers, dict):
            raise AnnotationError(f"entry {position} ({uuid}): 'score' must be an object")
        scores: dict[str, int] = {}
        for peer, score in peers.items():
            if isinstance(score, bool) or not isinstance(score, int):
                raise AnnotationError(f"entry {position} ({uuid}): score of {peer} must be an integer")
            scores[str(peer)] = score
        result[uuid] = scores
    return result
