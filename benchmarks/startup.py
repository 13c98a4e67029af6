"""Start-up cost of discovery: ``wig --help`` and ``snakemake -n`` of presets, this tree against a
baseline commit, interleaved in one run; prints medians and ratios (this / baseline).

Plug-ins are found by importing their packages (and the ``wig.plugins`` entry points) while the
parser is built and while Snakemake parses the workflow; nothing there may import torch. The
baseline is checked out into a temporary git worktree and run from there (``PYTHONPATH`` puts its
``src/`` first, ahead of this tree's editable install).

    python benchmarks/startup.py --baseline 1ef62dc --repeat 3
    python benchmarks/startup.py --baseline 1ef62dc --presets all
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRESETS = ["config/config.yaml", "config/presets/vico-sd15.yaml", "config/presets/vico-sdxl.yaml"]
DEFAULT_PRESETS += ["config/presets/synthetic-subjects.yaml", "config/presets/ip2p.yaml"]


def timed(args: list[str], cwd: Path, src: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} in {cwd} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the commit to compare with")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--presets", nargs="*", default=DEFAULT_PRESETS, help="config files, or 'all'")
    args = parser.parse_args()
    presets = args.presets
    if presets == ["all"]:
        presets = ["config/config.yaml"] + sorted(
            str(p.relative_to(ROOT)) for p in (ROOT / "config/presets").glob("*.yaml")
        )
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.baseline], cwd=ROOT, check=True, capture_output=True
        )
        try:
            trees = {"this": ROOT, "baseline": base}
            cases = {"wig --help": [sys.executable, "-m", "wig.cli", "--help"]}
            for preset in presets:
                configfile = ["--configfile", preset] if preset != "config/config.yaml" else []
                cases[f"snakemake -n {Path(preset).stem}"] = [
                    sys.executable,
                    "-m",
                    "snakemake",
                    "-n",
                    "--cores",
                    "1",
                    "--quiet",
                    *configfile,
                ]
            print(f"{'':<40s} {'this (s)':>9s} {'baseline (s)':>13s} {'ratio':>7s}")
            for name, command in cases.items():
                times = {tree: [] for tree in trees}
                for _ in range(args.repeat):  # interleaved: drift hits both alike
                    for tree, root in trees.items():
                        times[tree].append(timed(command, root, root / "src"))
                ours, theirs = statistics.median(times["this"]), statistics.median(times["baseline"])
                print(f"{name:<40s} {ours:9.2f} {theirs:13.2f} {ours / theirs:7.3f}")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
