"""Derive the shipped PartiPrompts subset: ``n`` prompts per Category, drawn with a seeded RNG, kept
in the published file's order and layout (its lines copied byte for byte, so the whole file is a
drop-in replacement).

    python tools/partiprompts_subset.py PartiPrompts.tsv resources/datasets/partiprompts/PartiPrompts-120.tsv
"""

import argparse
import csv

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="PartiPrompts.tsv as google-research/parti publishes it")
    parser.add_argument("out")
    parser.add_argument("--per-category", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.source, encoding="utf-8", newline="") as f:
        header, *lines = f.read().splitlines(keepends=True)  # one prompt per line in the published file
    category = next(csv.reader([header], delimiter="\t")).index("Category")
    categories = [next(csv.reader([line], delimiter="\t"))[category] for line in lines]
    rng = np.random.default_rng(args.seed)
    keep: set[int] = set()
    for name in sorted(set(categories)):
        indices = [i for i, c in enumerate(categories) if c == name]
        keep |= set(rng.choice(indices, size=min(args.per_category, len(indices)), replace=False).tolist())
    with open(args.out, "w", encoding="utf-8", newline="") as f:
        f.write(header + "".join(lines[i] for i in sorted(keep)))


if __name__ == "__main__":
    main()
