"""PNG figures of a ranking: scores with intervals, per-unit distributions, example tiles."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, *, dpi: int) -> None:
    """A PNG written whole (temporary file, then rename)."""
    import io

    from ..io.files import atomic_write

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write(path, buffer.getvalue())


def plot_ranking(rows: list[dict], path: Path) -> None:
    """Median score and 95% bootstrap interval per model, one panel per perturbation."""
    plt = _pyplot()
    perts = list(dict.fromkeys(r["perturbation"] for r in rows))
    n_models = max(sum(r["perturbation"] == p for r in rows) for p in perts)
    fig, axes = plt.subplots(1, len(perts), figsize=(5 * len(perts), 0.4 * n_models + 1.5), squeeze=False)
    for ax, pert in zip(axes[0], perts):
        block = [r for r in rows if r["perturbation"] == pert][::-1]
        y = np.arange(len(block))
        for yi, r in zip(y, block):
            if r["score"] is None:
                ax.text(0.0, yi, " no score", va="center", fontsize=8, color="grey")
                continue
            if r["ci_low"] is None:  # too few units for an interval
                ax.plot(r["score"], yi, "o", color="C0")
                continue
            ax.errorbar(r["score"], yi, xerr=[[r["score"] - r["ci_low"]], [r["ci_high"] - r["score"]]],
                        fmt="o", color="C0", capsize=3)
        ax.set_yticks(y, [f"{r['rank'] or '-'}. {r['name']}" for r in block], fontsize=8)
        ax.set_xlabel(f"consistency ({block[0]['metric']})")
        ax.set_title(pert, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)


def plot_distributions(per_unit: dict[str, dict[str, list[float]]], order: dict[str, list[str]], path: Path) -> None:
    """Per-unit scores of each model (box plots), one panel per perturbation."""
    plt = _pyplot()
    perts = list(per_unit)
    fig, axes = plt.subplots(1, len(perts), figsize=(5 * len(perts), 0.4 * max(len(v) for v in per_unit.values()) + 1.5),
                             squeeze=False)
    for ax, pert in zip(axes[0], perts):
        names = order[pert][::-1]
        data = [per_unit[pert].get(n, []) or [np.nan] for n in names]
        ax.boxplot(data, orientation="horizontal", widths=0.6, showfliers=True)
        ax.set_yticks(np.arange(1, len(names) + 1), names, fontsize=8)
        ax.set_xlabel("per-image consistency")
        ax.set_title(pert, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)


def plot_agreement(names: list[str], matrix: list[list[float | None]], groups: list[int], path: Path) -> None:
    """The model x model agreement (median over units) as a heatmap, models sorted by group."""
    plt = _pyplot()
    order = sorted(range(len(names)), key=lambda i: (groups[i], names[i]))
    m = np.array([[np.nan if matrix[i][j] is None else matrix[i][j] for j in order] for i in order], dtype=float)
    size = 0.35 * len(names) + 2.5
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(m, cmap="viridis", vmin=np.nanmin(m) if np.isfinite(m).any() else 0, vmax=1.0)
    labels = [f"{names[i]} (g{groups[i]})" for i in order]
    ax.set_xticks(range(len(order)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(order)), labels, fontsize=7)
    ax.set_title("agreement between models (median over units)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)


def plot_race(race: dict, path: Path) -> None:
    """P(best) of each model over the units scored, one panel per raced score; a cross marks an
    elimination."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(race), figsize=(5.5 * len(race), 3.8), squeeze=False)
    for ax, (score, r) in zip(axes[0], race.items()):
        names = list(dict.fromkeys(n for rd in r["rounds"] for n in rd["p_best"]))
        for k, name in enumerate(names):
            pts = [(rd["units"], rd["p_best"][name]) for rd in r["rounds"] if name in rd["p_best"]]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker=".", color=f"C{k % 10}", label=name)
            if r["models"].get(name, "").startswith("eliminated"):
                ax.plot(xs[-1], ys[-1], "x", color=f"C{k % 10}", markersize=9)
        ax.set_xlabel("units scored")
        ax.set_ylabel("P(best)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{score}: stopped ({r['stop']}), {r['tasks']} of {r['tasks_full_run']} tasks", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=100)
    plt.close(fig)


def plot_examples(examples: list[dict], path: Path) -> None:
    """Rows of (image, unperturbed, perturbed prediction) tiles, e.g. for the best and worst model."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(examples), 3, figsize=(9, 3.2 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        for ax, key in zip(row, ("image", "unperturbed", "perturbed")):
            if key == "image":
                ax.imshow(ex[key], cmap="gray", interpolation="nearest")
            else:  # probabilities on one fixed scale, so the two runs compare by eye
                ax.imshow(ex[key], cmap="magma", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(key, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(ex["label"].replace(" on ", "\non "), fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi=90)
    plt.close(fig)
