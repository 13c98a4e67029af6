"""Per-image scores of the registered metrics, tables with bootstrap CIs, paired comparisons.

A `Metric` (`wig.evaluation.base`) says what it reads (the concept's reference embeddings, its
prompt's text embedding, or the pixels), which encoder's embeddings, which side of the trade-off
it measures (subject or text fidelity) and how it scores; each registers itself in its own module
(DINO, CLIP-I/CLIP-T, PickScore, DreamSim, the scene encoder's, the synthetic oracle's two), and
`REGISTRY` here is complete (this module imports `wig.evaluation.plugins`). Scoring, the tables and the
figures iterate over the metrics a study enables (``evaluation.metrics``).

Per image i of a concept with reference embeddings r_1…r_R:
    DINO_i   = mean_r cos(dino(r), dino(i))          (likewise CLIP-I with CLIP image embeddings)
    CLIP-T_i = cos(clip(i), clip_text(prompt of i))
so a prompt's score — the mean over its images — is DreamMatcher's all-pairs mean of cosines.
A table cell is the mean over concepts of the mean over prompts of the per-prompt means
(DreamMatcher's order); with equally many images per prompt and prompts per concept this is
the plain mean of the per-image scores.

Confidence intervals: a percentile bootstrap over everything that was drawn at random —
resample concepts (subjects) with replacement, then, within each drawn concept, its fine-tune
(LoRA) seeds, its prompts and its sampling seeds, each independently with replacement (the
pigeonhole bootstrap of a crossed LoRA seed × prompt × seed design nested in subjects), recompute
the cell; 95 % interval of ``n_boot`` draws. Paired comparisons apply the same
bootstrap to per-image differences between a method and CFG on the same (concept, LoRA,
prompt, seed) noise.
"""

from __future__ import annotations

import json
from typing import Mapping, Sequence

import numpy as np
import polars as pl

from wig.errors import WigError
from wig.evaluation import plugins  # noqa: F401  (the shipped metrics register themselves)
from wig.evaluation.base import METRICS as REGISTRY
from wig.guidance import REGISTRY as METHODS
from wig.guidance import baseline, point_of, point_schema


def point_keys() -> tuple[str, ...]:
    """A grid point's columns: method and every registered guidance parameter (wig.guidance), read
    when used, so a method registered by a plug-in has its table rows too."""
    return tuple(point_schema())


IMAGE_KEYS = ("concept", "finetune_seed", "prompt_index", "seed")


def enabled_metrics(encoders, render: bool) -> list[str]:
    """The metrics a study scores by default: every registered metric whose encoder it configures,
    and the pixel metrics (the synthetic world's only where it renders its images)."""
    names = []
    for m in REGISTRY.values():
        if not m.default:
            continue
        if (m.encoder in encoders) if m.encoder is not None else (render or not m.synthetic_only):
            names.append(m.name)
    return names


def _matrix(frame: pl.DataFrame) -> np.ndarray:
    return np.stack(frame["embedding"].to_numpy())


