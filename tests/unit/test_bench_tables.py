"""The simulator's experiment tables pair the runs of two policies by seed."""

from __future__ import annotations

from bench.simulate.tables import by_seed, diff


def test_runs_finishing_out_of_order_are_paired_by_seed() -> None:
    # Workers return runs in any order; each policy's rows must still be seeds 0, 1, 2, so the
    # paired difference is +1.00 on every seed (sd 0), not a mix of seeds.
    fgd = by_seed({2: [90.0, 93.0], 0: [90.0, 95.0], 1: [90.0, 94.0]})
    ours = by_seed({0: [90.0, 96.0], 1: [90.0, 95.0], 2: [90.0, 94.0]})
    assert fgd[:, 1].tolist() == [95.0, 94.0, 93.0]
    assert diff(ours, fgd, 1) == "+1.00 ±0.00"
