"""Vastai (HAMi's `Vastai`): whole devices or dies, grouped by physical card in die mode.

Vastai's device plugin registers `hami.io/node-va-register` (JSON; HAMi forces every device's
cores to 100, used only for scoring). A container asks `vastaitech.com/va` devices; only task
slots are checked, no memory and no cores. In die mode (the devices' custominfo says
`"DeviceStrategy": "die"`, each die naming its card in `"AIC"`), a request for several dies
takes them from as few cards as it can, largest free group first; under the `mutex` GPU
policy a die on a card that already runs work is refused; and the node score adds, per
container, the share of its dies on its best-filled card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hami.annotations.selectors import Policy
from hami.model.allocation import ContainerDevice
from hami.model.devices import DeviceInfo
from hami.model.requests import ContainerRequest
from hami.scheduler import reasons as R
from hami.vendors.base import (
    AnnotationKeys,
    FloatArray,
    IntArray,
    Need,
    NodeSource,
    Resources,
    Rows,
    Vendor,
    Walk,
    config_name,
    config_section,
    device_table,
    row_ids,
)

if TYPE_CHECKING:
    from hami.scheduler.engine import PodContext
    from hami.scheduler.state import ClusterState

VENDOR = "Vastai"
REGISTER = "hami.io/node-va-register"
HANDSHAKE = "hami.io/node-handshake-va"
DIE = "die"


def die_mode(device: DeviceInfo) -> bool:
    return device.custom.get("DeviceStrategy") == DIE


def card_of(device: DeviceInfo) -> str | None:
    """The physical card (AIC) a die sits on, when the registration names one."""
    aic = device.custom.get("AIC")
    return aic if isinstance(aic, str) else None


@dataclass
class Vastai(Vendor):
    """HAMi's VastaiDevices with the chart's resource name (device-config `vastai:`)."""

    def ask(self, container: Mapping[str, Any]) -> ContainerRequest | None:
        count = self.quantity(container, self.resources.count)
        if not count:
            return None
        return ContainerRequest(nums=count, memreq=0, mem_percentage=100, coresreq=0, vendor=self.name)

    def registered(self, device: DeviceInfo) -> DeviceInfo:
        return DeviceInfo(**{**device.__dict__, "vendor": self.name, "devcore": 100})  # "only for calscore use"

    def need(self, ask: ContainerRequest, state: ClusterState, rows: Rows, used: IntArray, usedmem: IntArray,
             usedcores: IntArray) -> Need:
        zeros = np.zeros(len(used), dtype=np.int64)
        return Need(slots=zeros + 1, mem=zeros, cores=zeros)  # HAMi writes `uuid,Vastai,0,0`

    def usage_codes(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, rows: Rows, used: IntArray,
                    usedmem: IntArray, usedcores: IntArray, earlier: Sequence[int] = ()) -> tuple[IntArray, Need]:
        need = self.need(ask, state, rows, used, usedmem, usedcores)
        busy = used > 0
        if ctx.mutex:
            busy = busy | _on_busy_card(state, rows, used)
        codes = np.select(
            [used >= state.count[rows], ctx.mutex & busy],
            [R.CODE_OF[R.CARD_TIME_SLICING_EXHAUSTED], R.CODE_OF[R.EXCLUSIVE_DEVICE_ALLOCATE_CONFLICT]],
            0,
        ).astype(np.int64)
        return codes, need

    topology: bool = True

    def choose(self, ask: ContainerRequest, ctx: PodContext, state: ClusterState, walk: Walk,
               fitting: list[int]) -> tuple[list[int], str]:
        if not die_mode(state.devices[walk.rows.start]) or len(fitting) == ask.nums or ask.nums == 1:
            return fitting[: ask.nums], ""
        cards = [card_of(state.devices[walk.rows.start + j]) for j in fitting]
        return [fitting[k] for k in fewest_cards(cards, ask.nums)], ""

    scores_nodes: bool = True

    def node_scores(self, ctx: PodContext, state: ClusterState, nodes: IntArray) -> FloatArray | None:
        """With one die per container, a container scores 1 on a node whose dies all name their card
        and 0 on one whose dies name none; other pods and mixed nodes are placed node by node."""
        asks = [a for c in ctx.pod.containers for a in c.asks if a.vendor == self.name]
        if any(a.nums != 1 for a in asks):
            return None
        codes, kinds = device_table(state, "vastai-score", lambda d: _score_kind(d) if d.vendor == self.name else None)
        kind = np.asarray(kinds + [""], dtype=object)[codes[row_ids(state, state.vendor_rows(self.name))]]
        node_of = state.dev_node[row_ids(state, state.vendor_rows(self.name))]
        counted = np.bincount(node_of[kind == "card"], minlength=len(state.nodes))[nodes]
        zeroing = np.bincount(node_of[kind == "none"], minlength=len(state.nodes))[nodes]
        sizes = state.vendor_sizes(self.name)[nodes]
        if ((counted != sizes) & (zeroing != sizes)).any():
            return None  # a node whose dies differ: which one is chosen matters
        score = np.where(counted == sizes, np.float32(len(asks)), np.float32(0)).astype(np.float32)
        result: FloatArray = -score if ctx.node_policy is Policy.SPREAD else score
        return result

    def score_node(self, ctx: PodContext, state: ClusterState, node: int,
                   allocation: Sequence[Sequence[ContainerDevice]]) -> float:
        score = np.float32(0)
        for container in allocation:
            if not container:
                continue
            per_card: dict[str, int] = {}
            for placed in container:
                custom = state.devices[state.row_of[(node, placed.uuid)]].custom
                if not custom or ("DeviceStrategy" in custom and custom["DeviceStrategy"] != DIE):
                    return 0.0
                if "AIC" not in custom:
                    return 0.0
                if isinstance(custom["AIC"], str):
                    per_card[custom["AIC"]] = per_card.get(custom["AIC"], 0) + 1
            total = sum(per_card.values())
            if total:
                score += np.float32(max(per_card.values())) / np.float32(total)
        # HAMi adds it raw under either node policy, so spread (lowest total wins) would prefer
        # dies split over cards; turned under spread, keeping a container on one card helps both.
        return float(-score if ctx.node_policy is Policy.SPREAD else score)


def _score_kind(device: DeviceInfo) -> str:
    """How a die counts in HAMi's ScoreNode: "card" (a die of a named card: its container scores),
    "none" (the whole pod scores 0) or "other" (its container scores 0)."""
    custom = device.custom
    if not custom or custom.get("DeviceStrategy", DIE) != DIE or "AIC" not in custom:
        return "none"
    return "card" if isinstance(custom["AIC"], str) else "other"


def fewest_cards(cards: Sequence[str | None], wanted: int) -> list[int]:
    """HAMi's computeBestCombination: positions of `wanted` dies, taken card by card, the card with
    the most candidate dies first. Cards with equal counts keep the candidates' order (HAMi's is
    random); dies without a card come last, each on its own (HAMi drops them)."""
    groups: dict[str, list[int]] = {}
    loose: list[list[int]] = []
    for position, card in enumerate(cards):
        if card is None:
            loose.append([position])
        else:
            groups.setdefault(card, []).append(position)
    ordered = sorted(groups.values(), key=len, reverse=True) + loose
    return [p for group in ordered for p in group][:wanted]


def _on_busy_card(state: ClusterState, rows: Rows, used: IntArray) -> np.ndarray:
    """Per row: a die (in die mode) whose card has another die in use."""
    codes, cards = device_table(state, "vastai-card", lambda d: card_of(d) if die_mode(d) else None)
    card = codes[rows]
    key = np.where(card >= 0, state.dev_node[rows] * (len(cards) + 1) + card, -1)
    busy_keys = np.unique(key[(used > 0) & (key >= 0)])
    return (key >= 0) & np.isin(key, busy_keys)


def vastai(raw: Any) -> list[Vendor]:
    section = config_section(raw, "vastai")
    return [Vastai(
        name=VENDOR,
        resources=Resources(count=config_name(section, "resourceCountName", "vastaitech.com/va", "vastai")),
        keys=AnnotationKeys(
            register=REGISTER,
            handshake=HANDSHAKE,
            to_allocate=f"hami.io/{VENDOR}-devices-to-allocate",
            allocated=f"hami.io/{VENDOR}-devices-allocated",
            uuid_pairs=(("vastaitech.com/use-gpuuuid", "vastaitech.com/nouse-gpuuuid"),),
        ),
        source=NodeSource.JSON,
    )]
