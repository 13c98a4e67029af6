"""Table 3 from the votes: shares with bootstrap CIs, win rates, Bradley–Terry–Davidson strengths, raters, the
exclusion rule (rule user_study_table)."""

from wig.atomic import replace_file, tmp_path
from wig.user_study.analysis import read_votes, share_figure, table_markdown, user_study_tables
from wig.user_study.design import UserStudy
from wig.user_study.strengths import strength_figure
from wig.workflow.jobs import job

with job(snakemake, torch=False) as log:
    o = snakemake.output
    study = UserStudy.load(snakemake.input.sets)
    rows, raters = read_votes(study, snakemake.input.votes)
    votes, per_rater, shares, wins, strengths = user_study_tables(
        study, rows, raters, snakemake.params.n_boot, snakemake.params.seed
    )
    frames = ((votes, o.votes), (per_rater, o.raters), (shares, o.table), (wins, o.wins), (strengths, o.strengths))
    for frame, path in frames:
        frame.write_parquet(tmp_path(path))
        replace_file(tmp_path(path), path)
    shares.write_csv(tmp_path(o.csv))
    replace_file(tmp_path(o.csv), o.csv)
    tmp_path(o.md).write_text(table_markdown(shares, wins, per_rater, study, strengths))
    replace_file(tmp_path(o.md), o.md)
    share_figure(shares, study, tmp_path(o.figure))
    replace_file(tmp_path(o.figure), o.figure)
    strength_figure(strengths, study, tmp_path(o.strength_figure))
    replace_file(tmp_path(o.strength_figure), o.strength_figure)
    log.info("%d answers of %d raters (%d excluded)", len(votes), len(per_rater), per_rater["excluded"].sum())
