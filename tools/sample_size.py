"""How many sampling seeds (or subjects, LoRA seeds, prompts) a contrast needs for a 95 % CI
half-width ≤ a target, from a pilot run's scores (`wig.evaluation.sample_size`): the pilot's
variance components, its own CI, and the projected half-width as the chosen axis doubles.

    python tools/sample_size.py results/synthetic/synthetic-noprior/db-lora/tables/scores.parquet \\
        --method pg --omega 0 --scale 4.5 --design 5 3 6 --grow seeds --target 0.01
"""

import argparse

import polars as pl

from wig.evaluation.metrics import to_markdown
from wig.evaluation.sample_size import AXES, components, paired_cube, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", help="a (model, fine-tune)'s tables/scores.parquet")
    parser.add_argument("--method", default="pg")
    parser.add_argument("--omega", type=float, default=0.0)
    parser.add_argument("--scale", type=float, required=True)
    parser.add_argument("--metric", default="oracle_subject")
    parser.add_argument("--protocol", default=None)
    parser.add_argument(
        "--design",
        type=int,
        nargs=3,
        metavar=("SUBJECTS", "LORA_SEEDS", "PROMPTS"),
        help="the counts of the run to plan (default: the pilot's)",
    )
    parser.add_argument("--grow", default="seeds", choices=AXES)
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scores = pl.read_parquet(args.scores)
    point = {"method": args.method, "scale": args.scale}
    if args.method in ("pg", "pgpp"):
        point["omega"] = args.omega
    protocol = args.protocol or scores["protocol"][0]
    cube = paired_cube(scores, args.metric, point, protocol=protocol)
    comp = components(cube)
    print(f"pilot: {dict(zip(AXES, cube.shape))}, mean difference {comp['mean']:+.4f}")
    print("variance components: " + ", ".join(f"{k} {v:.2e}" for k, v in comp.items() if k != "mean"))
    table = plan(cube, target=args.target, grow=args.grow, seed=args.seed, start=tuple(args.design or cube.shape[:3]))
    print(to_markdown(table, digits=4))


if __name__ == "__main__":
    main()
