"""The synthetic world's learned encoder (the DINO stand-in): trained reproducibly on rendered
scenes, loaded through the encoder registry, scored as DINO is, and set beside the oracle."""

import numpy as np
import polars as pl
import pytest

from wig.errors import WigError
from wig.evaluation.base import subject_fidelity
from wig.evaluation.encoders import embed_images, load_encoder
from wig.evaluation.metrics import REGISTRY, metric_agreement, spearman
from wig.provenance import encoder_id
from wig.synthetic.encoder import load_net, settings_of, train_encoder
from wig.synthetic.world import SUBJECTS, render

pytestmark = pytest.mark.check

SPEC = {"kind": "scene", "train": {"steps": 30, "batch_size": 16, "width": 8, "dim": 16}, "seed": 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene")
    log = train_encoder(SPEC, out / "a", progress=False)
    return out, log


def test_training_is_seeded_and_logs_held_out_accuracy_per_head(trained, tmp_path):
    out, log = trained
    assert (out / "a/model.safetensors").is_file() and (out / "a/config.json").is_file()
    assert log["step"].to_list() == [30] and {"shape_accuracy", "pattern_accuracy", "background_accuracy"} <= set(
        log.columns
    )
    assert log.select(pl.col("^.*_accuracy$")).min_horizontal().min() >= 0.0
    train_encoder(SPEC, tmp_path / "b", progress=False)
    assert (tmp_path / "b/model.safetensors").read_bytes() == (out / "a/model.safetensors").read_bytes()
    other = {**SPEC, "seed": 4}
    train_encoder(other, tmp_path / "c", progress=False)
    assert (tmp_path / "c/model.safetensors").read_bytes() != (out / "a/model.safetensors").read_bytes()
    # the settings name the encoder in embedding files: a retrained one is never mixed with the old
    assert encoder_id(SPEC) != encoder_id(other) and encoder_id(SPEC).startswith("scene-trained:s3-")
    assert encoder_id(SPEC) != encoder_id({**SPEC, "train": {**SPEC["train"], "steps": 31}})
    with pytest.raises(WigError, match="unknown setting"):
        settings_of({"train": {"stepz": 1}})


def test_the_scene_metric_is_the_mean_cosine_to_the_references(trained, tmp_path):
    out, _ = trained
    encoder = load_encoder(SPEC, out / "a", device="cpu")
    subject = SUBJECTS[0]
    refs = [subject.scene(bg, 16, 16, 11) for bg in ("white", "black", "white")]
    gens = [subject.scene("red", 15, 17, 10), SUBJECTS[1].scene("green", 16, 16, 11)]
    folder = tmp_path / "set"
    folder.mkdir()
    rows = []
    for i, scene in enumerate(refs + gens):
        render(scene).save(folder / f"{i}.png")
        rows.append({"path": f"{i}.png", "sha256": str(i)})
    pl.DataFrame(rows).write_parquet(folder / "manifest.parquet")
    frame = embed_images(encoder, folder, ["dreammatcher", "standard"], batch_size=2)
    assert frame["encoder"].unique().to_list() == [encoder_id(SPEC)]
    dream = frame.filter(pl.col("protocol") == "dreammatcher")
    assert np.array_equal(
        np.stack(dream["embedding"]), np.stack(frame.filter(pl.col("protocol") == "standard")["embedding"])
    )
    emb = np.stack(dream["embedding"])
    direct = load_net(out / "a")(encoder.preprocess([render(s) for s in refs + gens], "standard")).detach().numpy()
    assert np.allclose(emb, direct, atol=1e-6)
    scene = REGISTRY["scene"]
    assert scene.encoder == "scene" and scene.fidelity == "subject" and scene.higher
    got = scene.score(emb[3:], emb[:3])
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert np.allclose(got, (unit[3:] @ unit[:3].T).mean(axis=1)) and np.allclose(
        got, subject_fidelity(emb[:3], emb[3:])
    )


def test_agreement_with_the_oracle_is_spearman_over_points_and_images():
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)
    assert spearman(np.array([1, 2, 2, 3.0]), np.array([1, 2, 3, 4.0])) == pytest.approx(0.9486832980505138)
    assert np.isnan(spearman(np.ones(3), np.arange(3.0)))
    table = pl.DataFrame(
        {
            "protocol": ["dreammatcher"] * 3,
            "oracle_subject": [0.2, 0.5, 0.9],
            "scene": [0.1, 0.3, 0.2],
            "dreamsim": [0.9, 0.5, 0.1],  # a distance: negated, so it agrees perfectly
            "oracle_text": [1.0, 0.0, 0.5],
        }
    )
    scores = pl.DataFrame(
        {
            "protocol": ["dreammatcher"] * 4,
            "oracle_subject": [0.0, 1.0, 0.5, 0.25],
            "scene": [0.0, 1.0, 0.5, 0.25],
            "dreamsim": [1.0, 0.0, 0.5, 0.75],
        }
    )
    rows = {r["metric"]: r for r in metric_agreement(scores, table).iter_rows(named=True)}
    assert set(rows) == {"scene", "dreamsim"}  # subject-side embedding metrics; never a text metric
    assert rows["scene"]["spearman_points"] == pytest.approx(0.5) and rows["scene"]["spearman_images"] == pytest.approx(
        1
    )
    assert rows["dreamsim"]["spearman_points"] == pytest.approx(1.0) and rows["scene"]["n_points"] == 3
    assert metric_agreement(scores.drop("oracle_subject"), table.drop("oracle_subject")).is_empty()
