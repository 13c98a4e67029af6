"""Concept sheets, prompt lists and reference-image preparation (real ViCo-derived images)."""

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from wig.cli import main
from wig.concepts import ConceptError, prepare_concept, read_dreambooth, read_prompt_list, read_sheet

pytestmark = pytest.mark.check

ROOT = Path(__file__).resolve().parents[1]
VICO = ROOT / "resources/datasets/vico"
DEMO = ROOT / "resources/datasets/demo"
DOG = DEMO / "images/brown_dog"


def test_vico_sheet_has_the_16_concepts_and_31_prompts():
    concepts = read_sheet(VICO / "concepts.csv")
    assert len(concepts) == 16
    assert sum(c.live for c in concepts.values()) == 5
    clock = concepts["alarm_clock"]
    assert (clock.folder, clock.class_noun, clock.live) == ("clock", "clock", False)
    for c in concepts.values():
        prompts = c.prompts("sks")
        assert len(prompts) == 31 and all(f"sks {c.class_noun}" in p for p in prompts)
    live = concepts["brown_dog"].prompts()
    assert live[0] == "a sks dog in the jungle" and live[10] == "a sks dog wearing a red hat"
    # line 25 of the non-live list carries a trailing space in the source: stripped
    assert concepts["red_vase"].prompts()[24] == "a sks vase with Japanese modern city street in the background"


def test_identifier_and_prompts():
    dog = read_sheet(DEMO / "concepts.csv")["brown_dog"]
    assert dog.instance_prompt("zwx") == "a photo of zwx dog"
    assert dog.class_prompt() == "a photo of dog"
    assert dog.prompts("zwx")[1] == "a zwx dog in the snow"


def test_dreambooth_table_is_a_sheet(tmp_path):
    table = tmp_path / "subjects.csv"
    table.write_text("subject_name,class\nbackpack,backpack\ndog2,dog\n")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a {} on the moon\n")
    concepts = read_sheet(table, columns={"concept": "subject_name", "class_noun": "class"}, prompts=prompts)
    assert concepts["dog2"].folder == "dog2" and concepts["dog2"].prompts() == ["a sks dog on the moon"]


@pytest.mark.parametrize(
    "text, columns, message",
    [
        ("concept,klass\nx,dog\n", None, "no column 'class_noun' for the class_noun (columns: concept, klass)"),
        ("concept,class_noun\nx,dog\n", {"class_noun": "noun"}, "no column 'noun' for the class_noun"),
        ("concept,class_noun\nx,dog\nx,cat\n", None, ":3: concept x listed twice"),
        ("concept,class_noun\nx y,dog\n", None, "concept id 'x y'"),
        ("concept,class_noun,live\nx,dog,maybe\n", None, "'live' must be yes or no"),
        ("concept,class_noun\n", None, "lists no concept"),
    ],
)
def test_bad_sheets_are_refused_naming_file_and_key(tmp_path, text, columns, message):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(text)
    with pytest.raises(ConceptError) as err:
        read_sheet(sheet, columns=columns)
    assert str(sheet) in str(err.value) and message in str(err.value)


def test_a_concept_without_a_class_noun_uses_its_prompts_whole(tmp_path):
    (tmp_path / "p.txt").write_text("a red bicycle\nan owl on a branch\n")
    (tmp_path / "sheet.csv").write_text("concept,class_noun,prompts\nparti,,p.txt\ndog,dog,q.txt\n")
    (tmp_path / "q.txt").write_text("a {} in the snow\n")
    concepts = read_sheet(tmp_path / "sheet.csv")
    parti = concepts["parti"]
    assert not parti.named and concepts["dog"].named
    assert parti.prompts("sks") == ["a red bicycle", "an owl on a branch"] == parti.clip_texts()
    # a forgotten class noun: the first line with a placeholder says what happened and where
    (tmp_path / "sheet.csv").write_text("concept,class_noun,prompts\ndog,,q.txt\n")
    with pytest.raises(ConceptError, match=r"concept dog has no class noun, so its prompts are used whole: .*q.txt:1"):
        read_sheet(tmp_path / "sheet.csv")["dog"].prompts()


