"""Contact sheets: tiles in row-major order under their labels; mismatches refused, nothing written."""

import numpy as np
import pytest
from PIL import Image

from wig.errors import WigError
from wig.evaluation.contact_sheet import contact_sheet

pytestmark = pytest.mark.check


def _tiles(tmp_path, n, size=(8, 6)):
    paths = []
    for k in range(n):
        path = tmp_path / f"{k}.png"
        Image.new("RGB", size, (10 * k, 255 - 10 * k, 7)).save(path)
        paths.append(path)
    return paths


def test_tiles_land_row_major_beside_their_labels(tmp_path):
    tiles = _tiles(tmp_path, 6)
    out = tmp_path / "sheet.png"
    contact_sheet(
        tiles, ["cfg w1.0_l7.5", "pg w0.0_l7.5"], ["s0 p00", "s0 p01", "s1 p00"], out, label_width=20, header=4
    )
    sheet = np.asarray(Image.open(out))
    assert sheet.shape == (4 + 2 * 6, 20 + 3 * 8, 3)
    for k, tile in enumerate(tiles):
        i, j = divmod(k, 3)
        block = sheet[4 + i * 6 : 4 + (i + 1) * 6, 20 + j * 8 : 20 + (j + 1) * 8]
        assert (block == np.asarray(Image.open(tile))).all()


def test_a_wrong_count_or_size_is_refused_and_nothing_written(tmp_path):
    out = tmp_path / "sheet.png"
    with pytest.raises(WigError, match="5 images for 2 rows × 3 columns"):
        contact_sheet(_tiles(tmp_path, 5), ["a", "b"], ["x", "y", "z"], out)
    odd = _tiles(tmp_path, 4)
    Image.new("RGB", (9, 6)).save(odd[3])
    with pytest.raises(WigError, match=r"3.png is \(9, 6\), expected \(8, 6\)"):
        contact_sheet(odd, ["a", "b"], ["x", "y"], out)
    assert not out.exists() and not list(tmp_path.glob(".sheet*"))
