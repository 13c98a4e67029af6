"""Bad input never becomes a result, never a traceback: each case a hostile user tried (issue 17),
with files the tests make. Every refusal: its exit code, one line naming the file / key / setting,
nothing left where a later stage would take it for done."""

import logging
import os
import stat
import struct
import subprocess
import sys
import zlib

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from wig.atomic import atomic_dir
from wig.cli import main
from wig.concepts import load_image, prepare_concept, read_sheet
from wig.errors import WigError
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization.lora import attach_loras
from wig.sampling.generation import generate_samples

from conftest import H, W
from test_cli import PROMPT, _generate

pytestmark = pytest.mark.check


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _scaled_lora(lora_path, tmp_path, factor) -> str:
    state = load_file(str(lora_path))
    out = tmp_path / f"lora_x{factor:g}.safetensors"
    save_file({k: v * factor for k, v in state.items()}, out)
    return str(out)


# 1. Non-finite images are never saved as results ------------------------------------------


@pytest.mark.parametrize("case", ["huge-lora", "huge-scale"])
def test_a_diverged_sample_fails_naming_its_seed_and_writes_nothing(tiny_sd, lora_path, tmp_path, capsys, case):
    out = tmp_path / "img.png"
    if case == "huge-lora":  # finite weights (1e30), non-finite activations
        rc = _generate(
            tiny_sd,
            out,
            "--method",
            "pg",
            "--omega",
            "0",
            "--seed",
            "5",
            "--lora",
            _scaled_lora(lora_path, tmp_path, 1e30),
        )
    else:
        rc = _generate(tiny_sd, out, "--method", "cfg", "--scale", "1e308", "--seed", "5")
    assert rc == 1
    line = _one_line(capsys)
    assert "non-finite values (NaN/inf)" in line and "seed(s) [5]" in line
    assert list(tmp_path.glob("*.png")) == [] and list(tmp_path.glob(".*")) == []


def test_a_nan_lora_is_refused_naming_the_key(tiny_sd, lora_path, tmp_path, capsys):
    state = load_file(str(lora_path))
    key = sorted(state)[3]
    state[key] = state[key].clone()
    state[key][0, 0] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    out = tmp_path / "img.png"
    assert _generate(tiny_sd, out, "--method", "cfg", "--seed", "0", "--lora", str(tmp_path / "nan.safetensors")) == 1
    line = _one_line(capsys)
    assert f"{key} holds NaN or inf values" in line and "nan.safetensors" in line and not out.exists()


def test_a_generation_job_with_a_diverged_point_names_it_and_leaves_no_folder(tiny_sd, lora_path, tmp_path):
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    attach_loras(pipe, _scaled_lora(lora_path, tmp_path, 1e30))
    out = tmp_path / "job"
    points = {"cfg/w1.0_l1.0": Guidance("cfg", scale=1.0), "pg/w0.0_l3.0": Guidance("pg", scale=3.0, omega=0.0)}
    with pytest.raises(WigError, match=r"grid point cfg/w1.0_l1.0: non-finite .* seed\(s\) \[2, 3\]") as err:
        generate_samples(pipe, [PROMPT], points, [2, 3], out, steps=2, height=H, width=W, progress=False)
    assert "\n" not in str(err.value)
    assert not out.exists() and list(tmp_path.glob(".job*")) == []


# 2. Tracebacks where one line naming the file is promised ---------------------------------


