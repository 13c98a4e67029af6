"""What raters see: sets drawn from a finished study, and each rater's order of them.

A *set* is one (concept, prompt, sampling seed) of one study entry (a model and its fine-tune):
one image per compared method, all made from the same initial noise, and the concept's
reference images. `draw_sets` draws them reproducibly from the config's seed; `build_study`
writes the study folder that `wig serve-study` serves:

- ``study.json``: the questions, the exclusion rule, the entries and their method labels, and per
  set its opaque id, the prompt raters read (``shown_prompt``: the model's prompt with the subject's
  identifier replaced by its class noun, "a dog in the snow" for "a sks dog in the snow"),
  reference image ids and ``{image id: method label}``. Attention
  checks are sets of their own (a fresh id) with ``repeat_of`` naming the set they repeat. The
  server reads this file and never sends it: the browser only ever sees opaque ids.
- ``images/{id}.png``: every candidate and reference image, re-encoded from pixels alone (no
  text chunk, no ICC profile, no file name from the study), under a secret-keyed id.

Blind by construction. The *design* — which sets, which repeats, every rater's order of sets and
the permutation of each set's stored images — is a function of the config's seed, reproducible and
public. The *ids* are not: they are keyed by the study's secret (`study_secret`: made once from the
operating system's generator, kept beside the study folder, never served), so a rebuild keeps them
and the votes bound to them, while no one without the secret can link an id to its method. A
set's images are stored sorted by id, so the stored order (which a rater's order permutes) is
unrelated to the methods; the files are written in a keyed order with one fixed mtime; an
attention check repeats a set under fresh set and image ids, its images re-encoded to other bytes.
The secret lives beside the study folder as ``<folder>.secret``. Threat model: a rater who holds the code, the
config (its seed), and their own token sees the prompt, the references, and each set's images —
pixels, in their order, under ids — and can replay every seeded draw; what links an image to its
method is the secret id ↔ method table in ``study.json``, which is never served, so without the
server's files they can do no better than chance (tested by an attacker who tries the seeded ids,
header and file order, and the rater's plan). What the pixels themselves show (a method's look, a
repeat's content) is what the study measures and is not hidden.

`rater_plan` is a rater's order of the sets and the permutation of each set's stored images: a
function of the study's seed and the rater's number alone (the votes database stores only the
rater's number); which method each position shows follows from the secret ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from wig.atomic import atomic_dir
from wig.errors import WigError

STUDY_FILE = "study.json"
GOLD, DECOY = "reference", "decoy"  # a gold set's images: the subject's held-out photo, other subjects' images
_ID = re.compile(r"[0-9a-f]{8,64}")  # an image id: hex, so it names a file in images/ and nothing else
UNDECIDED = "undecided"
# the two questions of the paper's study, asked of every set (the keys are stored with each vote)
QUESTIONS = {
    "subject": "Which image shows the subject of the reference images most faithfully?",
    "text": "Which image matches the text prompt best?",
}


# the instructions/consent page a rater agrees to before their first set (user_study.instructions
# replaces it: a study run with strangers names who runs it, what is stored and whom to contact)
DEFAULT_INSTRUCTIONS = """You will see sets of generated images. Each set shows reference photos of one \
subject, a text prompt, and several images generated from that prompt.

For each set, answer two questions: which image shows the subject of the reference photos most \
faithfully, and which image matches the text prompt best. Judge each image as a whole; if you \
cannot decide, choose "Undecided". Some sets may appear twice.

Keys: 1, 2, 3 and so on choose an image, U chooses Undecided, Enter goes on; click an image to enlarge it.

