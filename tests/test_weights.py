"""Resolving real weights for offline compute nodes, on a hub cache laid out like the real one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.check

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(hf_home: Path, repo: str, build) -> Path:
    """A repo in the hub cache the way huggingface_hub writes it: snapshots/<commit>/, refs/main."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    build(root / "snapshots" / COMMIT)
    (root / "refs").mkdir(parents=True)
    (root / "refs/main").write_text(COMMIT)
    return root / "snapshots" / COMMIT


def _run(hf_home: Path, code: str):
    """In a fresh interpreter: huggingface_hub reads HF_HOME and offline mode at import."""
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_models_and_dino_resolve_to_the_cached_commit_and_load_from_the_record(tmp_path):
    from wig.evaluation.encoders import build_tiny_encoder
    from wig.models.families.sd import build_tiny_sd

    hf_home = tmp_path / "hf"
    model_dir = _cache_repo(hf_home, "wig-test/tiny-sd", build_tiny_sd)
    dino_dir = _cache_repo(hf_home, "wig-test/tiny-dino", lambda out: build_tiny_encoder("dino", out))
    proc = _run(
        hf_home,
        f"""
from wig.weights import resolve_model, write_record, recorded_path
from wig.evaluation.encoders import resolve_encoder
from wig.models.pipelines import load_pipeline
from wig.evaluation.encoders import load_encoder
write_record(resolve_model({{"path": "wig-test/tiny-sd"}}), "{tmp_path}/model.json")
write_record(resolve_encoder({{"kind": "dino", "name": "wig-test/tiny-dino"}}), "{tmp_path}/dino.json")
pipe = load_pipeline(recorded_path("{tmp_path}/model.json"), device="cpu", dtype="float32")
dino = {{"kind": "dino", "name": "wig-test/tiny-dino"}}
enc = load_encoder(dino, recorded_path("{tmp_path}/dino.json"), device="cpu")
print(type(pipe).__name__, enc.kind)
""",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["StableDiffusionPipeline", "dino"]
    model = json.loads((tmp_path / "model.json").read_text())
    assert model == {"source": "wig-test/tiny-sd", "requested": None, "revision": COMMIT, "path": str(model_dir)}
    dino = json.loads((tmp_path / "dino.json").read_text())
    assert dino["revision"] == COMMIT and Path(dino["path"]) == dino_dir


def test_unresolvable_weights_and_a_cleaned_cache_fail_naming_what(tmp_path):
    from wig.weights import WeightsError, recorded_path, resolve_model, write_record

    proc = _run(
        tmp_path / "empty",
        """
from wig.weights import resolve_model
resolve_model({"path": "wig-test/not-cached"})
""",
    )
    assert proc.returncode != 0 and "cannot resolve model wig-test/not-cached" in proc.stderr
    folder = tmp_path / "local-model"
    folder.mkdir()
    record = resolve_model({"path": str(folder)})  # a local folder resolves to itself
    assert record == {"source": str(folder), "revision": None, "path": str(folder)}
    write_record(record, tmp_path / "weights.json")
    assert recorded_path(tmp_path / "weights.json") == str(folder)
    folder.rmdir()
    with pytest.raises(WeightsError, match="weights.json: resolved weights are gone"):
        recorded_path(tmp_path / "weights.json")
    with pytest.raises(WeightsError, match="unreadable weights record .*missing.json"):
        recorded_path(tmp_path / "missing.json")
