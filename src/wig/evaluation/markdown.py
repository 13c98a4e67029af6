"""Result tables as Markdown that reads like the paper's tables.

Parquet and CSV keep every column as computed (a CI as ``<metric>_lo`` / ``<metric>_hi``, every
registered guidance parameter on every row, one row per evaluation protocol). The Markdown a
person reads is laid out the way the paper prints its tables:

- a row shows the parameters its guidance method has, blank for the others (no ``ag_scale`` on a
  CFG row), and a column blank in every row is dropped;
- a value with its CI reads ``0.638 [0.540, 0.741]`` (differences signed: ``+0.091 [+0.022,
  +0.164]``); a cell over a single image has no CI to show and shows the value alone;
- ``protocol`` appears only for metrics that have protocols (the embedding metrics: DreamMatcher's
  or the standard preprocessing); the pixel metrics read the image once. One row per grid point:
  with one protocol the metric columns carry their plain names, with several each embedding
  metric has one column per protocol (``dino (standard)``);
- a table with no rows is one line saying why.
"""

from __future__ import annotations

import math

import polars as pl

from wig.evaluation.metrics import REGISTRY as METRICS
from wig.evaluation.metrics import point_keys
from wig.guidance import REGISTRY as METHODS
from wig.guidance import parameters

COUNTS = ("n_concepts", "n_finetune_seeds", "n_images", "n_points")


def _metric_of(column: str) -> str | None:
    """The registered metric a value column reports (``dino``, ``d_dino``, ``dino_cfg``), or None."""
    name = column.removeprefix("d_")
    name = name.removesuffix("_cfg")
    return name if name in METRICS else None


def _has_protocols(column: str) -> bool:
    metric = _metric_of(column)
    return metric is not None and METRICS[metric].reads != "pixels"


def _number(value: float, digits: int, signed: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cells(frame: pl.DataFrame, digits: int) -> list[dict[str, str]]:
    """Each row as display strings: CIs joined into their value, other methods' parameters blank."""
    keys = [k for k in point_keys() if k != "method" and k in frame.columns]
    intervals = {c for c in frame.columns if f"{c}_lo" in frame.columns and f"{c}_hi" in frame.columns}
    hidden = {f"{c}_{side}" for c in intervals for side in ("lo", "hi")}
    rows = []
    for row in frame.iter_rows(named=True):
        own = set(parameters(METHODS[row["method"]])) if row.get("method") in METHODS else set(keys)
        single = row.get("n_images") == 1
        out = {}
        for column, value in row.items():
            if column in hidden:
                continue
            if column in keys and column not in own:
                out[column] = ""
            elif isinstance(value, float) and _metric_of(column) is None:  # a setting: λ, ω, CFG's λ
                out[column] = "" if math.isnan(value) else f"{value:.4g}"
            elif isinstance(value, float):
                signed = column.startswith("d_")
                text = _number(value, digits, signed)
                lo, hi = (row.get(f"{column}_{side}") for side in ("lo", "hi"))
                if column in intervals and text and lo is not None and hi is not None and not single and lo != hi:
                    text += f" [{_number(lo, digits, signed)}, {_number(hi, digits, signed)}]"
                out[column] = text
            else:
                out[column] = "" if value is None else str(value)
        rows.append(out)
    return rows


def _by_protocol(rows: list[dict[str, str]], columns: list[str]) -> tuple[list[dict[str, str]], list[str]]:
    """One row per grid point: the embedding metrics' columns per protocol (plain names when there
    is one), the pixel metrics and counts from the point's first row."""
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    with_protocols = [c for c in columns if _has_protocols(c)]
    identity = [c for c in columns if c != "protocol" and c not in with_protocols and _metric_of(c) is None]
    identity = [c for c in identity if c not in COUNTS]
    named = len(protocols) > 1 and bool(with_protocols)
    merged: dict[tuple, dict[str, str]] = {}
    for row in rows:
        key = tuple(row[c] for c in identity)
        target = merged.setdefault(key, {c: v for c, v in row.items() if c != "protocol" and c not in with_protocols})
        for column in with_protocols:
            target[f"{column} ({row['protocol']})" if named else column] = row[column]
    out_columns = []
    for column in columns:
        if column == "protocol":
            continue
        if column in with_protocols and named:
            out_columns += [f"{column} ({p})" for p in protocols]
        else:
            out_columns.append(column)
    return list(merged.values()), out_columns


def results_markdown(frame: pl.DataFrame, empty: str, digits: int = 3, by_protocol: bool = True) -> str:
    """``frame`` (a metrics, paired, matched-text or fine-tunes table) as the paper would print it
    (module doc); ``empty``: the one line written instead when it has no rows; ``by_protocol``: one
    row per grid point with the protocols as columns (else a ``protocol`` column where it tells
    rows apart)."""
    if frame.is_empty():
        return empty.rstrip() + "\n"
    rows = _cells(frame, digits)
    columns = list(rows[0])
    if "protocol" in columns:
        if by_protocol:
            rows, columns = _by_protocol(rows, columns)
        elif len({r["protocol"] for r in rows}) == 1 or not any(_has_protocols(c) for c in columns):
            columns.remove("protocol")
    columns = [c for c in columns if any(r.get(c, "") != "" for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r.get(c, "") for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --- the tables of rule aggregate and rule finetune_table, each with the line it prints when empty


def metrics_markdown(table: pl.DataFrame) -> str:
    return results_markdown(table, "No images were scored: the metrics table has no rows.")


def paired_markdown(paired: pl.DataFrame) -> str:
    return results_markdown(
        paired, "No grid point besides the CFG baseline(s): there is nothing to compare with CFG on the same noise."
    )


def matched_markdown(matched: pl.DataFrame, table: pl.DataFrame) -> str:
    """Subject fidelity at matched text fidelity: only the CFG λ whose text fidelity a method's λ
    sweep reaches (the Parquet keeps the others as nulls)."""
    from wig.evaluation.metrics import fidelity_metrics

    subject, _ = fidelity_metrics(table)
    if subject is None:
        return "No reference images (a prompt set): there is no subject fidelity to compare at matched text fidelity.\n"
    if matched.is_empty():
        return "No guided method besides CFG sweeps λ: there is nothing to compare at matched text fidelity.\n"
    reached = matched.filter(pl.col("scale").is_not_null())
    return results_markdown(
        reached,
        f"No method's λ sweep reaches the text fidelity of any CFG λ ({len(matched)} comparisons tried): "
        "there is nothing to compare at matched text fidelity.",
        by_protocol=False,
    )


def agreement_markdown(agreement: pl.DataFrame) -> str:
    return results_markdown(
        agreement,
        "No synthetic-world oracle (or no embedding metric of subject fidelity) in these scores: "
        "there is no agreement to measure.",
        by_protocol=False,
    )


def finetunes_markdown(table: pl.DataFrame) -> str:
    """Every fine-tune's metrics side by side; one fine-tune has nothing to set beside it."""
    pairs = table.select("model", "finetune").unique(maintain_order=True).rows() if not table.is_empty() else []
    if len(pairs) == 1:
        model, finetune = pairs[0]
        return (
            f"One fine-tune ({model}/{finetune}): nothing to set side by side; its metrics are "
            f"{model}/{finetune}/tables/metrics.md in this study's results.\n"
        )
    return results_markdown(table, "No fine-tune has a metrics table yet.")
