"""tools/subject_contrasts.py: the pre-registered subgroup contrasts of the run at ±0.02 are the
tables' paired contrasts over exactly the subjects each group names."""

import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import point_row

pytestmark = pytest.mark.check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from subject_contrasts import contrasts, figure, subject_differences, subject_groups  # noqa: E402

# two hsplit subjects whose PG gain is +0.2, a core one with −0.1 that its LoRA did not learn
GAIN = {"red_blue_hsplit_circle": 0.2, "green_cyan_hsplit_square": 0.2, "cyan_red_core_circle": -0.1}


def _scores() -> pl.DataFrame:
    rows = []
    for concept, gain in GAIN.items():
        for prompt in range(3):
            for seed in range(2):
                base = 0.5 + 0.01 * prompt + 0.02 * seed
                for method, omega, shift in (("cfg", 1.0, 0.0), ("pg", 0.0, gain)):
                    rows.append(
                        {
                            "concept": concept,
                            "finetune_seed": 0,
                            "prompt_index": prompt,
                            "seed": seed,
                            **point_row(method, omega=omega, scale=4.5),
                            "protocol": "synthetic",
                            "oracle_subject": base + shift,
                            "oracle_text": base - shift / 2,
                        }
                    )
    return pl.DataFrame(rows)


def test_groups_and_their_contrasts():
    learning = pl.DataFrame(
        {
            "arm": ["fine-tune, unguided"] * 3 + ["fine-tune, CFG"],
            "concept": [*GAIN, "cyan_red_core_circle"],
            "subject": [0.9, 0.85, 0.6, 0.95],  # the CFG arm does not decide what was learned
        }
    )
    groups = subject_groups(_scores(), learning, bar=0.8)
    assert groups == {
        "all": sorted(GAIN),
        "learned (unguided ≥ 0.8)": ["green_cyan_hsplit_square", "red_blue_hsplit_circle"],
        "pattern core": ["cyan_red_core_circle"],
        "pattern hsplit": ["green_cyan_hsplit_square", "red_blue_hsplit_circle"],
        "shape circle": ["cyan_red_core_circle", "red_blue_hsplit_circle"],
        "shape square": ["green_cyan_hsplit_square"],
    }
    table = contrasts(_scores(), groups, n_boot=200, seed=0)
    row = {r["group"]: r for r in table.iter_rows(named=True)}
    assert row["all"]["d_oracle_subject"] == pytest.approx(0.1) and row["all"]["n_subjects"] == 3
    assert row["learned (unguided ≥ 0.8)"]["d_oracle_subject"] == pytest.approx(0.2)
    lo, hi = (
        row["learned (unguided ≥ 0.8)"]["d_oracle_subject_lo"],
        row["learned (unguided ≥ 0.8)"]["d_oracle_subject_hi"],
    )
    assert lo == pytest.approx(0.2) and hi == pytest.approx(0.2)  # every pair differs by exactly 0.2
    assert row["pattern core"]["d_oracle_subject"] == pytest.approx(-0.1)
    assert row["pattern core"]["d_oracle_text"] == pytest.approx(0.05)
    assert row["shape circle"]["d_oracle_subject"] == pytest.approx(0.05) and row["shape circle"]["n_images"] == 12


def test_per_subject_differences_and_their_figure(tmp_path):
    per = subject_differences(_scores(), {"method": "pg", "scale": 4.5, "omega": 0.0})
    got = {r["concept"]: (r["d_subject"], r["d_text"]) for r in per.iter_rows(named=True)}
    assert got.keys() == GAIN.keys()
    for concept, gain in GAIN.items():
        assert got[concept] == pytest.approx((gain, -gain / 2))
    figure({"PG ω 0": per}, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
