"""The user study (wig.user_study): reproducible sets and orders, the votes database, the web app's
refusals, 20 raters at once, a server killed with SIGKILL, and Table 3 on hand-made votes.
The browser test is tests/test_user_study_browser.py."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from wig.guidance import make
from wig.user_study.analysis import rater_table, share_table, user_study_tables, vote_frame
from wig.user_study.design import UNDECIDED, UserStudy, UserStudyError, draw_sets, rater_plan
from wig.user_study.server import SERVER_MAX_BODY, create_app
from wig.user_study.votes import VoteStore
from wig.workflow.config_schema import read_config
from wig.workflow.model import StudyError
from wig.workflow.study import Study

from conftest import ROOT, StudyServer, make_user_study, png_chunks

pytestmark = pytest.mark.check


# --- sets and orders ------------------------------------------------------------------------------


def test_the_same_seed_draws_the_same_sets_ids_and_orders_and_another_seed_others(tmp_path):
    entries = [{"name": "m/ft", "prompts": {f"c{i}": [f"p{j}" for j in range(5)] for i in range(4)}, "seeds": [0, 1]}]
    first = draw_sets(entries, 6, seed=3)
    assert first == draw_sets(entries, 6, seed=3) and first != draw_sets(entries, 6, seed=4)
    # round-robin over the concepts: 6 sets over 4 concepts show every concept, none three times
    concepts = [s["concept"] for s in first]
    assert set(concepts) == {"c0", "c1", "c2", "c3"} and max(map(concepts.count, concepts)) == 2
    assert len({(s["concept"], s["prompt_index"], s["seed"]) for s in first}) == 6
    # adding an entry leaves the first entry's sets as they were
    more = draw_sets([*entries, {**entries[0], "name": "other/ft"}], 6, seed=3)
    assert [s for s in more if s["entry"] == "m/ft"] == first
    with pytest.raises(UserStudyError, match="40 .concept, prompt, seed. samples, fewer than the 41 sets"):
        draw_sets(entries, 41, seed=0)

    # the design is the seed's (sets, repeats, every rater's orders of sets and methods); the ids are
    # secret, drawn anew for every build
    a, b = make_user_study(tmp_path / "a", seed=7), make_user_study(tmp_path / "b", seed=7)
    study, again = UserStudy.load(a), UserStudy.load(b)
    # the same design and secret (a.secret beside the folder) rebuild it byte for byte: votes stay bound
    files = {p.name: p.read_bytes() for p in [a / "study.json", *(a / "images").iterdir()]}
    make_user_study(tmp_path / "a", seed=7)
    assert {p.name: p.read_bytes() for p in [a / "study.json", *(a / "images").iterdir()]} == files
    assert (tmp_path / "a.secret").stat().st_mode & 0o777 == 0o600
    assert _design(study, 5) == _design(again, 5)  # same seed, same rater: the same orders
    assert _design(study, 5) != _design(study, 6)
    assert not {p.name for p in (a / "images").iterdir()} & {p.name for p in (b / "images").iterdir()}
    assert not set(study.sets) & set(again.sets) and study.sha256 != again.sha256
    assert _design(UserStudy.load(make_user_study(tmp_path / "c", seed=8)), 5) != _design(study, 5)


def _design(study, rater):
    """What the seed fixes of a rater's view: per shown set, its source, whether it repeats one, and
    the permutation of its stored images (sorted by their secret ids, so which method sits where is
    the secret's, not the seed's)."""
    view = []
    for set_id, images in study.plan(rater):
        s = study.sets[set_id]
        stored = list(s["images"])  # a repeat's order is drawn until its methods' order differs: secret
        view.append((s["source"], s["repeat_of"] is not None, s["repeat_of"] or [stored.index(i) for i in images]))
    return [(source, repeat, None if repeat else perm) for source, repeat, perm in view]


def test_every_rater_sees_each_set_once_and_the_attention_check_later_reshuffled(tmp_path):
    study = UserStudy.load(make_user_study(tmp_path / "s", n_sets=6, attention=2))
    repeats = {s["id"]: s["repeat_of"] for s in study.sets.values() if s["repeat_of"]}
    assert len(repeats) == 2 and len(study.sets) == 8
    for rater in range(1, 40):
        plan = rater_plan(study.data, rater)
        order = [s for s, _ in plan]
        assert sorted(order) == sorted(study.sets)
        shown = dict(plan)
        for repeat, original in repeats.items():
            assert order.index(repeat) > order.index(original)
            methods = [[study.sets[s]["images"][i] for i in shown[s]] for s in (repeat, original)]
            assert sorted(methods[0]) == sorted(methods[1]) and methods[0] != methods[1]
            assert not set(shown[repeat]) & set(shown[original])  # fresh ids
        for set_id, images in plan:
            assert sorted(images) == sorted(study.sets[set_id]["images"])
    # the image orders are spread: over 39 raters each of the 3 images is shown first
    firsts = {rater_plan(study.data, r)[0][1][0] for r in range(1, 40)}
    assert len(firsts) > 3


def test_study_images_carry_pixels_only_under_opaque_names(tmp_path):
    folder = make_user_study(tmp_path / "s")
    study = UserStudy.load(folder)
    for image_id, path in study.image_files.items():
        assert re.fullmatch(r"[0-9a-f]{16}", image_id) and path.name == f"{image_id}.png"
        assert set(png_chunks(path.read_bytes())) == {"IHDR", "IDAT", "IEND"}
    for s in study.sets.values():
        assert re.fullmatch(r"[0-9a-f]{12}", s["id"])


def test_a_study_folder_with_a_missing_image_is_refused_naming_it(tmp_path):
    folder = make_user_study(tmp_path / "s")
    victim = next((folder / "images").iterdir())
    victim.unlink()
    with pytest.raises(UserStudyError, match=f"missing, e.g. .*{victim.name}"):
        UserStudy.load(folder)


def _edit_study(data: dict, change: str) -> bytes:
    """``study.json`` with one thing broken, as bytes."""
    sets = data["sets"]
    edits = {
        "empty": lambda: b"",
        "truncated": lambda: json.dumps(data).encode()[:-40],
        "not UTF-8": lambda: json.dumps(data, ensure_ascii=False).replace("sks", "sk\u00e9").encode("latin-1"),
        "a list": lambda: b"[]",
        "another format": lambda: json.dumps({**data, "format": 2}).encode(),
        "a NaN seed": lambda: json.dumps({**data, "seed": float("nan")}).encode(),
        "no entries": lambda: json.dumps({k: v for k, v in data.items() if k != "entries"}).encode(),
        "a set that is a string": lambda: json.dumps({**data, "sets": ["x", *sets[1:]]}).encode(),
        "a set without its id": lambda: json.dumps(
            {**data, "sets": [{k: v for k, v in sets[0].items() if k != "id"}, *sets[1:]]}
        ).encode(),
        "a set of an unknown entry": lambda: json.dumps(
            {**data, "sets": [{**sets[0], "entry": "x/y"}, *sets[1:]]}
        ).encode(),
        "a set missing a method": lambda: json.dumps(
            {**data, "sets": [{**sets[0], "images": dict(list(sets[0]["images"].items())[1:])}, *sets[1:]]}
        ).encode(),
        "an id twice": lambda: json.dumps(
            {**data, "sets": [sets[0], {**sets[1], "id": sets[0]["id"]}, *sets[2:]]}
        ).encode(),
        "a repeat of no set": lambda: json.dumps(
            {**data, "sets": [*sets[:-1], {**sets[-1], "repeat_of": "f" * 12}]}
        ).encode(),
    }
    return edits[change]()


@pytest.mark.parametrize(
    "change, message",
    [
        ("empty", "not a study folder's study.json .Expecting value"),
        ("truncated", "not a study folder's study.json"),
        ("not UTF-8", "not a study folder's study.json .'utf-8' codec"),
        ("a list", r"format 1 with sets"),
        ("another format", r"format 1 with sets"),
        ("a NaN seed", r"seed: missing or not an int"),
        ("no entries", r"entries: missing or not a dict"),
        ("a set that is a string", r"sets\[0\]: not an object"),
        ("a set without its id", r"sets\[0\]\.id: missing or not a str"),
        ("a set of an unknown entry", r"sets\[0\]\.entry: 'x/y' is not one of entries"),
        ("a set missing a method", r"sets\[0\]\.images: not one image per method"),
        ("an id twice", r"sets\[1\]\.id: '\w+' twice"),
        ("a repeat of no set", r"sets\[4\]\.repeat_of: 'f{12}' is no set"),
    ],
)
def test_a_broken_study_json_is_refused_in_one_line_naming_the_file_and_key(tmp_path, change, message):
    folder = make_user_study(tmp_path / "s", n_sets=4, attention=1)
    path = folder / "study.json"
    path.write_bytes(_edit_study(json.loads(path.read_text()), change))
    with pytest.raises(UserStudyError, match=message) as err:
        UserStudy.load(folder)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    # what a user meets: wig serve-study says it in one line and opens no database
    proc = subprocess.run([sys.executable, "-m", "wig.cli", "serve-study", str(folder)], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0 and str(path) in proc.stderr, proc.stderr
    assert not (tmp_path / "s.votes.sqlite").exists()


def _votes_db(path: Path, kind: str) -> None:
    """A file at ``path`` that is no votes database of the kind named."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not SQLite":
        path.write_bytes(b"SQLite format 2\x00" + b"x" * 200)
    elif kind == "truncated":
        VoteStore(path, "0" * 64).add_raters(3)
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "another schema":
        with closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE x (a)")
            db.commit()
    elif kind == "no study in meta":
        VoteStore(path, "0" * 64)
        with closing(sqlite3.connect(path)) as db:
            db.execute("DELETE FROM meta WHERE key = 'study_sha256'")
            db.commit()


