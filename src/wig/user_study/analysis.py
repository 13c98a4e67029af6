"""Table 3 from the votes: shares with uncertainty, pairwise win rates, attention checks.

- `vote_frame`: the votes as a table (`VOTE_SCHEMA`), each choice resolved to its method through
  the study folder — the Parquet export.
- `rater_table`: per rater, answers given, attention-check consistency (the share of repeated
  questions answered as the first time: the same method's image, or undecided both times) and whether
  the study's exclusion rule (``study.json``'s ``exclusion``, fixed in the config before any vote
  exists) excludes them.
- `share_table`: per entry × question, each method's share and "undecided" over the kept raters'
  first showings, averaged over raters as in the paper, with a 95 % percentile interval from a
  bootstrap over raters and sets crossed (raters resampled, and independently the sets, each
  replicate's shares recomputed); the repeats are not counted twice.
- `win_rates`: per entry × question, for each two methods, how often one was chosen over the
  other among the answers that chose either.
- `wig.user_study.strengths.strength_table`: the Bradley–Terry–Davidson strengths beside them.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import polars as pl

from wig.user_study.counts import choice_counts, counted, crossed_weights
from wig.user_study.design import UNDECIDED, UserStudy
from wig.user_study.strengths import TIE, strength_table

VOTE_SCHEMA = {
    "rater": pl.Int64,
    "set": pl.String,  # the set's opaque id
    "entry": pl.String,  # model/fine-tune
    "question": pl.String,  # subject | text
    "choice": pl.String,  # an image id of the set, or undecided
    "method": pl.String,  # the chosen image's method label, or undecided
    "position": pl.Int64,  # where the rater saw the chosen image (1 = first), null if undecided
    "attention": pl.Boolean,  # a repeat (attention check)
    "gold": pl.Boolean,  # a gold set (attention check with a known subject answer): its method is reference or decoy
    "original": pl.String,  # the set it counts as: itself, or the set it repeats
    "concept": pl.String,
    "prompt": pl.String,
    "seed": pl.Int64,
    "answered_at": pl.String,  # UTC, ISO 8601
}


def vote_frame(study: UserStudy, rows: Sequence[tuple]) -> pl.DataFrame:
    """`wig.user_study.votes.VoteStore.rows` as a `VOTE_SCHEMA` table."""
    out = []
    plans: dict[int, dict[str, list[str]]] = {}
    for rater, set_id, question, choice, answered_at in rows:
        shown = plans.setdefault(rater, dict(study.plan(rater)))
        s = study.sets[set_id]
        out.append(
            {
                "rater": rater,
                "set": set_id,
                "entry": s["entry"],
                "question": question,
                "choice": choice,
                "method": UNDECIDED if choice == UNDECIDED else s["images"][choice],
                "position": None if choice == UNDECIDED else shown[set_id].index(choice) + 1,
                "attention": s["repeat_of"] is not None,
                "gold": s.get("gold") is not None,
                "original": s["repeat_of"] or set_id,
                "concept": s["source"]["concept"],
                "prompt": s["source"]["prompt"],  # the model's (raters read it with the class noun)
                "seed": s["source"]["seed"],
                "answered_at": answered_at,
            }
        )
    return pl.DataFrame(out, schema=VOTE_SCHEMA)


def rater_table(votes: pl.DataFrame, study: UserStudy, raters: Sequence[int] = ()) -> pl.DataFrame:
    """Per rater (every rater who answered, and ``raters``): answers, attention checks answered
    both times, those answered alike, the consistency, gold sets answered and passed (their subject
    question answered with the reference photo; undecided fails), the share of undecided answers,
    and the exclusion rule's verdict."""
    rule = study.data["exclusion"]
    min_gold = rule.get("min_gold", 1.0)
    n_gold = sum(1 for s in study.sets.values() if s.get("gold"))
    gold = (
        votes.filter(pl.col("gold") & (pl.col("question") == "subject"))
        .group_by("rater")
        .agg(gold_answered=pl.len().cast(pl.Int64), gold_passed=(pl.col("method") == "reference").sum().cast(pl.Int64))
    )
    undecided = votes.group_by("rater").agg(undecided=(pl.col("method") == UNDECIDED).mean())
    expected = 2 * len(study.sets)  # every set of the plan, two questions each
    # alike: the same method (a repeat shows the set's images under fresh ids), or undecided both times
    first = votes.filter(~pl.col("attention")).select("rater", "original", "question", first="method")
    again = votes.filter(pl.col("attention")).select("rater", "original", "question", again="method")
    checks = first.join(again, on=["rater", "original", "question"])
    per_rater = checks.group_by("rater").agg(
        checks=pl.len(), agreed=(pl.col("first") == pl.col("again")).sum().cast(pl.Int64)
    )
    everyone = sorted(set(votes["rater"].to_list()) | set(raters))
    table = (
        pl.DataFrame({"rater": everyone}, schema={"rater": pl.Int64})
        .join(votes.group_by("rater").agg(answers=pl.len().cast(pl.Int64)), on="rater", how="left")
        .join(per_rater, on="rater", how="left")
        .join(gold, on="rater", how="left")
        .join(undecided, on="rater", how="left")
        .with_columns(pl.col("answers", "checks", "agreed", "gold_answered", "gold_passed").fill_null(0))
        .with_columns(
            consistency=pl.when(pl.col("checks") > 0).then(pl.col("agreed") / pl.col("checks")),
            complete=pl.col("answers") == expected,
        )
    )
    reasons = []
    for row in table.iter_rows(named=True):
        why = []
        if rule["complete"] and not row["complete"]:
            why.append(f"answered {row['answers']} of {expected}")
        if row["consistency"] is not None and row["consistency"] < rule["min_consistency"]:
            why.append(f"attention-check consistency {row['consistency']:.2f} < {rule['min_consistency']}")
        elif (
            row["consistency"] is None
            and rule["min_consistency"] > 0
            and any(s["repeat_of"] for s in study.sets.values())
        ):
            why.append("no attention check answered twice")
        if n_gold and row["gold_passed"] < min_gold * n_gold - 1e-9:
            why.append(f"gold sets passed {row['gold_passed']} of {n_gold} (at least {min_gold:g} asked)")
        reasons.append("; ".join(why) or None)
    return table.with_columns(excluded=pl.Series(reasons, dtype=pl.String).is_not_null(), reason=pl.Series(reasons))


