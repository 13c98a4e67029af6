"""Write a concept sheet of new synthetic-world subjects (`wig.synthetic.world.draw_subjects`):
``concepts.csv`` and each subject's held-out prompts, for a study that must not reuse the five
subjects its pilot looked at. The draw is a seeded permutation, so the first n of a larger draw are
the draw of n.

    python tools/synthetic_subjects.py resources/datasets/synthetic-subjects --subjects 104 --seed 0
"""

import argparse

from wig.synthetic.world import draw_subjects, write_sheet


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the sheet's folder")
    parser.add_argument("--subjects", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_sheet(args.out, draw_subjects(args.subjects, args.seed)))


if __name__ == "__main__":
    main()
