"""The figure: allocation ratio against arrived GPU demand, one line per policy (as in the paper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_fill(policies: dict[str, dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in policies.items():
        c = s["curve"]
        x = [100 * v for v in c["arrived"]]
        ax.plot(x, [100 * v for v in c["allocation_ratio"]], label=name, linewidth=1.5)
        ax.fill_between(x, [100 * v for v in c["min"]], [100 * v for v in c["max"]], alpha=0.15)
    ax.plot([0, 100], [0, 100], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("arrived GPU demand (% of cluster GPU capacity)")
    ax.set_ylabel("GPU allocation ratio (%)")
    ax.set_xlim(60, max(100 * v for s in policies.values() for v in s["curve"]["arrived"]))
    ax.set_ylim(60, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_replay(policies: dict[str, dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, s in policies.items():
        ax.plot([t / 86400 for t in s["series"]["time_s"]], [100 * a for a in s["series"]["allocation_ratio"]],
                label=name, linewidth=1)
    ax.set_xlabel("time (days since the first task)")
    ax.set_ylabel("GPU allocation ratio (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
