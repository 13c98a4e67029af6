"""What the core install saves: `pip install` time and installed size of the core (`wig`) against
the full install of before the split (`wig[workflow,user-study]`: every package pyproject.toml used
to require), and the import time of `wig.integrations.diffusers` in each, measured in one run.

Both venvs come from the same built wheel with torch linked from this environment (tools/fresh_venv.py),
so the numbers are wig's own requirements, not torch (the same in both). pip reads its cache: the
times are installs, not downloads.

    python benchmarks/install_size.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fresh_venv", ROOT / "tools/fresh_venv.py")
fresh_venv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fresh_venv)


def size_mb(folder: Path) -> float:
    """Bytes of the files under ``folder`` (links not followed: torch's closure is not counted)."""
    total = 0
    for base, _, files in os.walk(folder):
        for name in files:
            path = Path(base) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total / 2**20


def import_seconds(python: Path, repeats: int) -> float:
    """Median wall time of a fresh interpreter importing the guider."""
    code = "import time; t = time.perf_counter(); import wig.integrations.diffusers; print(time.perf_counter() - t)"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    runs = [float(subprocess.check_output([python, "-c", code], text=True, env=env)) for _ in range(repeats)]
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="import timings per venv (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = fresh_venv.build_wheel(Path(tmp) / "dist")
        rows = {}
        for label, extras in (("core", ""), ("full", "workflow,user-study")):
            start = time.perf_counter()
            python = fresh_venv.make_venv(Path(tmp) / label, wheel, extras)
            seconds = time.perf_counter() - start
            rows[label] = (seconds, size_mb(Path(tmp) / label / "lib"), import_seconds(python, args.repeats))
    print(f"{'install':8} {'pip s':>8} {'MB':>8} {'import s':>9}")
    for label, (seconds, mb, imported) in rows.items():
        print(f"{label:8} {seconds:8.1f} {mb:8.0f} {imported:9.2f}")
    (cs, cm, ci), (fs, fm, fi) = rows["core"], rows["full"]
    print(f"core/full: pip time {cs / fs:.2f}, size {cm / fm:.2f}, guider import {ci / fi:.2f}")


if __name__ == "__main__":
    main()
