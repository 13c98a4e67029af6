"""Grid points: canonical names, expansion of config entries, job chunks."""

import pytest

from wig.errors import WigError
from wig.guidance.grid import canonical, expand, job_chunks

pytestmark = pytest.mark.check


def test_canonical_spelling():
    assert canonical(0.1 * 3) == canonical(0.3) == "0.3"
    assert canonical(1) == "1.0" and canonical(-0.0) == "0.0" and canonical(7.5) == "7.5"


def test_expand_names_points_canonically_once():
    points = expand(
        [
            {"method": "none"},
            {"method": "cfg", "scale": [5.0, 7.5]},
            {"method": "pg", "scale": 7.5, "omega": [0.0, 0.1 * 3, 1.0]},
            {"method": "ag", "ag_scale": 2.0},
            {"method": "ag", "ag_scale": 2.0, "weak": "lora"},
            {"method": "cfg", "scale": 7.5},  # a duplicate point is kept once
        ]
    )
    names = [(p.method, p.point_name) for p in points]
    assert names == [
        ("none", "w1.0_l1.0"),
        ("cfg", "w1.0_l5.0"),
        ("cfg", "w1.0_l7.5"),
        ("pg", "w0.0_l7.5"),
        ("pg", "w0.3_l7.5"),
        ("pg", "w1.0_l7.5"),
        ("ag", "w1.0_l7.5_a2.0"),
        ("ag", "w1.0_l7.5_a2.0_weak"),
    ]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"method": "cfg", "omega": 0.5}, r"guidance\[0\]\.omega"),
        ({"method": "pg", "ag_scale": 3.0}, r"guidance\[0\]\.ag_scale"),
        ({"method": "cfg", "weak": "lora"}, r"guidance\[0\]\.weak"),
        ({"method": "ag", "weak": "early"}, r"weak must be 'pretrained' or 'lora'"),
        ({"method": "pg", "omega": [0.5, 1.2]}, r"omega must lie in \[0, 1\], got 1.2"),
    ],
)
def test_expand_refuses_settings_that_do_not_apply(entry, message):
    with pytest.raises(WigError, match=message):
        expand([entry])


def test_job_chunks_keep_grid_order_and_name_single_points_by_their_path():
    points = expand(
        [
            {"method": "cfg", "scale": [1.5, 3.0]},
            {"method": "pg", "scale": 3.0, "omega": [0.0, 0.5]},
            {"method": "ag", "scale": 3.0, "weak": "lora"},
        ]
    )
    assert job_chunks(points, 1) == {p.key: [p] for p in points}
    assert list(job_chunks(points, 1))[-1] == "ag/w1.0_l3.0_a2.0_weak"
    chunks = job_chunks(points, 2)
    assert list(chunks) == ["points00", "points01", "points02"]
    assert [p for chunk in chunks.values() for p in chunk] == points
    assert [len(c) for c in chunks.values()] == [2, 2, 1]
    assert list(job_chunks(points, 10).values()) == [points]
    with pytest.raises(WigError, match="at least 1"):
        job_chunks(points, 0)
