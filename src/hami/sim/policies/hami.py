"""HAMi's own policies, as the engine runs them in the cluster: binpack and spread (node and GPU)."""

from __future__ import annotations

from hami.scheduler.engine import Chooser, hami_chooser
from hami.sim.policies.base import SimContext


def make(sim: SimContext) -> Chooser:
    return hami_chooser