def score_samples(
    manifest: pl.DataFrame, concept: str, embeddings: dict[str, pl.DataFrame], metrics: Sequence[str]
) -> pl.DataFrame:
    """Per-image encoder-metric scores of one sample set, one row per (image, protocol).

    ``embeddings`` maps an encoder kind to the set's embeddings, ``{kind}_refs`` to the concept's
    reference embeddings (for the kinds of metrics that read references) and ``{kind}_texts`` to
    its prompt texts' (by prompt index, for the kinds of metrics that read texts).
    """
    chosen = [REGISTRY[m] for m in metrics if REGISTRY[m].encoder is not None]
    kinds = list(dict.fromkeys(m.encoder for m in chosen))
    rows = []
    for protocol in sorted(set(embeddings[kinds[0]]["protocol"].to_list())):
        generated, references = {}, {}
        for kind in kinds:
            gen = embeddings[kind].filter(pl.col("protocol") == protocol)
            with_refs = any(m.encoder == kind and m.reads == "references" for m in chosen)
            ref = embeddings[f"{kind}_refs"].filter(pl.col("protocol") == protocol) if with_refs else None
            if gen.is_empty() or (ref is not None and ref.is_empty()):
                raise WigError(f"no {kind} embeddings for protocol {protocol}")
            joined = manifest.join(gen.select("path", "sha256", "embedding"), on="path", how="left", suffix="_emb")
            if joined["embedding"].null_count():
                raise WigError(f"{joined['embedding'].null_count()} image(s) of the set have no {kind} embedding")
            if (joined["sha256"] != joined["sha256_emb"]).any():
                raise WigError(f"{kind} embeddings are of other images than the manifest's (sha256 differs)")
            generated[kind] = _matrix(joined)
            if ref is not None:
                references[kind] = _matrix(ref)
        columns = []
        for m in chosen:
            if m.reads == "texts":
                texts = embeddings[f"{m.encoder}_texts"]
                by_index = dict(zip(texts["index"].to_list(), _matrix(texts)))
                other = np.stack([by_index[i] for i in manifest["prompt_index"].to_list()])
            elif m.reads == "samples":  # an image's group: its prompt at its grid point, across seeds
                keys = manifest.select(*point_keys(), "prompt_index").rows()
                ids = {key: i for i, key in enumerate(dict.fromkeys(keys))}
                other = np.array([ids[key] for key in keys], dtype=np.int64)
            else:
                other = references[m.encoder]
            columns.append(pl.Series(m.name, m.score(generated[m.encoder], other)))
        rows.append(
            manifest.select("path", "prompt_index", "seed", *point_keys()).with_columns(
                pl.lit(concept).alias("concept"), pl.lit(protocol).alias("protocol"), *columns
            )
        )
    names = [m.name for m in chosen]
    return pl.concat(rows).select("concept", "path", "prompt_index", "seed", *point_keys(), "protocol", *names)


def pixel_scores(images, prompts: list[str], concept: str, metrics: Sequence[str]) -> dict[str, list[float]]:
    """The pixel metrics among ``metrics`` per image, each scoring function called once."""
    out: dict[str, list[float]] = {}
    chosen = [REGISTRY[m] for m in metrics if REGISTRY[m].reads == "pixels"]
    for score in dict.fromkeys(m.score for m in chosen):
        values = score(images, prompts, concept)
        out |= {m.name: list(values[m.name]) for m in chosen if m.score is score}
    return out


def unscored_rows(manifest: pl.DataFrame, concept: str) -> pl.DataFrame:
    """The rows of a set no encoder scores (pixel metrics only), under protocol ``oracle``, as the
    synthetic world's tables name it."""
    return (
        manifest.select("path", "prompt_index", "seed", *point_keys())
        .with_columns(pl.lit(concept).alias("concept"), pl.lit("oracle").alias("protocol"))
        .select("concept", "path", "prompt_index", "seed", *point_keys(), "protocol")
    )


def metrics_of(scores: pl.DataFrame) -> tuple[str, ...]:
    """The metric columns of a score frame: the registered metrics it holds, in registry order."""
    return tuple(m for m in REGISTRY if m in scores.columns)


