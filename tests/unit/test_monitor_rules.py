"""The monitor's pure parts: the priority rules, and the scheduler's resize parsing and planning."""

from __future__ import annotations

import pytest

from hami.model.allocation import ContainerDevice
from hami.monitor.priority import DeviceActivity, Flags, plan
from hami.scheduler import reasons as R
from hami.scheduler.resize import ResizeAsk, ResizeError, parse_resize, plan_resize, status_annotation
from hami.scheduler.state import ClusterState
from tests.unit.engine_helpers import gpu, node

S = 1_000_000_000
NOW = 1_000 * S
WINDOW = S // 2


def act(container: str, uuid: str = "GPU-a", priority: int = 1, high: float | None = None, low: float | None = None,
        index: int = 0) -> DeviceActivity:
    """A container's use of a GPU; `high`/`low`: seconds ago of its latest priority-0/1 launch."""
    def stamp(ago: float | None) -> int:
        return 0 if ago is None else NOW - int(ago * S)
    return DeviceActivity(container, index, uuid, priority, (stamp(high), stamp(low)))


# ---- priority ------------------------------------------------------------------------------


def test_running_high_priority_work_suspends_the_others_on_its_gpu_only() -> None:
    result = plan([act("serve", priority=0, high=0.1), act("train", low=0.05), act("other", "GPU-b", low=0.05)],
                  NOW, WINDOW, core_limit_switching=False)
    assert result.flags[("train", 0)] == Flags(suspend=True)
    assert result.flags[("serve", 0)] == Flags(suspend=False)  # never by its own work
    assert result.flags[("other", 0)] == Flags(suspend=False)  # another GPU
    assert result.running == {"GPU-a": (0, 1), "GPU-b": (1,)}


def test_work_older_than_the_window_no_longer_counts() -> None:
    result = plan([act("serve", priority=0, high=0.6), act("train", low=0.01)], NOW, WINDOW, False)
    assert result.flags[("train", 0)] == Flags(suspend=False)


def test_next_change_is_when_the_first_running_work_expires() -> None:
    result = plan([act("serve", priority=0, high=0.1), act("train", low=0.3)], NOW, WINDOW, False)
    assert result.next_change_ns == NOW - int(0.3 * S) + WINDOW
    assert plan([act("idle", high=5)], NOW, WINDOW, False).next_change_ns is None


def test_a_suspended_container_without_processes_is_held_too() -> None:
    # No process yet (priority unknown): held, so its first launch waits (priority 0 ignores the flag).
    result = plan([act("serve", priority=0, high=0.1), act("new")], NOW, WINDOW, False)
    assert result.flags[("new", 0)].suspend


def test_core_limit_switching_follows_hami() -> None:
    # Alone on its GPU: the cap is lifted.
    assert plan([act("a", low=0.1)], NOW, WINDOW, True).flags[("a", 0)].relax
    # Another container of the same priority runs: both keep their caps.
    both = plan([act("a", low=0.1), act("b", low=0.2)], NOW, WINDOW, True)
    assert not both.flags[("a", 0)].relax and not both.flags[("b", 0)].relax
    # The other one is idle: lifted.
    assert plan([act("a", low=0.1), act("b", low=3)], NOW, WINDOW, True).flags[("a", 0)].relax
    # High priority running beside low: the high one is lifted, the low one keeps its cap (and waits).
    mixed = plan([act("hi", priority=0, high=0.1), act("lo", low=0.1)], NOW, WINDOW, True)
    assert mixed.flags[("hi", 0)] == Flags(suspend=False, relax=True)
    assert mixed.flags[("lo", 0)] == Flags(suspend=True, relax=False)
    # Switching off: never lifted.
    assert not plan([act("a", low=0.1)], NOW, WINDOW, False).flags[("a", 0)].relax


def test_each_device_of_a_container_is_judged_on_its_own_gpu() -> None:
    result = plan([act("serve", "GPU-a", priority=0, high=0.1), act("train", "GPU-a", low=0.1, index=0),
                   act("train", "GPU-b", low=0.1, index=1)], NOW, WINDOW, False)
    assert result.flags[("train", 0)].suspend and not result.flags[("train", 1)].suspend


# ---- resize requests -----------------------------------------------------------------------


def test_resize_requests_parse() -> None:
    assert parse_resize("gpumem=6000") == (ResizeAsk(None, memory_mib=6000),)
    assert parse_resize(" train:gpumem=6000, gpucores=50 ; side:gpumem-percentage=25;") == (
        ResizeAsk("train", 6000, None, 50), ResizeAsk("side", None, 25, None))


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("gpumem=6g", "whole number"),
    ("memory=100", "expected one of"),
    ("gpumem=100,gpumem-percentage=5", "not both"),
    ("gpucores=101", "0 to 100"),
    ("gpumem=0", "at least 1"),
    ("a:gpumem=1;a:gpucores=2", "named twice"),
    ("gpumem=1;b:gpucores=2", "name the container"),
    (":gpumem=1", "empty container name"),
])
def test_bad_resize_requests_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(ResizeError, match=words):
        parse_resize(text)