@pytest.mark.parametrize("kind", ["empty", "not SQLite", "truncated", "another schema", "no study in meta"])
def test_a_file_that_is_no_votes_database_is_refused_naming_it(tmp_path, kind):
    folder = make_user_study(tmp_path / "sets")
    db = tmp_path / "votes.sqlite"
    _votes_db(db, kind)
    before = db.read_bytes()
    out = tmp_path / "votes.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "wig.cli", "export-votes", str(folder), "--db", str(db), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert f"{db}: not a votes database" in proc.stderr and not out.exists()
    if kind != "empty":  # the server refuses it too and leaves it be (an empty file is a new database)
        with pytest.raises(UserStudyError, match=f"{re.escape(str(db))}: not a votes database"):
            create_app(folder, db)
    assert db.read_bytes() == before


# --- the config -----------------------------------------------------------------------------------


def _demo_config(**user_study):
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["user_study"].update(user_study)
    read_config(config)
    return config


def test_the_demo_study_draws_its_sets_from_its_generation_jobs(monkeypatch):
    monkeypatch.chdir(ROOT)
    study = Study.from_config(_demo_config())
    design = study.user_study_design()
    assert design["entries"] == {"synthetic/db-lora": ["CFG", "PG", "PG ω 0.5"]}
    assert len(design["sets"]) == 4 and len(design["attention"]) == 1
    jobs = {tuple(j.wildcards.items()) for j in study.generation_jobs()}
    for s in design["sets"]:
        assert s["prompt"] == study.prompts[s["concept"]][s["prompt_index"]] and s["seed"] in study.config["seeds"]
        # raters read the subject by its class: "a sks triangle on …" is shown as "a triangle on …"
        assert "sks" in s["prompt"] and s["shown_prompt"] == s["prompt"].replace("sks ", "")
        for label, member in s["members"].items():
            assert tuple(member["job"].items()) in jobs  # an image the study makes anyway
            assert member["job"]["concept"] == s["concept"] and member["job"]["fseed"] == "0"
            assert member["point"] in {p.key for p in study.points_of("synthetic", member["job"]["points"])}
    assert {s["members"]["PG"]["point"] for s in design["sets"]} == {make(method="pg", scale=4.5, omega=0.0).key}


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"models": [{"model": "nope", "methods": {"A": {"method": "cfg"}, "B": {"method": "pg"}}}]},
            r"models\[0\]\.model",
        ),
        (
            {
                "models": [
                    {"model": "synthetic", "methods": {"CFG": {"method": "cfg", "scale": 9.0}, "PG": {"method": "pg"}}}
                ]
            },
            r"models\[0\]\.methods\.CFG: \S+ is not a point of models\.synthetic's grid",
        ),
        (
            {
                "models": [
                    {"model": "synthetic", "finetune": "x", "methods": {"A": {"method": "cfg"}, "B": {"method": "pg"}}}
                ]
            },
            r"models\[0\]\.finetune",
        ),
        ({"sets": 1000}, r"fewer than the 1000 sets"),
    ],
)
def test_a_bad_user_study_block_is_refused_before_any_job_naming_the_key(monkeypatch, change, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(StudyError, match=message):
        Study.from_config(_demo_config(**change))


# --- the web app ------------------------------------------------------------------------------------


@pytest.fixture
def app_and_rater(tmp_path):
    app = create_app(make_user_study(tmp_path / "sets"), tmp_path / "votes.sqlite")
    store = app.extensions["wig_votes"]
    ((rater, token),) = store.add_raters(1)
    consent = app.test_client().post(f"/api/{token}/consent", json={"external_id": None})
    assert consent.status_code == 200 and consent.get_json()["index"] == 1
    return app, store, token


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT rater, set_id, question, choice FROM answers ORDER BY id"))


def test_an_answer_is_stored_once_and_a_replay_or_a_changed_mind_counts_nothing_more(app_and_rater, tmp_path):
    app, store, token = app_and_rater
    client = app.test_client()
    state = client.get(f"/api/{token}/state").get_json()
    assert state["index"] == 1 and state["total"] == 5 and state["answered"] == {}
    first = {"set": state["set"], "question": "subject", "choice": state["images"][1]["id"]}
    assert client.post(f"/api/{token}/answer", json=first).get_json()["answered"] == {"subject": first["choice"]}
    assert client.post(f"/api/{token}/answer", json=first).status_code == 200  # a double click / replay
    changed = client.post(f"/api/{token}/answer", json={**first, "choice": UNDECIDED})
    assert changed.status_code == 409 and changed.data.count(b"\n") == 1
    nxt = client.post(f"/api/{token}/answer", json={"set": state["set"], "question": "text", "choice": UNDECIDED})
    assert nxt.get_json()["index"] == 2 and nxt.get_json()["set"] != state["set"]
    assert _rows(tmp_path / "votes.sqlite") == [
        (1, state["set"], "subject", first["choice"]),
        (1, state["set"], "text", UNDECIDED),
    ]
    # a set ahead of the current one is refused: the order is the rater's plan
    later = app.extensions["wig_study"].plan(1)[3]
    ahead = client.post(f"/api/{token}/answer", json={"set": later[0], "question": "text", "choice": UNDECIDED})
    assert ahead.status_code == 409 and len(_rows(tmp_path / "votes.sqlite")) == 2


def _bad_requests(token, state, other_token):
    image = state["images"][0]["id"]
    good = {"set": state["set"], "question": "subject", "choice": image}
    return {
        "unknown token": ("post", f"/api/{'0' * 32}/answer", {"json": good}, 404),
        "tampered token": ("post", f"/api/{token[:-1]}{'0' if token[-1] != '0' else '1'}/answer", {"json": good}, 404),
        "token of the page": ("get", f"/r/{token}x", {}, 404),
        "unknown set": ("post", f"/api/{token}/answer", {"json": {**good, "set": "a" * 12}}, 404),
        "unknown image": ("get", "/img/0123456789abcdef", {}, 404),
        "image of another set": ("post", f"/api/{token}/answer", {"json": {**good, "choice": other_token}}, 400),
        "forged method": ("post", f"/api/{token}/answer", {"json": {**good, "choice": "PG"}}, 400),
        "forged method key": ("post", f"/api/{token}/answer", {"json": {**good, "method": "PG"}}, 400),
        "unknown question": ("post", f"/api/{token}/answer", {"json": {**good, "question": "style"}}, 400),
        "not JSON": ("post", f"/api/{token}/answer", {"data": "set=1", "content_type": "application/json"}, 400),
        "JSON list": ("post", f"/api/{token}/answer", {"json": [good]}, 400),
        "oversized body": ("post", f"/api/{token}/answer", {"json": {**good, "choice": "x" * 4000}}, 413),
        "admin with a rater token": ("get", f"/admin/{token}", {}, 404),
        "adding raters without the admin token": ("post", f"/admin/{token}/raters", {"data": {"n": "5"}}, 404),
        "path outside the app": ("get", "/static/../study.json", {}, 404),
        "the study file": ("get", "/study.json", {}, 404),
    }


def test_bad_input_is_a_4xx_of_one_line_and_writes_nothing(app_and_rater, tmp_path):
    app, store, token = app_and_rater
    client = app.test_client()
    state = client.get(f"/api/{token}/state").get_json()
    study = app.extensions["wig_study"]
    other_image = next(i for s in study.sets.values() if s["id"] != state["set"] for i in s["images"])
    db = tmp_path / "votes.sqlite"
    before = (db.read_bytes(), len(store.raters()))
    for name, (verb, url, kwargs, code) in _bad_requests(token, state, other_image).items():
        response = getattr(client, verb)(url, **kwargs)
        assert response.status_code == code, (name, response.status_code, response.data)
        text = response.data.decode()
        assert text.startswith("error: ") and text.count("\n") == 1 and text.endswith("\n"), (name, text)
        assert response.mimetype == "text/plain", name
    assert _rows(db) == [] and len(store.raters()) == before[1]


def test_a_study_named_by_a_relative_path_serves_its_images(tmp_path, monkeypatch):
    """As the README runs it (`wig serve-study results/user_study/sets`): every image of the
    rater's first set is served, the study folder's own bytes."""
    make_user_study(tmp_path / "results/user_study/sets")
    monkeypatch.chdir(tmp_path)
    app = create_app("results/user_study/sets")
    ((_, token),) = app.extensions["wig_votes"].add_raters(1)
    client = app.test_client()
    state = client.post(f"/api/{token}/consent", json={"external_id": None}).get_json()
    study = app.extensions["wig_study"]
    for src in [*state["references"], *(i["src"] for i in state["images"])]:
        response = client.get(src)
        assert response.status_code == 200, (src, response.data[:200])
        assert response.data == study.image_files[src.removeprefix("/img/")].read_bytes()
    assert (tmp_path / "results/user_study/sets.votes.sqlite").is_file()


def test_a_database_of_another_study_is_refused(tmp_path):
    db = tmp_path / "votes.sqlite"
    create_app(make_user_study(tmp_path / "a", seed=1), db)
    with pytest.raises(UserStudyError, match="holds the votes of another study"):
        create_app(make_user_study(tmp_path / "b", seed=2), db)


def test_the_admin_page_shows_progress_and_adds_raters(app_and_rater):
    app, store, token = app_and_rater
    client = app.test_client()
    state = client.get(f"/api/{token}/state").get_json()
    client.post(f"/api/{token}/answer", json={"set": state["set"], "question": "text", "choice": UNDECIDED})
    page = client.get(f"/admin/{store.admin_token}").data.decode()
    assert f"/r/{token}" in page and "1 / 10" in page
    assert 'name="viewport"' in page and f"/admin/{store.admin_token}/votes.csv" in page
    own = {"Origin": "http://localhost"}  # the test client's host: a post from the admin page itself
    assert client.post(f"/admin/{store.admin_token}/raters", data={"n": "3"}, headers=own).status_code == 303
    assert len(store.raters()) == 4
    assert client.post(f"/admin/{store.admin_token}/raters", data={"n": "1000"}, headers=own).status_code == 400
    # a page elsewhere that knows the admin link cannot add raters through the admin's browser
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"}, {}):
        refused = client.post(f"/admin/{store.admin_token}/raters", data={"n": "5"}, headers=headers)
        assert refused.status_code == 403 and refused.data.count(b"\n") == 1
    assert len(store.raters()) == 4
    # the export: every answer resolved to its method, the rater's platform id beside it
    csv = client.get(f"/admin/{store.admin_token}/votes.csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    lines = csv.data.decode().splitlines()
    assert lines[0].startswith("rater,set,entry,question,choice,method") and lines[0].endswith("external_id")
    assert len(lines) == 2 and ",text,undecided,undecided," in lines[1]


def test_consent_comes_first_and_a_platform_id_is_kept_with_the_rater(tmp_path):
    """A rater sees the instructions until they agree; answers before that are refused; the link's
    PROLIFIC_PID is stored with the consent (once), bad ids refused; the end shows the study's
    completion code and return address; the admin page's links use --public-url."""
    from wig.user_study.design import QUESTIONS, build_study

    folder = make_user_study(tmp_path / "sets", n_sets=1, attention=0)
    data = json.loads((folder / "study.json").read_text())
    data["instructions"] = "Thank you for helping. Contact: study@example.org"
    data["completion"] = {"code": "C0DE42", "url": "https://app.prolific.com/submissions/complete?cc=C0DE42"}
    (folder / "study.json").write_text(json.dumps(data))
    app = create_app(folder, tmp_path / "votes.sqlite", public_url="https://study.example.org/")
    store = app.extensions["wig_votes"]
    ((rater, token),) = store.add_raters(1)
    client = app.test_client()
    first = client.get(f"/api/{token}/state").get_json()
    assert first["consent"] and first["instructions"] == data["instructions"] and "set" not in first
    early = client.post(f"/api/{token}/answer", json={"set": "x" * 12, "question": "text", "choice": UNDECIDED})
    assert early.status_code == 409 and b"agree" in early.data
    for bad in ({"external_id": "<script>"}, {"external_id": "a" * 65}, {"id": "x"}, {"external_id": 5}):
        assert client.post(f"/api/{token}/consent", json=bad).status_code == 400
    assert not store.consented(rater)
    state = client.post(f"/api/{token}/consent", json={"external_id": "5f1e2d3c4b5a69788796a5b4"}).get_json()
    assert state["index"] == 1 and "consent" not in state
    client.post(f"/api/{token}/consent", json={"external_id": "another"})
    assert store.external_ids() == {rater: "5f1e2d3c4b5a69788796a5b4"}
    for q in ("subject", "text"):
        state = client.post(
            f"/api/{token}/answer", json={"set": state["set"], "question": q, "choice": UNDECIDED}
        ).get_json()
    assert state["done"] and state["completion"] == data["completion"]
    page = client.get(f"/admin/{store.admin_token}").data.decode()
    assert f"https://study.example.org/r/{token}" in page and "5f1e2d3c4b5a69788796a5b4" in page
    # the config's blocks reach study.json through the design, checked
    design = {
        "seed": 0,
        "questions": QUESTIONS,
        "exclusion": {"min_consistency": 0.5, "complete": True},
        "entries": data["entries"],
        "attention": [],
        "sets": [],
        "completion": {"code": "X", "url": "ftp://nope"},
    }
    with pytest.raises(UserStudyError, match=r"completion\.url: 'ftp://nope' is not an http\(s\) address"):
        build_study(design, tmp_path / "bad")


# --- a real server: 20 raters at once, SIGKILL ------------------------------------------------------


def _answer_all(server: StudyServer, token: str, rng: np.random.Generator, acked: list, stop_after: int | None = None):
    """Answer a rater's sets to the end (or ``stop_after`` answers), each answer sent twice at once
    (a double click); every acknowledged answer is appended to ``acked``. The rater agrees to the
    instructions first (a second agreement, after a restart, changes nothing)."""
    state = server.call(token, "consent", {"external_id": None})
    n = 0
    while not state["done"] and (stop_after is None or n < stop_after):
        question = next(q["key"] for q in state["questions"] if q["key"] not in state["answered"])
        choice = rng.choice([*[i["id"] for i in state["images"]], UNDECIDED])
        body = {"set": state["set"], "question": question, "choice": str(choice)}
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda _: server.call(token, "answer", body), range(2)))
        acked.append((token, body["set"], question, body["choice"]))
        state = replies[0] if replies[0]["index"] >= replies[1]["index"] else replies[1]
        n += 1
    return state