def _png_declaring(path, width, height):
    """A tiny PNG whose header claims ``width`` × ``height`` (a decompression bomb's shape)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_a_bomb_header_and_an_over_limit_photo_are_refused_naming_the_file(tmp_path, capsys):
    concept = tmp_path / "concept"
    concept.mkdir()
    Image.new("RGB", (16, 16), "red").save(concept / "00.png")
    _png_declaring(concept / "01.png", 100_000, 100_000)
    assert (concept / "01.png").stat().st_size < 100
    out = tmp_path / "out"
    assert main(["prepare", "--concept-dir", str(concept), "--out", str(out)]) == 1
    line = _one_line(capsys)
    assert str(concept / "01.png") in line and "256,000,000 pixels" in line
    assert not out.exists() and list(tmp_path.glob(".out*")) == []
    # the limit is a setting: a 300 × 200 photo over a limit of 50,000 pixels
    Image.new("RGB", (300, 200), "blue").save(concept / "01.png")
    with pytest.raises(WigError, match=r"01.png: more than the 50,000 pixels"):
        load_image(concept / "01.png", max_pixels=50_000)
    assert main(["prepare", "--concept-dir", str(concept), "--out", str(out), "--max-pixels", "50000"]) == 1
    assert "01.png" in _one_line(capsys) and not out.exists()


def test_large_photos_are_kept_at_the_documented_size(tmp_path):
    concept = tmp_path / "concept"
    concept.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 3000, 3), dtype=np.uint8)).save(concept / "a.jpg")
    Image.new("RGB", (64, 48), "green").save(concept / "b.png")
    manifest = prepare_concept(concept, tmp_path / "out", max_side=1024)
    assert manifest.select("width", "height", "source_width", "source_height").rows() == [
        (1024, 410, 3000, 1200),
        (64, 48, 64, 48),
    ]
    assert Image.open(tmp_path / "out/00.png").size == (1024, 410)
    default = prepare_concept(concept, tmp_path / "default")  # MAX_SIDE 2048
    assert default["width"].to_list() == [2048, 64]


# 3. Silent changes to what was asked -------------------------------------------------------


def test_other_files_are_skipped_with_a_warning_and_animations_refused(tmp_path, caplog, capsys):
    concept = tmp_path / "concept"
    concept.mkdir()
    Image.new("RGB", (16, 16), "red").save(concept / "a.tiff")
    Image.new("RGB", (16, 16), "blue").save(concept / "b.gif")  # one frame: a photo like any other
    Image.new("RGB", (16, 16), "green").save(concept / "c.bmp")
    (concept / "notes.txt").write_text("shot on a phone\n")
    with caplog.at_level(logging.WARNING, logger="wig.concepts"):
        manifest = prepare_concept(concept, tmp_path / "out")
    assert len(manifest) == 3
    assert any("skipped 1 file(s)" in r.message and "notes.txt" in r.message for r in caplog.records)
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    frames[0].save(concept / "d.gif", save_all=True, append_images=frames[1:])
    assert main(["prepare", "--concept-dir", str(concept), "--out", str(tmp_path / "out2")]) == 1
    line = _one_line(capsys)
    assert "d.gif: an animation of 2 frames" in line and not (tmp_path / "out2").exists()


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--height", "-8"], 2, "argument --height: a positive integer must be ≥ 1, got -8"),
        (["--height", "0"], 2, "argument --height: a positive integer must be ≥ 1, got 0"),
        (["--seed", "99999999999999999999999"], 2, "argument --seed: a seed must be in [0, 18446744073709551616)"),
        (["--device", "foo"], 2, "argument --device: unknown device 'foo'"),
        (["--threads", "-1"], 2, "argument --threads: --threads must be ≥ 0, got -1"),
        (["--device", "cuda:99"], 1, "device cuda:99: this machine has"),
        (["--height", "61", "--width", "32"], 1, "height 61 is not a positive multiple of 2"),
        (
            ["--height", "32", "--width", "33"],
            1,
            "width 33 is not a positive multiple of 2, this model's size "
            "step (its latent stride × patch): use 32 or 34",
        ),
    ],
)
def test_bad_cli_settings_are_refused_never_rounded(tiny_sd, tmp_path, capsys, args, code, message):
    out = tmp_path / "img.png"
    argv = [
        "generate",
        "--model",
        str(tiny_sd),
        "--method",
        "cfg",
        "--prompt",
        PROMPT,
        "--steps",
        "2",
        "--out",
        str(out),
        "--quiet",
        *args,
    ]
    argv += [] if "--seed" in args else ["--seed", "0"]
    if code == 2:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    else:
        assert main(argv) == 1
        assert message in _one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_out_onto_a_folder_or_an_existing_file_is_refused(tiny_sd, tmp_path, capsys):
    folder = tmp_path / "dir.png"
    folder.mkdir()
    assert _generate(tiny_sd, folder, "--method", "cfg", "--seed", "0") == 1
    assert f"--out {folder} is a folder" in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png"]  # no stray .dir.png.tmp
    existing = tmp_path / "img.png"
    existing.write_bytes(b"earlier result")
    assert _generate(tiny_sd, existing, "--method", "cfg", "--seed", "0") == 1
    assert f"output exists: {existing} (--overwrite replaces it)" in _one_line(capsys)
    assert existing.read_bytes() == b"earlier result"
    assert _generate(tiny_sd, existing, "--method", "cfg", "--seed", "0", "--overwrite") == 0
    assert Image.open(existing).size == (W, H)


def test_a_truncated_prompt_is_said(tiny_sd, tmp_path, caplog):
    long_prompt = "a sks dog " + "wearing a red hat and " * 30 + "in the snow"
    with caplog.at_level(logging.WARNING, logger="wig.models.families"):
        assert (
            main(
                [
                    "generate",
                    "--model",
                    str(tiny_sd),
                    "--method",
                    "cfg",
                    "--prompt",
                    long_prompt,
                    "--seed",
                    "0",
                    "--steps",
                    "2",
                    "--height",
                    str(H),
                    "--width",
                    str(W),
                    "--out",
                    str(tmp_path / "a.png"),
                    "--quiet",
                ]
            )
            == 0
        )
    (record,) = [r for r in caplog.records if "tokens of" in r.message]
    assert "sd text encoder sees 77 of the" in record.message and "wearing a red hat" in record.message


def test_argument_errors_come_before_torch_is_imported(tmp_path):
    (tmp_path / "x.png").mkdir()
    code = (
        "import sys; from wig.cli import main; "
        f"rc = main(['generate', '--model', 'm', '--method', 'cfg', '--prompt', 'x', '--seed', '0', "
        f"'--out', {str(tmp_path / 'x.png')!r}]); print(rc, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["1", "False"], proc.stderr
    assert "is a folder" in proc.stderr


# 3b. LoRA files diffusers would reject with no key named ----------------------------------


def _bad_lora(state, case):
    downs = sorted(k for k in state if k.endswith("lora.down.weight"))
    if case == "half":
        return {k: v for k, v in state.items() if k.endswith("lora.down.weight")}, f"{downs[0]} has no B (up) partner"
    if case == "rank":
        up = downs[0].replace("lora.down", "lora.up")
        return dict(
            state, **{up: torch.zeros(state[up].shape[0], state[up].shape[1] + 2)}
        ), f"rank of {downs[0]} (4) differs from {up} (6)"
    extra = "unet.conv_in.weight"
    return dict(state, **{extra: torch.zeros(1)}), f"unexpected key {extra} (not a LoRA matrix)"


@pytest.mark.parametrize("case", ["half", "rank", "extra"])
def test_a_malformed_lora_names_its_first_bad_key(tiny_sd, lora_path, tmp_path, capsys, case):
    state, message = _bad_lora(load_file(str(lora_path)), case)
    path = tmp_path / f"{case}.safetensors"
    save_file(state, path)
    out = tmp_path / "img.png"
    assert _generate(tiny_sd, out, "--method", "cfg", "--seed", "0", "--lora", str(path)) == 1
    line = _one_line(capsys)
    assert message in line and str(path) in line and not out.exists()


# 4. Class nouns outside [A-Za-z0-9]: tests/test_study.py (folders) and tests/test_workflow.py (the DAG)


# 5. Result folders follow the umask, not mkdtemp's 0700 ----------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o002, 0o775), (0o077, 0o700)])
def test_result_folders_are_as_readable_as_the_umask_says(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "result") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "result").stat().st_mode) == mode


# 6. The sheet's live column picks a prompt list --------------------------------------------


def test_the_live_column_picks_the_prompt_list(tmp_path):
    (tmp_path / "live.txt").write_text("a {} running\n")
    (tmp_path / "object.txt").write_text("a {} on a table\n")
    (tmp_path / "sheet.csv").write_text("concept,class_noun,live\ndog1,dog,yes\nvase1,vase,no\nmug1,mug,\n")
    lists = {"live": str(tmp_path / "live.txt"), "object": str(tmp_path / "object.txt")}
    with pytest.raises(WigError, match=r"sheet.csv:4: concept mug1 needs 'live' \(yes/no\) to pick its prompt list"):
        read_sheet(tmp_path / "sheet.csv", prompts=lists)
    (tmp_path / "sheet.csv").write_text("concept,class_noun,live\ndog1,dog,yes\nvase1,vase,no\n")
    concepts = read_sheet(tmp_path / "sheet.csv", prompts=lists)
    assert concepts["dog1"].prompts() == ["a sks dog running"]
    assert concepts["vase1"].prompts() == ["a sks vase on a table"]
    # one file for all rows still works, and a row's own list wins
    assert read_sheet(tmp_path / "sheet.csv", prompts=lists["object"])["dog1"].prompts() == ["a sks dog on a table"]


# 8. --forcerun then kill -9: tests/test_workflow.py (the documented recovery)


def test_prepared_manifest_keeps_its_schema(tmp_path):
    concept = tmp_path / "c"
    concept.mkdir()
    Image.new("RGB", (8, 8)).save(concept / "a.png")
    manifest = prepare_concept(concept, tmp_path / "out")
    assert manifest.schema == pl.read_parquet(tmp_path / "out/manifest.parquet").schema
    assert manifest.columns[-2:] == ["source_width", "source_height"]
