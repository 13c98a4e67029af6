"""The paired contrasts of a synthetic-world study over subgroups of its subjects: all subjects, the
subjects whose LoRA learned them (rule learning: unguided subject fidelity ≥ a bar on the training
captions), and by pattern and by shape — the pre-registered secondary analyses (d) and (e) of the
docs/studies.md's run at ±0.02. Same CIs as the tables (`wig.evaluation.metrics.paired_vs_cfg`: the nested
bootstrap over subjects, LoRA seeds, prompts and seeds).

    python tools/subject_contrasts.py results/synthetic-subjects/subjects-noprior/db-lora/tables --bootstrap 2000
"""

import argparse
from pathlib import Path

import polars as pl

from wig.evaluation.metrics import paired_vs_cfg, to_markdown
from wig.synthetic.learning import ARMS
from wig.synthetic.world import subject_named

COLUMNS = ["method", "scale", "omega", "d_oracle_subject", "d_oracle_subject_lo", "d_oracle_subject_hi"]
COLUMNS += ["d_oracle_text", "d_oracle_text_lo", "d_oracle_text_hi", "n_images"]


def contrasts(scores: pl.DataFrame, groups: dict[str, list[str]], n_boot: int, seed: int) -> pl.DataFrame:
    """One block of `paired_vs_cfg` rows per named group of concepts (``group``, ``n_subjects``)."""
    frames = []
    for name, concepts in groups.items():
        table = paired_vs_cfg(scores.filter(pl.col("concept").is_in(concepts)), n_boot=n_boot, seed=seed)
        frames.append(
            table.select([c for c in COLUMNS if c in table.columns]).with_columns(
                pl.lit(name).alias("group"), pl.lit(len(concepts)).alias("n_subjects")
            )
        )
    out = pl.concat(frames, how="diagonal")
    return out.select("group", "n_subjects", *[c for c in out.columns if c not in ("group", "n_subjects")])


def subject_groups(scores: pl.DataFrame, learning: pl.DataFrame, bar: float) -> dict[str, list[str]]:
    """All scored subjects; those whose unguided images on the training captions (rule learning's
    per-image table) reach ``bar`` subject fidelity on average; each pattern's; each shape's."""
    concepts = sorted(scores["concept"].unique())
    learned = (
        learning.filter(pl.col("arm") == ARMS[0])
        .group_by("concept")
        .agg(pl.col("subject").mean())
        .filter(pl.col("subject") >= bar)["concept"]
        .to_list()
    )
    groups = {"all": concepts, f"learned (unguided ≥ {bar})": sorted(set(learned) & set(concepts))}
    for attribute in ("pattern", "shape"):
        for value in sorted({getattr(subject_named(c), attribute) for c in concepts}):
            groups[f"{attribute} {value}"] = [c for c in concepts if getattr(subject_named(c), attribute) == value]
    return groups


def subject_differences(scores: pl.DataFrame, point: dict) -> pl.DataFrame:
    """Per subject: the mean paired difference of ``point`` (e.g. PG ω 0 at λ 4.5) to CFG at its λ,
    in oracle subject and text fidelity, over the subject's LoRA seeds, prompts and seeds."""
    keys = ["concept", "finetune_seed", "prompt_index", "seed"]
    cfg = scores.filter((pl.col("method") == "cfg") & (pl.col("scale") == point["scale"]))
    mine = scores.filter(pl.all_horizontal([pl.col(k) == v for k, v in point.items()]))
    pair = mine.join(cfg, on=keys, suffix="_cfg")
    return (
        pair.group_by("concept")
        .agg(
            (pl.col("oracle_subject") - pl.col("oracle_subject_cfg")).mean().alias("d_subject"),
            (pl.col("oracle_text") - pl.col("oracle_text_cfg")).mean().alias("d_text"),
        )
        .sort("concept")
    )


def figure(per_subject: dict[str, pl.DataFrame], out: Path) -> None:
    """Histograms of the per-subject differences, subject fidelity beside text fidelity, one
    series per point: how much PG's effect varies from subject to subject."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    for ax, column, title in zip(axes, ("d_subject", "d_text"), ("oracle subject fidelity", "oracle text fidelity")):
        for label, frame in per_subject.items():
            ax.hist(frame[column].to_numpy(), bins=24, range=(-0.6, 0.6), alpha=0.55, label=label)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel(f"{title}: point − CFG, per subject")
        ax.set_ylabel("subjects")
    axes[0].legend(frameon=False)
    fig.savefig(out, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", help="a (model, fine-tune)'s tables folder: scores.parquet, learning_images.parquet")
    parser.add_argument("--bar", type=float, default=0.8, help="unguided subject fidelity a learned subject reaches")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, help="write the per-subject histograms of PG ω 0 and 0.5 here")
    args = parser.parse_args(argv)
    tables = Path(args.tables)
    scores = pl.read_parquet(tables / "scores.parquet")
    groups = subject_groups(scores, pl.read_parquet(tables / "learning_images.parquet"), args.bar)
    print(to_markdown(contrasts(scores, groups, args.bootstrap, args.seed), digits=3))
    if args.figure:
        scale = float(scores.filter(pl.col("method") == "pg")["scale"].min())
        omegas = sorted(scores.filter(pl.col("method") == "pg")["omega"].unique())
        per_subject = {
            f"PG ω {w:g}": subject_differences(scores, {"method": "pg", "scale": scale, "omega": w}) for w in omegas
        }
        for label, frame in per_subject.items():
            d = frame["d_subject"]
            print(
                f"{label}: per-subject subject-fidelity difference, {int((d > 0).sum())} of {len(d)} above 0, "
                f"sd {d.std():.3f}"
            )
        figure(per_subject, args.figure)


if __name__ == "__main__":
    main()
