import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.errors import ConfigError
from pipeline.html_report import choose_rows, make_thumbnails, map_coordinates, thumbnail_pixels


def test_named_images_come_first_then_a_seeded_sample_of_the_others():
    ids = np.array([10, 11, 12, 13, 14, 15])
    rows = choose_rows(ids, sample=2, named=["14", 11])
    assert rows[:2] == [4, 1] and len(rows) == 4 and not {4, 1} & set(rows[2:])
    assert rows == choose_rows(ids, sample=2, named=["14", 11])
    with pytest.raises(ConfigError, match=r"--show: no image of this run has the ID\(s\) 99"):
        choose_rows(ids, sample=2, named=["99"])


def test_the_map_puts_images_with_the_same_words_together():
    rng = np.random.default_rng(0)
    groups = [rng.choice(200, size=12, replace=False) for _ in range(3)]
    rows = []
    for g in groups:
        for _ in range(10):
            words = rng.choice(g, size=10)
            rows.append(np.bincount(words, minlength=200))
    xy = map_coordinates(sp.csr_matrix(np.array(rows)))
    assert xy.min() >= 0 and xy.max() <= 1
    label = np.repeat(np.arange(3), 10)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    same, other = d[label[:, None] == label[None]].mean(), d[label[:, None] != label[None]].mean()
    assert same < other / 3


def test_thumbnails_are_decoded_in_time_bounded_processes(tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 100), (200, 10, 10)).save(tmp_path / "wide.png")
    (tmp_path / "x.jpg").write_bytes(b"<html>")
    paths = [str(tmp_path / "wide.png"), str(tmp_path / "x.jpg")]
    found = make_thumbnails(paths, {112: [0, 1, 0], 40: [0]})
    assert set(found) == {(0, 112), (1, 112), (0, 40)}
    assert found[0, 112].startswith("data:image/jpeg;base64,") and found[1, 112] is None
    assert thumbnail_pixels(paths[0], size=112).shape == (37, 112, 3)  # aspect ratio kept
