"""Each rule's settings, from the study: what a job's ``params:`` carry (so Snakemake's params
rerun trigger sees every change and nothing else) — canonical, key-sorted values.

`RuleParams` is the part of `wig.workflow.study.Study` that answers "what are this job's
settings?"; the study's fields (``config``, ``models``, ``concepts``, …) are its state.
"""

from __future__ import annotations

from pathlib import Path

from wig.concepts import TEXTS
from wig.evaluation.metrics import REGISTRY as METRICS
from wig.guidance import GuidanceMethod
from wig.models.families import default_config
from wig.provenance import encoder_id
from wig.workflow.model import (
    GenerationJob,
    StudyError,
    TrainingRun,
    canon,
)
from wig.workflow.search import PROBE, selection_split


def pretrain_config(spec: dict, stage: str) -> dict:
    """The part of ``tiny_synthetic.json`` a pretraining stage (``vae`` or ``model``) of a
    ``tiny: synthetic`` model entry reads, with its seed and its ``pretrain:`` step counts: a UNet
    setting keeps the autoencoder."""
    keys = {
        "vae": ("size", "vae", "vae_training"),
        "model": ("size", "unet", "text_encoder", "scheduler", "training"),
    }[stage]
    shipped = default_config("synthetic")
    for section, key in (("vae_training", "vae_steps"), ("training", "steps")):
        if key in spec.get("pretrain", {}):
            shipped[section]["steps"] = spec["pretrain"][key]
    return canon({"seed": spec.get("seed", 0), **{k: shipped[k] for k in keys}})


