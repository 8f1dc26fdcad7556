"""HAMi's scoring formulas, in float32 as HAMi computes them, so that placements agree.

Node score (before the pod is placed) = 10 * (used/count + usedcores/totalcores + usedmem/totalmem)
summed over the node's devices. Device score (before each container) =
10 * (w_slot*(nums+used)/count + w_core*(cores+usedcores)/totalcore + w_mem*(mem+usedmem)/totalmem).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hami.annotations.selectors import ScoringWeights
from hami.model.requests import NO_PERCENTAGE, ContainerRequest

F32 = np.float32
WEIGHT = F32(10)
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def ratio(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> FloatArray:
    """numerator / denominator in float32, 0 where the denominator is 0 (an empty dimension)."""
    num = np.asarray(numerator, dtype=F32)
    den = np.asarray(denominator, dtype=F32)
    out = np.zeros(np.broadcast(num, den).shape, dtype=F32)
    np.divide(num, den, out=out, where=den != 0)
    return out


def node_scores(
    used: IntArray, count: IntArray, usedcores: IntArray, totalcore: IntArray, usedmem: IntArray, totalmem: IntArray
) -> FloatArray:
    return WEIGHT * (ratio(used, count) + ratio(usedcores, totalcore) + ratio(usedmem, totalmem))


def memory_needed(request: ContainerRequest, totalmem: IntArray) -> IntArray:
    """MiB the request takes on each device (percentages are of each device's own memory)."""
    if request.memreq > 0:
        return np.full(totalmem.shape, request.memreq, dtype=np.int64)
    if request.mem_percentage != NO_PERCENTAGE:
        return (totalmem * request.mem_percentage) // 100
    return np.zeros(totalmem.shape, dtype=np.int64)


def device_scores(
    request: ContainerRequest,
    weights: ScoringWeights,
    used: IntArray,
    count: IntArray,
    usedcores: IntArray,
    totalcore: IntArray,
    usedmem: IntArray,
    totalmem: IntArray,
) -> FloatArray:
    mem = memory_needed(request, totalmem)
    slot_term = F32(weights.slot) * ratio(request.nums + used, count)
    core_term = F32(weights.core) * ratio(request.coresreq + usedcores, totalcore)
    mem_term = F32(weights.memory) * ratio(mem + usedmem, totalmem)
    total: FloatArray = WEIGHT * (slot_term + core_term + mem_term)
    return total