def test_twenty_raters_at_once_lose_no_vote_and_count_none_twice(tmp_path):
    folder = make_user_study(tmp_path / "sets", n_sets=5, attention=1)
    db = tmp_path / "votes.sqlite"
    server = StudyServer(folder, db, raters=20)
    try:
        acked: list = []
        with ThreadPoolExecutor(20) as pool:
            finals = list(
                pool.map(
                    lambda kv: _answer_all(server, kv[1], np.random.default_rng(kv[0]), acked), server.tokens.items()
                )
            )
    finally:
        server.stop()
    assert all(f["done"] and f["total"] == 6 for f in finals)
    numbers = {t: r for r, t in server.tokens.items()}
    assert sorted(_rows(db)) == sorted((numbers[t], s, q, c) for t, s, q, c in acked)
    assert len(acked) == 20 * 6 * 2


def _raw(base: str, request: bytes) -> tuple[int, bytes]:
    """One raw HTTP exchange with the server: (status, body)."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_the_served_app_refuses_huge_bodies_and_broken_requests_in_one_line_writing_nothing(tmp_path):
    """What waitress answers before the app runs (a body past its limit, sized or chunked; a broken
    request) reads as the app's own refusals: a 4xx of one line, and no vote."""
    folder = make_user_study(tmp_path / "sets")
    db = tmp_path / "votes.sqlite"
    server = StudyServer(folder, db, raters=1)
    (token,) = server.tokens.values()
    path = f"/api/{token}/answer".encode()
    limit = SERVER_MAX_BODY
    try:
        replies = {
            "over the app's limit": _raw(
                server.base,
                b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2000\r\nConnection: close\r\n\r\n" + b"x" * 2000,
            ),
            # refused at its headers: the 10 MB are never sent, nor read
            "over the server's limit": _raw(
                server.base,
                b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000000\r\n\r\n",
            ),
            # no length to refuse it by: read up to the limit, then refused (the chunk goes on)
            "chunked past the server's limit": _raw(
                server.base,
                b"POST "
                + path
                + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{2 * limit:x}\r\n".encode()
                + b"a" * limit,
            ),
            "a broken content length": _raw(
                server.base, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
            ),
        }
        assert server.call(token, "state")["consent"]  # the server still serves, the rater not yet started
    finally:
        server.stop()
    for name, (status, body) in replies.items():
        assert 400 <= status < 500, (name, status, body)
        assert body.startswith(b"error: ") and body.count(b"\n") == 1 and body.endswith(b"\n"), (name, body)
    assert replies["over the server's limit"][0] == 413 and replies["chunked past the server's limit"][0] == 413
    assert _rows(db) == []


