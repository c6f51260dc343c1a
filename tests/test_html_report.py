import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.errors import ConfigError
from pipeline.html_report import choose_rows, make_thumbnails, map_layout, neighbours_beside, thumbnail_pixels
from pipeline.neighbours import sparse_neighbours
from pipeline.weighting import WeightedHistograms


def test_named_images_come_first_then_a_seeded_sample_of_the_others():
    ids = np.array([10, 11, 12, 13, 14, 15])
    rows = choose_rows(ids, sample=2, named=["14", 11])
    assert rows[:2] == [4, 1] and len(rows) == 4 and not {4, 1} & set(rows[2:])
    assert rows == choose_rows(ids, sample=2, named=["14", 11])
    with pytest.raises(ConfigError, match=r"--show: no image of this run has the ID\(s\) 99"):
        choose_rows(ids, sample=2, named=["99"])


def groups_with_outliers(seed=0, groups=25, size=10, distractors=50, n_local=49, words=3000):
    """Word counts of near-duplicate groups plus distractors, two groups of which lie far from
    everything (a star field on two words, a texture on three) and so take the first principal axes."""
    rng = np.random.default_rng(seed)
    common = rng.choice(words, size=300, replace=False)
    rows, labels = [], []
    for g in range(groups):
        own = rng.choice(words, size=40, replace=False)
        for _ in range(size):
            if g < 2:  # the outliers: every descriptor on a few words of their own
                drawn = rng.choice([[7, 8], [11, 12, 13]][g], size=n_local)
            else:
                drawn = np.where(
                    rng.random(n_local) < 0.7, rng.choice(own, size=n_local), rng.choice(common, size=n_local)
                )
            rows.append(np.bincount(drawn, minlength=words))
            labels.append(g)
    for d in range(distractors):
        rows.append(np.bincount(rng.choice(common, size=n_local), minlength=words))
        labels.append(groups + d)
    return sp.csr_matrix(np.array(rows)), np.array(labels)


def test_the_map_shows_neighbourhoods_and_no_thumbnail_hides_another():
    counts, labels = groups_with_outliers()
    ids = np.arange(len(labels)) + 1000
    data = WeightedHistograms(counts, 49, ids, "tfidf", "cosine", power=0.5)
    nearest, _ = sparse_neighbours(data, k=5)
    rows = np.arange(len(labels))
    cells, (columns, lines) = map_layout(data, rows)
    assert len({tuple(c) for c in cells.tolist()}) == len(rows)  # one image per cell: none hides another
    assert (cells >= 0).all() and (cells[:, 0] < columns).all() and (cells[:, 1] < lines).all()
    assert columns * lines < len(rows) + columns  # a near-square grid without empty rows
    beside = neighbours_beside(cells, rows, nearest)
    assert beside >= 0.8, beside  # most images' nearest on the map is one of their five neighbours
    centre = {g: cells[labels == g].mean(axis=0) for g in range(25)}
    spread = np.mean([np.abs(cells[labels == g] - centre[g]).sum(axis=1).mean() for g in range(25)])
    assert spread < 2.5, spread  # a group's members lie within a few cells of each other


def test_a_map_of_a_few_images_places_each_in_its_own_cell():
    counts, _ = groups_with_outliers(groups=1, size=3, distractors=0)
    data = WeightedHistograms(counts, 49, np.arange(3), "tfidf", "cosine")
    cells, shape = map_layout(data, np.arange(3))
    assert shape == (2, 2) and len({tuple(c) for c in cells.tolist()}) == 3


def test_thumbnails_are_decoded_in_time_bounded_processes(tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 100), (200, 10, 10)).save(tmp_path / "wide.png")
    (tmp_path / "x.jpg").write_bytes(b"<html>")
    paths = [str(tmp_path / "wide.png"), str(tmp_path / "x.jpg")]
    found = make_thumbnails(paths, {112: [0, 1, 0], 40: [0]})
    assert set(found) == {(0, 112), (1, 112), (0, 40)}
    assert found[0, 112].startswith("data:image/jpeg;base64,") and found[1, 112] is None
    assert thumbnail_pixels(paths[0], size=112).pixels.shape == (37, 112, 3)  # aspect ratio kept
