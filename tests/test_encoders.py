"""Encoders, protocols and embedding files, on tiny twins and real ViCo-derived images."""

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wig.concepts import prepare_concept
from wig.evaluation.base import dreammatcher_tensor
from wig.evaluation.embeddings import EmbeddingError, read_embeddings
from wig.evaluation.encoders import build_tiny_encoder, embed_images, embed_texts, load_encoder
from wig.evaluation.metrics import score_job, score_samples

from conftest import point_row

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
DOG = ROOT / "resources/datasets/demo/images/brown_dog"
PROTOCOLS = ["dreammatcher", "standard"]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    out = {}
    for kind in ("dino", "clip"):
        build_tiny_encoder(kind, root / kind)
        out[kind] = load_encoder({"kind": kind, "tiny": True}, root / kind, device="cpu")
    return out


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    out = tmp_path_factory.mktemp("refs") / "dog"
    prepare_concept(DOG, out)
    return out


def test_dreammatcher_preprocessing_matches_a_hand_written_reference(encoders):
    image = Image.open(DOG / "01.jpg").convert("RGB").crop((0, 0, 128, 100))  # not square: squashed, not cropped
    pixels = torch.tensor(np.asarray(image.resize((256, 256), Image.BICUBIC)), dtype=torch.float64)
    x = (pixels / 127.5 - 1.0).permute(2, 0, 1)[None].float()
    assert torch.allclose(dreammatcher_tensor(image)[None], x, atol=1e-6, rtol=0)
    assert torch.allclose(encoders["dino"].preprocess([image], "dreammatcher"), x, atol=1e-6, rtol=0)
    # CLIP: back to [0, 1], bicubic (antialiased) to 224, centre crop, CLIP normalisation
    y = F.interpolate((x + 1) / 2, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    assert torch.allclose(encoders["clip"].preprocess([image], "dreammatcher"), (y - mean) / std, atol=1e-6, rtol=0)


def test_standard_protocol_uses_imagenet_normalisation_for_dino(encoders):
    white = Image.new("RGB", (300, 260), (255, 255, 255))
    x = encoders["dino"].preprocess([white], "standard")
    assert x.shape == (1, 3, 224, 224)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[0, :, 100, 100], expected, atol=1e-5)


def _sample_set(folder: Path, images: list[Path]) -> Path:
    """A generation-job-like folder: PNGs + a manifest with the columns scoring reads."""
    folder.mkdir(parents=True)
    rows = []
    for i, src in enumerate(images):
        name = f"s0_p{i:02d}.png"
        shutil.copy(src, folder / name)
        rows.append(
            {
                "path": name,
                "prompt_index": i,
                "prompt": f"a sks dog {i}",
                "seed": 0,
                **point_row("cfg", scale=7.5),
                "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest(),
            }
        )
    pl.DataFrame(rows).write_parquet(folder / "manifest.parquet")
    return folder


def _embed_all(encoders, refs, samples, tmp_path):
    files = {}
    for kind, enc in encoders.items():
        files[kind] = tmp_path / f"{kind}.parquet"
        embed_images(enc, samples, PROTOCOLS).write_parquet(files[kind])
        files[f"{kind}_refs"] = tmp_path / f"{kind}_refs.parquet"
        embed_images(enc, refs, PROTOCOLS).write_parquet(files[f"{kind}_refs"])
    files["clip_texts"] = tmp_path / "texts.parquet"
    embed_texts(encoders["clip"], ["a dog 0", "a dog 1"]).write_parquet(files["clip_texts"])
    return files


def test_a_generated_copy_of_the_reference_scores_one(encoders, tmp_path):
    single = tmp_path / "single"
    prepare_concept(_one_image_dir(tmp_path), single)
    samples = _sample_set(tmp_path / "samples", [single / "00.png"])
    files = _embed_all(encoders, single, samples, tmp_path)
    ids = {k: e.id for k, e in encoders.items()}
    scores = score_job(samples, "dog", files, ids, tmp_path / "scores.parquet")
    assert len(scores) == 2  # one image × two protocols
    np.testing.assert_allclose(scores["dino"], 1.0, atol=1e-6)
    np.testing.assert_allclose(scores["clip_i"], 1.0, atol=1e-6)


def _one_image_dir(tmp_path):
    d = tmp_path / "one"
    d.mkdir()
    shutil.copy(DOG / "02.jpg", d / "02.jpg")
    return d