class RuleParams:
    """The per-rule settings of a `Study` (a mix-in: it reads the study's fields)."""

    # Each takes the wildcard values of the job by their names (``model``, ``concept``, ``noun``,
    # ``finetune``, ``fseed``, ``points``, ``encoder``), so the workflow passes them straight through.

    def model_spec(self, model: str) -> dict:
        return canon(self.models[model].spec)

    def tiny_config(self, model: str) -> dict:
        """The shipped config of a tiny twin: editing it rebuilds the twin."""
        return canon(default_config(self.models[model].spec["tiny"]))

    def pretrain_config(self, model: str, stage: str) -> dict:
        return pretrain_config(self.models[model].spec, stage)

    def concept_folder(self, concept: str) -> str:
        return str(Path(self.config["dataset"]["root"]) / self.concepts[concept].folder)

    def concept_prompts(self, model: str, finetune: str, concept: str) -> list[str]:
        """A concept's evaluation prompts as a fine-tune names the subject (`PersonalizationMethod.identifier`)."""
        identifier = self._identifier(model, finetune)
        return self.concepts[concept].prompts(identifier)[: len(self.prompts[concept])]

    def _identifier(self, model: str, finetune: str) -> str:
        return self.models[model].finetunes[finetune].method.identifier(self.config["dataset"]["identifier"])

    def class_image_settings(self, model: str, noun: str) -> dict:
        settings = self.config["class_images"]
        # one set per (model, class) serves every prior-preserving fine-tune: drawn at the largest
        # resolution among them (training resizes)
        resolution = max(f.method.resolution for f in self.models[model].finetunes.values() if f.method.prior)
        return canon(
            {
                "prompt": self.class_prompt(self.classes[noun]),
                **{k: settings[k] for k in ("count", "seed", "steps", "scale")},
                "height": resolution,
                "width": resolution,
            }
        )

    def finetune_weights(self, model: str, finetune: str) -> dict:
        """What a given (not trained) fine-tune's weights are, for its resolve rule."""
        method = self.models[model].finetunes[finetune].method
        return canon({"weights": method.weights, "kind": method.kind})

    def finetune_settings(self, model: str, finetune: str) -> dict:
        """The fine-tune's method and settings (``make`` takes them back)."""
        return canon(self.models[model].finetunes[finetune].method.settings())

    def subject_prompts(self, model: str, finetune: str, concept: str) -> dict:
        """A run's instance prompt and, with prior preservation, its class prompt."""
        ds = self.config["dataset"]
        subject = self.concepts[concept]
        prior = self.models[model].finetunes[finetune].method.prior
        return {
            "prompt": ds["instance_prompt"].format(subject.subject(self._identifier(model, finetune))),
            "class_prompt": self.class_prompt(subject.class_noun) if prior else None,
        }

    def learning_runs(self, model: str, finetune: str) -> list[TrainingRun]:
        """The runs whose subjects rule learning checks: a synthetic-world study's trained fine-tunes."""
        if not self.render or not self.models[model].finetunes[finetune].method.trains:
            return []
        return list(self.training_runs(model, finetune))

    def learning_settings(self, model: str, finetune: str) -> dict:
        """Rule learning's settings: seeds per prompt, CFG's λ (default: the grid's middle CFG λ),
        the instance prompt, the words naming each subject, the runs as (concept, LoRA seed)."""
        settings = self.config["learning"]
        scales = self.cfg_scales or [7.5]
        identifier = self._identifier(model, finetune)
        return canon(
            {
                "seeds": list(range(settings["seeds"])),
                "scale": settings.get("scale") or scales[len(scales) // 2],
                "instance_prompt": self.config["dataset"]["instance_prompt"],
                "subjects": {c: self.concepts[c].subject(identifier) for c in self.concepts},
                "runs": [[r.concept, r.seed] for r in self.learning_runs(model, finetune)],
            }
        )

    def points_of(self, model: str, points: str) -> tuple[GuidanceMethod, ...]:
        """A generation job's grid points: a chunk of the grid, or a search's probe (probe/<search>/<value>)."""
        if points in self.models[model].point_chunks:
            return self.models[model].point_chunks[points]
        prefix, search, value = points.split("/")
        if prefix != PROBE or search not in self.searches:
            raise StudyError(f"no generation job {points!r} for model {model}")
        return (self.searches[search].point(float(value)),)

    def probe_chunk(self, model: str, search: str, value: float) -> str:
        """The generation job of a probe: the grid's job that holds its point (so a probe on the grid is
        the grid's image set), else its own, probe/<search>/<value>."""
        key = self.searches[search].point(value).key
        for name, points in self.models[model].point_chunks.items():
            if key in {p.key for p in points}:
                return name
        return self.searches[search].chunk(value)

    def probe_jobs(self, model: str, finetune: str, search: str, value: float) -> list[GenerationJob]:
        """Every generation job of one probe: each concept, fine-tune seed and seed chunk."""
        chunk = self.probe_chunk(model, search, value)
        return [
            GenerationJob(run.model, run.finetune, run.concept, run.seed, chunk, seeds)
            for run in self.training_runs(model, finetune)
            for seeds in self.seed_chunks
        ]

    @property
    def selection(self) -> dict[str, list[int]]:
        """Per concept, the prompt indices searches read (`selection`); the rest report their choice."""
        sel = self.config["selection"]
        return selection_split({c: len(p) for c, p in self.prompts.items()}, sel["fraction"], sel["seed"])

    def search_settings(self, search: str) -> dict:
        """A search's settings (its step jobs' params): the parameter, bracket, stopping rule, objective."""
        spec = self.searches[search]
        b = spec.bounds
        return canon(
            {
                "method": spec.method,
                "parameter": spec.parameter,
                "settings": dict(spec.settings),
                "bracket": [b.lo, b.hi],
                "tolerance": b.tolerance,
                "resolution": b.resolution,
                "max_probes": b.max_probes,
                "objective": spec.objective,
                "text_at_least": spec.text_at_least.settings() if spec.text_at_least else None,
                "protocol": self.config["evaluation"].get("plot_protocol"),
            }
        )

    def extra_texts_of(self, model: str, points: str, concept: str) -> dict:
        """A generation job's extra texts: for each text its points' branches name, one per prompt."""
        names = sorted({name for p in self.points_of(model, points) for name in p.extra_texts})
        n = len(self.prompts[concept])
        return {name: TEXTS[name](self.concepts[concept])[:n] for name in names}

    def guidance_of(self, model: str, points: str) -> dict:
        """A generation job's points: {point key: guidance settings}."""
        return canon({p.key: p.settings() for p in self.points_of(model, points)})

    def grid_layout(self, model: str, concept: str) -> dict:
        """The image grid of a (model, fine-tune, concept): its rows (grid points, in grid order, by key and
        by label) and its columns (seed × prompt)."""
        points = self.models[model].points
        shown = len(self.prompts[concept][: self.config["evaluation"]["grid_prompts"]])
        return {
            "points": [p.key for p in points],
            "rows": [f"{p.method} {p.point_name}" for p in points],
            "prompts": shown,  # the first prompts of each seed (`evaluation.grid_prompts`)
            "columns": [f"s{seed} p{i:02d}" for seed in self.config["seeds"] for i in range(shown)],
        }

    def encoder_spec(self, encoder: str) -> dict:
        return canon(self.encoders[encoder])

    def trained_encoders(self) -> list[str]:
        """The encoders trained here (rule train_encoder)."""
        return [kind for kind, spec in self.encoders.items() if "train" in spec]

    def metric_encoders(self) -> list[str]:
        """The encoders whose image embeddings an enabled metric reads."""
        return list(dict.fromkeys(METRICS[m].encoder for m in self.metrics if METRICS[m].encoder is not None))

    def encoder_ids(self) -> dict:
        """The stable name of each encoder a metric reads, written into and checked against the
        embedding files."""
        return canon({kind: encoder_id(self.encoders[kind]) for kind in self.metric_encoders()})

    def reference_encoders(self) -> list[str]:
        """The encoders whose embeddings of the concept's reference images an enabled metric reads."""
        return list(dict.fromkeys(METRICS[m].encoder for m in self.metrics if METRICS[m].reads == "references"))

    def text_encoders(self) -> list[str]:
        """The encoders whose prompt-text embeddings an enabled metric reads."""
        return list(dict.fromkeys(METRICS[m].encoder for m in self.metrics if METRICS[m].reads == "texts"))

    def metric_texts(self, concept: str) -> list[str]:
        """The concept's prompts as the text metrics read them (CLIP-T, PickScore): see `evaluation.clip_t_text`."""
        texts = self.concepts[concept].clip_texts(self.config["evaluation"]["clip_t_text"])
        return texts[: self.config["dataset"]["max_prompts"]]
