"""A metric, an encoder kind and a personalization method defined here, in the test file — no
shipped file touched — run through the study (config, checks), the DAG's planning (Snakemake in
this process) and the tables (trained, sampled, embedded, scored, tabled)."""

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from wig.atomic import atomic_dir
from wig.branches import FULL, WEAK
from wig.concepts import save_png
from wig.evaluation.base import ENCODERS, METRICS, Encoder, Metric, check_protocol, register_encoder, register_metric
from wig.evaluation.encoders import build_tiny_encoder, embed_images, load_encoder
from wig.evaluation.markdown import metrics_markdown
from wig.evaluation.metrics import aggregate, finetune_table, score_job
from wig.guidance import Guidance
from wig.models.pipelines import load_pipeline
from wig.personalization import REGISTRY as PERSONALIZATION
from wig.personalization import Subject, TrainedMethod, make, register
from wig.personalization.lora import LORA_WEIGHT_NAME, LoraBranchWeights, attach_loras, random_lora
from wig.personalization.training import LOG_SCHEMA
from wig.provenance import encoder_id
from wig.sampling.generation import generate_samples
from wig.settings import param
from wig.workflow.config_schema import read_config
from wig.workflow.study import Study, StudyError

from conftest import H, W, plan

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
BINS = 4


class ColourHistogram(Encoder):
    """An encoder kind with no network: a per-channel colour histogram (``bins`` per channel,
    read from its tiny twin's folder), L1-normalised per channel."""

    kind = "toy-histogram"
    real = "none: a tiny twin only"

    @classmethod
    def load(cls, spec, source, device):
        bins = json.loads((Path(source) / "histogram.json").read_text())["bins"]
        return cls(encoder_id(spec), bins, device)

    @staticmethod
    def build_tiny(out):
        (out / "histogram.json").write_text(json.dumps({"bins": BINS}))

    @staticmethod
    def resolve(spec):
        raise NotImplementedError("a tiny twin only")

    def preprocess(self, images, protocol):
        import torch

        check_protocol(protocol)
        arrays = [np.asarray(im.convert("RGB").resize((16, 16)), dtype=np.float32) / 256.0 for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def _embed(self, x):
        import torch

        idx = (x * self.model).long().clamp(0, self.model - 1)  # (N, 3, h, w) bin of each value
        counts = torch.nn.functional.one_hot(idx, self.model).float().sum(dim=(2, 3))  # (N, 3, bins)
        return (counts / counts.sum(-1, keepdim=True)).reshape(len(x), -1)


def histogram_overlap(generated, references):
    """Mean over references of the histogram intersection Σ min(g, r) / 3 (1 = same colours)."""
    g, r = np.asarray(generated, dtype=np.float64), np.asarray(references, dtype=np.float64)
    return np.minimum(g[:, None, :], r[None, :, :]).sum(-1).mean(axis=1) / 3.0


@dataclass(frozen=True)
class SeededLoRA(TrainedMethod):
    """A stand-in fine-tune: seeded random LoRAs of size ``std`` (weak: half) instead of training."""

    name = "toy-seeded-lora"
    std: float = param(0.2, "size of the random LoRA", above=0.0)

    def train(self, pipe, subject, out, seed=0, progress=True, overwrite=False):
        with atomic_dir(out, overwrite=overwrite) as tmp:
            random_lora(pipe, tmp / FULL, std=self.std, seed=seed)
            random_lora(pipe, tmp / WEAK, std=self.std / 2, seed=seed + 1)
            row = {"step": 1, "loss": 0.0, "instance_loss": 0.0, "prior_loss": None, "lr": 0.0, "seconds": 0.0}
            log = pl.DataFrame([row], schema=LOG_SCHEMA)
            log.write_parquet(tmp / "log.parquet")
        return log

    def checkpoint_files(self, out):
        return {name: Path(out) / name / LORA_WEIGHT_NAME for name in (FULL, WEAK)}

    def attach(self, pipe, out, weak=True):
        files = self.checkpoint_files(out)
        attach_loras(pipe, files[FULL], files[WEAK] if weak else None)
        return LoraBranchWeights()


@pytest.fixture
def plugins():
    register_encoder(ColourHistogram)
    metric = register_metric(
        Metric("toy_overlap", "colour overlap", "subject", "references", histogram_overlap, encoder="toy-histogram")
    )
    register(SeededLoRA)
    yield metric
    ENCODERS.pop(ColourHistogram.kind)
    METRICS.pop(metric.name)
    PERSONALIZATION.pop(SeededLoRA.name)


def _config(**changes):
    """The tiny plumbing study, SD only, with the plug-ins beside shipped ones."""
    config = yaml.safe_load((ROOT / ".test/config/tiny.yaml").read_text())
    config["models"] = {"tiny-sd": config["models"]["tiny-sd"]}
    config["personalization"] = [config["personalization"][0], {"method": "toy-seeded-lora", "std": 0.3}]
    config["encoders"] = {"dino": {"tiny": True}, "clip": {"tiny": True}, "toy-histogram": {"tiny": True}}
    config["evaluation"] = {**config.get("evaluation", {}), "metrics": ["dino", "clip_t", "toy_overlap"]}
    config.update(changes)
    read_config(config)  # the schema takes any name: the study checks them
    return config


def test_the_study_takes_them_by_name_and_refuses_a_near_miss(plugins, monkeypatch):
    monkeypatch.chdir(ROOT)
    study = Study.from_config(_config())
    assert study.metrics == ("dino", "clip_t", "toy_overlap")
    assert "toy-histogram" in study.encoders and "toy-histogram" in study.reference_encoders()
    assert ("tiny-sd", "toy-seeded-lora") in study.finetune_pairs()
    assert study.finetune_settings("tiny-sd", "toy-seeded-lora")["std"] == 0.3
    assert study.summary()["metrics"] == "DINO, CLIP-T, colour overlap"
    with pytest.raises(
        StudyError, match=r"encoders.toy-histogran: unknown encoder kind .*did you mean 'toy-histogram'"
    ):
        Study.from_config(_config(encoders={"toy-histogran": {"tiny": True}}))
    with pytest.raises(
        StudyError, match=r"evaluation.metrics: unknown metric 'toy_overlab'; did you mean 'toy_overlap'"
    ):
        Study.from_config(_config(evaluation={"metrics": ["dino", "clip_t", "toy_overlab"]}))


def test_the_dag_plans_their_jobs(plugins, tmp_path):
    jobs = plan(_config(), tmp_path)
    per_rule = Counter(rule for rule, _ in jobs)

    def of(rule, **wildcards):
        return [w for r, w in jobs if r == rule and all(w.get(k) == v for k, v in wildcards.items())]

    assert of("build_tiny_encoder", encoder="toy-histogram") == [{"encoder": "toy-histogram"}]
    concepts = {w["concept"] for w in of("prepare")}
    trained = of("train", finetune="toy-seeded-lora")
    assert {w["concept"] for w in trained} == concepts and len(trained) == len(of("train", finetune="db-lora"))
    toy_generations = of("generate", finetune="toy-seeded-lora")
    assert toy_generations and len(of("embed_samples", encoder="toy-histogram")) == per_rule["generate"]
    assert {w["concept"] for w in of("embed_references", encoder="toy-histogram")} == concepts
    assert per_rule["score"] == per_rule["generate"]
    # without the plug-ins in the config, none of their jobs
    plain = _config(
        personalization=_config()["personalization"][:1], encoders={"dino": {"tiny": True}, "clip": {"tiny": True}}
    )
    plain["evaluation"]["metrics"] = ["dino", "clip_t"]
    plain_jobs = plan(plain, tmp_path / "plain")
    assert not [
        w for _, w in plain_jobs if w.get("finetune") == "toy-seeded-lora" or w.get("encoder") == "toy-histogram"
    ]
    rules = Counter(r for r, _ in plain_jobs)
    assert rules["generate"] == len(of("generate", finetune="db-lora")) and rules["train"] == len(trained)


def _folder(images, out: Path) -> Path:
    out.mkdir(parents=True)
    rows = [{"path": f"{i:02d}.png", "sha256": save_png(im, out / f"{i:02d}.png")} for i, im in enumerate(images)]
    pl.DataFrame(rows).write_parquet(out / "manifest.parquet")
    return out


def test_they_train_sample_embed_score_and_table(plugins, tiny_sd, tmp_path):
    rng = np.random.default_rng(0)
    refs = [Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) for _ in range(3)]
    pipe = load_pipeline(str(tiny_sd), device="cpu", dtype="float32")
    spec = {"kind": "toy-histogram", "tiny": True, "seed": 0}
    build_tiny_encoder("toy-histogram", tmp_path / "enc")
    encoder = load_encoder(spec, tmp_path / "enc", device="cpu")
    refs_file = tmp_path / "refs.parquet"
    embed_images(encoder, _folder(refs, tmp_path / "refs"), ["standard"]).write_parquet(refs_file)

    tables, settings = {}, {}
    for std in (0.1, 0.4):
        method = make("toy-seeded-lora", std=std)
        method.train(pipe, Subject(refs, "a photo of sks dog"), tmp_path / f"run{std}", seed=3)
        weights = method.attach(pipe, tmp_path / f"run{std}")
        points = {g.key: g for g in (Guidance("cfg", 5.0), Guidance("pg", 5.0, omega=0.0))}
        samples = tmp_path / f"samples{std}"
        generate_samples(
            pipe,
            ["a photo of sks dog"],
            points,
            [0, 1],
            samples,
            steps=2,
            height=H,
            width=W,
            progress=False,
            weights=weights,
        )
        pipe.unload_lora_weights()
        files = {"toy-histogram": tmp_path / f"emb{std}.parquet", "toy-histogram_refs": refs_file}
        embed_images(encoder, samples, ["standard"]).write_parquet(files["toy-histogram"])
        scores = score_job(
            samples,
            "dog",
            files,
            {"toy-histogram": encoder.id},
            tmp_path / f"scores{std}.parquet",
            metrics=["toy_overlap"],
        )
        # each score is the formula from the embeddings
        emb = pl.read_parquet(files["toy-histogram"]).join(scores.select("path", "toy_overlap"), on="path")
        expected = histogram_overlap(
            np.stack(emb["embedding"].to_numpy()), np.stack(pl.read_parquet(refs_file)["embedding"].to_numpy())
        )
        np.testing.assert_allclose(emb["toy_overlap"].to_numpy(), expected, atol=1e-6)
        assert ((0 < expected) & (expected <= 1)).all()
        tables[("tiny-sd", f"toy-{std}")] = aggregate(scores, n_boot=50)
        settings[("tiny-sd", f"toy-{std}")] = method.settings()

    table = finetune_table(tables, settings)  # the fine-tunes told apart by the plug-in's own setting
    assert table["finetune_std"].to_list() == [0.1, 0.1, 0.4, 0.4] and table["method"].to_list() == ["cfg", "pg"] * 2
    assert "finetune_method" not in table.columns and {"toy_overlap", "toy_overlap_lo"} <= set(table.columns)
    # a larger random LoRA moves the images further from the base's: the scores differ by fine-tune
    assert table["toy_overlap"][0] != table["toy_overlap"][2]
    markdown = metrics_markdown(tables[("tiny-sd", "toy-0.1")])
    header, _, *rows = markdown.splitlines()
    assert "| toy_overlap |" in header and [r.split(" | ")[0] for r in rows] == ["| cfg", "| pg"]


