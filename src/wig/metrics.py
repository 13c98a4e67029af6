"""DINO, CLIP-I and CLIP-T (and, for the synthetic world, the oracle's pixel metrics): per-image
scores, tables with bootstrap CIs, paired comparisons.

Per image i of a concept with reference embeddings r_1…r_R:
    DINO_i   = mean_r cos(dino(r), dino(i))          (likewise CLIP-I with CLIP image embeddings)
    CLIP-T_i = cos(clip(i), clip_text(prompt of i))
so a prompt's score — the mean over its images — is DreamMatcher's all-pairs mean of cosines.
A table cell is the mean over concepts of the mean over prompts of the per-prompt means
(DreamMatcher's order); with equally many images per prompt and prompts per concept this is
the plain mean of the per-image scores.

Confidence intervals: a percentile bootstrap over everything that was drawn at random —
resample concepts with replacement, then, within each drawn concept, its prompts and its
*replicates* (a replicate = a LoRA seed × a sampling seed: a fine-tune and the noise of an
image) independently with replacement (the pigeonhole bootstrap of a crossed prompt × replicate
design), recompute the cell; 95 % interval of ``n_boot`` draws. Paired comparisons apply the same
bootstrap to per-image differences between a method and CFG on the same (concept, LoRA,
prompt, seed) noise.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from wig.errors import WigError
from wig.guidance import REGISTRY, baseline, point_schema

METRICS = ("dino", "clip_i", "clip_t")
ORACLE_METRICS = ("oracle_text", "oracle_subject")  # the synthetic world's pixel metrics (wig.oracle)


def point_keys() -> tuple[str, ...]:
    """A grid point's columns: method and every registered guidance parameter (wig.guidance), read
    when used, so a method registered by a plug-in has its table rows too."""
    return tuple(point_schema())


IMAGE_KEYS = ("concept", "lora_seed", "prompt_index", "seed")
REPLICATE_KEYS = ("lora_seed", "seed")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def subject_fidelity(references: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Per generated image: mean cosine to every reference (DINO or CLIP-I)."""
    return (_unit(generated) @ _unit(references).T).mean(axis=1)


def text_fidelity(generated: np.ndarray, texts: np.ndarray) -> np.ndarray:
    """Per generated image: cosine to its own prompt's text embedding (CLIP-T)."""
    return (_unit(generated) * _unit(texts)).sum(axis=1)


def _matrix(frame: pl.DataFrame) -> np.ndarray:
    return np.stack(frame["embedding"].to_numpy())


def score_samples(
    manifest: pl.DataFrame,
    concept: str,
    dino: pl.DataFrame,
    clip: pl.DataFrame,
    dino_refs: pl.DataFrame,
    clip_refs: pl.DataFrame,
    texts: pl.DataFrame,
) -> pl.DataFrame:
    """Per-image scores of one sample set, one row per (image, protocol).

    ``dino``/``clip`` are the set's embeddings, ``*_refs`` the concept's reference embeddings,
    ``texts`` the CLIP text embeddings indexed by prompt index.
    """
    rows = []
    text_by_index = dict(zip(texts["index"].to_list(), _matrix(texts)))
    for protocol in sorted(set(dino["protocol"].to_list())):
        frames = {}
        for name, emb, refs in (("dino", dino, dino_refs), ("clip", clip, clip_refs)):
            gen = emb.filter(pl.col("protocol") == protocol)
            ref = refs.filter(pl.col("protocol") == protocol)
            if gen.is_empty() or ref.is_empty():
                raise WigError(f"no {name} embeddings for protocol {protocol}")
            joined = manifest.join(gen.select("path", "sha256", "embedding"), on="path", how="left", suffix="_emb")
            if joined["embedding"].null_count():
                raise WigError(f"{joined['embedding'].null_count()} image(s) of the set have no {name} embedding")
            if (joined["sha256"] != joined["sha256_emb"]).any():
                raise WigError(f"{name} embeddings are of other images than the manifest's (sha256 differs)")
            frames[name] = (_matrix(joined), _matrix(ref))
        clip_gen = frames["clip"][0]
        prompt_text = np.stack([text_by_index[i] for i in manifest["prompt_index"].to_list()])
        rows.append(
            manifest.select("path", "prompt_index", "seed", *point_keys()).with_columns(
                pl.lit(concept).alias("concept"),
                pl.lit(protocol).alias("protocol"),
                pl.Series("dino", subject_fidelity(frames["dino"][1], frames["dino"][0])),
                pl.Series("clip_i", subject_fidelity(frames["clip"][1], clip_gen)),
                pl.Series("clip_t", text_fidelity(clip_gen, prompt_text)),
            )
        )
    return pl.concat(rows).select("concept", "path", "prompt_index", "seed", *point_keys(), "protocol", *METRICS)