def test_a_server_killed_mid_session_loses_no_acknowledged_vote_and_raters_resume(tmp_path):
    folder = make_user_study(tmp_path / "sets", n_sets=6, attention=1)
    db = tmp_path / "votes.sqlite"
    server = StudyServer(folder, db, raters=4)
    acked: list = []
    errors: list = []
    killed = threading.Event()

    def rater(item):
        number, token = item
        try:
            _answer_all(server, token, np.random.default_rng(number), acked)
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            errors.append(err)

    threads = [threading.Thread(target=rater, args=(item,)) for item in server.tokens.items()]
    for t in threads:
        t.start()
    while len(acked) < 12:  # some answers in, the raters still answering
        time.sleep(0.005)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)
    killed.set()
    for t in threads:
        t.join(timeout=60)
    stored = _rows(db)
    numbers = {t: r for r, t in server.tokens.items()}
    acknowledged = {(numbers[t], s, q, c) for t, s, q, c in acked}
    assert acknowledged <= set(stored), "an acknowledged answer was lost"
    assert len(stored) == len(set(stored)) and len(stored) < 4 * 7 * 2 and errors

    # a restart on the same database: each rater resumes at the first set not fully answered
    again = StudyServer(folder, db, raters=4)
    try:
        assert again.tokens == server.tokens
        study = UserStudy.load(folder)
        for number, token in again.tokens.items():
            answered = {(s, q) for r, s, q, _ in stored if r == number}
            plan = study.plan(number)
            expected = next(i for i, (s, _) in enumerate(plan) if not {(s, "subject"), (s, "text")} <= answered)
            state = again.call(token, "state")
            assert state["index"] == expected + 1 and state["set"] == plan[expected][0]
            assert set(state["answered"]) == {q for s, q in answered if s == state["set"]}
            final = _answer_all(again, token, np.random.default_rng(number + 10), [])
            assert final["done"]
    finally:
        again.stop()
    final_rows = _rows(db)
    assert len(final_rows) == 4 * 7 * 2 and set(stored) <= set(final_rows)


