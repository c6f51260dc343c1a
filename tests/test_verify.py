import numpy as np
import pytest

from pipeline.verify import cell_centres, verify_pairs

SIDE = 7
WORDS = 2000


def seen(picture, sx, tx, sy, ty, rng):
    """The words on the grid of a view of ``picture`` (an image's words on the grid): a view's cell
    at (x, y) shows the picture's cell at ((x - tx) / sx, (y - ty) / sy); a cell outside the picture
    shows a word of something else."""
    centres = cell_centres(SIDE)
    x, y = (centres[:, 0] - tx) / sx, (centres[:, 1] - ty) / sy
    inside = (x >= 0) & (x < SIDE) & (y >= 0) & (y < SIDE)
    words = rng.integers(0, WORDS, SIDE * SIDE)
    at = np.floor(y[inside]).astype(int) * SIDE + np.floor(x[inside]).astype(int)
    words[inside] = picture[at]
    return words, len(np.unique(at))


@pytest.mark.parametrize(
    "sx, tx, sy, ty",
    [
        (1.0, 0.0, 1.0, 0.0),  # a rescan, a greyscale or recompressed copy
        (1.0, -2.0, 1.0, 1.0),  # shifted
        (4 / 3, -1.0, 4 / 3, -2.0),  # a crop of three quarters of each side
        (0.84, 0.5, 0.78, 0.8),  # a page border, wider on the short side
        (0.6, 1.5, 0.6, 1.0),  # the picture small on a page
    ],
)
def test_a_view_under_a_known_transform_is_explained_and_its_cells_scrambled_are_not(sx, tx, sy, ty):
    rng = np.random.default_rng(0)
    picture = rng.choice(WORDS, SIDE * SIDE, replace=False)
    view, visible = seen(picture, sx, tx, sy, ty, rng)
    scrambled = rng.permutation(view)  # the same bag of words, at other places
    other = rng.integers(0, WORDS, SIDE * SIDE)
    words = np.stack([picture, view, scrambled, other])
    scores, matches = verify_pairs(words, [[0, 1], [0, 2], [0, 3]], np.ones(WORDS), SIDE)
    assert matches[0] >= 0.8 * visible and visible >= 9
    assert scores[0] >= 2.5 * max(scores[1], 3) and scores[2] <= 3


def test_a_word_on_every_cell_of_both_is_one_piece_of_evidence():
    blank = np.zeros((2, SIDE * SIDE), dtype=np.int64)
    scores, matches = verify_pairs(blank, [[0, 1]], np.ones(WORDS), SIDE)
    assert scores[0] == pytest.approx(matches[0] / (SIDE * SIDE))


def test_the_score_weighs_each_word_and_no_match_scores_zero():
    rng = np.random.default_rng(1)
    picture = rng.choice(WORDS // 2, SIDE * SIDE, replace=False)
    weights = rng.random(WORDS) + 0.5
    disjoint = picture + WORDS // 2  # words the picture has none of
    scores, matches = verify_pairs(np.stack([picture, picture, disjoint]), [[0, 1], [0, 2]], weights, SIDE)
    assert matches.tolist() == [SIDE * SIDE, 0]
    assert scores[0] == pytest.approx(weights[picture].sum()) and scores[1] == 0.0


def test_words_off_the_grid_are_refused():
    with pytest.raises(ValueError, match="48 words, 1 a cell, do not lie on a 7 x 7 grid"):
        verify_pairs(np.zeros((2, 48), dtype=np.int64), [[0, 1]], np.ones(3), SIDE)


def test_with_two_words_a_cell_cells_that_share_either_match_once():
    rng = np.random.default_rng(2)
    nearest, second, other = (rng.choice(WORDS // 3, SIDE * SIDE, replace=False) + WORDS // 3 * t for t in range(3))
    a = np.stack([nearest, second], axis=1).ravel()
    b = np.stack([other, nearest], axis=1).ravel()  # b's nearest words differ; its second are a's nearest
    c = np.stack([second, nearest], axis=1).ravel()  # both words shared, in the other order
    words = np.stack([a, b, c])
    scores, matches = verify_pairs(words, [[0, 1], [0, 2]], np.ones(WORDS), SIDE, assign=2)
    assert matches.tolist() == [SIDE * SIDE, SIDE * SIDE] and scores.tolist() == [SIDE * SIDE] * 2
    firsts, _ = verify_pairs(words[:, ::2], [[0, 1]], np.ones(WORDS), SIDE)
    assert firsts[0] == 0.0