def oracle_rows(manifest: pl.DataFrame, concept: str) -> pl.DataFrame:
    """The rows of a set scored by the oracle alone (no encoders): protocol ``oracle``."""
    return (
        manifest.select("path", "prompt_index", "seed", *point_keys())
        .with_columns(pl.lit(concept).alias("concept"), pl.lit("oracle").alias("protocol"))
        .select("concept", "path", "prompt_index", "seed", *point_keys(), "protocol")
    )


def metrics_of(scores: pl.DataFrame) -> tuple[str, ...]:
    """The metric columns of a score frame: the encoders' and the oracle's, those present."""
    return tuple(m for m in METRICS + ORACLE_METRICS if m in scores.columns)


def score_job(
    samples, concept: str, embeddings: dict, encoders: dict, out, oracle: bool = False, lora_seed: int = 0
) -> pl.DataFrame:
    """Score one generation job from its files and write the scores to ``out`` (Parquet).

    ``embeddings`` maps dino, clip, dino_refs, clip_refs, texts to files; ``encoders`` maps dino
    and clip to the encoder ids the files must carry (both empty: no encoder metrics, the oracle
    alone). Every file is checked (encoder, width, the images of the manifest) before anything is
    written. ``oracle`` adds the synthetic world's pixel metrics (one value per image, the same in
    every protocol's row). ``lora_seed`` is the seed of the LoRA the images were sampled with.
    """
    from pathlib import Path

    from wig.atomic import replace_file, tmp_path
    from wig.embeddings import read_embeddings

    manifest = pl.read_parquet(Path(samples) / "manifest.parquet")
    if not encoders and not oracle:
        raise WigError("nothing to score with: no encoders and no oracle")
    if encoders:
        dino_refs = read_embeddings(embeddings["dino_refs"], encoders["dino"])
        clip_refs = read_embeddings(embeddings["clip_refs"], encoders["clip"])
        dims = {"dino": dino_refs.schema["embedding"].size, "clip": clip_refs.schema["embedding"].size}
        scores = score_samples(
            manifest,
            concept,
            read_embeddings(embeddings["dino"], encoders["dino"], dims["dino"]),
            read_embeddings(embeddings["clip"], encoders["clip"], dims["clip"]),
            dino_refs,
            clip_refs,
            read_embeddings(embeddings["texts"], encoders["clip"], dims["clip"]),
        )
    else:
        scores = oracle_rows(manifest, concept)
    scores = scores.with_columns(pl.lit(lora_seed, dtype=pl.Int64).alias("lora_seed"))
    if oracle:
        from PIL import Image

        from wig.oracle import score_images

        images = [Image.open(Path(samples) / p).convert("RGB") for p in manifest["path"]]
        pixel = score_images(images, manifest["prompt"].to_list(), concept)
        paths = manifest["path"].to_list()
        scores = scores.with_columns(
            pl.col("path").replace_strict(dict(zip(paths, values)), return_dtype=pl.Float64).alias(name)
            for name, values in pixel.items()
        )
    scores.write_parquet(tmp_path(out))
    replace_file(tmp_path(out), out)
    return scores


def _cube(frame: pl.DataFrame, value: str) -> np.ndarray:
    """(concepts, prompts, replicates) array of per-image values, NaN-padded where a concept has
    fewer prompts or replicates; within a concept every prompt must have every replicate."""
    frame = frame.sort("concept", "prompt_index", *REPLICATE_KEYS)
    parts = frame.partition_by("concept", maintain_order=True)
    shapes = [(p["prompt_index"].n_unique(), p.select(REPLICATE_KEYS).n_unique()) for p in parts]
    out = np.full((len(parts), max(s[0] for s in shapes), max(s[1] for s in shapes)), np.nan)
    for c, (part, (n_p, n_r)) in enumerate(zip(parts, shapes)):
        if len(part) != n_p * n_r:
            raise WigError(
                f"concept {part['concept'][0]}: {len(part)} images for {n_p} prompts × {n_r} "
                f"(LoRA seed, seed) replicates — every prompt needs every replicate once"
            )
        out[c, :n_p, :n_r] = part[value].to_numpy().reshape(n_p, n_r)
    return out


def _cell(m: np.ndarray) -> float:
    return float(np.nanmean(np.nanmean(m, axis=(1, 2))))


