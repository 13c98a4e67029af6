"""The second round of bad input (issue 32): each case a new user or an adversary tried on the
newer surfaces, with the hostile file built here. Every refusal: its exit code, one line naming
the file / tensor / key, nothing written, no traceback. The workflow's cases (a bad given
fine-tune stops the run before any generation job; a non-UTF-8 prompt file stops `snakemake -n`)
are in tests/test_workflow.py."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

from wig.cli import main
from wig.concepts import ConceptError, read_dreambooth, read_prompt_list, read_sheet
from wig.errors import WigError
from wig.personalization import make
from wig.personalization.full_weights import FullWeightsError, check_finetune_files
from wig.workflow.config_schema import schema_error
from wig.workflow.search import SearchSettings, summary

from conftest import PROMPTS, STEPS, H, W

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = None  # the shipped schema (wig/workflow/schema.yaml)
DREAMBOOTH = ROOT / "resources/datasets/dreambooth/prompts_and_classes.txt"


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


# 1. A given full fine-tune: names, shapes and dtypes against the base, before anything loads ----


@pytest.fixture(scope="module")
def tuned_unet(tiny_sd, tmp_path_factory):
    """The base UNet's tensors as a fine-tune's state dict file (values as the base's: only the
    file's layout matters to these checks)."""
    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    out = tmp_path_factory.mktemp("tuned") / "unet"
    unet.save_pretrained(out)
    return out


def _variant(tuned_unet, tmp_path, case) -> tuple[Path, str]:
    """A copy of the fine-tune with one tensor broken as ``case`` says; returns it and the tensor."""
    state = load_file(str(tuned_unet / "diffusion_pytorch_model.safetensors"))
    name = sorted(k for k in state if k.endswith("to_k.weight"))[0]
    if case == "int32":
        state[name] = state[name].round().to(torch.int32)
    elif case == "bool":
        state[name] = state[name] > 0
    elif case == "missing":
        del state[name]
    elif case == "nan":
        state[name] = state[name].clone()
        state[name][0, 0] = math.nan
    out = tmp_path / case / "unet"
    out.mkdir(parents=True)
    shutil.copy(tuned_unet / "config.json", out / "config.json")
    if case == "truncated":
        data = (tuned_unet / "diffusion_pytorch_model.safetensors").read_bytes()
        (out / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
        return out, "not a safetensors file"
    save_file(state, out / "diffusion_pytorch_model.safetensors")
    return out, name


_MESSAGES = {
    "int32": "is stored as int32, the base's as float32",
    "bool": "is stored as bool, the base's as float32",
    "missing": "the fine-tune lacks the base's tensor",
    "nan": "holds NaN or inf",
    "truncated": "not a safetensors file",
}


@pytest.mark.parametrize("case", list(_MESSAGES))
def test_a_broken_given_denoiser_is_refused_by_the_cli_naming_the_tensor(tiny_sd, tuned_unet, tmp_path, capsys, case):
    bad, name = _variant(tuned_unet, tmp_path, case)
    out = tmp_path / "img.png"
    args = ["generate", "--model", str(tiny_sd), "--prompt", PROMPTS[0], "--seed", "0", "--steps", str(STEPS)]
    args += ["--height", str(H), "--width", str(W), "--quiet", "--method", "pg", "--omega", "0.4"]
    assert main([*args, "--denoiser", str(bad), "--out", str(out)]) == 1
    line = _one_line(capsys)
    assert _MESSAGES[case] in line and name in line and str(bad) in line
    assert not out.exists() and not list(tmp_path.glob(".img*"))


@pytest.mark.parametrize("case", list(_MESSAGES))
def test_the_resolve_check_refuses_the_same_files_from_their_headers(tiny_sd, tuned_unet, tmp_path, case):
    bad, name = _variant(tuned_unet, tmp_path, case)
    with pytest.raises(FullWeightsError, match=_MESSAGES[case]) as err:
        make("given", weights=str(bad)).check_files(bad, tiny_sd)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_the_resolve_check_passes_a_sound_finetune_and_a_precision_change(tiny_sd, tuned_unet, tmp_path):
    make("given", weights=str(tuned_unet)).check_files(tuned_unet, tiny_sd)
    half = tmp_path / "half"
    half.mkdir()
    state = load_file(str(tuned_unet / "diffusion_pytorch_model.safetensors"))
    save_file({k: v.half() for k, v in state.items()}, half / "diffusion_pytorch_model.safetensors")
    check_finetune_files(tiny_sd, half, "unet")  # fp16 against an fp32 base is a cast, not a fault
    # a pipeline folder given as the fine-tune: its unet/ is read
    make("given", weights=str(tiny_sd)).check_files(tiny_sd, tiny_sd)


def test_a_given_lora_of_integers_is_refused_before_a_pipeline_exists(tiny_sd, lora_path, tmp_path):
    state = load_file(str(lora_path))
    key = sorted(k for k in state if "lora" in k)[0]
    state[key] = torch.ones(state[key].shape, dtype=torch.int32)
    save_file(state, tmp_path / "int.safetensors")
    with pytest.raises(WigError, match=f"{key} is stored as int32, not floats"):
        make("given", weights="lora", kind="lora").check_files(tmp_path / "int.safetensors", tiny_sd)


def test_a_lora_of_integers_is_refused_by_generate(tiny_sd, lora_path, tmp_path, capsys):
    state = load_file(str(lora_path))
    key = sorted(k for k in state if "lora" in k)[0]
    state[key] = torch.ones(state[key].shape, dtype=torch.int32)
    save_file(state, tmp_path / "int.safetensors")
    out = tmp_path / "img.png"
    args = ["generate", "--model", str(tiny_sd), "--prompt", PROMPTS[0], "--seed", "0", "--steps", "2"]
    args += ["--height", str(H), "--width", str(W), "--quiet", "--method", "cfg", "--out", str(out)]
    assert main([*args, "--lora", str(tmp_path / "int.safetensors")]) == 1
    line = _one_line(capsys)
    assert f"{key} is stored as int32" in line and "int.safetensors" in line and not out.exists()


def test_token_embeddings_of_integers_are_refused(tiny_sd, tmp_path):
    from wig.models.pipelines import load_pipeline
    from wig.personalization.tokens import TokenError, read_embeddings

    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    save_file({"clip_l": torch.ones(2, width, dtype=torch.int64)}, tmp_path / "emb.safetensors")
    with pytest.raises(
        TokenError, match=r"emb.safetensors: the embedding tensor clip_l is stored as int64, not floats"
    ):
        read_embeddings(tmp_path / "emb.safetensors", pipe)


# 2. Text files a user hands wig: encoding, empty -------------------------------------------


def _latin1(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("latin-1"))
    return path


@pytest.mark.parametrize(
    "reader, text, line",
    [
        (read_prompt_list, "Prompt\tCategory\nbond\tAbstract\nun caf\u00e9 au lait\tFood\n", 3),
        (read_prompt_list, "a {} on the beach\na {} in a caf\u00e9\n", 2),
        (read_dreambooth, None, None),
        (read_sheet, "concept,class_noun\ndog,chien \u00e9\n", 2),
    ],
)
def test_a_non_utf8_byte_is_named_by_file_and_line(tmp_path, reader, text, line):
    if reader is read_dreambooth:  # the published table with one Latin-1 byte in its 30th subject
        lines = DREAMBOOTH.read_text().splitlines()
        number = next(i for i, s in enumerate(lines) if s.startswith("wolf_plushie"))
        lines[number] = lines[number].replace("wolf", "w\u00f6lf", 1)
        text, line = "\n".join(lines) + "\n", number + 1
    suffix = ".tsv" if text.startswith("Prompt") else (".csv" if reader is read_sheet else ".txt")
    path = _latin1(tmp_path / f"input{suffix}", text)
    with pytest.raises(ConceptError) as err:
        reader(path)
    message = str(err.value)
    assert f"{path}:{line}:" in message and "is not UTF-8 (byte 0x" in message and "\n" not in message


def test_an_empty_tsv_says_it_is_empty_without_a_misleading_prefix(tmp_path):
    from wig.concepts import Concept

    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(ConceptError, match=r"^prompt list .*empty.tsv is empty$"):
        read_prompt_list(tmp_path / "empty.tsv", placeholder=False)
    prompt_set = Concept(id="parti", class_noun="", folder="parti", prompts_file=tmp_path / "empty.tsv")
    with pytest.raises(ConceptError) as err:
        prompt_set.templates()
    assert "has no class noun" not in str(err.value) and "is empty" in str(err.value)
    # a header without the column names what it found; a placeholder error keeps its explanation
    (tmp_path / "other.tsv").write_text("Text\tCategory\nbond\tAbstract\n")
    with pytest.raises(ConceptError, match=r"needs a 'Prompt' column \(its header: 'Text', 'Category'\)"):
        read_prompt_list(tmp_path / "other.tsv", placeholder=False)
    (tmp_path / "braces.tsv").write_text("Prompt\na {} dog\n")
    braces = Concept(id="parti", class_noun="", folder="parti", prompts_file=tmp_path / "braces.tsv")
    with pytest.raises(ConceptError, match="has no class noun, so its prompts are used whole"):
        braces.templates()


# 3. Encoders and fine-tune files with a missing sibling or stripped metadata ---------------


def test_a_dreamsim_adapter_without_its_weights_names_the_file(tmp_path):
    from wig.evaluation.embeddings import EmbeddingError
    from wig.evaluation.encoders import build_tiny_encoder, load_encoder

    twin = tmp_path / "dreamsim"
    build_tiny_encoder("dreamsim", twin)
    (adapter,) = twin.glob("*_lora")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(EmbeddingError) as err:
        load_encoder({"kind": "dreamsim", "tiny": True}, twin, device="cpu")
    assert str(err.value).endswith(
        f"{adapter}: the DreamSim adapter lacks adapter_model.safetensors (a partial download?)"
    )
    (adapter / "adapter_config.json").write_bytes(b'{"r": 4, "lora_alpha": 8, "note": "\xff"}')
    save_file({"x": torch.zeros(1)}, adapter / "adapter_model.safetensors")
    with pytest.raises(EmbeddingError, match=r"adapter_config.json:1: DreamSim adapter config is not UTF-8"):
        load_encoder({"kind": "dreamsim", "tiny": True}, twin, device="cpu")


# 4. Config: the search, unknown keys --------------------------------------------------------


@pytest.mark.parametrize("field", ["lo", "hi", "tolerance", "resolution"])
def test_a_nan_in_a_search_setting_is_named_as_such(field):
    values = dict(lo=1.0, hi=9.0, tolerance=0.5, resolution=0.1, max_probes=12) | {field: math.nan}
    with pytest.raises(WigError, match="is nan, not a finite number"):
        SearchSettings(**values)


def test_a_search_stopped_by_its_resolution_says_the_tolerance_was_not_met():
    settings = {"parameter": "scale", "tolerance": 0.05, "resolution": 0.05, "max_probes": 20}
    state = {"best": 4.5, "known": [{}] * 7, "lo": 4.4, "hi": 4.6, "reason": "resolution"}
    line = summary(settings, state)
    assert "the tolerance 0.05 was not met" in line and "resolution grid (0.05)" in line and "\n" not in line
    assert "not met" not in summary(settings, state | {"hi": 4.44, "reason": "tolerance"})
    assert "max_probes (20)" in summary(settings, state | {"reason": "max_probes"})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(personalisation={}), "unknown key 'personalisation' at the top level (did you mean "),
        (
            lambda c: c["evaluation"].update(metrix=["dino"]),
            "unknown key 'metrix' in evaluation (did you mean 'metrics'?)",
        ),
        (lambda c: c["sampling"].update(steps="many"), "sampling.steps: 'many' is not of type 'integer'"),
        (lambda c: c["evaluation"].update(protocols=["dreamatcher"]), "is not one of dreammatcher, standard"),
    ],
)
def test_a_schema_error_is_one_short_line_naming_the_key(edit, message):
    import yaml

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert schema_error(config, SCHEMA) is None
    edit(config)
    line = schema_error(config, SCHEMA)
    assert message in line and "\n" not in line and len(line) < 200, line