def _crossed_bootstrap(counts: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Per replicate, the options' shares averaged over raters, with raters and sets resampled
    independently with replacement. ``counts[r, s, m]``: rater r chose option m in set s (0/1)."""
    w_raters, w_sets = crossed_weights(*counts.shape[:2], n_boot, rng)
    chosen = np.einsum("bs,rsm->brm", w_sets, counts)  # per replicate and rater, weighted choices
    answered = chosen.sum(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_rater = chosen / answered
    present = (answered[..., 0] > 0) * w_raters  # a rater none of whose sets were drawn drops out
    per_rater = np.nan_to_num(per_rater)
    kept = present.sum(axis=1) > 0  # a replicate in which no drawn rater answered a drawn set says nothing
    return np.einsum("br,brm->bm", present[kept], per_rater[kept]) / present[kept].sum(axis=1, keepdims=True)


def share_table(
    votes: pl.DataFrame, labels: Mapping[str, Sequence[str]], n_boot: int = 2000, seed: int = 0
) -> pl.DataFrame:
    """Per entry × question × option (its methods, then undecided): the share, averaged over
    raters, and its 95 % interval (module docstring); ``votes``: the kept raters' answers."""
    rows = []
    rng = np.random.default_rng(seed)
    answers = counted(votes)
    for entry, methods in labels.items():
        options = [*methods, UNDECIDED]
        for question in ("subject", "text"):
            part = answers.filter((pl.col("entry") == entry) & (pl.col("question") == question))
            raters, sets, counts = choice_counts(part, options)
            if raters:
                per_rater = counts.sum(axis=1) / counts.sum(axis=(1, 2))[:, None]
                share = per_rater.mean(axis=0)
                boot = _crossed_bootstrap(counts, n_boot, rng)
                lo, hi = np.quantile(boot, [0.025, 0.975], axis=0, method="inverted_cdf")
            else:
                share = lo = hi = np.full(len(options), np.nan)
            for i, option in enumerate(options):
                rows.append(
                    {
                        "entry": entry,
                        "question": question,
                        "option": option,
                        "share": float(share[i]),
                        "lo": float(lo[i]),
                        "hi": float(hi[i]),
                        "votes": int(counts[..., i].sum()),
                        "raters": len(raters),
                        "sets": len(sets),
                    }
                )
    return pl.DataFrame(rows)


def win_rates(votes: pl.DataFrame, labels: Mapping[str, Sequence[str]]) -> pl.DataFrame:
    """Per entry × question × ordered pair of methods: wins, losses and the win rate (wins over
    the answers that chose either; undecided counts for neither)."""
    rows = []
    answers = counted(votes)
    for entry, methods in labels.items():
        for question in ("subject", "text"):
            chosen = answers.filter((pl.col("entry") == entry) & (pl.col("question") == question))["method"]
            tally = {m: int((chosen == m).sum()) for m in methods}
            for a in methods:
                for b in methods:
                    if a != b:
                        n = tally[a] + tally[b]
                        rows.append(
                            {
                                "entry": entry,
                                "question": question,
                                "method": a,
                                "versus": b,
                                "wins": tally[a],
                                "losses": tally[b],
                                "win_rate": tally[a] / n if n else None,
                            }
                        )
    return pl.DataFrame(
        rows,
        schema={
            "entry": pl.String,
            "question": pl.String,
            "method": pl.String,
            "versus": pl.String,
            "wins": pl.Int64,
            "losses": pl.Int64,
            "win_rate": pl.Float64,
        },
    )


def _percent(value: float | None) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}"


