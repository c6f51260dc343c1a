import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.histograms import word_histograms
from pipeline.neighbours import balltree_neighbours


def brute_force(x, ids, k):
    """The tie rule spelled out: distance rounded to 1e-9, then ascending ID, self excluded."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    result = []
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        others.sort(key=lambda j: (round(d[i, j], 9), ids[j]))
        result.append(others[:k])
    return np.array(result), np.take_along_axis(d, np.array(result), axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5])
def test_balltree_follows_the_tie_rule_on_tie_heavy_histograms(seed, k):
    rng = np.random.default_rng(seed)
    # few words and few descriptors: many images share a histogram or a distance
    words = rng.integers(0, 4, size=(60, 5))
    x = word_histograms(words, 4).toarray() / 5
    ids = rng.permutation(1000)[:60]
    expected, expected_d = brute_force(x, ids, k)
    got, got_d = balltree_neighbours(x, ids, k=k, chunk_size=7)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got_d, expected_d, atol=1e-9)


def test_no_image_is_its_own_neighbour_even_among_duplicates():
    x = np.ones((4, 3)) / 3
    neighbours, distances = balltree_neighbours(x, np.array([40, 10, 30, 20]), k=3)
    for i, row in enumerate(neighbours):
        assert i not in row
    assert neighbours[0].tolist() == [1, 3, 2]  # equal distances: ascending database ID
    assert (distances == 0).all()


def test_rows_are_sorted_and_string_ids_break_ties():
    rng = np.random.default_rng(3)
    x = rng.random((50, 8))
    ids = np.array([f"id{i:03d}" for i in rng.permutation(50)])
    neighbours, distances = balltree_neighbours(x, ids, k=5)
    assert (np.diff(distances, axis=1) >= 0).all()
    assert neighbours.shape == (50, 5)


@pytest.mark.parametrize("k", [0, 4])
def test_k_must_leave_room_for_the_query(k):
    with pytest.raises(ConfigError, match=r"\[neighbours\] k"):
        balltree_neighbours(np.eye(4), np.arange(4), k=k)


def test_resumed_query_reuses_committed_chunks(tmp_path):
    from pipeline.checkpoints import Checkpoints

    rng = np.random.default_rng(5)
    x = word_histograms(rng.integers(0, 6, size=(40, 5)), 6).toarray() / 5
    ids = np.arange(40)
    whole = balltree_neighbours(x, ids, k=3, chunk_size=8)
    checkpoints = Checkpoints(str(tmp_path / "work"))
    balltree_neighbours(x, ids, k=3, chunk_size=8, checkpoints=checkpoints)
    # a committed chunk is taken as it is: mark one to see it used
    marked = checkpoints.load(2)
    marked["distances"] = marked["distances"] + 100
    checkpoints.save(2, marked)
    resumed = balltree_neighbours(x, ids, k=3, chunk_size=8, checkpoints=checkpoints)
    np.testing.assert_array_equal(resumed[0], whole[0])
    np.testing.assert_array_equal(resumed[1][16:24], whole[1][16:24] + 100)
    np.testing.assert_array_equal(np.delete(resumed[1], range(16, 24), 0), np.delete(whole[1], range(16, 24), 0))
