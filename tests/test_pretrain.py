"""The synthetic world's base model: pretraining writes a stock StableDiffusionPipeline that wig's
sampler runs exactly as diffusers does, reproducibly; the accuracy table reads what it draws."""

import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from wig.errors import WigError
from wig.guidance import Guidance
from wig.models.families import default_config
from wig.models.pipelines import load_pipeline
from wig.synthetic.base_accuracy import accuracy_prompts, base_accuracy
from wig.synthetic.pretrain import Captions, pixels, random_caption, random_scene, train_base, train_vae
from wig.synthetic.world import PALETTE, Layout, prompt_attributes

from conftest import generators, to_uint8
from test_tiny import _files

pytestmark = pytest.mark.check

PROMPTS = ["a red triangle on a blue background", ""]


def _short(steps=3):
    config = copy.deepcopy(default_config("synthetic"))
    config["vae_training"].update(steps=steps, batch_size=4, warmup=1)
    config["training"].update(steps=steps, batch_size=4, warmup=1)
    return config


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    config = _short()
    vae_log = train_vae(config, root / "vae", progress=False)
    log = train_base(config, root / "vae", root / "model", progress=False)
    return root, config, vae_log, log


def test_scenes_and_captions_are_seeded_and_drop_what_the_rates_say():
    layout = Layout()
    a = [random_scene(np.random.default_rng(3), layout) for _ in range(2)]
    assert a[0] == a[1] and a[0].pattern is None and a[0].colour != a[0].background
    rng = np.random.default_rng(0)
    patterned = [random_scene(rng, layout, patterned=1.0) for _ in range(50)]
    assert all(s.pattern and len({s.colour, s.colour2, s.background}) == 3 for s in patterned)
    rng = np.random.default_rng(1)
    scene = random_scene(rng, layout)
    texts = [random_caption(rng, scene, Captions(drop_colour=0.5, drop_background=0.5, empty=0.2)) for _ in range(4000)]
    assert abs(texts.count("") / 4000 - 0.2) < 0.03
    said = [t for t in texts if t]
    assert abs(sum(scene.colour not in t for t in said) / len(said) - 0.5) < 0.04
    assert abs(sum("background" not in t for t in said) / len(said) - 0.5) < 0.04
    x = pixels([scene])
    assert x.shape == (1, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(PALETTE[scene.background]) / 127.5 - 1)


def test_pretraining_writes_a_stock_sd_pipeline_reproducibly(base, tmp_path):
    root, config, vae_log, log = base
    assert len(vae_log) == len(log) == 3 and np.isfinite(log["loss"].to_numpy()).all()
    pipe = StableDiffusionPipeline.from_pretrained(root / "model", safety_checker=None)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings == 16
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on its own latents
    assert (root / "model/log.parquet").is_file() and (root / "vae/log.parquet").is_file()
    # same config → the same bytes; another seed → other weights
    train_vae(config, tmp_path / "vae", progress=False)
    train_base(config, tmp_path / "vae", tmp_path / "model", progress=False)
    first, again = _files(root / "model"), _files(tmp_path / "model")
    drop = {"log.parquet"}  # wall times
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in again.items() if k not in drop}
    other = copy.deepcopy(config) | {"seed": 1}
    train_base(other, tmp_path / "vae", tmp_path / "other", progress=False)
    assert (
        _files(tmp_path / "other")["unet/diffusion_pytorch_model.safetensors"]
        != first["unet/diffusion_pytorch_model.safetensors"]
    )


def test_base_must_predict_v_or_x0(base, tmp_path):
    root, config, _, _ = base
    bad = copy.deepcopy(config)
    bad["scheduler"]["prediction_type"] = "epsilon"
    with pytest.raises(WigError, match="must be 'sample' or 'v_prediction', got 'epsilon'"):
        train_base(bad, root / "vae", tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_cfg_on_the_base_equals_the_stock_pipeline(base):
    root = base[0]
    from wig.sampling.sampler import sample

    ours = sample(
        load_pipeline(str(root / "model"), device="cpu", dtype="float32"),
        PROMPTS,
        Guidance("cfg", scale=4.0),
        generators(),
        progress=False,
        steps=5,
    )
    # the text encoder is stored in float16 (its token table): both load the pipeline in float32
    stock = StableDiffusionPipeline.from_pretrained(root / "model", safety_checker=None, torch_dtype=torch.float32)
    stock.set_progress_bar_config(disable=True)
    ref = stock(PROMPTS, guidance_scale=4.0, num_inference_steps=5, generator=generators()).images
    assert np.abs(to_uint8(ours) - to_uint8(ref)).max() == 0


def test_base_accuracy_reads_every_attribute_per_scale(base):
    pipe = load_pipeline(str(base[0] / "model"), device="cpu", dtype="float32")
    table = base_accuracy(pipe, [1.0, 3.0], n=4, steps=2, progress=False)
    assert table["scale"].to_list() == [1.0, 3.0] and (table["n_images"] == 4).all()
    for row in table.iter_rows(named=True):
        parts = [row[a] for a in ("background", "colour", "shape")]
        assert all(0 <= p <= 1 for p in parts) and row["text"] == pytest.approx(np.mean(parts))
    prompts = accuracy_prompts(200, seed=1)
    assert prompts == accuracy_prompts(200, seed=1)
    attrs = [prompt_attributes(p) for p in prompts]
    assert all(a.keys() == {"background", "colour", "shape"} and a["colour"] != a["background"] for a in attrs)
