"""Figures from the tables: ω-ablation (paper Fig. 3), λ-ablation (Fig. 7), subject × text
fidelity Pareto front.

Each figure is written as PNG and SVG; ``tables`` maps a model name to its `wig.metrics.aggregate`
table (one protocol is drawn: the first of the table unless given). Subject and text fidelity are
DINO and CLIP-T, or the oracle's where every table has it (`wig.metrics.fidelity_pair`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

from wig.atomic import replace_file, tmp_path  # noqa: E402
from wig.metrics import fidelity_pair  # noqa: E402

LABELS = {
    "dino": "DINO",
    "clip_i": "CLIP-I",
    "clip_t": "CLIP-T",
    "oracle_subject": "oracle subject fidelity",
    "oracle_text": "oracle text fidelity",
}


def _pair(tables: Mapping[str, pl.DataFrame]) -> tuple[str, str]:
    pairs = {fidelity_pair(t) for t in tables.values()}
    return pairs.pop() if len(pairs) == 1 else ("dino", "clip_t")


def _save(fig, out: str | os.PathLike) -> None:
    """Write ``out``.png and ``out``.svg (each renamed into place when complete)."""
    out = Path(out)
    for suffix in (".png", ".svg"):
        target = out.with_suffix(suffix)
        tmp = tmp_path(target)
        fig.savefig(tmp, format=suffix[1:], dpi=150, bbox_inches="tight")
        replace_file(tmp, target)
    plt.close(fig)


def _protocol(table: pl.DataFrame, protocol: str | None) -> pl.DataFrame:
    return table.filter(pl.col("protocol") == (protocol or table["protocol"][0]))


def _two_panels(title: str, xlabel: str, draw, out, metrics: tuple[str, str]) -> None:
    """Subject (left) and text fidelity (right) panels; ``draw(ax, metric)`` puts the lines in."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, metrics):
        draw(ax, metric)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(LABELS[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, out)


def omega_ablation(tables: Mapping[str, pl.DataFrame], out, protocol: str | None = None) -> None:
    """Subject and text fidelity against ω for PG (one line per model and λ), CFG and AG as reference lines."""

    def draw(ax, metric):
        for model, table in tables.items():
            t = _protocol(table, protocol)
            for (scale,), pg in t.filter(pl.col("method") == "pg").sort("omega").group_by("scale", maintain_order=True):
                line = ax.errorbar(
                    pg["omega"],
                    pg[metric],
                    yerr=[pg[metric] - pg[f"{metric}_lo"], pg[f"{metric}_hi"] - pg[metric]],
                    marker="o",
                    capsize=3,
                    label=f"{model} PG λ={scale:g}",
                )
                color = line[0].get_color()
                for method, style in (("cfg", "--"), ("ag", ":")):
                    ref = t.filter((pl.col("method") == method) & (pl.col("scale") == scale))
                    if not ref.is_empty():
                        ax.axhline(
                            ref[metric][0], linestyle=style, color=color, label=f"{model} {method.upper()} λ={scale:g}"
                        )

    _two_panels("ω-ablation", "ω (weight of the fine-tuned model in the weak branch)", draw, out, _pair(tables))


def lambda_ablation(tables: Mapping[str, pl.DataFrame], out, protocol: str | None = None) -> None:
    """Subject and text fidelity against λ, one line per (model, method, ω)."""

    def draw(ax, metric):
        for model, table in tables.items():
            t = _protocol(table, protocol).filter(pl.col("method") != "none")
            for (method, omega), g in t.sort("scale").group_by("method", "omega", maintain_order=True):
                label = f"{model} {method}" + (f" ω={omega:g}" if method in ("pg", "pgpp") else "")
                ax.plot(g["scale"], g[metric], marker="o", label=label)

    _two_panels("λ-ablation", "λ (guidance scale)", draw, out, _pair(tables))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (higher is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((a >= x and b >= y) and (a > x or b > y) for a, b in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto(tables: Mapping[str, pl.DataFrame], out, protocol: str | None = None) -> None:
    """All operating points in the text × subject fidelity plane, the front of each model highlighted."""
    subject, text = _pair(tables)
    fig, ax = plt.subplots(figsize=(6, 5))
    for model, table in tables.items():
        t = _protocol(table, protocol)
        xy = list(zip(t[text].to_list(), t[subject].to_list()))
        dots = ax.scatter(*zip(*xy), alpha=0.5, label=f"{model} points")
        front = pareto_front(xy)
        ax.plot(
            [xy[i][0] for i in front],
            [xy[i][1] for i in front],
            "-o",
            color=dots.get_facecolor()[0],
            linewidth=2,
            label=f"{model} front",
        )
        for i in front:
            row = t.row(i, named=True)
            ax.annotate(f"{row['method']} ω={row['omega']:g} λ={row['scale']:g}", xy[i], fontsize=6)
    ax.set_xlabel(f"{LABELS[text]} (prompt fidelity)")
    ax.set_ylabel(f"{LABELS[subject]} (subject fidelity)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out)