# --- Table 3 ----------------------------------------------------------------------------------------


def _votes(study: UserStudy, choices: dict[int, dict[str, list[str]]]):
    """Rows as the database holds them: rater → question → the method chosen in each first showing
    (in study order), and the same answers again for the attention repeats."""
    rows = []
    main = [s for s in study.data["sets"] if s["repeat_of"] is None]
    by_label = {s["id"]: {label: i for i, label in s["images"].items()} for s in main}
    for rater, questions in choices.items():
        for question, methods in questions.items():
            for s, method in zip(main, methods):
                choice = UNDECIDED if method == UNDECIDED else by_label[s["id"]][method]
                rows.append((rater, s["id"], question, choice, "t"))
            for s in study.data["sets"]:
                if s["repeat_of"]:  # the same method again, under the repeat's own image id
                    first = next(r[3] for r in rows if r[:3] == (rater, s["repeat_of"], question))
                    method = study.sets[s["repeat_of"]]["images"].get(first, UNDECIDED)
                    rows.append(
                        (
                            rater,
                            s["id"],
                            question,
                            UNDECIDED if method == UNDECIDED else {m: i for i, m in s["images"].items()}[method],
                            "t",
                        )
                    )
    return rows


def test_table3_on_hand_made_votes_has_hand_computed_shares_and_intervals(tmp_path):
    study = UserStudy.load(make_user_study(tmp_path / "s", n_sets=1, attention=0))
    # one set, four raters: three choose PG for subject fidelity, one CFG; text: two undecided, two AG
    choices = {
        1: {"subject": ["PG"], "text": [UNDECIDED]},
        2: {"subject": ["PG"], "text": ["AG"]},
        3: {"subject": ["PG"], "text": [UNDECIDED]},
        4: {"subject": ["CFG"], "text": ["AG"]},
    }
    votes, per_rater, shares, wins, _ = user_study_tables(study, _votes(study, choices), n_boot=4000, seed=0)
    share = {(r["question"], r["option"]): r for r in shares.iter_rows(named=True)}
    assert share[("subject", "PG")]["share"] == 0.75 and share[("subject", "CFG")]["share"] == 0.25
    assert share[("subject", "AG")]["share"] == 0 and share[("subject", UNDECIDED)]["share"] == 0
    assert share[("text", "AG")]["share"] == 0.5 and share[("text", UNDECIDED)]["share"] == 0.5
    # the bootstrap over 4 raters: PG's share is k/4 with k ~ Binomial(4, 3/4); P(k = 0) = 0.4 % and
    # P(k ≤ 1) = 5.1 % put the 2.5th percentile at 1/4, P(k = 4) = 32 % the 97.5th at 1
    assert (share[("subject", "PG")]["lo"], share[("subject", "PG")]["hi"]) == (0.25, 1.0)
    # CFG: k ~ Binomial(4, 1/4), P(k = 0) = 32 % → 0; P(k ≥ 3) = 5.1 %, P(k = 4) = 0.4 % → 3/4
    assert (share[("subject", "CFG")]["lo"], share[("subject", "CFG")]["hi"]) == (0.0, 0.75)
    # AG for text: k ~ Binomial(4, 1/2): P(k = 0) = 6.25 % → 0; P(k = 4) = 6.25 % → 1
    assert (share[("text", "AG")]["lo"], share[("text", "AG")]["hi"]) == (0.0, 1.0)
    assert share[("subject", "AG")]["lo"] == share[("subject", "AG")]["hi"] == 0.0  # never chosen
    win = {(r["question"], r["method"], r["versus"]): r for r in wins.iter_rows(named=True)}
    assert win[("subject", "PG", "CFG")]["win_rate"] == 0.75 and win[("subject", "CFG", "PG")]["win_rate"] == 0.25
    assert win[("subject", "AG", "CFG")]["win_rate"] == 0.0 and win[("text", "PG", "CFG")]["win_rate"] is None
    assert win[("text", "AG", "PG")]["win_rate"] == 1.0
    assert per_rater["excluded"].to_list() == [False] * 4 and votes["method"].to_list()[:2] == ["PG", UNDECIDED]