# 5. wig train: a setting's choices belong to the method that has it --------------------------


def test_a_shared_flag_keeps_each_methods_own_choices(tiny_sd, tmp_path, capsys):
    from wig.cli import build_parser

    base = ["train", "--model", str(tiny_sd), "--instance-dir", "x", "--instance-prompt", "a photo of sks dog"]
    args = build_parser().parse_args([*base, "--method", "db-lora", "--mixed-precision", "fp16", "--out", "o"])
    assert args.setting_mixed_precision == "fp16"  # the README's GPU setting parses for db-lora
    # classdiffusion fixes it at "no": refused by the method, naming it, not by argparse for everyone
    rc = main([*base, "--method", "classdiffusion", "--mixed-precision", "fp16", "--out", str(tmp_path / "o")])
    assert rc == 1 and "mixed_precision" in _one_line(capsys) and not (tmp_path / "o").exists()
    helptext = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--weights" not in helptext and "--low-rank" not in helptext  # given's flags: given does not train
    assert "{no,fp16,bf16}" in helptext


# 6. The ground-floor readers every loader uses: truncated, column-less, invalid, missing -----


def test_a_truncated_or_columnless_manifest_is_named_by_embed_and_read_images(tmp_path, capsys):
    import polars as pl

    from wig.concepts import read_images

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "manifest.parquet").write_bytes(b"PAR1 cut short")
    out = tmp_path / "emb.parquet"
    args = ["embed", "--kind", "dino", "--tiny", str(tmp_path / "dino"), "--build-tiny", "--images", str(folder)]
    assert main([*args, "--out", str(out)]) == 1
    assert f"cannot read image manifest {folder / 'manifest.parquet'}: parquet" in _one_line(capsys)
    pl.DataFrame({"file": ["a.png"]}).write_parquet(folder / "manifest.parquet")
    args.remove("--build-tiny")  # the twin was built by the first call
    assert main([*args, "--out", str(out)]) == 1
    assert "image manifest has no column 'path' (columns: file)" in _one_line(capsys) and not out.exists()
    with pytest.raises(ConceptError, match="image manifest has no column 'path'"):
        read_images(folder)