Taking part is voluntary and you may stop at any time. Only your answers, their times and (if the \
study link carries one) your participant id on the recruiting platform are stored."""


class UserStudyError(WigError):
    """A user study that cannot be drawn, built or read."""


def draw_sets(entries: Sequence[Mapping[str, Any]], n_sets: int, seed: int) -> list[dict]:
    """``n_sets`` distinct (concept, prompt, seed) per entry, reproducibly.

    ``entries``: per study entry ``{"name", "prompts": {concept: [prompt, ...]}, "seeds": [...]}``.
    Concepts are visited in a seeded order, round-robin, so 15 sets over 16 concepts show 15
    subjects; within a concept, prompt and seed are drawn without replacement. Each entry draws
    from its own generator (seed and entry name), so adding an entry leaves the others' sets as
    they were."""
    sets = []
    for entry in entries:
        rng = random.Random(f"wig-user-study:{seed}:{entry['name']}")
        prompts = entry["prompts"]
        pool = {c: [(i, s) for i in range(len(prompts[c])) for s in entry["seeds"]] for c in sorted(prompts)}
        available = sum(map(len, pool.values()))
        if n_sets > available:
            raise UserStudyError(
                f"user_study: {entry['name']} has {available} (concept, prompt, seed) samples, fewer than the "
                f"{n_sets} sets asked for"
            )
        concepts = sorted(pool)
        rng.shuffle(concepts)
        k = 0
        while len([s for s in sets if s["entry"] == entry["name"]]) < n_sets:
            concept = concepts[k % len(concepts)]
            k += 1
            if not pool[concept]:
                continue
            prompt_index, sample_seed = pool[concept].pop(rng.randrange(len(pool[concept])))
            sets.append(
                {
                    "entry": entry["name"],
                    "concept": concept,
                    "prompt_index": prompt_index,
                    "prompt": prompts[concept][prompt_index],
                    "seed": sample_seed,
                }
            )
    return sets


def attention_sets(n_sets: int, n_checks: int, seed: int) -> list[int]:
    """The indices (into `draw_sets`' list) of the sets every rater sees twice."""
    if n_checks > n_sets:
        raise UserStudyError(f"user_study.attention_checks: {n_checks} repeats of {n_sets} sets")
    return sorted(random.Random(f"wig-user-study:{seed}:attention").sample(range(n_sets), n_checks))


FIXED_MTIME = 946684800  # 2000-01-01: every image file's mtime, whatever order they were written in


def _png(pixels: np.ndarray, rng: random.Random) -> bytes:
    """An RGB image as a PNG of its pixels alone (IHDR, IDAT, IEND), each row under a filter type
    and the stream at a deflate level drawn from ``rng``: the same pixels written twice give other
    bytes (a repeat's images match none of the first showing's files), every one decoding alike."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width, _ = pixels.shape
    rows = pixels.astype(np.int16).reshape(height, width * 3)
    raw = bytearray()
    previous = np.zeros(width * 3, dtype=np.int16)
    for row in rows:
        kind = rng.randrange(3)  # 0 none, 1 sub (left), 2 up
        if kind == 1:
            data = row - np.concatenate([np.zeros(3, dtype=np.int16), row[:-3]])
        elif kind == 2:
            data = row - previous
        else:
            data = row
        raw.append(kind)
        raw.extend((data % 256).astype(np.uint8).tobytes())
        previous = row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    stream = zlib.compress(bytes(raw), rng.randint(1, 9))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def _pixels(source: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(source) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise UserStudyError(f"{source}: not a readable image ({err})") from None


def study_secret(out: str | os.PathLike) -> bytes:
    """The study's secret key: ``<out>.secret`` beside the study folder (never inside it, never
    served, out of the repository under results/), made once from the operating system's
    generator and read on every rebuild, so a redrawn folder keeps its ids and the votes database
    bound to it stays valid. Delete it to re-key (and to orphan the votes)."""
    folder = Path(out).resolve()
    path = folder.parent / f"{folder.name}.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise UserStudyError(f"{path}: not a study secret (64 hex digits); delete it to make a new one")
    return bytes.fromhex(text)


def build_study(design: Mapping[str, Any], out: str | os.PathLike, secret: bytes | None = None) -> Path:
    """Write the study folder (module docstring) for ``design``: ``seed``, ``questions``,
    ``exclusion``, ``entries`` ({name: [method label, ...]}), ``sets`` (each with ``entry``,
    ``concept``, ``prompt_index``, ``prompt``, optionally ``shown_prompt``, ``seed``, ``images``
    {label: path} and ``references`` [path]) and ``attention`` (indices of the sets to repeat).

    Set and image ids, the files' order and their bytes are keyed by ``secret`` (default: the
    study's, `study_secret`), never by the seed: the same design and secret rebuild the same
    folder byte for byte, and no one without the secret can tell an id's method. Atomic: a
    failure leaves no folder."""
    import hmac

    secret = study_secret(out) if secret is None else secret

    def keyed(text: str, nbytes: int) -> str:
        return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()[: 2 * nbytes]

    def digest(path: str) -> str:
        try:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as err:
            raise UserStudyError(f"{path}: not a readable image ({err})") from None

    entries = {name: list(labels) for name, labels in design["entries"].items()}
    sets: list[dict] = []
    writes: dict[str, str] = {}  # image id -> source path

    def make_set(n: int, drawn: Mapping[str, Any], repeat_of: str | None) -> dict:
        labels = entries[drawn["entry"]]
        # a repeat's images and references under ids of their own; a first showing's references
        # keyed by their content (the same photo, the same id), its candidates by set and method
        kind = "repeat" if repeat_of is not None else "set"
        images = {keyed(f"{kind}:{n}:image:{label}", 8): drawn["images"][label] for label in labels}
        refs = [
            keyed(f"{kind}:{n}:reference:{k}" if repeat_of else f"reference:{digest(p)}", 8)
            for k, p in enumerate(drawn["references"])
        ]
        writes.update(images)
        writes.update(zip(refs, drawn["references"]))
        by_path = {v: k for k, v in images.items()}
        return {
            "id": keyed(f"{kind}:{n}", 6),
            "entry": drawn["entry"],
            "prompt": drawn.get("shown_prompt", drawn["prompt"]),
            "references": refs,
            "images": dict(sorted((by_path[drawn["images"][label]], label) for label in labels)),
            "repeat_of": repeat_of,
            "source": {k: drawn[k] for k in ("concept", "prompt_index", "seed", "prompt")},
        }

    for n, drawn in enumerate(design["sets"]):
        if sorted(drawn["images"]) != sorted(entries[drawn["entry"]]):
            raise UserStudyError(f"user_study: set of {drawn['entry']} has images of {sorted(drawn['images'])}")
        if len(set(drawn["images"].values())) != len(drawn["images"]):
            raise UserStudyError(f"user_study: set {n} of {drawn['entry']} shows one file for two methods")
        sets.append(make_set(n, drawn, None))
    for n, index in enumerate(design["attention"]):
        sets.append(make_set(n, design["sets"][index], sets[index]["id"]))
    for n, gold in enumerate(design.get("gold", [])):
        # a set like the others (the subject's references, a prompt, K images) whose subject answer
        # is known: one image is the subject's own photo held out of the references, the others
        # show other subjects
        labels = entries[gold["entry"]]
        if len(gold["decoys"]) != len(labels) - 1:
            raise UserStudyError(f"user_study: gold set {n} of {gold['entry']} needs {len(labels) - 1} decoys")
        images = {keyed(f"gold:{n}:image:0", 8): (gold["answer"], GOLD)}
        images |= {keyed(f"gold:{n}:image:{k + 1}", 8): (p, DECOY) for k, p in enumerate(gold["decoys"])}
        refs = [keyed(f"reference:{digest(p)}", 8) for p in gold["references"]]
        writes.update({i: p for i, (p, _) in images.items()})
        writes.update(zip(refs, gold["references"]))
        answer = keyed(f"gold:{n}:image:0", 8)
        sets.append(
            {
                "id": keyed(f"gold:{n}", 6),
                "entry": gold["entry"],
                "prompt": gold.get("shown_prompt", gold["prompt"]),
                "references": refs,
                "images": dict(sorted((i, label) for i, (_, label) in images.items())),
                "repeat_of": None,
                "gold": answer,
                "source": {k: gold[k] for k in ("concept", "prompt_index", "seed", "prompt")},
            }
        )
    if len({s["id"] for s in sets}) != len(sets) or len(writes) != len(set(writes)):
        raise UserStudyError("user_study: two ids collide (a 48/64-bit coincidence): draw again with another secret")
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "images").mkdir()
        order = sorted(writes)
        random.Random(keyed("file order", 16)).shuffle(order)  # the files' order on disk says nothing either
        pixels: dict[str, np.ndarray] = {}
        for image_id in order:
            path = writes[image_id]
            if path not in pixels:
                pixels[path] = _pixels(path)
            target = tmp / "images" / f"{image_id}.png"
            target.write_bytes(_png(pixels[path], random.Random(keyed(f"bytes:{image_id}", 16))))
            os.utime(target, (FIXED_MTIME, FIXED_MTIME))
        study = {
            "format": 1,
            "seed": design["seed"],
            "questions": dict(design["questions"]),
            "exclusion": dict(design["exclusion"]),
            "entries": entries,
            "sets": sets,
            "instructions": design.get("instructions") or DEFAULT_INSTRUCTIONS,
            "completion": dict(design["completion"]) if design.get("completion") else None,
        }
        problem = _study_problem(study)
        if problem:
            raise UserStudyError(f"user_study: {problem}")
        (tmp / STUDY_FILE).write_text(json.dumps(study, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return Path(out)


@dataclass(frozen=True)
class UserStudy:
    """A study folder, read: its sets by id and where each image id's file is."""

    folder: Path
    sha256: str  # of study.json: the votes database is bound to it
    data: Mapping[str, Any] = field(repr=False)
    sets: Mapping[str, Mapping[str, Any]] = field(repr=False)
    image_files: Mapping[str, Path] = field(repr=False)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "UserStudy":
        # absolute: the server hands these paths to Flask, which reads a relative one against its
        # package folder, not the directory `wig serve-study results/user_study/sets` ran in
        folder = Path(folder).resolve()
        path = folder / STUDY_FILE
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
        except (OSError, ValueError) as err:
            raise UserStudyError(f"{path}: not a study folder's study.json ({err})") from None
        if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("sets"), list):
            raise UserStudyError(f"{path}: not a study folder's study.json (format 1 with sets)")
        problem = _study_problem(data)
        if problem:
            raise UserStudyError(f"{path}: {problem}")
        sets = {s["id"]: s for s in data["sets"]}
        ids = {i for s in data["sets"] for i in [*s["references"], *s["images"]]}
        files = {i: folder / "images" / f"{i}.png" for i in ids}
        bad = next((i for i in sorted(ids) if not _ID.fullmatch(i)), None)
        if bad is not None:
            raise UserStudyError(f"{path}: image id {bad!r} is not an opaque hex id")
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise UserStudyError(f"{folder}: {len(missing)} image(s) of study.json are missing, e.g. {missing[0]}")
        # only the study's own files: a link (to /etc/passwd, say) or a path out of the folder is refused
        images = folder / "images"
        linked = [images] if images.is_symlink() or images.resolve().parent != folder else []
        linked += [p for p in files.values() if p.is_symlink() or p.resolve().parent != images.resolve()]
        if linked or path.is_symlink():
            raise UserStudyError(
                f"{folder}: {linked[0] if linked else path} is a link or leads out of the study folder"
            )
        return cls(folder, hashlib.sha256(raw).hexdigest(), data, sets, files)

    @property
    def questions(self) -> Mapping[str, str]:
        return self.data["questions"]

    @property
    def seed(self) -> int:
        return self.data["seed"]

    @property
    def instructions(self) -> str:
        """The instructions/consent page's text."""
        return self.data.get("instructions") or DEFAULT_INSTRUCTIONS

    @property
    def completion(self) -> Mapping[str, str] | None:
        """``{"code", "url"}`` (either may be absent) shown when a rater has answered every set: a
        recruiting platform's completion code and the address that returns them there."""
        return self.data.get("completion")

    def plan(self, rater: int) -> list[tuple[str, list[str]]]:
        return rater_plan(self.data, rater)


