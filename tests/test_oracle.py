"""The synthetic world and its oracle: ground truth scores 1.0, wrong renders score what the
definitions say (counted here from the renders, independently of the oracle)."""

import itertools

import numpy as np
import polars as pl
import pytest

from wig.errors import WigError
from wig.synthetic.oracle import read, subject_fidelity, text_fidelity
from wig.synthetic.world import (
    PALETTE,
    SHAPES,
    SUBJECTS,
    Layout,
    Scene,
    caption,
    evaluation_prompts,
    render,
    render_array,
    shape_mask,
)

from conftest import point_row

pytestmark = pytest.mark.check


def _layouts():
    layout, rng = Layout(), np.random.default_rng(0)
    return [layout.draw(rng) for _ in range(4)] + [(14, 18, 8), (18, 14, 11)]


@pytest.mark.parametrize("shape", SHAPES)
def test_ground_truth_plain_objects_score_one(shape):
    colours = list(PALETTE)
    for (cx, cy, r), (colour, background) in zip(itertools.cycle(_layouts()), itertools.permutations(colours, 2)):
        img = render(Scene(shape, colour, background, cx, cy, r))
        scores = text_fidelity(img, background=background, colour=colour, shape=shape)
        assert scores == {"background": 1.0, "colour": 1.0, "shape": 1.0, "text": 1.0}, (colour, background, cx, cy, r)
        fit = read(img).fit
        assert (fit.shape, fit.cx, fit.cy, fit.radius, fit.iou) == (shape, cx, cy, r, 1.0)


@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda s: s.name)
def test_ground_truth_subjects_score_one(subject):
    for (cx, cy, r), background in zip(_layouts(), ["white", "black", "red", "green", "cyan", "blue"]):
        if background in (subject.colour, subject.colour2):
            continue
        img = render(subject.scene(background, cx, cy, r))
        assert subject_fidelity(img, subject) == {"shape_iou": 1.0, "pattern": 1.0, "subject": 1.0}
        assert text_fidelity(img, background=background, shape=subject.shape)["text"] == 1.0


def test_subjects_are_distinct_and_unlike_pretraining():
    assert len({s.name for s in SUBJECTS}) == len(SUBJECTS) >= 5
    assert len({(s.shape, s.pattern) for s in SUBJECTS}) == len(SUBJECTS)
    assert all(s.pattern is not None and s.colour != s.colour2 for s in SUBJECTS)


def test_a_plain_triangle_scores_its_share_of_the_pattern():
    triangle = SUBJECTS[0]  # yellow top, magenta bottom
    ref = render_array(triangle.scene("white", 16, 16, 10))
    mask = shape_mask("triangle", 16, 16, 10, 32)
    share_yellow = (ref[mask] == PALETTE["yellow"]).all(-1).mean()
    plain = render(Scene("triangle", "yellow", "white", 16, 16, 10))
    scores = subject_fidelity(plain, triangle)
    assert scores["shape_iou"] == 1.0 and 0.3 < share_yellow < 0.7
    assert scores["pattern"] == pytest.approx(share_yellow) and scores["subject"] == pytest.approx(
        (1 + share_yellow) / 2
    )
    # swapped colours: every pixel wrong
    swapped = render(Scene("triangle", "magenta", "white", 16, 16, 10, "hsplit", "yellow"))
    assert subject_fidelity(swapped, triangle)["pattern"] == 0.0


def test_wrong_attributes_score_zero_each():
    img = render(Scene("circle", "red", "blue", 16, 16, 10))
    assert text_fidelity(img, background="green", colour="red", shape="circle") == {
        "background": 0.0,
        "colour": 1.0,
        "shape": 1.0,
        "text": pytest.approx(2 / 3),
    }
    assert text_fidelity(img, colour="yellow")["text"] == 0.0
    assert text_fidelity(img, shape="square")["text"] == 0.0
    # a different shape of the subject's colours: IoU of the two masks, fitted
    square = render(Scene("square", "yellow", "white", 16, 16, 10, "hsplit", "magenta"))
    scores = subject_fidelity(square, SUBJECTS[0])
    assert 0.2 < scores["shape_iou"] < 0.9