def table_markdown(
    shares: pl.DataFrame, wins: pl.DataFrame, raters: pl.DataFrame, study: UserStudy, strengths: pl.DataFrame
) -> str:
    """Table 3 as the paper prints it (shares in %, one row per entry × question), with each
    share's 95 % interval, then the pairwise win rates, the Bradley–Terry–Davidson strengths
    (`wig.user_study.strengths`) and the raters kept."""
    rule = study.data["exclusion"]
    kept = raters.filter(~pl.col("excluded"))
    lines = [
        "# User study (Table 3)",
        "",
        f"{len(kept)} of {len(raters)} raters kept by the exclusion rule fixed before the votes "
        f"(attention-check consistency ≥ {rule['min_consistency']}"
        + (", every set answered" if rule["complete"] else "")
        + "). Shares in %, averaged over raters; [95 % bootstrap interval over raters and sets].",
        "",
    ]
    for entry, labels in study.data["entries"].items():
        options = [*labels, UNDECIDED]
        lines += [f"## {entry}", "", "| question | " + " | ".join(options) + " | raters | sets |"]
        lines.append("|---" * (len(options) + 3) + "|")
        for question in ("subject", "text"):
            part = shares.filter((pl.col("entry") == entry) & (pl.col("question") == question))
            cells = []
            for option in options:
                row = part.filter(pl.col("option") == option).row(0, named=True)
                cells.append(f"{_percent(row['share'])} [{_percent(row['lo'])}, {_percent(row['hi'])}]")
            first = part.row(0, named=True)
            lines.append(f"| {question} fidelity | " + " | ".join(cells) + f" | {first['raters']} | {first['sets']} |")
        lines.append("")
        lines += ["Pairwise win rates (row over column, among answers that chose either):", ""]
        for question in ("subject", "text"):
            part = wins.filter((pl.col("entry") == entry) & (pl.col("question") == question))
            lines += [f"| {question} | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
            for a in labels:
                cells = []
                for b in labels:
                    rate = (
                        None
                        if a == b
                        else part.filter((pl.col("method") == a) & (pl.col("versus") == b))["win_rate"][0]
                    )
                    cells.append("" if a == b else _percent(rate))
                lines.append(f"| {a} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [
            "Bradley–Terry strengths with Davidson's ties (β, log scale, Σβ = 0 over the methods; "
            "P(a chosen over b) = 1 / (1 + e^(β_b − β_a))) [95 % bootstrap interval]:",
            "",
            "| question | " + " | ".join(labels) + " | ties log ν |",
            "|---" * (len(labels) + 2) + "|",
        ]
        for question in ("subject", "text"):
            part = strengths.filter((pl.col("entry") == entry) & (pl.col("question") == question))
            cells = []
            for name in [*labels, TIE]:
                row = part.filter(pl.col("method") == name).row(0, named=True)
                cells.append(f"{row['strength']:+.2f} [{row['lo']:+.2f}, {row['hi']:+.2f}]")
            lines.append(f"| {question} | " + " | ".join(cells) + " |")
        lines.append("")
    from wig.user_study.design import random_pass_probability

    lines += [
        "## Raters",
        "",
        f"A rater clicking at random passes the rule with probability {random_pass_probability(study.data):.3f}.",
        "",
        "| rater | answers | attention checks alike | gold sets passed | undecided | excluded |",
        "|---|---|---|---|---|---|",
    ]
    for row in raters.iter_rows(named=True):
        alike = f"{row['agreed']}/{row['checks']}" if row["checks"] else "–"
        gold = f"{row['gold_passed']}/{row['gold_answered']}" if row["gold_answered"] else "–"
        lines.append(
            f"| {row['rater']} | {row['answers']} | {alike} | {gold} | {_percent(row['undecided'])} | "
            f"{row['reason'] or 'no'} |"
        )
    return "\n".join(lines) + "\n"


def share_figure(shares: pl.DataFrame, study: UserStudy, out) -> None:
    """Per entry and question, each option's share with its 95 % interval (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = list(study.data["entries"].items())
    fig, axes = plt.subplots(
        len(entries), 2, figsize=(9, 2.8 * len(entries)), squeeze=False, sharey=True, layout="constrained"
    )
    for row, (entry, labels) in enumerate(entries):
        options = [*labels, UNDECIDED]
        for col, question in enumerate(("subject", "text")):
            ax = axes[row][col]
            part = shares.filter((pl.col("entry") == entry) & (pl.col("question") == question))
            values = [part.filter(pl.col("option") == o).row(0, named=True) for o in options]
            share = np.array([v["share"] for v in values]) * 100
            err = np.array([[v["share"] - v["lo"], v["hi"] - v["share"]] for v in values]).T * 100
            ax.bar(range(len(options)), share, yerr=np.nan_to_num(err), capsize=3, color="#4c72b0")
            ax.set_xticks(range(len(options)), options, rotation=20)
            ax.set_title(f"{entry}: {question} fidelity", fontsize=10)
            ax.set_ylim(0, 100)
            if col == 0:
                ax.set_ylabel("share of votes (%)")
    fig.savefig(out, dpi=120, format="png")
    plt.close(fig)


def user_study_tables(
    study: UserStudy, rows: Sequence[tuple], raters: Sequence[int] = (), n_boot: int = 2000, seed: int = 0
):
    """(votes, per-rater table, shares, win rates, Bradley–Terry–Davidson strengths) from the
    database's rows, the exclusion rule applied to all but the first two."""
    votes = vote_frame(study, rows)
    per_rater = rater_table(votes, study, raters)
    kept = votes.filter(pl.col("rater").is_in(per_rater.filter(~pl.col("excluded"))["rater"].implode()))
    labels = study.data["entries"]
    return (
        votes,
        per_rater,
        share_table(kept, labels, n_boot, seed),
        win_rates(kept, labels),
        strength_table(kept, labels, n_boot, seed),
    )


def read_votes(study: UserStudy, db) -> tuple[list[tuple], list[int]]:
    """The answers and raters of ``db``, refused unless it holds this study's votes."""
    from wig.user_study.votes import read_store

    sha, rows, raters = read_store(db)
    if sha != study.sha256:
        from wig.user_study.design import UserStudyError

        raise UserStudyError(f"{db} holds the votes of another study than {study.folder} (its study.json differs)")
    return rows, raters