def _study_problem(data: Mapping[str, Any]) -> str | None:
    """What makes a parsed ``study.json`` (format 1) unusable, naming the key; None if nothing.
    Checked on load, so a hand-edited or foreign file is refused before a rater sees a page."""
    for key, kind in (("seed", int), ("questions", dict), ("exclusion", dict), ("entries", dict)):
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            return f"{key}: missing or not a{'n' if kind is int else ''} {kind.__name__}"
    if not isinstance(data.get("instructions", ""), str):
        return "instructions: not a string"
    completion = data.get("completion")
    if completion is not None:
        if not isinstance(completion, dict) or not set(completion) <= {"code", "url"}:
            return "completion: not an object of code and url"
        if not all(isinstance(v, str) and v for v in completion.values()):
            return "completion: code and url must be non-empty strings"
        if "url" in completion and not re.match(r"https?://", completion["url"]):
            return f"completion.url: {completion['url']!r} is not an http(s) address"
    ids: set[str] = set()
    for i, s in enumerate(data["sets"]):
        where = f"sets[{i}]"
        if not isinstance(s, dict):
            return f"{where}: not an object"
        for key, kind in (("id", str), ("entry", str), ("prompt", str), ("references", list), ("images", dict)):
            if not isinstance(s.get(key), kind):
                return f"{where}.{key}: missing or not a {kind.__name__}"
        if s["entry"] not in data["entries"]:
            return f"{where}.entry: {s['entry']!r} is not one of entries"
        if s.get("gold") is not None:
            k = len(data["entries"][s["entry"]])
            if sorted(s["images"].values()) != sorted([GOLD] + [DECOY] * (k - 1)) or s["images"].get(s["gold"]) != GOLD:
                return f"{where}.gold: not one {GOLD} image (the answer) and {k - 1} {DECOY}s"
        elif sorted(s["images"].values()) != sorted(data["entries"][s["entry"]]):
            return f"{where}.images: not one image per method of {s['entry']}"
        if not all(isinstance(i, str) for i in [*s["references"], *s["images"]]):
            return f"{where}: an image id that is not a string"
        if s["id"] in ids:
            return f"{where}.id: {s['id']!r} twice"
        ids.add(s["id"])
    for i, s in enumerate(data["sets"]):
        if s.get("repeat_of") is not None and s["repeat_of"] not in ids:
            return f"sets[{i}].repeat_of: {s['repeat_of']!r} is no set"
    return None


