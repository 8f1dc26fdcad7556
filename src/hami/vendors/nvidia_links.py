"""The topology-aware choice of GPUs, from the pair scores of `hami.io/node-nvidia-score`.

HAMi's rule (pkg/device/nvidia/device.go): among every GPU that fits, a one-GPU container takes
the GPU with the lowest total score towards the others (losing it hurts the remaining sets
least); a multi-GPU container takes the set with the highest sum of pair scores, the first
such set in the walk's order. Scores are read from the first GPU of a pair towards the second,
as HAMi reads them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

# Beyond this many candidate sets the best set is grown greedily rather than enumerated.
MAX_COMBINATIONS = 20_000

Scores = Mapping[str, Mapping[str, int]]


def score(scores: Scores, a: str, b: str) -> int:
    return scores.get(a, {}).get(b, 0)


def worst_single(scores: Scores, candidates: Sequence[str]) -> int:
    """HAMi's computeWorstSingleCard: position of the GPU with the lowest total score towards the
    other candidates (the first on a tie)."""
    best, best_total = 0, None
    for i, uuid in enumerate(candidates):
        total = sum(score(scores, uuid, other) for j, other in enumerate(candidates) if j != i)
        if best_total is None or total < best_total:
            best, best_total = i, total
    return best


def set_score(scores: Scores, members: Sequence[str]) -> int:
    """HAMi's sum of pair scores over the set (each pair once, earlier member first)."""
    return sum(score(scores, members[i], members[k]) for i in range(len(members)) for k in range(i + 1, len(members)))


def best_set(scores: Scores, candidates: Sequence[str], size: int) -> list[int]:
    """HAMi's computeBestCombination over generateCombinations: positions of the set of `size`
    with the highest sum, the first in lexicographic order on a tie."""
    if size >= len(candidates):
        return list(range(len(candidates)))
    if math.comb(len(candidates), size) > MAX_COMBINATIONS:
        return _greedy_set(scores, candidates, size)
    best: tuple[int, ...] = ()
    best_total = -1
    found = False
    for combo in itertools.combinations(range(len(candidates)), size):
        total = set_score(scores, [candidates[i] for i in combo])
        if not found or total > best_total:
            best, best_total, found = combo, total, True
    return list(best)


def _greedy_set(scores: Scores, candidates: Sequence[str], size: int) -> list[int]:
    """The best pair, then the candidate adding most each step (nodes with very many GPUs)."""
    def pair_score(pair: tuple[int, int]) -> int:
        return score(scores, candidates[pair[0]], candidates[pair[1]])

    first, second = max(itertools.combinations(range(len(candidates)), 2), key=pair_score)
    chosen = [first, second]
    while len(chosen) < size:
        rest = [i for i in range(len(candidates)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: sum(score(scores, candidates[c], candidates[i]) for c in chosen)))
    return sorted(chosen)


def weakest_link(scores: Scores, members: Sequence[str]) -> int:
    """The lowest pair score within a set, both directions (a collective runs at the pace of its
    slowest link); 0 for fewer than two distinct GPUs."""
    distinct = list(dict.fromkeys(members))
    if len(distinct) < 2:
        return 0
    return min(min(score(scores, a, b), score(scores, b, a)) for a, b in itertools.combinations(distinct, 2))