def test_shares_average_over_raters_and_the_bootstrap_resamples_sets_too(tmp_path):
    study = UserStudy.load(make_user_study(tmp_path / "s", n_sets=2, attention=0))
    # rater 1 answers both sets (PG, PG); rater 2 only the first (CFG), so the pooled share (2/3)
    # and the rater average (1/2) differ: the table reports the average, as the paper does
    rows = _votes(study, {1: {"subject": ["PG", "PG"]}, 2: {"subject": ["CFG"]}})
    votes = vote_frame(study, rows)
    table = share_table(votes, study.data["entries"], n_boot=2000, seed=0)
    pg = table.filter((pl.col("question") == "subject") & (pl.col("option") == "PG")).row(0, named=True)
    assert pg["share"] == 0.5 and pg["raters"] == 2 and pg["sets"] == 2 and pg["votes"] == 2
    # one set of one rater: resampling sets alone moves the share (both raters' sets differ)
    single = share_table(vote_frame(study, _votes(study, {1: {"subject": ["PG", "CFG"]}})), study.data["entries"])
    row = single.filter((pl.col("question") == "subject") & (pl.col("option") == "PG")).row(0, named=True)
    assert row["share"] == 0.5 and (row["lo"], row["hi"]) == (0.0, 1.0)


def test_attention_checks_and_the_exclusion_rule(tmp_path):
    study = UserStudy.load(make_user_study(tmp_path / "s", n_sets=3, attention=2))
    rows = _votes(study, {r: {"subject": ["PG", "CFG", "AG"], "text": ["AG", "AG", UNDECIDED]} for r in (1, 2, 3)})
    repeats = [s["id"] for s in study.data["sets"] if s["repeat_of"]]
    # rater 2 answers both repeats' subject question otherwise: 2 of 4 checks alike (0.5: kept at ≥ 0.5);
    # rater 3 also the first repeat's text question: 1 of 4 (excluded); rater 4 answered one question
    # (incomplete: excluded); rater 5 joined and answered nothing
    changed = {(2, repeats[0], "subject"), (2, repeats[1], "subject"), (3, repeats[0], "subject")}
    changed |= {(3, repeats[1], "subject"), (3, repeats[0], "text")}

    def other(set_id, choice):
        images = list(study.sets[set_id]["images"])
        return images[(images.index(choice) + 1) % 3] if choice in images else images[0]

    rows = [(r, s, q, other(s, c) if (r, s, q) in changed else c, t) for r, s, q, c, t in rows]
    first = next(s["id"] for s in study.data["sets"] if not s["repeat_of"])
    rows += [(4, first, "subject", UNDECIDED, "t")]
    table = rater_table(vote_frame(study, rows), study, raters=[1, 2, 3, 4, 5]).sort("rater")
    assert table["checks"].to_list() == [4, 4, 4, 0, 0] and table["agreed"].to_list() == [4, 2, 1, 0, 0]
    assert table["consistency"].to_list() == [1.0, 0.5, 0.25, None, None]
    assert table["excluded"].to_list() == [False, False, True, True, True]
    assert "consistency 0.25 < 0.5" in table["reason"][2] and "answered 1 of 10" in table["reason"][3]
    _, _, shares, _, _ = user_study_tables(study, rows, [1, 2, 3, 4, 5])
    assert set(shares["raters"]) == {2}  # raters 1 and 2 only


def test_the_parquet_export_resolves_each_choice_and_where_it_was_shown(tmp_path):
    folder = make_user_study(tmp_path / "sets", n_sets=2, attention=1)
    app = create_app(folder)
    store = app.extensions["wig_votes"]
    ((rater, token),) = store.add_raters(1)
    client = app.test_client()
    state = client.post(f"/api/{token}/consent", json={"external_id": None}).get_json()
    client.post(
        f"/api/{token}/answer", json={"set": state["set"], "question": "subject", "choice": state["images"][2]["id"]}
    )
    client.post(f"/api/{token}/answer", json={"set": state["set"], "question": "text", "choice": UNDECIDED})
    out = tmp_path / "votes.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "wig.cli", "export-votes", str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    votes = pl.read_parquet(out)
    study = UserStudy.load(folder)
    assert votes["rater"].to_list() == [1, 1] and votes["question"].to_list() == ["subject", "text"]
    assert votes["method"][0] == study.sets[state["set"]]["images"][state["images"][2]["id"]]
    assert votes["position"].to_list() == [3, None] and votes["method"][1] == UNDECIDED
    assert os.path.exists(folder.parent / "sets.votes.sqlite")


@pytest.mark.parametrize(
    "preset, entry, labels",
    [
        ("vico-sd21-table2", "sd21/classdiffusion", ["CFG", "CFG + SAG", "CFG + AG", "PG"]),
        ("vico-sana", "sana-1.6b/db-lora", ["CFG", "CFG + AG", "PG"]),
    ],
)
def test_the_vico_presets_draw_the_papers_user_study(monkeypatch, preset, entry, labels):
    """The paper's Table 3 design: SD 2.1 + ClassDiffusion with CFG / CFG + SAG / CFG + AG / PG, SANA
    + DB-LoRA with CFG / CFG + AG / PG, 15 sets each, over 15 different subjects."""
    monkeypatch.chdir(ROOT)
    config = yaml.safe_load((ROOT / f"config/presets/{preset}.yaml").read_text())
    read_config(config)
    design = Study.from_config(config).user_study_design()
    assert design["entries"] == {entry: labels}
    assert len(design["sets"]) == 15 and len({s["concept"] for s in design["sets"]}) == 15
    assert all(set(s["members"]) == set(labels) for s in design["sets"])