def rater_plan(study: Mapping[str, Any], rater: int) -> list[tuple[str, list[str]]]:
    """Rater ``rater``'s sets in the order shown, each with its images in the order shown.

    The sets are shuffled; each attention check goes to a random place after the set it repeats,
    its images (under their own ids) with the methods in an order other than the first showing's
    (for two or more images). A function of the study's seed and ``rater`` alone, permuting each
    set's stored image list (sorted by the secret ids)."""
    rng = random.Random(f"wig-user-study:{study['seed']}:rater:{rater}")
    main = [s for s in study["sets"] if s["repeat_of"] is None]
    order = [s["id"] for s in main]
    rng.shuffle(order)
    shown = {s["id"]: rng.sample(list(s["images"]), len(s["images"])) for s in main}
    by_id = {s["id"]: s for s in study["sets"]}
    repeats = [s for s in study["sets"] if s["repeat_of"] is not None]
    for repeat in repeats:  # every place first: the order of sets is the seed's alone
        after = order.index(repeat["repeat_of"]) + 1
        order.insert(rng.randint(after, len(order)), repeat["id"])
    for repeat in repeats:
        # its own (fresh) ids, in an order whose methods differ from the first showing's
        first = [by_id[repeat["repeat_of"]]["images"][i] for i in shown[repeat["repeat_of"]]]
        stored = list(repeat["images"])
        images = list(stored)
        while True:
            images = rng.sample(stored, len(stored))
            if len(images) < 2 or [repeat["images"][i] for i in images] != first:
                break
        shown[repeat["id"]] = images
    return [(set_id, shown[set_id]) for set_id in order]


