"""`wig export-votes`: a user study's votes as Parquet, each choice resolved to its method."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.atomic import replace_file, tmp_path
from wig.cli.options import check_study_folder

NAME = "export-votes"
ORDER = 110  # its place in `wig --help`
EXTRA = "user-study"  # what it imports beyond the core install (wig.extras; pyproject.toml)
LIGHT = True  # imports neither torch nor diffusers: it starts at once


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export-votes",
        help="a user study's votes as Parquet, each choice resolved to its method",
        description="Write the votes of STUDY_DIR's database as Parquet (wig.user_study.analysis.VOTE_SCHEMA): "
        "rater, set, entry, question, the chosen image and its method, where the rater saw it, attention checks.",
    )
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR", help="the study folder")
    p.add_argument("--db", type=Path, help="the votes database (default: STUDY_DIR.votes.sqlite beside the folder)")
    p.add_argument("--out", required=True, type=Path, help="output .parquet file")
    return p


def check(args) -> None:
    check_study_folder(args.study_dir)


def run(args) -> None:
    from wig.user_study.analysis import read_votes, vote_frame
    from wig.user_study.design import UserStudy
    from wig.user_study.server import default_db

    study = UserStudy.load(args.study_dir)
    rows, _ = read_votes(study, args.db or default_db(args.study_dir))
    frame = vote_frame(study, rows)
    tmp = tmp_path(args.out)
    frame.write_parquet(tmp)
    replace_file(tmp, args.out)
    print(f"{len(frame)} answers -> {args.out}")
