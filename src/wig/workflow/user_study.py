"""A config's ``user_study:`` block against its study: which entries, which grid point is each
method, and the sets drawn (`wig.user_study.design.draw_sets`) with the generation job that made
each of their images. Checked when the `Study` is built, so a method that is no grid point is
refused before any job runs."""

from __future__ import annotations

from typing import Any

from wig.errors import WigError
from wig.guidance import make
from wig.user_study.design import QUESTIONS, UserStudyError, attention_sets, draw_sets
from wig.workflow.model import GenerationJob, StudyError


def user_study_entries(study) -> list[dict[str, Any]]:
    """Per ``user_study.models`` item of a `wig.workflow.study.Study`: its name (model/fine-tune), model, fine-tune and
    ``{label: (point key, points chunk)}``; raises `StudyError` naming the key."""
    spec = study.config.get("user_study")
    if not spec:
        return []
    if not study.references:
        raise StudyError("user_study: the concepts have no reference images (dataset.root): nothing to rate against")
    entries = []
    for i, item in enumerate(spec["models"]):
        key = f"user_study.models[{i}]"
        model = study.models.get(item["model"])
        if model is None:
            raise StudyError(f"{key}.model: {item['model']!r} is not a models entry ({', '.join(study.models)})")
        finetune = item.get("finetune", next(iter(model.finetunes)))
        if finetune not in model.finetunes:
            raise StudyError(f"{key}.finetune: {finetune!r} is not a fine-tune of models.{model.name}")
        methods = {}
        for label, point_spec in item["methods"].items():
            try:
                point = make(**point_spec)
            except (WigError, TypeError) as err:
                raise StudyError(f"{key}.methods.{label}: {err}") from None
            chunk = next((n for n, ps in model.point_chunks.items() if point.key in {p.key for p in ps}), None)
            if chunk is None:
                raise StudyError(f"{key}.methods.{label}: {point.key} is not a point of models.{model.name}'s grid")
            methods[label] = (point.key, chunk)
        if len({k for k, _ in methods.values()}) < len(methods):
            raise StudyError(f"{key}.methods: two labels name the same grid point")
        name = f"{model.name}/{finetune}"
        if any(e["name"] == name for e in entries):
            raise StudyError(f"{key}: {name} is compared twice")
        entries.append({"name": name, "model": model.name, "finetune": finetune, "methods": methods})
    return entries


def user_study_design(study) -> dict[str, Any] | None:
    """The drawn study as plain data (rule user_study's params): seed, questions, exclusion,
    entries' labels, the attention repeats and per set its concept, prompt, the prompt raters read,
    seed and, per method,
    the generation job's wildcards and the image's grid point. None without ``user_study:``."""
    spec = study.config.get("user_study")
    entries = user_study_entries(study)
    if not entries:
        return None
    try:
        drawn = draw_sets(
            [
                {
                    "name": e["name"],
                    "prompts": {c: study.prompts[c] for c in study.concepts},
                    "seeds": study.config["seeds"],
                }
                for e in entries
            ],
            spec["sets"],
            spec["seed"],
        )
        attention = attention_sets(len(drawn), spec["attention_checks"], spec["seed"])
    except UserStudyError as err:
        raise StudyError(str(err)) from None
    by_name = {e["name"]: e for e in entries}
    sets = []
    for s in drawn:
        entry = by_name[s["entry"]]
        fseed = study.models[entry["model"]].finetunes[entry["finetune"]].seeds[0]
        seeds = next(name for name, chunk in study.seed_chunks.items() if s["seed"] in chunk)
        members = {
            label: {
                "job": GenerationJob(entry["model"], entry["finetune"], s["concept"], fseed, chunk, seeds).wildcards,
                "point": key,
            }
            for label, (key, chunk) in entry["methods"].items()
        }
        concept = study.concepts[s["concept"]]
        # what raters read: the subject named by its class ("a dog in the snow"), not the identifier
        shown = concept.clip_texts("class")[s["prompt_index"]] if concept.named else s["prompt"]
        sets.append({**s, "shown_prompt": shown, "members": members})
    gold = _gold_sets(sets, entries, spec.get("gold", 1), spec["seed"])
    return {
        "seed": spec["seed"],
        "gold": gold,
        "questions": QUESTIONS,
        "exclusion": spec["exclusion"],
        "references": spec["references"],
        "entries": {e["name"]: list(e["methods"]) for e in entries},
        "attention": attention,
        "sets": sets,
        "instructions": spec.get("instructions"),
        "completion": spec.get("completion"),
    }


def _gold_sets(sets: list[dict], entries: list[dict], n_gold: int, seed: int) -> list[dict]:
    """``n_gold`` gold sets per entry, each made from one of its drawn sets (seeded): that set's
    concept, prompt and references, and as candidates the concept's first photo held out of the
    references (`wig.user_study.design.resolve_images` finds it) beside one image each of other
    sets of the entry that show other concepts (``decoys``: (set index, method label))."""
    import random

    out = []
    for entry in entries:
        labels = list(entry["methods"])
        mine = [i for i, s in enumerate(sets) if s["entry"] == entry["name"]]
        rng = random.Random(f"wig-user-study:{seed}:gold:{entry['name']}")
        for i in rng.sample(mine, min(n_gold, len(mine))):
            others = [j for j in mine if sets[j]["concept"] != sets[i]["concept"]]
            if len(others) < len(labels) - 1:
                raise StudyError(
                    f"user_study.gold: a gold set of {entry['name']} shows {len(labels) - 1} images of other "
                    f"subjects, and its sets show {len(others)} (more concepts or sets, or gold: 0)"
                )
            picks = rng.sample(others, len(labels) - 1)
            base = {k: sets[i][k] for k in ("entry", "concept", "prompt_index", "prompt", "shown_prompt", "seed")}
            out.append({**base, "decoys": [(j, labels[rng.randrange(len(labels))]) for j in picks]})
    return out