def resolve_images(design: Mapping[str, Any], samples: Mapping[str, str], references: Mapping[str, str]) -> dict:
    """``design`` (`wig.workflow.user_study.user_study_design`) with every image a file: a
    member's from its generation job's manifest (``samples``: job folder per job key, the
    wildcards joined by ``/``), a set's references the first ``design["references"]`` images of
    its concept's prepared folder (``references``: folder per concept)."""
    import polars as pl

    manifests: dict[str, Any] = {}
    sets = []
    for s in design["sets"]:
        images = {}
        for label, member in s["members"].items():
            folder = Path(samples["/".join(member["job"].values())])
            if folder not in manifests:
                manifests[folder] = pl.read_parquet(folder / "manifest.parquet")
            rows = manifests[folder].filter(
                (pl.col("point") == member["point"])
                & (pl.col("seed") == s["seed"])
                & (pl.col("prompt_index") == s["prompt_index"])
            )
            if len(rows) != 1:
                raise UserStudyError(
                    f"{folder}/manifest.parquet: {len(rows)} images of {member['point']} seed {s['seed']} "
                    f"prompt {s['prompt_index']}, not 1"
                )
            images[label] = str(folder / rows["path"][0])
        folder = Path(references[s["concept"]])
        refs = sorted(folder.glob("*.png"))[: design["references"]]
        if not refs:
            raise UserStudyError(f"{folder}: no reference image of {s['concept']}")
        sets.append({**s, "images": images, "references": [str(p) for p in refs]})
    gold = []
    for g in design.get("gold", []):
        folder = Path(references[g["concept"]])
        photos = sorted(folder.glob("*.png"))
        if len(photos) <= design["references"]:
            raise UserStudyError(
                f"{folder}: {len(photos)} photos of {g['concept']}, none held out of the {design['references']} "
                "references for its gold set (user_study.references or gold)"
            )
        decoys = [sets[j]["images"][label] for j, label in g["decoys"]]
        refs = [str(p) for p in photos[: design["references"]]]
        gold.append({**g, "answer": str(photos[design["references"]]), "decoys": decoys, "references": refs})
    return {**design, "sets": sets, "gold": gold}