def test_the_server_imports_neither_torch_nor_diffusers():
    """What lets `wig serve-study` listen within a second (docs/user-study.md)."""
    code = (
        "import sys; from wig.cli import build_parser; import wig.user_study.server, wig.user_study.analysis; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


# --- blind for real: a rater holding the code, the config and their token ---------------------------


def _attacker_view(app, token):
    """Everything the server sends one rater, walking their whole plan: per shown set its id, prompt,
    image ids in the shown order and each image's response headers and bytes."""
    client = app.test_client()
    seen = []
    state = client.post(f"/api/{token}/consent", json={"external_id": None}).get_json()
    while not state["done"]:
        images = []
        for image in state["images"]:
            response = client.get(image["src"])
            images.append({"id": image["id"], "headers": dict(response.headers), "bytes": response.data})
        seen.append(
            {"set": state["set"], "prompt": state["prompt"], "references": state["references"], "images": images}
        )
        for q in state["questions"]:
            state = client.post(
                f"/api/{token}/answer", json={"set": state["set"], "question": q["key"], "choice": UNDECIDED}
            ).get_json()
    return seen


def _seeded_id_draws(seed: int, n: int) -> dict[str, int]:
    """Every id the study's seeded generator could have drawn (64-bit image ids and 48-bit set ids, each
    two 32-bit words of `random.Random`), by the draw's index."""
    import random

    rng = random.Random(f"wig-user-study:{seed}:ids")
    index = {}
    for i in range(n):
        value = rng.getrandbits(64)
        low, high = value & 0xFFFFFFFF, value >> 32
        index[f"{value:016x}"] = i
        index[f"{low | (high >> 16) << 32:012x}"] = i
    return index


def _guesses(seen, labels, seed, rater):
    """The attacker's guess of each image's method, by three attacks on what the server sent:
    ids replayed from the seed (drawn in label order), Last-Modified/ETag order, and the rater's
    plan replayed from the seed (a permutation of the stored order)."""
    draws = _seeded_id_draws(seed, 4000)
    out = {"ids": {}, "headers": {}, "plan": {}}
    for s in seen:
        ids = [i["id"] for i in s["images"]]
        if all(i in draws for i in ids):  # drawn in label order
            out["ids"].update({i: labels[r] for r, i in enumerate(sorted(ids, key=draws.get))})
        stamps = [i["headers"].get("Last-Modified") or i["headers"].get("ETag") or "" for i in s["images"]]
        order = sorted(range(len(ids)), key=lambda k: (stamps[k], k))
        out["headers"].update({ids[k]: labels[r] for r, k in enumerate(order)})
    # the plan: rater_plan shuffles the stored image list with a generator the attacker can replay;
    # stored in label order, the shown position tells the label
    import random

    rng = random.Random(f"wig-user-study:{seed}:rater:{rater}")
    n_main = len({s["prompt"] for s in seen})
    order = list(range(n_main))
    rng.shuffle(order)
    perms = {d: rng.sample(range(len(labels)), len(labels)) for d in range(n_main)}
    first_showings = [s for s in seen if s["prompt"] not in {t["prompt"] for t in seen[: seen.index(s)]}]
    for position, s in enumerate(first_showings):
        perm = perms[order[position]]
        out["plan"].update({img["id"]: labels[perm[k]] for k, img in enumerate(s["images"])})
    return out


def test_a_rater_with_the_code_the_config_and_a_token_learns_no_method(tmp_path):
    """The attacker holds the code, the config's seed and one rater token (rater 1), and everything the
    server sends that rater (ids, headers, order across sets and repeats, the image bytes). Each of its
    attacks must do no better than chance at naming an image's method: 90 images, 3 methods (1/3 by
    chance; above 0.55 has probability < 1e-5). Against ids drawn from the config's seed in label
    order, the id attack named every image."""
    labels = ["CFG", "PG", "AG"]
    folder = make_user_study(tmp_path / "sets", seed=0, n_sets=30, attention=3, entries={"toy/db-lora": labels})
    app = create_app(folder, tmp_path / "votes.sqlite")
    ((rater, token),) = app.extensions["wig_votes"].add_raters(1)
    seen = _attacker_view(app, token)
    study = app.extensions["wig_study"]
    truth = {i: s["images"][i] for s in study.sets.values() for i in s["images"]}
    for attack, guess in _guesses(seen, labels, study.seed, rater).items():
        right = sum(truth[i] == label for i, label in guess.items())
        assert right / len(truth) <= 0.55, f"attack {attack}: {right} of {len(truth)} images named"
    # nothing of the file system reaches the rater
    for s in seen:
        for image in s["images"]:
            assert not {"Last-Modified", "ETag", "Content-Disposition"} & set(image["headers"]), image["headers"]
    # repeats: fresh set and image ids, other bytes (what a script would match), the same pixels
    ids = [i["id"] for s in seen for i in s["images"]]
    assert len(set(ids)) == len(ids) == 33 * 3
    digests = [hash(i["bytes"]) for s in seen for i in s["images"]]
    assert len(set(digests)) == len(digests)


@pytest.mark.parametrize("where", ["an image", "the images folder", "study.json"])
def test_a_link_in_the_study_folder_is_refused_at_load(tmp_path, where):
    """A symlink in the study folder (to /etc/passwd, say) was served as image/png: the folder is
    refused at load, naming the link, before any page is served."""
    import shutil

    folder = make_user_study(tmp_path / "sets")
    if where == "an image":
        victim = sorted((folder / "images").iterdir())[0]
        victim.unlink()
        victim.symlink_to("/etc/passwd")
    elif where == "the images folder":
        victim = folder / "images"
        shutil.move(victim, tmp_path / "elsewhere")
        victim.symlink_to(tmp_path / "elsewhere")
    else:
        victim = folder / "study.json"
        shutil.move(victim, tmp_path / "study.json")
        victim.symlink_to(tmp_path / "study.json")
    with pytest.raises(UserStudyError, match=rf"{re.escape(str(victim))} is a link or leads out of the study folder"):
        UserStudy.load(folder)


def test_study_images_decode_to_their_sources_pixels_whatever_bytes_they_were_written_as(tmp_path):
    """wig writes the study's PNGs itself (each row under a drawn filter, a drawn deflate level): any
    decoder reads back the source's pixels exactly, a repeat's other bytes too."""
    from PIL import Image

    from wig.user_study.design import QUESTIONS, build_study

    rng = np.random.default_rng(0)
    sources = tmp_path / "sources"
    sources.mkdir()
    sets = []
    for i in range(3):
        paths = {}
        for label in ["A", "B", "ref"]:
            path = sources / f"{i}-{label}.png"
            Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)).save(path)
            paths[label] = str(path)
        sets.append(
            {
                "entry": "e/f",
                "concept": f"c{i}",
                "prompt_index": 0,
                "prompt": f"p{i}",
                "seed": 0,
                "images": {"A": paths["A"], "B": paths["B"]},
                "references": [paths["ref"]],
            }
        )
    design = {
        "seed": 0,
        "questions": QUESTIONS,
        "exclusion": {"min_consistency": 0.5, "complete": True},
        "entries": {"e/f": ["A", "B"]},
        "attention": [0, 2],
        "sets": sets,
    }
    study = UserStudy.load(build_study(design, tmp_path / "study"))
    for s in study.sets.values():
        drawn = sets[int(s["source"]["concept"][1:])]
        for image_id, label in s["images"].items():
            decoded = np.asarray(Image.open(study.image_files[image_id]))
            assert np.array_equal(decoded, np.asarray(Image.open(drawn["images"][label]).convert("RGB")))
        for image_id in s["references"]:
            decoded = np.asarray(Image.open(study.image_files[image_id]))
            assert np.array_equal(decoded, np.asarray(Image.open(drawn["references"][0]).convert("RGB")))
    files = [p.read_bytes() for p in (study.folder / "images").iterdir()]
    assert len(files) == 3 * 3 + 2 * 3 and len(set(files)) == len(files)  # a repeat's bytes are its own
    assert {p.stat().st_mtime for p in (study.folder / "images").iterdir()} == {946684800}