def test_json_and_text_readers_name_the_file_and_line(tmp_path):
    from wig.readers import read_json, read_text

    (tmp_path / "bad.json").write_text('{"a": 1,\n "b": }\n')
    with pytest.raises(WigError, match=r"bad.json:2: config is not valid JSON"):
        read_json(tmp_path / "bad.json", "config")
    with pytest.raises(WigError, match=r"cannot read prompt list .*absent.txt: No such file"):
        read_text(tmp_path / "absent.txt", "prompt list")


def test_an_encoder_config_without_an_entry_it_reads_is_named(tmp_path):
    from wig.evaluation.embeddings import EmbeddingError
    from wig.evaluation.encoders import build_tiny_encoder, load_encoder

    build_tiny_encoder("scene", tmp_path / "scene")
    config = json.loads((tmp_path / "scene/config.json").read_text())
    del config["size"]
    (tmp_path / "scene/config.json").write_text(json.dumps(config))
    with pytest.raises(EmbeddingError, match=r"cannot load scene encoder .*scene: its config has no 'size'"):
        load_encoder({"kind": "scene", "tiny": True}, tmp_path / "scene", device="cpu")


def test_the_resolve_check_of_a_base_pads_only_the_first_convolution(tiny_sd, tmp_path):
    """kind base: the study's model (InstructPix2Pix, 8 input channels) is θ', the given weights
    (SD) are θ with 4: accepted; a base whose other tensor differs in shape is still refused."""
    from wig.models.families.ip2p import build_tiny_ip2p

    build_tiny_ip2p(tmp_path / "ip2p")
    make("given", weights=str(tiny_sd), kind="base").check_files(tiny_sd, tmp_path / "ip2p")
    with pytest.raises(FullWeightsError, match=r"conv_in.weight has shape \(32, 8, 3, 3\)"):  # no padding asked
        make("given", weights=str(tiny_sd)).check_files(tmp_path / "ip2p", tiny_sd)