def test_an_empty_image_has_no_object():
    blank = np.full((32, 32, 3), PALETTE["green"], dtype=np.uint8)
    assert text_fidelity(blank, background="green", colour="red", shape="triangle") == {
        "background": 1.0,
        "colour": 0.0,
        "shape": 0.0,
        "text": pytest.approx(1 / 3),
    }
    assert subject_fidelity(blank, SUBJECTS[0])["subject"] == 0.0


def test_renders_and_captions():
    scene = Scene("triangle", "red", "blue", 16, 16, 9)
    assert np.array_equal(render_array(scene), render_array(scene))
    assert caption(scene) == "a red triangle on a blue background"
    assert caption(scene, colour=False) == "a triangle on a blue background"
    assert caption(scene, identifier="sks") == "a sks triangle on a blue background"
    with pytest.raises(WigError, match="share the colour blue"):
        Scene("triangle", "blue", "blue", 16, 16, 9)
    with pytest.raises(WigError, match="unknown shape 'hexagon'"):
        Scene("hexagon", "red", "blue", 16, 16, 9)
    with pytest.raises(WigError, match="unknown shape 'star'"):  # not drawn as some other shape
        shape_mask("star", 16, 16, 9, 32)


def test_prompts_state_what_the_oracle_checks():
    from wig.synthetic.world import evaluation_prompts, prompt_attributes

    assert prompt_attributes("a red circle on a blue background") == {
        "colour": "red",
        "shape": "circle",
        "background": "blue",
    }
    assert prompt_attributes("a sks triangle on a green background") == {"shape": "triangle", "background": "green"}
    assert prompt_attributes("a blue sks triangle on a red background") == {
        "colour": "blue",
        "shape": "triangle",
        "background": "red",
    }
    with pytest.raises(WigError, match="not a prompt of the synthetic world"):
        prompt_attributes("a sks dog in the jungle")
    for subject in SUBJECTS:
        prompts = [p.format(f"sks {subject.shape}") for p in evaluation_prompts(subject)]
        attrs = [prompt_attributes(p) for p in prompts]
        # held out: no training background; conflicting: a colour that is not the subject's
        assert not {a["background"] for a in attrs} & set(subject.train_backgrounds)
        conflicts = [a["colour"] for a in attrs if "colour" in a]
        assert len(conflicts) == 2 and not set(conflicts) & {subject.colour, subject.colour2}
        assert all(a["background"] not in (subject.colour, subject.colour2) for a in attrs)