def random_pass_probability(study: Mapping[str, Any]) -> float:
    """The probability that a rater clicking uniformly at random (each question: one of the set's K
    images or undecided, alike) passes the study's exclusion rule: every gold set's subject question
    answered with its reference photo at the rate ``min_gold`` asks, and the repeated questions
    answered alike at the rate ``min_consistency`` asks (a random clicker answers every set, so
    ``complete`` holds). Exact: the two counts are sums of independent Bernoulli trials."""
    rule = study["exclusion"]
    by_id = {s["id"]: s for s in study["sets"]}
    gold = [1 / (len(s["images"]) + 1) for s in study["sets"] if s.get("gold")]
    alike = [1 / (len(by_id[s["repeat_of"]]["images"]) + 1) for s in study["sets"] if s["repeat_of"]] * 2
    return _at_least(gold, rule.get("min_gold", 1.0)) * _at_least(alike, rule["min_consistency"])


def _at_least(probabilities: Sequence[float], share: float) -> float:
    """P(at least ``share`` of independent Bernoulli trials succeed); 1 when there are none."""
    if not probabilities:
        return 1.0
    dist = np.array([1.0])
    for p in probabilities:
        dist = np.convolve(dist, [1 - p, p])
    need = int(np.ceil(share * len(probabilities) - 1e-9))
    return float(dist[need:].sum())