def _bootstrap(m: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    n_c, n_p, n_r = m.shape
    prompts = (~np.isnan(m[:, :, 0])).sum(axis=1)
    reps = (~np.isnan(m[:, 0, :])).sum(axis=1)
    c_idx = rng.integers(0, n_c, size=(n_boot, n_c))
    # prompts and replicates resampled independently within each drawn concept, among its own
    p_idx = (rng.random((n_boot, n_c, n_p)) * prompts[c_idx][..., None]).astype(int)
    r_idx = (rng.random((n_boot, n_c, n_r)) * reps[c_idx][..., None]).astype(int)
    draws = m[c_idx[..., None, None], p_idx[..., :, None], r_idx[..., None, :]]
    valid = (np.arange(n_p) < prompts[c_idx][..., None])[..., :, None] & (np.arange(n_r) < reps[c_idx][..., None])[
        ..., None, :
    ]
    per_concept = np.where(valid, draws, 0.0).sum(axis=(2, 3)) / (prompts * reps)[c_idx]
    lo, hi = np.percentile(per_concept.mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


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
        row["n_lora_seeds"] = group["lora_seed"].n_unique()
        row["n_images"] = len(group)
        rows.append(row)
    return pl.DataFrame(rows).sort("protocol", "method", "scale", *(k for k in keys if k not in ("method", "scale")))


def reference_points(points: pl.DataFrame) -> dict[tuple, tuple]:
    """For every grid point, the baseline point (CFG, `wig.guidance.baseline`) it is compared with:
    the baseline at the same λ if the grid has it, else the grid's first baseline point."""
    cfg = points.filter(pl.col("method") == baseline().name)
    if cfg.is_empty():
        raise WigError(f"paired comparisons need a {baseline().name} point in the guidance grid")
    first = tuple(cfg.row(0))
    at = points.columns.index("scale")
    by_scale = {row[at]: tuple(row) for row in cfg.iter_rows()}
    return {tuple(p): by_scale.get(p[at], first) for p in points.iter_rows()}


def paired_vs_cfg(scores: pl.DataFrame, n_boot: int = 1000, seed: int = 0) -> pl.DataFrame:
    """Mean difference (method − CFG) per metric on the same (concept, LoRA seed, prompt, seed)
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
            a = frame.filter(pl.all_horizontal([pl.col(k) == v for k, v in zip(keys, point)]))
            b = frame.filter(pl.all_horizontal([pl.col(k) == v for k, v in zip(keys, ref)]))
            pair = a.join(b, on=list(IMAGE_KEYS), suffix="_cfg")
            if len(pair) != len(a) or len(pair) != len(b):
                raise WigError(f"{dict(zip(keys, point))} and its CFG reference cover different images")
            row = {"protocol": protocol, **dict(zip(keys, point)), "cfg_scale": ref[keys.index("scale")]}
            for metric in metrics_of(scores):
                diff = pair.select(*IMAGE_KEYS, (pl.col(metric) - pl.col(f"{metric}_cfg")).alias("d"))
                m = _cube(diff, "d")
                row[f"d_{metric}"] = _cell(m)
                row[f"d_{metric}_lo"], row[f"d_{metric}_hi"] = _bootstrap(m, n_boot, rng)
            row["n_images"] = len(pair)
            rows.append(row)
    return pl.DataFrame(rows)


def to_markdown(frame: pl.DataFrame, digits: int = 4) -> str:
    """A GitHub-style table; floats rounded to ``digits``."""

    def fmt(v):
        return f"{v:.{digits}f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines) + "\n"


def fidelity_pair(scores_or_table: pl.DataFrame) -> tuple[str, str]:
    """(subject, text) fidelity metrics to compare methods on: the oracle's where a table has them
    (the synthetic world: exact, and its tiny encoders are random), else DINO and CLIP-T."""
    if "oracle_subject" in scores_or_table.columns:
        return "oracle_subject", "oracle_text"
    return "dino", "clip_t"


def at_matched_text(table: pl.DataFrame) -> pl.DataFrame:
    """Subject fidelity of each method at the text fidelity CFG reaches at each of its λ.

    A method's λ sweep is a curve in the (text, subject) plane; where it passes CFG's text
    fidelity (linear interpolation between adjacent λ, the smallest such λ), its subject fidelity
    there is compared with CFG's. Rows: protocol, method, ω, λ_ag, weak, CFG's λ, the matched
    text fidelity, the method's interpolated λ, both subject fidelities and their difference;
    null where the method's sweep never reaches that text fidelity.
    """
    subject, text = fidelity_pair(table)
    rows = []
    curve_keys = tuple(k for k in point_keys() if k != "scale")
    swept = [name for name, cls in REGISTRY.items() if cls.guided and not cls.baseline]
    for protocol in table["protocol"].unique(maintain_order=True).to_list():
        t = table.filter(pl.col("protocol") == protocol)
        cfg = t.filter(pl.col("method") == baseline().name).sort("scale")
        for key, curve in (
            t.filter(pl.col("method").is_in(swept)).sort("scale").group_by(curve_keys, maintain_order=True)
        ):
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