def score_job(
    samples,
    concept: str,
    embeddings: dict,
    encoders: dict,
    out,
    metrics: Sequence[str] | None = None,
    finetune_seed: int = 0,
) -> pl.DataFrame:
    """Score one generation job from its files and write the scores to ``out`` (Parquet).

    ``metrics``: the registered metrics to score (default: every encoder metric of ``encoders``).
    ``embeddings`` maps each encoder kind they read to the set's embedding file, ``{kind}_refs``
    to the concept's references and ``{kind}_texts`` to its prompt texts; ``encoders`` maps a kind
    to the encoder id its files must carry. Every file is checked (encoder, width, the images of
    the manifest) before anything is written. Pixel metrics give one value per image, the same in
    every protocol's row. ``finetune_seed`` is the seed of the fine-tune run the images were sampled with.
    """
    from pathlib import Path

    from wig.atomic import replace_file, tmp_path
    from wig.evaluation.embeddings import read_embeddings

    metrics = list(metrics) if metrics is not None else enabled_metrics(encoders, render=False)
    unknown = [m for m in metrics if m not in REGISTRY]
    if unknown or not metrics:
        raise WigError(f"metrics {unknown or '[]'}: score with some of {', '.join(REGISTRY)}")
    manifest = pl.read_parquet(Path(samples) / "manifest.parquet")
    kinds = list(dict.fromkeys(REGISTRY[m].encoder for m in metrics if REGISTRY[m].encoder is not None))
    if kinds:
        frames = {}
        for kind in kinds:
            if kind not in encoders:
                raise WigError(
                    f"metric(s) {[m for m in metrics if REGISTRY[m].encoder == kind]} need the {kind} encoder"
                )
            # the width is the concept's references' (or, for a kind no metric reads them of, the set's)
            width = None
            if any(REGISTRY[m].reads == "references" and REGISTRY[m].encoder == kind for m in metrics):
                frames[f"{kind}_refs"] = read_embeddings(embeddings[f"{kind}_refs"], encoders[kind])
                width = frames[f"{kind}_refs"].schema["embedding"].size
            frames[kind] = read_embeddings(embeddings[kind], encoders[kind], width)
            width = frames[kind].schema["embedding"].size
            if any(REGISTRY[m].reads == "texts" and REGISTRY[m].encoder == kind for m in metrics):
                frames[f"{kind}_texts"] = read_embeddings(embeddings[f"{kind}_texts"], encoders[kind], width)
        scores = score_samples(manifest, concept, frames, metrics)
    else:
        scores = unscored_rows(manifest, concept)
    scores = scores.with_columns(pl.lit(finetune_seed, dtype=pl.Int64).alias("finetune_seed"))
    if any(REGISTRY[m].reads == "pixels" for m in metrics):
        from PIL import Image

        images = [Image.open(Path(samples) / p).convert("RGB") for p in manifest["path"]]
        pixel = pixel_scores(images, manifest["prompt"].to_list(), concept, metrics)
        paths = manifest["path"].to_list()
        scores = scores.with_columns(
            pl.col("path").replace_strict(dict(zip(paths, values)), return_dtype=pl.Float64).alias(name)
            for name, values in pixel.items()
        )
    scores.write_parquet(tmp_path(out))
    replace_file(tmp_path(out), out)
    return scores


def _cube(frame: pl.DataFrame, value: str) -> np.ndarray:
    """(concepts, fine-tune seeds, prompts, sampling seeds) array of per-image values, NaN-padded
    where a concept has fewer of any; within a concept every (fine-tune seed, prompt, seed) must be
    there once."""
    frame = frame.sort("concept", "finetune_seed", "prompt_index", "seed")
    parts = frame.partition_by("concept", maintain_order=True)
    shapes = [tuple(p[k].n_unique() for k in ("finetune_seed", "prompt_index", "seed")) for p in parts]
    out = np.full((len(parts), *(max(s[i] for s in shapes) for i in range(3))), np.nan)
    for c, (part, (n_f, n_p, n_s)) in enumerate(zip(parts, shapes)):
        if len(part) != n_f * n_p * n_s or part.select("finetune_seed", "prompt_index", "seed").is_duplicated().any():
            raise WigError(
                f"concept {part['concept'][0]}: {len(part)} images for {n_f} fine-tune seeds × {n_p} prompts × "
                f"{n_s} seeds — every prompt needs every (fine-tune seed, seed) replicate once"
            )
        out[c, :n_f, :n_p, :n_s] = part[value].to_numpy().reshape(n_f, n_p, n_s)
    return out


def _cell(m: np.ndarray) -> float:
    return float(np.nanmean(np.nanmean(m, axis=(1, 2, 3))))