def test_the_shipped_sheet_is_the_world_s_and_its_images_are_ground_truth(tmp_path):
    from pathlib import Path

    from wig.concepts import read_images, read_sheet
    from wig.synthetic.world import render_images, write_sheet

    shipped = Path(__file__).resolve().parents[1] / "resources/datasets/synthetic"
    write_sheet(tmp_path / "sheet")
    made = sorted(p.name for p in (tmp_path / "sheet").iterdir())
    assert made == sorted(p.name for p in shipped.iterdir() if p.name != "README.md")
    assert all((tmp_path / "sheet" / n).read_bytes() == (shipped / n).read_bytes() for n in made)

    render_images(tmp_path / "a", n_images=4)
    render_images(tmp_path / "b", n_images=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 * len(SUBJECTS)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    concepts = read_sheet(shipped / "concepts.csv")
    assert list(concepts) == [s.name for s in SUBJECTS]
    for subject in SUBJECTS:
        concept = concepts[subject.name]
        assert concept.class_noun == subject.shape and len(concept.prompts("sks")) == len(evaluation_prompts(subject))
        images = read_images(tmp_path / "a" / subject.name)
        assert all(subject_fidelity(im, subject)["subject"] == 1.0 for im in images)
        assert {read(im).background for im in images} == set(subject.train_backgrounds)
    with pytest.raises(WigError, match="n_images must lie in"):
        render_images(tmp_path / "c", n_images=2)


def test_every_shape_and_radius_has_its_own_mask():
    masks = {(s, r): shape_mask(s, 16, 16, r, 32).tobytes() for s in SHAPES for r in range(6, 16)}
    assert len(set(masks.values())) == len(masks)


def test_oracle_scores_per_image_and_reach_the_tables():
    from wig.evaluation.metrics import aggregate, metrics_of, paired_vs_cfg
    from wig.synthetic.oracle import score_images

    triangle = SUBJECTS[0]
    right = render(triangle.scene("red", 16, 16, 10))
    plain_wrong_bg = render(Scene("triangle", "yellow", "blue", 16, 16, 10))
    scores = score_images([right, plain_wrong_bg], ["a sks triangle on a red background"] * 2, triangle.name)
    assert scores["text"] == [1.0, 0.5]  # background wrong, shape right
    assert scores["subject"][0] == 1.0 and scores["subject"][1] < 1.0
    with pytest.raises(WigError, match="not a subject of the synthetic world"):
        score_images([right], ["a sks triangle on a red background"], "brown_dog")
    rows = []
    for method, omega, vals in (("cfg", 1.0, (0.5, 0.25)), ("pg", 0.0, (1.0, 0.5))):
        for p in range(2):
            rows.append(
                {
                    "concept": triangle.name,
                    "finetune_seed": 0,
                    "prompt_index": p,
                    "seed": 0,
                    **point_row(method, omega=omega, scale=7.5),
                    "protocol": "dreammatcher",
                    "dino": 0.0,
                    "clip_i": 0.0,
                    "clip_t": 0.0,
                    "oracle_text": vals[0],
                    "oracle_subject": vals[1],
                }
            )
    frame = pl.DataFrame(rows)
    assert metrics_of(frame)[-2:] == ("oracle_text", "oracle_subject")
    table = aggregate(frame, n_boot=50)
    assert table.filter(pl.col("method") == "pg")["oracle_text"].to_list() == [1.0]
    paired = paired_vs_cfg(frame, n_boot=50)
    assert paired["d_oracle_text"].to_list() == [0.5] and paired["d_oracle_subject"].to_list() == [0.25]


def test_drawn_subjects_are_new_distinct_and_their_sheet_is_shipped(tmp_path):
    """The ±0.02 study's subjects: drawn from every subject the world can pose less the pilot's five,
    a seeded prefix-stable draw, named so the oracle and the renderer find them; the shipped sheet is
    the tool's output, and its subjects render as ground truth."""
    from pathlib import Path

    from wig.concepts import read_images
    from wig.synthetic.world import draw_subjects, every_subject, render_images, subject_named, write_sheet

    pool = every_subject()
    assert len(pool) == len({(s.shape, s.pattern, s.colour, s.colour2) for s in pool}) == 3 * 4 * 30
    drawn = draw_subjects(104, seed=0)
    known = {(s.shape, s.pattern, s.colour, s.colour2) for s in SUBJECTS}
    assert len({s.name for s in drawn}) == 104 and not known & {
        (s.shape, s.pattern, s.colour, s.colour2) for s in drawn
    }
    assert draw_subjects(20, seed=0) == drawn[:20] and draw_subjects(20, seed=1) != drawn[:20]
    assert all(subject_named(s.name) == s for s in (*drawn, *SUBJECTS))
    with pytest.raises(WigError, match="not a subject of the synthetic world"):
        subject_named("red_red_core_circle")
    with pytest.raises(WigError, match="355 new subjects"):
        draw_subjects(356)

    shipped = Path(__file__).resolve().parents[1] / "resources/datasets/synthetic-subjects"
    write_sheet(tmp_path / "sheet", drawn)
    made = sorted(p.name for p in (tmp_path / "sheet").iterdir())
    assert made == sorted(p.name for p in shipped.iterdir() if p.name != "README.md")
    assert all((tmp_path / "sheet" / n).read_bytes() == (shipped / n).read_bytes() for n in made)
    render_images(tmp_path / "images", n_images=4, subjects=drawn[:6])
    for subject in drawn[:6]:
        images = read_images(tmp_path / "images" / subject.name)
        assert len(images) == 4 and all(subject_fidelity(im, subject)["subject"] == 1.0 for im in images)
    # the default sheet's images are unchanged by naming the subjects: the same draws in the same order
    render_images(tmp_path / "default", n_images=4)
    render_images(tmp_path / "named", n_images=4, subjects=SUBJECTS)
    files = sorted(p.relative_to(tmp_path / "default") for p in (tmp_path / "default").rglob("*.png"))
    assert files and all(
        (tmp_path / "default" / f).read_bytes() == (tmp_path / "named" / f).read_bytes() for f in files
    )
