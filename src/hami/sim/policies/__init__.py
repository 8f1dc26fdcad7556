"""The simulator's policies, each a chooser plug-in of the scheduling engine.

Names tell whose rules a policy follows: `-authors` (and `fgd`) score as the FGD authors'
simulator does, the one that produced the paper's published figures; `hami-` are HAMi's own
scores; the rest are ours.
"""

from __future__ import annotations

from hami.errors import HamiError
from hami.scheduler.engine import PolicyDefaults
from hami.sim.policies import authors, bestfit, dotproduct, fgd, hami, ours, random
from hami.sim.policies.base import BINPACK, SPREAD, PolicySpec

POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in [
        PolicySpec("hami-binpack", "HAMi binpack: fullest node, then fullest GPU (HAMi's scores)", BINPACK, hami.make),
        PolicySpec("hami-spread", "HAMi spread: emptiest node, then emptiest GPU (HAMi's scores)", SPREAD, hami.make),
        PolicySpec("random", "random node and GPU among those that fit", PolicyDefaults(), random.make, paper="Random"),
        PolicySpec("best-fit", "ours: node left with the least free GPU+CPU share of its own capacity, tightest GPU",
                   PolicyDefaults(), bestfit.make),
        PolicySpec("best-fit-authors", "the authors' BestFit: least free CPU+GPU left, normalised by the largest node",
                   PolicyDefaults(), authors.BestFitAuthors, paper="BestFit"),
        PolicySpec("dot-product", "ours: smallest dot product of demand and free shares per (node, GPU)",
                   PolicyDefaults(), dotproduct.make),
        PolicySpec("dot-product-authors", "the authors' DotProd (Tetris): per node, CPU and total GPU merged",
                   PolicyDefaults(), authors.DotProductAuthors, paper="DotProd"),
        PolicySpec("gpu-packing-authors", "the authors' GpuPacking: used GPUs, then used nodes, then small empty nodes",
                   PolicyDefaults(), authors.GpuPackingAuthors, paper="GpuPacking"),
        PolicySpec("fgd", "FGD as the authors run it: integer sigmoid score of the growth, ties in node order",
                   PolicyDefaults(), fgd.make, paper="FGD"),
        PolicySpec("fgd-exact", "FGD as the paper's text reads: least growth exactly", PolicyDefaults(),
                   fgd.make_exact),
        PolicySpec(ours.NAME, ours.SUMMARY, PolicyDefaults(), ours.make),
    ]
}


def policy(name: str) -> PolicySpec:
    try:
        return POLICIES[name]
    except KeyError:
        raise HamiError(f"unknown policy {name!r} (choose from: {', '.join(POLICIES)})") from None