def _state() -> ClusterState:
    state = ClusterState([node("n1", gpu("GPU-a", mem=16000), gpu("GPU-b", mem=16000))])
    # Another pod already holds 8000 MiB and 60 % of GPU-a.
    state.add_pod("t/other", "n1", ((ContainerDevice("GPU-a", "NVIDIA", 8000, 60),),))
    state.add_pod("t/p", "n1", ((ContainerDevice("GPU-a", "NVIDIA", 3000, 30),),
                                (ContainerDevice("GPU-b", "NVIDIA", 2000, 0),)))
    return state


ALLOCATION = ((ContainerDevice("GPU-a", "NVIDIA", 3000, 30),), (ContainerDevice("GPU-b", "NVIDIA", 2000, 0),))


def test_a_resize_that_fits_changes_only_the_named_container() -> None:
    result = plan_resize(_state(), "t/p", "n1", ALLOCATION, ["train", "side"],
                         parse_resize("train:gpumem=8000,gpucores=40"))
    assert result.reason == ""
    assert result.allocation == ((ContainerDevice("GPU-a", "NVIDIA", 8000, 40),), ALLOCATION[1])
    assert result.changes == ("train GPU-a: 3000 -> 8000 MiB, 30 -> 40 % cores",)


def test_a_resize_down_always_fits() -> None:
    result = plan_resize(_state(), "t/p", "n1", ALLOCATION, ["train", "side"], parse_resize("side:gpumem=100"))
    assert result.allocation == (ALLOCATION[0], (ContainerDevice("GPU-b", "NVIDIA", 100, 0),))


def test_a_resize_past_the_free_memory_or_cores_is_refused_with_hami_reasons() -> None:
    state = _state()
    refused = plan_resize(state, "t/p", "n1", ALLOCATION, ["train", "side"], parse_resize("train:gpumem=8001"))
    assert refused.allocation is None
    assert refused.reason == f"{R.CARD_INSUFFICIENT_MEMORY}: GPU GPU-a has 8000 MiB for this pod, 8001 asked"
    refused = plan_resize(state, "t/p", "n1", ALLOCATION, ["train", "side"], parse_resize("train:gpucores=41"))
    assert refused.reason == f"{R.CARD_INSUFFICIENT_CORE}: GPU GPU-a has 40 % cores for this pod, 41 asked"
    alone = plan_resize(state, "t/p", "n1", ALLOCATION, ["train", "side"], parse_resize("side:gpucores=100"))
    assert alone.allocation is not None  # GPU-b is the pod's alone: exclusive is fine
    refused = plan_resize(state, "t/p", "n1", ALLOCATION, ["train", "side"], parse_resize("train:gpumem-percentage=60"))
    assert refused.reason.startswith(R.CARD_INSUFFICIENT_MEMORY)  # 60 % of 16000 = 9600 > 8000
    # The state is untouched by planning.
    assert int(state.usedmem[state.row_of[(0, "GPU-a")]]) == 11000


def test_exclusive_cores_need_the_gpu_alone() -> None:
    state = ClusterState([node("n1", gpu("GPU-a", mem=16000))])
    state.add_pod("t/other", "n1", ((ContainerDevice("GPU-a", "NVIDIA", 1000, 0),),))
    allocation = ((ContainerDevice("GPU-a", "NVIDIA", 1000, 0),),)
    state.add_pod("t/p", "n1", allocation)
    refused = plan_resize(state, "t/p", "n1", allocation, ["c"], parse_resize("gpucores=100"))
    assert refused.reason.startswith(R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT)


def test_resize_needs_a_known_container_with_gpus() -> None:
    state = _state()
    assert "no container 'x'" in plan_resize(state, "t/p", "n1", ALLOCATION, ["train", "side"],
                                             parse_resize("x:gpumem=1")).reason
    assert "name the one" in plan_resize(state, "t/p", "n1", ALLOCATION, ["train", "side"],
                                         parse_resize("gpumem=1")).reason
    assert "does not count" in plan_resize(state, "t/q", "n1", ALLOCATION, ["train", "side"],
                                           parse_resize("train:gpumem=1")).reason


def test_status_is_compact_json() -> None:
    from datetime import UTC, datetime

    text = status_annotation("gpumem=1", "Applied", "ok", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert text == '{"request":"gpumem=1","result":"Applied","message":"ok","time":"2026-01-02T03:04:05Z"}'