def test_each_image_goes_through_the_encoder_once_per_protocol_in_batches(encoders, refs):
    enc = encoders["dino"]
    calls = []
    handle = enc.model.register_forward_hook(
        lambda m, a, k, o: calls.append(k["pixel_values"].shape[0]), with_kwargs=True
    )
    before = enc.forwards
    try:
        frame = embed_images(enc, refs, PROTOCOLS, batch_size=2)
    finally:
        handle.remove()
    n = len(pl.read_parquet(refs / "manifest.parquet"))
    assert enc.forwards - before == n * len(PROTOCOLS) == sum(calls) == len(frame)
    assert len(calls) == math.ceil(n / 2) * len(PROTOCOLS) and max(calls) == 2


def test_embeddings_schema_reads_back_with_pyarrow(encoders, refs, tmp_path):
    path = tmp_path / "e.parquet"
    embed_images(encoders["clip"], refs, ["standard"]).write_parquet(path)
    schema = pq.read_schema(path)
    assert schema.names == ["path", "sha256", "encoder", "protocol", "embedding"]
    assert schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert read_embeddings(path, encoders["clip"].id, 32).shape == (5, 5)


def test_wrong_inputs_are_refused_and_nothing_is_written(encoders, refs, tmp_path):
    samples = _sample_set(tmp_path / "samples", [refs / "00.png", refs / "01.png"])
    files = _embed_all(encoders, refs, samples, tmp_path)
    ids = {k: e.id for k, e in encoders.items()}
    out = tmp_path / "scores.parquet"
    swapped = dict(files, dino=files["clip"])  # embeddings from another encoder
    with pytest.raises(EmbeddingError, match=r"holds embeddings of \['clip-tiny:s0'\], expected dino-tiny:s0"):
        score_job(samples, "dog", swapped, ids, out)
    narrow = pl.read_parquet(files["clip"]).with_columns(
        pl.col("embedding").arr.to_list().list.head(16).list.to_array(16)
    )
    narrow.write_parquet(tmp_path / "narrow.parquet")
    with pytest.raises(EmbeddingError, match="embedding width 16, expected 32"):
        score_job(samples, "dog", dict(files, clip=tmp_path / "narrow.parquet"), ids, out)
    (samples / "s0_p01.png").unlink()  # a sample set with a missing image
    with pytest.raises(EmbeddingError, match="1 image\\(s\\) of the manifest are missing, e.g. s0_p01.png"):
        embed_images(encoders["dino"], samples, PROTOCOLS)
    assert not out.exists() and not list(tmp_path.glob(".scores*"))


def test_scores_follow_the_manifest_hashes(encoders, refs, tmp_path):
    samples = _sample_set(tmp_path / "samples", [refs / "00.png", refs / "01.png"])
    files = _embed_all(encoders, refs, samples, tmp_path)
    manifest = pl.read_parquet(samples / "manifest.parquet").with_columns(pl.lit("0" * 64).alias("sha256"))
    frames = {k: pl.read_parquet(v) for k, v in files.items()}
    with pytest.raises(Exception, match="sha256 differs"):
        score_samples(manifest, "dog", frames, ["dino", "clip_i", "clip_t"])


def test_missing_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(EmbeddingError, match="tiny dino encoder not built"):
        load_encoder({"kind": "dino", "tiny": True}, tmp_path / "nope")
    with pytest.raises(EmbeddingError, match="cannot load dino encoder"):
        load_encoder({"kind": "dino", "name": str(tmp_path / "no-such-checkpoint")})


def test_cli_embed(refs, tmp_path, capsys):
    from wig.cli import main

    enc = tmp_path / "clip"
    out = tmp_path / "e.parquet"
    assert (
        main(
            [
                "embed",
                "--kind",
                "clip",
                "--tiny",
                str(enc),
                "--build-tiny",
                "--images",
                str(refs),
                "--protocol",
                "dreammatcher",
                "--protocol",
                "standard",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    frame = read_embeddings(out, "clip-tiny:s0", 32)
    assert len(frame) == 10 and frame["protocol"].to_list() == ["dreammatcher"] * 5 + ["standard"] * 5
    texts = tmp_path / "t.parquet"
    assert (
        main(["embed", "--kind", "clip", "--tiny", str(enc), "--text", "a dog", "--text", "a cat", "--out", str(texts)])
        == 0
    )
    assert pl.read_parquet(texts)["text"].to_list() == ["a dog", "a cat"]
    assert (
        main(["embed", "--kind", "dino", "--tiny", str(enc), "--text", "a dog", "--out", str(tmp_path / "x.parquet")])
        == 1
    )
    assert "cannot load dino encoder" in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()
