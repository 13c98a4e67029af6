"""The synthetic world's shipped base: the pretrain rules' output with its config and sha256, named
by the configs that start from it, loaded through the checkpoint path with its digest checked."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from wig.errors import WigError
from wig.synthetic.shipped import RECORD, SHIPPED
from wig.weights import file_digests, folder_sha256, resolve_model
from wig.workflow.config_schema import read_config
from wig.workflow.rule_params import pretrain_config
from wig.workflow.study import Study

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
NAMING = [
    "config/config.yaml",
    "config/presets/synthetic.yaml",
    "config/presets/synthetic-dreamblend.yaml",
    "config/presets/synthetic-subjects.yaml",
    ".test/config/synthetic-smoke.yaml",
]


def _record() -> dict:
    return json.loads((ROOT / RECORD).read_text())


def test_the_shipped_base_is_what_the_pretrain_rules_make_today():
    record = _record()
    # its config is what rules pretrain_vae / pretrain_model run for a {tiny: synthetic} entry now:
    # editing tiny_synthetic.json without rebuilding and reshipping fails here
    assert record["pretrain"] == {
        stage: pretrain_config({"tiny": "synthetic", "seed": 0}, stage) for stage in ("vae", "model")
    }
    files = file_digests(ROOT / SHIPPED)
    assert record["sha256"] == folder_sha256(ROOT / SHIPPED)
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "log.parquet"} <= set(files)
    weights = [f for f in files if f.rsplit(".", 1)[-1] in ("safetensors", "bin", "pt", "pth", "ckpt", "pkl")]
    assert weights and all(f.endswith(".safetensors") for f in weights)  # never a pickle
    size = sum((ROOT / SHIPPED / f).stat().st_size for f in files)
    assert size == record["bytes"] <= 20_000_000


@pytest.mark.parametrize("path", NAMING)
def test_every_config_starting_from_it_names_its_digest_and_loads_it_as_a_checkpoint(path, monkeypatch):

    monkeypatch.chdir(ROOT)
    config = yaml.safe_load((ROOT / path).read_text())
    name = next(n for n, m in config["models"].items() if "base" not in m)  # the entry naming the weights
    spec = config["models"][name]
    assert spec["path"] == str(SHIPPED) and spec["sha256"] == _record()["sha256"] and spec["family"] == "sd"
    read_config(config)
    study = Study.from_config(config)
    assert study.models[name].kind == "checkpoint" and study.world_bases() == [name]


def test_resolving_checks_the_digest_naming_the_folder(tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(ROOT / SHIPPED, copy)
    digest = _record()["sha256"]
    record = resolve_model({"path": str(copy), "sha256": digest})
    assert record["sha256"] == digest and record["path"] == str(copy.resolve())
    assert "sha256" not in resolve_model({"path": str(copy)})  # no digest named: none checked
    config = copy / "scheduler/scheduler_config.json"
    config.write_text(config.read_text().replace("1000", "999", 1))
    with pytest.raises(WigError, match=f"model {copy}: the files in .* have sha256 .*, not the {digest}"):
        resolve_model({"path": str(copy), "sha256": digest})
    shutil.copytree(ROOT / SHIPPED, tmp_path / "extra")
    (tmp_path / "extra/notes.txt").write_text("an added file changes the digest too\n")
    with pytest.raises(WigError, match="not the"):
        resolve_model({"path": str(tmp_path / "extra"), "sha256": digest})