def test_a_tsv_prompt_list_is_read_by_its_prompt_column_as_partiprompts_publishes_it(tmp_path):
    shipped = read_sheet(ROOT / "resources/datasets/partiprompts/concepts.csv")["partiprompts"]
    prompts = shipped.prompts()
    assert len(prompts) == 120 and prompts[:2] == ["bond", "element"] and not shipped.named
    rows = (ROOT / "resources/datasets/partiprompts/PartiPrompts-120.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["Prompt", "Category", "Challenge", "Note"]
    categories = [r.split("\t")[1] for r in rows[1:]]
    assert len(set(categories)) == 12 and all(categories.count(c) == 10 for c in set(categories))
    # the published file, where this checkout sits beside the project's shared datasets
    published = (
        next(
            (
                p
                for p in (ROOT.parent, Path("/work"))
                if (p / "shared/datasets/partiprompts/PartiPrompts.tsv").is_file()
            ),
            ROOT.parent,
        )
        / "shared/datasets/partiprompts/PartiPrompts.tsv"
    )
    if published.is_file():  # the subset's rows are the published file's rows, in its order
        source = published.read_text().splitlines()
        assert source[0] == rows[0] and [source.index(r) for r in rows[1:]] == sorted(source.index(r) for r in rows[1:])
        whole = read_prompt_list(published, placeholder=False)
        assert len(whole) == 1632 and '"G I G G L E" painted' in whole[1560]  # unquoted, as published
    (tmp_path / "bad.tsv").write_text("Text\tCategory\nhello\tx\n")
    with pytest.raises(ConceptError, match=r"bad.tsv: a TSV prompt list needs a 'Prompt' column"):
        read_prompt_list(tmp_path / "bad.tsv", placeholder=False)
    (tmp_path / "braces.tsv").write_text("Prompt\tCategory\nfine\tx\na {curly} one\tx\n")
    with pytest.raises(ConceptError, match=r"braces.tsv:3: a prompt used whole has no"):
        read_prompt_list(tmp_path / "braces.tsv", placeholder=False)


def test_bad_prompt_lists(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("a {} in the snow\na photo of nothing\n")
    with pytest.raises(ConceptError, match=r"p.txt:2: a prompt needs exactly one"):
        read_prompt_list(bad)
    with pytest.raises(ConceptError, match="cannot read prompt list"):
        read_prompt_list(tmp_path / "missing.txt")


# --- prepare -------------------------------------------------------------------------------


def _concept(tmp_path, name="concept"):
    folder = tmp_path / name
    shutil.copytree(DOG, folder)
    return folder


def test_prepare_writes_pngs_and_a_manifest(tmp_path):
    out = tmp_path / "out"
    manifest = prepare_concept(DOG, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "00.png",
        "01.png",
        "02.png",
        "03.png",
        "04.png",
        "manifest.parquet",
    ]
    for reader in (pl.read_parquet, lambda p: pl.from_arrow(pq.read_table(p))):
        back = reader(out / "manifest.parquet")
        assert back.columns == [
            "path",
            "source",
            "source_sha256",
            "sha256",
            "width",
            "height",
            "source_width",
            "source_height",
        ]
        assert back.equals(manifest)
    src = np.asarray(Image.open(DOG / "00.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "00.png")), src)


def test_cli_prepare_refuses_an_existing_output(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", "--concept-dir", str(DOG), "--out", str(out)]) == 0
    assert main(["prepare", "--concept-dir", str(DOG), "--out", str(out)]) == 1
    assert "output exists" in capsys.readouterr().err


def _write(folder: Path, case: str) -> Path:
    good = (DOG / "00.jpg").read_bytes()
    path = folder / "zz.jpg"
    if case == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a picture\n")
    return path


@pytest.mark.parametrize("case", ["truncated", "empty", "text"])
def test_broken_images_fail_naming_the_file_and_write_nothing(tmp_path, capsys, case):
    folder = _concept(tmp_path)
    bad = _write(folder, case)
    out = tmp_path / "out"
    assert main(["prepare", "--concept-dir", str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "not a readable image" in err[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["concept"]


def test_empty_and_missing_concept_folders(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["prepare", "--concept-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "o1")]) == 1
    assert f"concept folder {tmp_path / 'empty'} has no images" in capsys.readouterr().err
    # a concept of the sheet whose folder the image root lacks
    sheet = read_sheet(VICO / "concepts.csv")
    missing = tmp_path / sheet["wooden_barn"].folder
    assert main(["prepare", "--concept-dir", str(missing), "--out", str(tmp_path / "o2")]) == 1
    assert f"concept folder not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_unusual_formats_are_accepted_and_converted(tmp_path):
    folder = tmp_path / "concept"
    folder.mkdir()
    rgb = Image.open(DOG / "00.jpg").convert("RGB")
    rgb.convert("CMYK").save(folder / "a_cmyk.jpg", quality=95)
    gray16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(gray16).save(folder / "b_gray16.png")
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[:, :15] = (255, 0, 0, 255)  # left half opaque red, right half fully transparent (black)
    Image.fromarray(rgba).save(folder / "c_rgba.png")
    rgb.save(folder / "d.webp", lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rgb.crop((0, 0, 128, 64)).save(folder / "e_rotated.JPEG", exif=exif, quality=95)

    out = tmp_path / "out"
    manifest = prepare_concept(folder, out)
    images = {Path(s).name: Image.open(out / p) for s, p in zip(manifest["source"], manifest["path"])}
    assert all(im.mode == "RGB" for im in images.values())
    cmyk = np.asarray(images["a_cmyk.jpg"], dtype=int)
    assert np.abs(cmyk - np.asarray(rgb, dtype=int)).mean() < 12  # JPEG + CMYK round trip
    gray = np.asarray(images["b_gray16.png"])
    assert gray[0, 0].tolist() == [0, 0, 0] and gray[-1, -1].tolist() == [255, 255, 255]
    assert np.array_equal(gray[..., 0], np.rint(gray16 / 257).astype(np.uint8))  # rescaled, not clipped
    rgba_out = np.asarray(images["c_rgba.png"])
    assert rgba_out[0, 0].tolist() == [255, 0, 0] and rgba_out[0, -1].tolist() == [255, 255, 255]
    assert np.array_equal(np.asarray(images["d.webp"]), np.asarray(rgb))
    assert images["e_rotated.JPEG"].size == (64, 128)  # EXIF orientation applied
    assert manifest["width"].to_list() == [im.width for im in images.values()]


# --- the DreamBooth benchmark's table --------------------------------------------------------

DREAMBOOTH = ROOT / "resources/datasets/dreambooth/prompts_and_classes.txt"


def test_the_dreambooth_table_reads_as_published_into_thirty_subjects():
    concepts = read_dreambooth(DREAMBOOTH)
    assert len(concepts) == 30 and list(concepts)[:3] == ["backpack", "backpack_dog", "bear_plushie"]
    nouns = {c: concepts[c].class_noun for c in ("bear_plushie", "pink_sunglasses", "red_cartoon", "rc_car", "cat2")}
    assert nouns == {
        "bear_plushie": "stuffed animal",
        "pink_sunglasses": "glasses",
        "red_cartoon": "cartoon",
        "rc_car": "toy",
        "cat2": "cat",
    }
    live = sorted(c for c, concept in concepts.items() if concept.live)
    assert live == ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    assert all(len(c.templates()) == 25 and all(t.count("{}") == 1 for t in c.templates()) for c in concepts.values())
    assert concepts["dog8"].prompts("sks")[10] == "a sks dog wearing a red hat"  # the live list
    assert concepts["candle"].prompts("sks")[10] == "a sks candle with a wheat field in the background"
    assert concepts["bear_plushie"].prompts("sks")[-1] == "a cube shaped sks stuffed animal"
    assert concepts["dog8"].folder == "dog8"
    published = ROOT.parent / "shared/datasets/dreambooth/prompts_and_classes.txt"
    for candidate in (published, Path("/work/shared/datasets/dreambooth/prompts_and_classes.txt")):
        if candidate.is_file():  # shipped unchanged
            assert candidate.read_bytes() == DREAMBOOTH.read_bytes()


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "'a {0} {1} in the snow'.format(unique_token, class_token),",
            "'a {1} {0} in the snow'.format(unique_token, class_token),",
            ":41: expected a prompt written as",
        ),
        ("candle,candle", "candle candle", ":9: expected 'subject_name,class'"),
        ("dog2,dog", "dog,dog", ":15: subject dog listed twice"),
        ("Live Subject Prompts", "Live Prompts", ":67: not part of the DreamBooth table's sections"),
    ],
)
def test_a_malformed_dreambooth_table_is_refused_naming_the_line(tmp_path, old, new, message):
    text = DREAMBOOTH.read_text()
    assert old in text
    bad = tmp_path / "prompts_and_classes.txt"
    bad.write_text(text.replace(old, new, 1))
    with pytest.raises(ConceptError) as err:
        read_dreambooth(bad)
    assert f"{bad}{message}" in str(err.value)
