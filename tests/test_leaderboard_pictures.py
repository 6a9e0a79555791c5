"""Pictures attack cells stored (a task's render) are found in the store and embedded in leaderboard.html."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from harness.leaderboard import build_leaderboard, write_leaderboard
from harness.pictures import image_grid
from harness.registry import ConfigError
from tests.leaderboard_fixtures import build_denoising_store, build_store, built_in_registry

STARTS = ("scratch", "original", "defense:x")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return build_denoising_store(tmp_path_factory.mktemp("gen"))


def test_each_start_shows_its_lowest_seed_with_pictures(results):
    board = build_leaderboard(results, registry=built_in_registry())
    shown = {key[2:]: (seed, [p.name for p in pictures]) for key, (seed, pictures) in board.pictures.items()}
    assert shown == {(attack, start): (1 if (attack, start) == ("ft-b", "scratch") else 0, ["denoised", "samples"])
                     for attack in ("ft-a", "ft-b") for start in STARTS}


def test_html_embeds_the_stored_png_bytes(results, tmp_path):
    [page] = write_leaderboard(results, formats=["html"], out_dir=tmp_path, registry=built_in_registry())
    text = page.read_text()
    assert "<h3>Pictures</h3>" in text and text.count('<table class="pictures">') == 2
    embedded = dict(re.findall(r'<img alt="([^"]+)" width="\d+" src="data:image/png;base64,([^"]+)"', text))
    assert len(embedded) == 12  # 2 attacks × 3 starts × 2 pictures
    stored = (results / "artifacts" / "ft" / "ft-a-defense-0" / "picture-denoised.png").read_bytes()
    assert base64.b64decode(embedded["ft-a · defense:x · denoised"]) == stored
    assert "<caption>After ft-b, final epoch</caption>" in text and "scratch<br>seed 1" in text


def test_a_store_without_pictures_has_no_pictures_section(tmp_path):
    board = build_leaderboard(build_store(tmp_path / "toy"), registry=built_in_registry())
    from harness.report.html import render

    assert board.pictures == {} and "Pictures" not in render(board)


def test_an_altered_picture_is_refused(tmp_path):
    results = build_denoising_store(tmp_path / "gen")
    (results / "artifacts" / "ft" / "ft-a-original-1" / "picture-samples.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ConfigError, match="ft-a-original-1/picture-samples.png: picture missing or altered"):
        write_leaderboard(results, formats=["html"], registry=built_in_registry())


def test_image_grid_lays_images_out_on_white():
    images = np.stack([np.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0, 2.0, 0.5)])
    grid = image_grid(images, low=-1, high=1, columns=4)
    assert grid.shape == (2 * 3 + 1, 4 * 4 + 1, 3) and grid.dtype == np.uint8  # H×W×3, as render returns
    assert list(grid[1, [1, 5, 9, 13], 0]) == [0, 128, 255, 255]  # scaled from [low, high], clipped
    assert list(grid[4, 1]) == [191, 191, 191]  # grey fills all three channels
    assert grid[0, 0, 0] == grid[4, 5, 0] == 255  # padding and the empty slot stay white
    with pytest.raises(ValueError, match="C = 1 or 3"):
        image_grid(np.zeros((2, 2, 4, 4)), low=0, high=1)