def test_an_entry_point_that_fails_to_import_is_one_line_naming_it(tmp_path):
    """A broken plug-in package stops wig with one line naming the entry point and its
    distribution, not a traceback from inside the import machinery."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "broken_plugin").mkdir(parents=True)
    (site / "broken_plugin/__init__.py").write_text("import no_such_module_anywhere\n")
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[wig.plugins]\nbroken = broken_plugin\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run(
        [sys.executable, "-m", "wig.cli", "plan", "--configfile", "x.yaml"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "plug-in 'broken' (broken_plugin, from broken-plugin): cannot load it: ModuleNotFoundError" in line


def test_a_plugin_familys_tiny_config_missing_or_broken_is_one_line_naming_the_file(tmp_path, monkeypatch):
    from wig.errors import WigError
    from wig.models.base import shipped_config

    package = tmp_path / "strangers_configs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WigError, match=r"^tiny config strangers_configs/tiny_gone.json: cannot read it"):
        shipped_config("gone", "strangers_configs")
    (package / "tiny_cut.json").write_text('{"unet": {"sample_size": 3')  # truncated
    with pytest.raises(WigError, match=r"^tiny config strangers_configs/tiny_cut.json: cannot read it"):
        shipped_config("cut", "strangers_configs")
    (package / "tiny_list.json").write_text("[1, 2]")
    with pytest.raises(WigError, match="tiny_list.json: not a JSON object"):
        shipped_config("list", "strangers_configs")
    (package / "tiny_latin.json").write_bytes('{"note": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(WigError, match="tiny_latin.json: cannot read it"):
        shipped_config("latin", "strangers_configs")
    with pytest.raises(WigError, match="no_such_package/tiny_sd.json: cannot read it"):
        shipped_config("sd", "no_such_package")


def test_the_entry_point_scan_reads_a_strangers_metadata_in_any_encoding(tmp_path, monkeypatch):
    from wig.plugins import _group_named

    info = tmp_path / "odd-1.0.dist-info"
    info.mkdir()
    (info / "entry_points.txt").write_bytes("[console_scripts]\nodd = caf\xe9:main\n".encode("latin-1"))
    monkeypatch.setattr("sys.path", [str(tmp_path)])
    assert _group_named() is False  # read, not crashed on
    (info / "entry_points.txt").write_bytes("[wig.plugins]\nodd = caf\xe9\n".encode("latin-1"))
    assert _group_named() is True
