"""PickScore: the tiny twin scores through the code path of the real model (transformers' CLIPModel
and CLIPProcessor, loaded from a folder), and the score is the model's logit — logit_scale.exp()
times the cosine — checked against a hand computation that never touches wig's encoder."""

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from wig.evaluation.encoders import build_tiny_encoder, embed_images, embed_texts, load_encoder
from wig.evaluation.metrics import REGISTRY, enabled_metrics, score_job

from conftest import point_row

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "resources/datasets/demo/images/brown_dog"
PROMPTS = ["a photo of a dog", "a dog on the beach"]


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    out = tmp_path_factory.mktemp("pickscore")
    build_tiny_encoder("pickscore", out)
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    rows = []
    for i, src in enumerate(sorted(DOG.iterdir())[:2]):
        name = f"s0_p{i:02d}.png"
        Image.open(src).convert("RGB").resize((96, 80)).save(folder / name)
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        rows.append(
            {"path": name, "prompt_index": i, "prompt": PROMPTS[i], "seed": 0, **point_row("cfg", scale=7.5)}
            | {"sha256": digest}
        )
    pl.DataFrame(rows).write_parquet(folder / "manifest.parquet")
    return folder


def _by_hand(twin: Path, images, prompts) -> np.ndarray:
    """The model card's computation: processor → features → unit → logit_scale.exp() × cosine."""
    model = CLIPModel.from_pretrained(twin).eval()
    processor = CLIPProcessor.from_pretrained(twin / "processor")
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        tokens = processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(**tokens)
        image = getattr(image, "pooler_output", image)
        text = getattr(text, "pooler_output", text)
        cos = torch.nn.functional.cosine_similarity(image, text, dim=-1)
        assert math.isclose(float(model.logit_scale.exp()), 100.0, rel_tol=1e-5)  # PickScore_v1's scale
        return (model.logit_scale.exp() * cos).numpy(), cos.numpy()


def test_pickscore_is_the_logit_scale_times_the_cosine_as_the_model_card_computes(twin, samples, tmp_path):
    encoder = load_encoder({"kind": "pickscore", "tiny": True}, twin, device="cpu")
    files = {"pickscore": tmp_path / "images.parquet", "pickscore_texts": tmp_path / "texts.parquet"}
    embed_images(encoder, samples, ["dreammatcher", "standard"]).write_parquet(files["pickscore"])
    embed_texts(encoder, PROMPTS).write_parquet(files["pickscore_texts"])
    scores = score_job(samples, "dog", files, {"pickscore": encoder.id}, tmp_path / "scores.parquet", ["pickscore"])
    images = [Image.open(samples / f"s0_p{i:02d}.png") for i in range(2)]
    expected, cos = _by_hand(twin, images, PROMPTS)
    for protocol in ("dreammatcher", "standard"):  # PickScore has its processor's preprocessing only
        got = scores.filter(pl.col("protocol") == protocol).sort("prompt_index")["pickscore"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(expected, 100.0 * cos, rtol=1e-5)  # the scale: ≈ 21 for a cosine ≈ 0.21
    assert not (tmp_path / "pickscore_refs.parquet").exists()  # no references read


def test_pickscore_is_a_text_metric_enabled_by_its_encoder():
    metric = REGISTRY["pickscore"]
    assert (metric.fidelity, metric.reads, metric.encoder) == ("text", "texts", "pickscore")
    assert "pickscore" in enabled_metrics({"dino": {}, "clip": {}, "pickscore": {}}, render=False)
    assert "pickscore" not in enabled_metrics({"dino": {}, "clip": {}}, render=False)


def test_a_twin_without_safetensors_or_its_processor_is_refused(twin, tmp_path):
    from wig.evaluation.embeddings import EmbeddingError

    broken = tmp_path / "broken"
    shutil.copytree(twin, broken)
    shutil.rmtree(broken / "processor")
    with pytest.raises(EmbeddingError, match="cannot load pickscore encoder"):
        load_encoder({"kind": "pickscore", "tiny": True}, broken, device="cpu")
    shutil.copytree(twin / "processor", broken / "processor")
    load_encoder({"kind": "pickscore", "tiny": True}, broken, device="cpu")
    (broken / "model.safetensors").unlink()
    torch.save(CLIPModel.from_pretrained(twin).state_dict(), broken / "pytorch_model.bin")  # never unpickled
    with pytest.raises(EmbeddingError, match="cannot load pickscore encoder .*safetensors"):
        load_encoder({"kind": "pickscore", "tiny": True}, broken, device="cpu")


def test_cli_embeds_texts_and_images_with_a_pickscore_twin(samples, tmp_path):
    from wig.cli import main

    twin = tmp_path / "twin"
    base = ["embed", "--kind", "pickscore", "--tiny", str(twin), "--device", "cpu"]
    assert main([*base, "--build-tiny", "--text", PROMPTS[0], "--out", str(tmp_path / "texts.parquet")]) == 0
    assert main([*base, "--images", str(samples), "--out", str(tmp_path / "images.parquet")]) == 0
    texts, images = pl.read_parquet(tmp_path / "texts.parquet"), pl.read_parquet(tmp_path / "images.parquet")
    assert texts["encoder"].to_list() == ["pickscore-tiny:s0"] and len(images) == 2
    text_norm = np.linalg.norm(texts["embedding"].to_numpy()[0])
    assert math.isclose(text_norm, 100.0, rel_tol=1e-4)  # the text side carries the logit scale
    assert np.allclose(np.linalg.norm(np.stack(images["embedding"].to_numpy()), axis=1), 1.0, atol=1e-5)
