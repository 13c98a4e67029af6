"""DreamSim: the tiny twin scores through the loader a real checkpoint takes (the dreamsim package's
PerceptualModel + its LoRA, from a folder), that loader builds the same model as the package's own
``dreamsim()`` on a folder laid out as its download, and the metric is the mean ``1 − cos`` to the
references — checked against the package's own distance (``PerceptualModel.forward``)."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from wig.evaluation.encoders import build_tiny_encoder, embed_images, load_encoder
from wig.evaluation.metrics import REGISTRY, enabled_metrics, score_job
from wig.evaluation.plots import pareto_front

from conftest import point_row

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "resources/datasets/demo/images/brown_dog"
TINY = {"kind": "dreamsim", "tiny": True}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    out = tmp_path_factory.mktemp("dreamsim")
    build_tiny_encoder("dreamsim", out)
    return out


def _image_set(folder: Path, sources, size) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, src in enumerate(sources):
        name = f"s0_p{i:02d}.png"
        Image.open(src).convert("RGB").resize(size).save(folder / name)
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        rows.append({"path": name, "prompt_index": i, "prompt": "a dog", "seed": 0, **point_row("cfg", scale=7.5)})
        rows[-1]["sha256"] = digest
    pl.DataFrame(rows).write_parquet(folder / "manifest.parquet")
    return folder


def test_dreamsim_is_the_mean_distance_to_the_references_as_the_package_computes_it(twin, tmp_path):
    from wig.evaluation.plugins.dreamsim import build, preprocess

    dogs = sorted(DOG.iterdir())
    samples = _image_set(tmp_path / "samples", dogs[:2], (96, 80))
    refs = _image_set(tmp_path / "refs", dogs[2:5], (64, 64))
    encoder = load_encoder(TINY, twin, device="cpu")
    files = {"dreamsim": tmp_path / "images.parquet", "dreamsim_refs": tmp_path / "refs.parquet"}
    embed_images(encoder, samples, ["dreammatcher", "standard"]).write_parquet(files["dreamsim"])
    embed_images(encoder, refs, ["dreammatcher", "standard"]).write_parquet(files["dreamsim_refs"])
    scores = score_job(samples, "dog", files, {"dreamsim": encoder.id}, tmp_path / "scores.parquet", ["dreamsim"])

    model = build(twin)  # the package's distance, image pair by image pair: PerceptualModel.forward
    gen = [Image.open(samples / f"s0_p{i:02d}.png") for i in range(2)]
    ref = [Image.open(refs / f"s0_p{i:02d}.png") for i in range(3)]
    with torch.no_grad():
        expected = [np.mean([float(model(preprocess([g]), preprocess([r]))) for r in ref]) for g in gen]
        adapted = model.embed(preprocess(gen))
        with model.disable_adapter():  # the twin's LoRA is not an identity: it moves the embedding
            assert not torch.allclose(model.embed(preprocess(gen)), adapted, atol=1e-3)
    for protocol in ("dreammatcher", "standard"):  # DreamSim has its own preprocessing only
        got = scores.filter(pl.col("protocol") == protocol).sort("prompt_index")["dreamsim"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert 0.0 < min(expected) and max(expected) < 2.0


def test_the_loader_builds_what_the_package_builds_from_its_download(tmp_path):
    """A folder laid out as the package's ``open_clip_vitb32`` download, with random ViT-B/32
    weights (fp16 on disk): ``dreamsim.dreamsim(...)`` finds it complete, downloads nothing, and
    its model and preprocessing give the embeddings wig's loader gives."""
    import dreamsim
    from dreamsim.feature_extraction.vision_transformer import vit_base
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    from wig.evaluation.plugins.dreamsim import LORA_KEYS

    torch.manual_seed(0)
    vit = vit_base(patch_size=32)
    state = {k: v.half() for k, v in vit.state_dict().items()}
    state["pos_drop.weight"], state["pos_drop.bias"] = torch.ones(768).half(), torch.zeros(768).half()
    state["proj"] = torch.randn(768, 512) / 768**0.5  # used as stored: float32
    torch.save({"state_dict": state}, tmp_path / "open_clip_vitb32_pretrain.pth.tar")
    del vit, state
    config = dreamsim.config.dreamsim_args["model_config"]["open_clip_vitb32"]
    model = PerceptualModel(**config, device="cpu", load_dir=str(tmp_path), normalize_embeds=True)
    lora = dict(zip(LORA_KEYS, (8, 16, 0.0, "none", ["qkv"])))
    model = get_peft_model(model, LoraConfig(**lora))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    model.save_pretrained(tmp_path / "open_clip_vitb32_single_lora", safe_serialization=True)
    del model

    theirs, their_preprocess = dreamsim.dreamsim(
        pretrained=True, device="cpu", cache_dir=str(tmp_path), dreamsim_type="open_clip_vitb32"
    )
    assert not (tmp_path / "pretrained.zip").exists()  # nothing downloaded
    ours = load_encoder({"kind": "dreamsim", "name": "open_clip_vitb32"}, tmp_path, device="cpu")
    images = [Image.open(p) for p in sorted(DOG.iterdir())[:2]]
    x = ours.preprocess(images, "standard")
    assert torch.equal(x, torch.cat([their_preprocess(im) for im in images]))
    with torch.no_grad():
        assert torch.equal(ours.embed(x), theirs.embed(x))


def test_dreamsim_is_a_lower_is_better_subject_metric_enabled_by_its_encoder():
    metric = REGISTRY["dreamsim"]
    assert (metric.fidelity, metric.reads, metric.encoder, metric.higher) == (
        "subject",
        "references",
        "dreamsim",
        False,
    )
    assert "dreamsim" in enabled_metrics({"dino": {}, "clip": {}, "dreamsim": {}}, render=False)
    assert all(REGISTRY[m].higher for m in ("dino", "clip_i", "clip_t", "pickscore"))
    # (text fidelity, DreamSim distance): the front keeps the points no other is closer *and* more faithful to
    points = [(0.30, 0.70), (0.32, 0.60), (0.25, 0.55), (0.31, 0.80)]
    assert pareto_front(points, higher=(True, False)) == [2, 1]
    assert pareto_front(points) == [3, 1]


def test_a_folder_without_its_adapter_or_of_an_unknown_type_is_refused(twin, tmp_path):
    from wig.evaluation.embeddings import EmbeddingError

    broken = tmp_path / "broken"
    shutil.copytree(twin, broken)
    (broken / "dreamsim_config.json").unlink()
    with pytest.raises(EmbeddingError, match="open_clip_vitl14_single_lora names no DreamSim type"):
        load_encoder(TINY, broken, device="cpu")
    shutil.rmtree(broken / "open_clip_vitl14_single_lora")
    with pytest.raises(EmbeddingError, match=r"broken: expected one DreamSim \*_lora adapter folder, found \[\]"):
        load_encoder(TINY, broken, device="cpu")
    with pytest.raises(EmbeddingError, match="resolve it first"):
        load_encoder({"kind": "dreamsim", "name": "ensemble"}, device="cpu")
    assert json.loads((twin / "dreamsim_config.json").read_text())["model_config"]["lora"] is True
