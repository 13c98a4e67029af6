"""`wig serve-study`: a blind user study served to raters in the browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from wig.cli.options import POSITIVE, check_study_folder, int_in

NAME = "serve-study"
ORDER = 100  # its place in `wig --help`
EXTRA = "user-study"  # what it imports beyond the core install (wig.extras; pyproject.toml)
LIGHT = True  # imports neither torch nor diffusers: it starts at once


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve-study",
        help="serve a blind user study (rule user_study's folder) to raters in the browser",
        description="Serve the sets of STUDY_DIR (rule user_study's results/user_study/sets) one at a time to raters "
        "who open their link: references, prompt, the images in an order of their own, subject and text questions "
        "with 'undecided'. Votes go to an SQLite database (one transaction per answer), resumed after a reload or a "
        "restart. Prints the admin page's link (progress per rater, more raters) and every rater's link.",
    )
    p.add_argument("study_dir", type=Path, metavar="STUDY_DIR", help="the study folder (its study.json and images/)")
    p.add_argument("--db", type=Path, help="the votes database (default: STUDY_DIR.votes.sqlite beside the folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument(
        "--public-url",
        help="the address raters open (https://study.example.org behind a proxy): the printed and admin links use it",
    )
    p.add_argument("--port", type=int_in(0, 65536, "a port"), default=8765, help="0: a free port (printed)")
    p.add_argument(
        "--raters", type=int_in(0, 10001, "a rater count"), default=0, help="make sure this many raters exist"
    )
    p.add_argument("--threads", type=POSITIVE, default=8, help="request threads")
    return p


def check(args) -> None:
    check_study_folder(args.study_dir)


def run(args) -> None:
    from wig.user_study.server import serve_study

    serve_study(args.study_dir, args.db, args.host, args.port, args.raters, args.threads, args.public_url)
