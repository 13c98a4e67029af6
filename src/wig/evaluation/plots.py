"""Figures from the tables: ω-ablation (paper Fig. 3), λ-ablation (Fig. 7), subject × text
fidelity Pareto front, and each method's front with its CIs (DreamBlend's Fig. 6).

Each figure is written as PNG and SVG; ``tables`` maps a model name to its `wig.evaluation.metrics.aggregate`
table (one protocol is drawn: the first of the table unless given). Subject and text fidelity are
DINO and CLIP-T, or the oracle's where every table has it (`wig.evaluation.metrics.fidelity_metrics`);
a prompt set's tables have text fidelity alone: one panel, and no front to draw.
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
from wig.evaluation.metrics import REGISTRY as METRICS  # noqa: E402
from wig.evaluation.metrics import fidelity_metrics  # noqa: E402
from wig.guidance import REGISTRY as METHODS  # noqa: E402
from wig.guidance import parameters, point_schema  # noqa: E402


def _pair(tables: Mapping[str, pl.DataFrame]) -> tuple[str | None, str]:
    """The (subject, text) metrics every table holds (`wig.evaluation.metrics.fidelity_metrics` of
    their common columns); subject None where one is a prompt set's."""
    common = set.intersection(*(set(t.columns) for t in tables.values()))
    return fidelity_metrics(pl.DataFrame(schema={c: pl.Float64 for c in common}))


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


def _two_panels(title: str, xlabel: str, draw, out, metrics: tuple[str | None, str]) -> None:
    """Subject (left) and text fidelity (right) panels — the text panel alone without a subject
    metric; ``draw(ax, metric)`` puts the lines in."""
    metrics = tuple(m for m in metrics if m is not None)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    axes = axes[0]
    for ax, metric in zip(axes, metrics):
        draw(ax, metric)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_label(metric))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, out)


def _with(parameter: str) -> list[str]:
    """The registered guidance methods that have ``parameter``."""
    return [name for name, cls in METHODS.items() if parameter in parameters(cls)]


