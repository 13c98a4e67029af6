"""Fetch a dataset folder from a public git repository at a pinned commit (opt-in, needs network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from wig.atomic import atomic_dir
from wig.errors import WigError


def fetch_git_folder(repo: str, commit: str, subdir: str, out: str | os.PathLike) -> None:
    """Copy ``subdir`` of ``repo`` at ``commit`` to ``out``; ``out`` appears only when complete.

    git runs with argument lists (never a shell string), so config values cannot inject commands.
    """
    git = shutil.which("git")
    if git is None:
        raise WigError("fetching the dataset needs git on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "repo"
        for args in (
            ["clone", "--quiet", "--no-checkout", "--", repo, str(clone)],
            ["-C", str(clone), "checkout", "--quiet", commit, "--", subdir],
        ):
            proc = subprocess.run([git, *args], capture_output=True, text=True)
            if proc.returncode != 0:
                raise WigError(
                    f"git {args[0] if args[0] != '-C' else args[2]} of {repo}@{commit} failed: "
                    f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
                )
        source = clone / subdir
        if not source.is_dir():
            raise WigError(f"{repo}@{commit} has no folder {subdir!r}")
        with atomic_dir(out, overwrite=True) as target:
            shutil.copytree(source, target, dirs_exist_ok=True)