def _bootstrap(m: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile interval of the cell under the nested bootstrap: concepts with replacement;
    within each drawn concept, independently, its fine-tune seeds, its prompts and its sampling
    seeds (each with replacement, among its own)."""
    n_c = m.shape[0]
    sizes = np.stack(
        [(~np.isnan(m)).any(axis=tuple(a for a in (1, 2, 3) if a != axis)).sum(axis=1) for axis in (1, 2, 3)], axis=1
    )  # (concepts, 3): its fine-tune seeds, prompts, seeds
    c_idx = rng.integers(0, n_c, size=(n_boot, n_c))
    own = sizes[c_idx]  # (n_boot, n_c, 3)
    idx = [(rng.random((n_boot, n_c, m.shape[a + 1])) * own[..., a, None]).astype(int) for a in range(3)]
    valid = [np.arange(m.shape[a + 1]) < own[..., a, None] for a in range(3)]
    draws = m[
        c_idx[..., None, None, None],
        idx[0][..., :, None, None],
        idx[1][..., None, :, None],
        idx[2][..., None, None, :],
    ]
    mask = valid[0][..., :, None, None] & valid[1][..., None, :, None] & valid[2][..., None, None, :]
    per_concept = np.where(mask, draws, 0.0).sum(axis=(2, 3, 4)) / own.prod(axis=-1)
    lo, hi = np.percentile(per_concept.mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def metric_value(scores: pl.DataFrame, metric: str) -> float:
    """One grid point's table cell of ``metric`` (no CI): the mean over concepts of the mean over
    prompts of the per-prompt means, as `aggregate` computes it."""
    return _cell(_cube(scores, metric))


def aggregate(scores: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """One row per (protocol, grid point): DINO, CLIP-I, CLIP-T with 95 % CIs and n_images."""
    rng = np.random.default_rng(seed)
    rows = []
    keys = point_keys()
    for key, group in scores.group_by("protocol", *keys, maintain_order=True):
        row = dict(zip(("protocol", *keys), key))
        for metric in metrics_of(scores):
            m = _cube(group, metric)
            row[metric] = _cell(m)
            row[f"{metric}_lo"], row[f"{metric}_hi"] = _bootstrap(m, n_boot, rng)
        row["n_concepts"] = group["concept"].n_unique()
        row["n_finetune_seeds"] = group["finetune_seed"].n_unique()
        row["n_images"] = len(group)
        rows.append(row)
    return pl.DataFrame(rows).sort("protocol", "method", "scale", *(k for k in keys if k not in ("method", "scale")))


def reference_points(points: pl.DataFrame) -> dict[tuple, tuple]:
    """For every grid point, the baseline point it is compared with (`GuidanceMethod.reference`:
    CFG at its λ; InstructPix2Pix's guidance at ω = 1) if the grid has it, else the grid's first
    baseline point."""
    made = {tuple(p): point_of(dict(zip(points.columns, p))) for p in points.iter_rows()}
    baselines = {m.key: p for p, m in made.items() if m.is_baseline}
    if not baselines:
        raise WigError(
            "paired comparisons need a baseline point in the guidance grid: "
            f"a {baseline().name} point, or a point of a method that is its own baseline there"
        )
    first = next(iter(baselines.values()))
    return {p: baselines.get(getattr(m.reference(), "key", None), first) for p, m in made.items()}


def _is_baseline(frame: pl.DataFrame) -> pl.Series:
    """Per row: whether its grid point is a baseline (`GuidanceMethod.is_baseline`)."""
    keys = point_keys()
    return pl.Series(
        [point_of(dict(zip(keys, r))).is_baseline for r in frame.select(keys).iter_rows()], dtype=pl.Boolean
    )


def paired_with_reference(frame: pl.DataFrame, point: tuple, ref: tuple) -> pl.DataFrame:
    """A grid point's rows joined to its reference point's on the same (concept, fine-tune seed,
    prompt, seed) noise (the reference's columns suffixed ``_cfg``); refused unless they cover the
    same images."""
    keys = point_keys()
    a = frame.filter(pl.all_horizontal([pl.col(k).eq_missing(v) for k, v in zip(keys, point)]))
    b = frame.filter(pl.all_horizontal([pl.col(k).eq_missing(v) for k, v in zip(keys, ref)]))
    pair = a.join(b, on=list(IMAGE_KEYS), suffix="_cfg")
    if len(pair) != len(a) or len(pair) != len(b):
        raise WigError(f"{dict(zip(keys, point))} and its CFG reference cover different images")
    return pair


def difference_cube(pair: pl.DataFrame, metric: str) -> np.ndarray:
    """`_cube` of the per-image differences point − reference of a `paired_with_reference` frame."""
    return _cube(pair.select(*IMAGE_KEYS, (pl.col(metric) - pl.col(f"{metric}_cfg")).alias("d")), "d")


def paired_vs_cfg(scores: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Mean difference (method − CFG) per metric on the same (concept, fine-tune seed, prompt, seed)
    noise, with the bootstrap CI; one row per (protocol, non-CFG grid point)."""
    rng = np.random.default_rng(seed)
    keys = point_keys()
    points = scores.select(keys).unique(maintain_order=True)
    refs = reference_points(points)
    rows = []
    for protocol in scores["protocol"].unique(maintain_order=True).to_list():
        frame = scores.filter(pl.col("protocol") == protocol)
        for point, ref in refs.items():
            if point == ref:
                continue
            pair = paired_with_reference(frame, point, ref)
            row = {"protocol": protocol, **dict(zip(keys, point)), "cfg_scale": ref[keys.index("scale")]}
            for metric in metrics_of(scores):
                m = difference_cube(pair, metric)
                row[f"d_{metric}"] = _cell(m)
                row[f"d_{metric}_lo"], row[f"d_{metric}_hi"] = _bootstrap(m, n_boot, rng)
            row["n_images"] = len(pair)
            rows.append(row)
    return pl.DataFrame(rows)


def finetune_table(
    tables: Mapping[tuple[str, str], pl.DataFrame],
    settings: Mapping[tuple[str, str], dict],
    families: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """Every (model, fine-tune)'s metrics table in one, grouped by what tells the fine-tunes apart:
    ``model`` (and its ``family``, from ``families`` by model), ``finetune``, then each setting
    whose value differs between fine-tunes (e.g. ``rank`` in a rank ablation, ``steps`` in a steps
    one; ``method`` when methods differ), then the table's columns. ``settings``: each fine-tune's
    `PersonalizationMethod.settings()`."""
    names = list(dict.fromkeys(k for s in settings.values() for k in s))
    differing = [k for k in names if len({json.dumps(s.get(k), sort_keys=True) for s in settings.values()}) > 1]
    frames = []
    for (model, finetune), table in tables.items():
        own = settings[(model, finetune)]
        values = {k: json.dumps(own.get(k)) if isinstance(own.get(k), (list, dict)) else own.get(k) for k in differing}
        frames.append(
            table.select(
                pl.lit(model).alias("model"),
                *([pl.lit(families[model]).alias("family")] if families is not None else []),
                *(pl.lit(v).alias(f"finetune_{k}") for k, v in values.items()),
                pl.lit(finetune).alias("finetune"),
                pl.all(),
            )
        )
    order = ["model", *(f"finetune_{k}" for k in differing), "finetune", "protocol", "method", "scale"]
    return pl.concat(frames, how="diagonal_relaxed").sort(order, maintain_order=True)


def to_markdown(frame: pl.DataFrame, digits: int = 4) -> str:
    """A GitHub-style table; floats rounded to ``digits``."""

    def fmt(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines) + "\n"


def fidelity_metrics(scores_or_table: pl.DataFrame) -> tuple[str | None, str]:
    """(subject, text) fidelity metrics to compare methods on: the first of each side the table
    holds, pixel metrics first (the synthetic world's oracle is exact, its tiny encoders random),
    else in registry order (DINO, CLIP-T). Subject is None in a prompt set's tables (no references)."""
    present = sorted(
        (m for m in REGISTRY.values() if m.name in scores_or_table.columns), key=lambda m: m.reads != "pixels"
    )
    subject, text = (next((m.name for m in present if m.fidelity == side), None) for side in ("subject", "text"))
    if text is None:
        raise WigError(f"no text fidelity metric among {scores_or_table.columns}")
    return subject, text


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties averaged."""
    return pl.Series(x).rank("average").to_numpy().astype(np.float64)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's on tie-averaged ranks); NaN when either is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def metric_agreement(scores: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """How well each embedding metric of subject fidelity tracks the ground truth (a metric that
    says ``ground_truth``: the synthetic world's oracle subject fidelity): Spearman's ρ between the
    metric and it over the grid points (the table's cells: does it rank methods and settings as
    the oracle does?) and over single images, per protocol; a lower-is-better metric (a distance)
    is negated first, so +1 is perfect agreement for every metric. No rows without the ground
    truth or without another subject metric."""
    held = metrics_of(table)
    others = [m for m in held if REGISTRY[m].fidelity == "subject" and REGISTRY[m].reads != "pixels"]
    truths = [m for m in held if REGISTRY[m].fidelity == "subject" and REGISTRY[m].ground_truth]
    rows = []
    if truths:
        (truth,) = truths
        for protocol in table["protocol"].unique(maintain_order=True).to_list():
            t = table.filter(pl.col("protocol") == protocol)
            sc = scores.filter(pl.col("protocol") == protocol)
            for m in others:
                sign = 1.0 if REGISTRY[m].higher else -1.0
                rows.append(
                    {
                        "protocol": protocol,
                        "metric": m,
                        "n_points": len(t),
                        "spearman_points": spearman(sign * t[m].to_numpy(), t[truth].to_numpy()),
                        "n_images": len(sc),
                        "spearman_images": spearman(sign * sc[m].to_numpy(), sc[truth].to_numpy()),
                    }
                )
    schema = {
        "protocol": pl.String,
        "metric": pl.String,
        "n_points": pl.Int64,
        "spearman_points": pl.Float64,
        "n_images": pl.Int64,
        "spearman_images": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def at_matched_text(table: pl.DataFrame) -> pl.DataFrame:
    """Subject fidelity of each method at the text fidelity CFG reaches at each of its λ.

    A method's λ sweep is a curve in the (text, subject) plane; where it passes CFG's text
    fidelity (linear interpolation between adjacent λ, the smallest such λ), its subject fidelity
    there is compared with CFG's. Rows: protocol, method, ω, λ_ag, weak, CFG's λ, the matched
    text fidelity, the method's interpolated λ, both subject fidelities and their difference
    (method − CFG: better is negative for a lower-is-better metric such as DreamSim); null where
    the method's sweep never reaches that text fidelity.
    """
    subject, text = fidelity_metrics(table)
    curve_keys = tuple(k for k in point_keys() if k != "scale")
    if subject is None:  # a prompt set: no subject fidelity to match (the table keeps its columns, no rows)
        keys = {k: v for k, v in point_schema().items() if k != "scale"}
        return pl.DataFrame(schema={"protocol": pl.String, **keys, "cfg_scale": pl.Float64, text: pl.Float64})
    rows = []
    guided = [name for name, cls in METHODS.items() if cls.guided]
    for protocol in table["protocol"].unique(maintain_order=True).to_list():
        t = table.filter(pl.col("protocol") == protocol)
        t = t.with_columns(_is_baseline(t).alias("_baseline"))
        cfg = t.filter(pl.col("_baseline")).sort("scale")
        swept = t.filter(pl.col("method").is_in(guided) & ~pl.col("_baseline"))
        for key, curve in swept.sort("scale").group_by(curve_keys, maintain_order=True):
            lam, x, y = (curve[c].to_numpy() for c in ("scale", text, subject))
            for ref in cfg.iter_rows(named=True):
                target = ref[text]
                hit = None
                for i in range(len(x) - 1):
                    lo, hi = sorted((x[i], x[i + 1]))
                    if lo <= target <= hi:
                        w = 0.0 if x[i + 1] == x[i] else (target - x[i]) / (x[i + 1] - x[i])
                        hit = (lam[i] + w * (lam[i + 1] - lam[i]), y[i] + w * (y[i + 1] - y[i]))
                        break
                if hit is None and len(x) == 1 and x[0] == target:
                    hit = (lam[0], y[0])
                rows.append(
                    {
                        "protocol": protocol,
                        **dict(zip(curve_keys, key)),
                        "cfg_scale": ref["scale"],
                        text: target,
                        "scale": hit and float(hit[0]),
                        f"{subject}_cfg": ref[subject],
                        subject: hit and float(hit[1]),
                        f"d_{subject}": hit and float(hit[1] - ref[subject]),
                    }
                )
    schema = {
        "protocol": pl.String,
        **{k: v for k, v in point_schema().items() if k != "scale"},
        "cfg_scale": pl.Float64,
        text: pl.Float64,
        "scale": pl.Float64,
        f"{subject}_cfg": pl.Float64,
        subject: pl.Float64,
        f"d_{subject}": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)