def _settings(row: Mapping, method: str, skip: tuple[str, ...] = ()) -> str:
    """A point's own settings as a label, e.g. ``ω=0 λ=7.5``."""
    symbols = {"omega": "ω", "scale": "λ", "ag_scale": "λ_ag"}
    own = [k for k in parameters(METHODS[method]) if k not in skip] if method in METHODS else []
    return " ".join(f"{symbols.get(k, k)}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in own)


def omega_ablation(tables: Mapping[str, pl.DataFrame], out, protocol: str | None = None) -> None:
    """Subject and text fidelity against ω for every method with an ω (one line per model, method
    and λ); the methods that declare a reference line (CFG, AG) drawn at the same λ."""
    references = [(name, cls.reference_line) for name, cls in METHODS.items() if cls.reference_line]

    def draw(ax, metric):
        for model, table in tables.items():
            t = _protocol(table, protocol)
            for (method, scale), sweep in (
                t.filter(pl.col("method").is_in(_with("omega")))
                .sort("omega")
                .group_by("method", "scale", maintain_order=True)
            ):
                line = ax.errorbar(
                    sweep["omega"],
                    sweep[metric],
                    yerr=[sweep[metric] - sweep[f"{metric}_lo"], sweep[f"{metric}_hi"] - sweep[metric]],
                    marker="o",
                    capsize=3,
                    label=f"{model} {method.upper()} λ={scale:g}",
                )
                color = line[0].get_color()
                for name, style in references:
                    ref = t.filter((pl.col("method") == name) & (pl.col("scale") == scale))
                    if not ref.is_empty():
                        ax.axhline(
                            ref[metric][0], linestyle=style, color=color, label=f"{model} {name.upper()} λ={scale:g}"
                        )

    _two_panels("ω-ablation", "ω (weight of the fine-tuned model in the weak branch)", draw, out, _pair(tables))


def lambda_ablation(tables: Mapping[str, pl.DataFrame], out, protocol: str | None = None) -> None:
    """Subject and text fidelity against λ, one line per (model, method, its other settings)."""
    guided = [name for name, cls in METHODS.items() if cls.guided]

    def draw(ax, metric):
        for model, table in tables.items():
            t = _protocol(table, protocol).filter(pl.col("method").is_in(guided))
            others = [k for k in point_schema() if k not in ("method", "scale")]
            for _, g in t.sort("scale").group_by("method", *others, maintain_order=True):
                row = g.row(0, named=True)
                label = f"{model} {row['method']} {_settings(row, row['method'], skip=('scale',))}".rstrip()
                ax.plot(g["scale"], g[metric], marker="o", label=label)

    _two_panels("λ-ablation", "λ (guidance scale)", draw, out, _pair(tables))


def _label(metric: str) -> str:
    return METRICS[metric].label + ("" if METRICS[metric].higher else " (lower is better)")


def pareto_front(points: list[tuple[float, float]], higher: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the points no other point beats in both coordinates; ``higher`` says per
    coordinate whether higher is better (a distance such as DreamSim's is not)."""
    sign = [1.0 if h else -1.0 for h in higher]
    points = [(sign[0] * x, sign[1] * y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(points):
        if not any((a >= x and b >= y) and (a > x or b > y) for a, b in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def pareto(tables: Mapping[str, pl.DataFrame], out, protocol: str | None = None) -> None:
    """All operating points in the text × subject fidelity plane, the front of each model highlighted."""
    subject, text = _pair(tables)
    fig, ax = plt.subplots(figsize=(6, 5))
    if subject is None:  # a prompt set: the figure says so rather than being left out of the report
        ax.axis("off")
        ax.text(0.5, 0.5, "no subject-fidelity metric (a prompt set):\nno trade-off front", ha="center", va="center")
        _save(fig, out)
        return
    for model, table in tables.items():
        t = _protocol(table, protocol)
        xy = list(zip(t[text].to_list(), t[subject].to_list()))
        dots = ax.scatter(*zip(*xy), alpha=0.5, label=f"{model} points")
        front = pareto_front(xy, (METRICS[text].higher, METRICS[subject].higher))
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
            ax.annotate(f"{row['method']} {_settings(row, row['method'])}", xy[i], fontsize=6)
    ax.set_xlabel(f"{_label(text)}, prompt fidelity")
    ax.set_ylabel(f"{_label(subject)}, subject fidelity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out)


def method_fronts(tables: Mapping[str, pl.DataFrame], out, protocol: str | None = None) -> None:
    """Each method's operating points in the text × subject fidelity plane with their 95 % CIs on
    both axes, and each method's own front: whose trade-off dominates on the same noise (CFG's λ
    sweep, PG's ω sweep, DreamBlend's strength sweep; DreamBlend's Fig. 6). One panel per
    (model, fine-tune)."""
    subject, text = _pair(tables)
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 5), squeeze=False)
    for ax, (model, table) in zip(axes[0], tables.items()):
        ax.set_title(model, fontsize=9)
        if subject is None:
            ax.axis("off")
            ax.text(0.5, 0.5, "no subject-fidelity metric (a prompt set):\nno trade-off front", ha="center")
            continue
        t = _protocol(table, protocol)
        for i, (method, rows) in enumerate(t.group_by("method", maintain_order=True)):
            x, y = rows[text].to_numpy(), rows[subject].to_numpy()
            color = f"C{i}"
            ax.errorbar(
                x,
                y,
                xerr=[x - rows[f"{text}_lo"].to_numpy(), rows[f"{text}_hi"].to_numpy() - x],
                yerr=[y - rows[f"{subject}_lo"].to_numpy(), rows[f"{subject}_hi"].to_numpy() - y],
                fmt="o",
                color=color,
                alpha=0.6,
                capsize=2,
                label=f"{method[0]} ({len(rows)} points)",
            )
            front = sorted(
                pareto_front(list(zip(x, y)), (METRICS[text].higher, METRICS[subject].higher)), key=lambda j: x[j]
            )
            ax.plot(x[front], y[front], "-", color=color, linewidth=2)
        ax.set_xlabel(f"{_label(text)}, prompt fidelity")
        ax.set_ylabel(f"{_label(subject)}, subject fidelity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out)


def search_trace(trace: pl.DataFrame, state: Mapping, settings: Mapping, out) -> None:
    """A golden-section search: each probe's objective against its value, numbered in the order
    asked, the final bracket shaded and the chosen value marked (PNG and SVG; ``out`` is the PNG)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axvspan(state["lo"], state["hi"], color="0.9", label="final bracket")
    # a probe short of text_at_least scores −10⁶ − its shortfall: drawn as a cross on the floor
    feasible = trace.filter(pl.col("objective") > -1e5)
    floor = feasible["objective"].min() if len(feasible) else 0.0
    ax.plot(feasible["value"], feasible["objective"], "o", color="C0", label="probe")
    short = trace.filter(pl.col("objective") <= -1e5)
    if len(short):
        ax.plot(short["value"], [floor] * len(short), "x", color="C1", label="text fidelity short")
    for row in trace.iter_rows(named=True):
        y = row["objective"] if row["objective"] > -1e5 else floor
        ax.annotate(str(row["probe"]), (row["value"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if state.get("best") is not None:
        ax.axvline(state["best"], color="C3", linestyle="--", label=f"chosen {state['best']:g}")
    ax.set_xlabel(f"{settings['parameter']} of {settings['method']}")
    sign = "" if METRICS[settings["objective"]].higher else "−"
    ax.set_ylabel(f"objective: {sign}{METRICS[settings['objective']].label} (selection split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, Path(out).with_suffix(""))
