"""The simulator's policies, each a chooser plug-in of the scheduling engine."""

from __future__ import annotations

from hami.errors import HamiError
from hami.scheduler.engine import PolicyDefaults
from hami.sim.policies import bestfit, dotproduct, fgd, hami, ours, random
from hami.sim.policies.base import BINPACK, SPREAD, PolicySpec

POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in [
        PolicySpec("hami-binpack", "HAMi binpack: fullest node, then fullest GPU (HAMi's scores)", BINPACK, hami.make),
        PolicySpec("hami-spread", "HAMi spread: emptiest node, then emptiest GPU (HAMi's scores)", SPREAD, hami.make),
        PolicySpec("best-fit", "node left with the least free GPU+CPU share, tightest GPU", PolicyDefaults(),
                   bestfit.make),
        PolicySpec("random", "random node and GPU among those that fit", PolicyDefaults(), random.make),
        PolicySpec("dot-product", "smallest dot product of demand and free resources (Tetris)", PolicyDefaults(),
                   dotproduct.make),
        PolicySpec("fgd", "fragmentation gradient descent (Weng et al., ATC 2023)", PolicyDefaults(), fgd.make),
        PolicySpec(ours.NAME, ours.SUMMARY, PolicyDefaults(), ours.make),
    ]
}


def policy(name: str) -> PolicySpec:
    try:
        return POLICIES[name]
    except KeyError:
        raise HamiError(f"unknown policy {name!r} (choose from: {', '.join(POLICIES)})") from None
