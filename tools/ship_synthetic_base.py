"""Ship a pretrained synthetic base: copy ``<results/model>/model`` to resources/models/synthetic-base
and write its record (config, sha256, times) — `wig.synthetic.shipped`. Then put the printed sha256
into the presets that name the shipped base.

    python tools/ship_synthetic_base.py results/synthetic [--seed 0]
"""

import argparse

from wig.synthetic.shipped import ship
from wig.workflow.rule_params import pretrain_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_root", help="results/<model> of a `tiny: synthetic` model")
    parser.add_argument("--seed", type=int, default=0, help="the model entry's seed")
    args = parser.parse_args()
    spec = {"tiny": "synthetic", "seed": args.seed}
    record = ship(args.model_root, {stage: pretrain_config(spec, stage) for stage in ("vae", "model")})
    print(f"sha256: {record['sha256']}  ({record['bytes'] / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
