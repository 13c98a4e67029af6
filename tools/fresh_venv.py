"""A fresh venv holding a built wig wheel (with the extras asked for), and of this environment only
torch: what `pip install wig` gives a user who already has torch. Used by tests/test_install.py and
benchmarks/install_size.py.

torch is linked, not installed: a folder of links to the installed files of torch and of its own
dependency closure, put on the venv's path by a .pth file, so pip sees those distributions as
installed. A CUDA build is 5.5 GB (a copy costs minutes), and images drawn in the venv must come from
the very same torch to be compared byte for byte with this environment's.

    python tools/fresh_venv.py OUT [--extras workflow,user-study]   # builds the wheel, then the venv
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"


def build_wheel(out: Path) -> Path:
    """The wheel of this checkout, built by the standard builder (`python -m build`, no isolation:
    the build backend installed here, offline)."""
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the wheel failed:\n{proc.stderr[-3000:]}")
    (wheel,) = Path(out).glob("wig-*.whl")
    return wheel


def closure(name: str, extras: tuple[str, ...] = (), seen: set | None = None) -> set[str]:
    """``name`` (with ``extras``) and every distribution it requires, as installed here: its
    unconditional requirements and those of the extras asked for (torch asks for
    ``cuda-toolkit[cublas, …]``, whose extras name the CUDA libraries)."""
    seen = set() if seen is None else seen  # (name, extras) visited
    key = name.lower().replace("_", "-")
    if (key, extras) in seen:
        return {k for k, _ in seen}
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return {k for k, _ in seen}
    seen.add((key, extras))
    for line in dist.requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in ("", *extras)):
            closure(requirement.name, tuple(sorted(requirement.extras)), seen)
    return {k for k, _ in seen}


def link_torch(site: Path) -> Path:
    """Links to torch's installed files and its closure's, in a folder beside ``site`` that a .pth
    file in ``site`` puts on the path; the folder."""
    linked = site.parent / "torch-closure"
    linked.mkdir()
    for name in sorted(closure("torch")):
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        for top in sorted({Path(f).parts[0] for f in dist.files or []}):
            if top in ("..", "__pycache__") or (linked / top).exists() or not (base / top).exists():
                continue
            (linked / top).symlink_to(base / top)
    (site / "torch-closure.pth").write_text(f"{linked}\n")
    return linked


def make_venv(root: Path, wheel: Path, extras: str = "") -> Path:
    """A venv in ``root`` with torch linked and ``wheel`` (``[extras]``) installed by pip at
    constraints.txt's versions; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin/python"
    site = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    )
    link_torch(Path(site.strip()))
    spec = f"{wheel}[{extras}]" if extras else str(wheel)
    proc = subprocess.run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-c", str(CONSTRAINTS), spec],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {spec} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a folder that does not exist yet")
    parser.add_argument("--extras", default="", help="comma-separated extras, e.g. workflow,user-study")
    args = parser.parse_args()
    args.out.mkdir(parents=True)
    python = make_venv(args.out / "venv", build_wheel(args.out / "dist"), args.extras)
    print(python)


if __name__ == "__main__":
    main()
