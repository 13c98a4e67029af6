"""`wig` CLI: outputs equal stock diffusers; bad input gives one line, exit ≠ 0, no file."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from wig.cli import build_parser, main

from conftest import STEPS, H, W

pytestmark = pytest.mark.check

PROMPT = "a sks dog in the snow"


def _generate(tiny_sd, out, *extra):
    return main(
        [
            "generate",
            "--model",
            str(tiny_sd),
            "--prompt",
            PROMPT,
            "--steps",
            str(STEPS),
            "--height",
            str(H),
            "--width",
            str(W),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


@pytest.mark.parametrize("with_lora", [False, True], ids=["base", "lora"])
def test_generate_cfg_equals_stock_pipeline(tiny_sd, lora_path, tmp_path, with_lora):
    out = tmp_path / "img.png"
    extra = ["--lora", str(lora_path.parent)] if with_lora else []
    assert _generate(tiny_sd, out, "--method", "cfg", "--scale", "7.5", "--seed", "3", *extra) == 0
    stock = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    if with_lora:
        stock.load_lora_weights(str(lora_path.parent))
    ref = stock(
        PROMPT,
        guidance_scale=7.5,
        num_inference_steps=STEPS,
        height=H,
        width=W,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]
    got = np.asarray(Image.open(out), dtype=np.int16)
    assert got.shape == (H, W, 3)
    assert np.abs(got - np.asarray(ref, dtype=np.int16)).max() <= 1
    meta = json.loads(Image.open(out).text["wig"])
    assert meta["seed"] == 3 and meta["method"] == "cfg" and meta["prompt"] == PROMPT


def test_generate_batch_writes_one_file_per_seed(tiny_sd, lora_path, tmp_path):
    pattern = str(tmp_path / "s{seed}.png")
    rc = _generate(
        tiny_sd, pattern, "--method", "pg", "--omega", "0", "--lora", str(lora_path), "--seed", "1", "--seed", "2"
    )
    assert rc == 0
    a, b = (np.asarray(Image.open(tmp_path / f"s{s}.png")) for s in (1, 2))
    assert not np.array_equal(a, b)
    # the batch gives each image what a run of its own gives
    assert (
        _generate(
            tiny_sd, tmp_path / "single.png", "--method", "pg", "--omega", "0", "--lora", str(lora_path), "--seed", "2"
        )
        == 0
    )
    assert np.abs(np.asarray(Image.open(tmp_path / "single.png"), dtype=np.int16) - b).max() <= 1


def _bad_loras(lora_path, tmp_path):
    state = load_file(str(lora_path))
    text = tmp_path / "text.safetensors"
    text.write_text("not a tensor file\n")
    pt = tmp_path / "lora.bin"
    torch.save(state, pt)
    key = next(k for k in state if k.endswith("lora.down.weight"))
    wrong_shape = dict(state, **{key: torch.zeros(state[key].shape[0], state[key].shape[1] + 3)})
    save_file(wrong_shape, tmp_path / "shape.safetensors")
    renamed = {k.replace("unet.", "unet.nonexistent_block."): v for k, v in state.items()}
    save_file(renamed, tmp_path / "renamed.safetensors")
    return {
        "text": (text, "not a safetensors LoRA file"),
        "pickle": (pt, "not a safetensors LoRA file"),
        "shape": (tmp_path / "shape.safetensors", "does not fit the model"),
        "renamed": (tmp_path / "renamed.safetensors", "does not fit the model"),
        "missing": (tmp_path / "nowhere", "LoRA not found"),
    }


@pytest.mark.parametrize("case", ["text", "pickle", "shape", "renamed", "missing"])
def test_bad_lora_is_refused(tiny_sd, lora_path, tmp_path, capsys, case):
    path, message = _bad_loras(lora_path, tmp_path)[case]
    out = tmp_path / "out.png"
    assert _generate(tiny_sd, out, "--method", "cfg", "--seed", "0", "--lora", str(path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "pg", "--omega", "1.5"], "omega must lie in [0, 1], got 1.5"),
        (["--method", "pg", "--omega", "-0.5"], "omega must lie in [0, 1], got -0.5"),
        (["--method", "pg", "--omega", "0"], "needs a fine-tune"),
        (["--method", "cfg", "--omega", "0.5"], "omega applies to dreamblend/ip2p-cfg/pg/pgpp/sag only, not cfg"),
        (["--method", "cfg", "--seed", "1", "--seed", "2", "--seed", "3", "--prompt", "b"], "2 prompts and 4 seeds"),
    ],
)
def test_bad_settings_are_refused(tiny_sd, tmp_path, capsys, args, message):
    out = tmp_path / "out.png"
    assert _generate(tiny_sd, out, "--seed", "0", *args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_missing_model_is_refused(tmp_path, capsys):
    out = tmp_path / "out.png"
    missing = tmp_path / "no-such-model"
    assert _generate(missing, out, "--method", "cfg", "--seed", "0") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wig generate: error: model not found: {missing}"]
    assert not out.exists()


def test_unknown_method_is_refused_by_the_console_script(tiny_sd, tmp_path):
    # the installed entry point, as a user runs it: exit code and stderr for real
    out = tmp_path / "out.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wig.cli",
            "generate",
            "--model",
            str(tiny_sd),
            "--method",
            "magic",
            "--prompt",
            "x",
            "--seed",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "invalid choice: 'magic'" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_help_is_complete(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    top = capsys.readouterr().out
    sub = parser._subparsers._group_actions[0].choices
    for name, subparser in sub.items():
        assert name in top
        text = subparser.format_help()
        for action in subparser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
                assert action.option_strings[0] in text


def test_build_tiny_cli_is_seeded(tmp_path):
    assert main(["build-tiny", "--family", "sd", "--out", str(tmp_path / "a")]) == 0
    assert main(["build-tiny", "--family", "sd", "--out", str(tmp_path / "b")]) == 0
    assert main(["build-tiny", "--family", "sd", "--seed", "5", "--out", str(tmp_path / "c")]) == 0
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert (tmp_path / "a" / weights).read_bytes() != (tmp_path / "c" / weights).read_bytes()
    # refuses to overwrite, and leaves no temporary folder behind
    assert main(["build-tiny", "--family", "sd", "--out", str(tmp_path / "a")]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_sana_from_the_cli(tmp_path):
    # twin → random LoRA → PG image; the auto scheduler keeps SANA's flow DPM-Solver
    assert main(["build-tiny", "--family", "sana", "--out", str(tmp_path / "sana")]) == 0
    assert main(["random-lora", "--model", str(tmp_path / "sana"), "--out", str(tmp_path / "lora")]) == 0
    out = tmp_path / "pg.png"
    args = [
        "generate",
        "--model",
        str(tmp_path / "sana"),
        "--lora",
        str(tmp_path / "lora"),
        "--method",
        "pg",
        "--omega",
        "0",
        "--scale",
        "4.5",
        "--prompt",
        "a sks dog",
        "--seed",
        "0",
        "--steps",
        "3",
        "--quiet",
    ]
    assert main([*args, "--out", str(out)]) == 0
    assert Image.open(out).size == (64, 64)
    assert main([*args, "--method", "cfgpp", "--out", str(tmp_path / "pp.png")]) == 1  # DDIM only
    assert not (tmp_path / "pp.png").exists()


def test_train_flags_reach_each_method_and_true_settings_can_be_turned_off():
    from wig.cli.commands.train import personalization as _personalization
    from wig.personalization import make as make_method

    base = ["train", "--model", "m", "--instance-dir", "i", "--instance-prompt", "a photo of <new1> dog", "--out", "o"]
    args = build_parser().parse_args([*base, "--method", "classdiffusion", "--no-hflip", "--spl-weight", "0.5"])
    assert _personalization(args) == make_method("classdiffusion", hflip=False, spl_weight=0.5)
    args = build_parser().parse_args(
        [*base, "--method", "db-lora-ti", "--embedding-lr", "5e-6", "--gradient-checkpointing"]
    )
    assert _personalization(args) == make_method("db-lora-ti", embedding_lr=5e-6, gradient_checkpointing=True)
    # a list setting takes its values after the flag: the steps whose checkpoints the run keeps
    args = build_parser().parse_args([*base, "--method", "db-lora", "--checkpoints", "250", "5", "--steps", "1000"])
    assert _personalization(args).checkpoints == (5, 250)


def test_version_and_every_command_module_is_a_command(capsys):
    from importlib import metadata

    from wig.cli import command_modules

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"wig {metadata.version('wig')}"
    # one module per command, found by discovery: each has its parser and its handler side by side
    folder = Path(__file__).resolve().parents[1] / "src/wig/cli/commands"
    modules = command_modules()
    assert sorted(m.__name__.rsplit(".", 1)[1] for m in modules.values()) == sorted(
        p.stem for p in folder.glob("*.py") if p.stem != "__init__"
    )
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert list(subcommands) == list(modules)  # help order: each module's ORDER
    assert all(callable(m.add_parser) and callable(m.run) for m in modules.values())