# --- attention checks that measure attention ------------------------------------------------------


def _preset_exclusion(preset: str) -> dict:
    from wig.workflow.config_schema import read_config

    config = read_config(yaml.safe_load((ROOT / f"config/presets/{preset}.yaml").read_text()))
    return config["user_study"]


def _simulated(study: UserStudy, rater: int, kind: str, rng: np.random.Generator) -> list[tuple]:
    """One rater's answers to their whole plan: ``consistent`` (the subject's photo on gold sets, else
    always PG for the subject and CFG for the text), ``undecided`` everywhere, or ``random`` (each
    question one of the K images or undecided, uniformly)."""
    rows = []
    for set_id, images in study.plan(rater):
        s = study.sets[set_id]
        by_label = {label: i for i, label in s["images"].items()}
        for question in ("subject", "text"):
            if kind == "undecided":
                choice = UNDECIDED
            elif kind == "random":
                choice = str(rng.choice([*images, UNDECIDED]))
            elif s.get("gold"):
                choice = s["gold"] if question == "subject" else images[0]
            else:
                choice = by_label["PG" if question == "subject" else "CFG"]
            rows.append((rater, set_id, question, choice, "t"))
    return rows


@pytest.mark.parametrize("preset", ["vico-sana", "vico-sd21-table2"])
def test_gold_sets_and_repeats_exclude_the_inattentive_under_the_presets_rule(tmp_path, preset):
    """The preset's design (its sets, repeats, gold sets and exclusion rule, the schema's defaults
    filled in): a consistent rater is kept; one who answers "undecided" everywhere (consistent on
    every repeat) fails the gold set and is excluded; a uniform random clicker is excluded. Over 3000
    simulated clickers the share passing is the probability printed when the study is drawn."""
    from wig.user_study.design import random_pass_probability

    spec = _preset_exclusion(preset)
    labels = list(spec["models"][0]["methods"])
    study = UserStudy.load(
        make_user_study(
            tmp_path / "sets",
            n_sets=spec["sets"],
            attention=spec["attention_checks"],
            gold=spec["gold"],
            entries={"m/ft": labels},
            exclusion=spec["exclusion"],
            # a fixed key: the ids and their order, and so the seeded random clicker's answers, are
            # the same every run (one random clicker passes by chance; the 3000 below check the rate)
            secret=bytes.fromhex("5a" * 32),
        )
    )
    assert spec["gold"] >= 1 and spec["exclusion"]["min_gold"] == 1.0
    rng = np.random.default_rng(0)
    rows = [*_simulated(study, 1, "consistent", rng), *_simulated(study, 2, "undecided", rng)]
    rows += _simulated(study, 3, "random", rng)
    table = rater_table(vote_frame(study, rows), study).sort("rater")
    assert table["excluded"].to_list() == [False, True, True]
    assert table["gold_passed"].to_list()[:2] == [1, 0] and table["consistency"][1] == 1.0
    assert "gold sets passed 0 of 1" in table["reason"][1] and table["undecided"][1] == 1.0
    # the printed probability is what random clickers do
    chance = random_pass_probability(study.data)
    clickers = [row for r in range(10, 3010) for row in _simulated(study, r, "random", rng)]
    passed = (~rater_table(vote_frame(study, clickers), study)["excluded"]).mean()
    assert abs(passed - chance) < 4 * np.sqrt(chance * (1 - chance) / 3000), (passed, chance)
    k = len(labels)
    repeats = 2 * spec["attention_checks"]
    from scipy.stats import binom

    assert chance == pytest.approx(binom.sf(np.ceil(0.5 * repeats) - 1, repeats, 1 / (k + 1)) / (k + 1))


@pytest.mark.parametrize("public", [None, "https://study.example.org"])
def test_serve_study_on_all_addresses_prints_links_raters_can_open(tmp_path, public):
    """`--host 0.0.0.0` without `--public-url` prints links naming 0.0.0.0 and a line saying no rater
    can open them; with it, every printed link is under the public address."""
    folder = make_user_study(tmp_path / "sets", n_sets=1, attention=0)
    args = [sys.executable, "-m", "wig.cli", "serve-study", str(folder), "--host", "0.0.0.0", "--port", "0"]
    args += ["--raters", "2"] + (["--public-url", public] if public else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("serving on"):
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    links = [line.split(": ", 1)[1] for line in lines if line.startswith(("admin:", "rater "))]
    assert len(links) == 3
    if public:
        assert all(link.startswith(f"{public}/") for link in links) and not any(
            "without --public-url" in x for x in lines
        )
    else:
        assert all(link.startswith("http://0.0.0.0:") for link in links)
        assert any(x.startswith("note: listening on all addresses (0.0.0.0) without --public-url") for x in lines)
    bad = subprocess.run([*args[:5], "--public-url", "study.example.org"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--public-url 'study.example.org'" in bad.stderr