@pytest.mark.parametrize("study", ["../elsewhere", "a b", "", "/abs"])
def test_a_study_name_that_is_not_one_folder_is_refused(study):
    """`study` names the folder under <results>/ that holds everything the study writes: a path, a
    blank or a name with spaces would scatter or hide it."""
    import yaml

    from wig.workflow.config_schema import read_config

    config = yaml.safe_load((ROOT / "config/config.yaml").read_text()) | {"study": study}
    with pytest.raises(WigError, match="study"):
        read_config(config)


def test_a_shipped_resource_is_the_workflows_unless_the_project_has_its_own(tmp_path):
    """`resolve_shipped`: a `resources/…` path the project lacks names the workflow's file (a
    deployed module); the project's own file at the same path wins; other paths stay as written."""
    from wig.workflow.config_schema import resolve_shipped

    project, checkout = tmp_path / "project", tmp_path / "wig"
    (checkout / "resources/datasets").mkdir(parents=True)
    (checkout / "resources/datasets/sheet.csv").write_text("id\n")
    (checkout / "resources/models/base").mkdir(parents=True)
    (project / "resources/models/base").mkdir(parents=True)  # the project's own copy
    config = {
        "dataset": {"sheet": "resources/datasets/sheet.csv", "root": "data/photos"},
        "models": {"m": {"path": "resources/models/base"}, "n": {"path": "resources/models/missing"}},
        "seeds": [0],
    }
    assert resolve_shipped(config, checkout, project) is config
    assert config["dataset"] == {"sheet": str(checkout / "resources/datasets/sheet.csv"), "root": "data/photos"}
    assert config["models"] == {"m": {"path": "resources/models/base"}, "n": {"path": "resources/models/missing"}}
