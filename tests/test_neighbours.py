import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.checkpoints import Checkpoints
from pipeline.errors import ConfigError
from pipeline.histograms import word_histograms
from pipeline.neighbours import (
    balltree_neighbours,
    nearest_neighbours,
    query_neighbours,
    sparse_neighbours,
    update_neighbours,
)
from pipeline.weighting import IDF_SCALE, POWER_SCALE, Distance, WeightedHistograms, counts_weights, word_weights

METHODS = [balltree_neighbours, sparse_neighbours]
#: (weighting, metric) of every distance the pipeline offers.
DISTANCES = [("raw", "euclidean"), ("raw", "cosine"), ("tfidf", "euclidean"), ("tfidf", "cosine")]


def brute_keys(counts, weighting="raw", metric="euclidean", power=1.0, weights=None):
    """The ranking key of a pair spelled out: from the exact integers of the weighted counts
    (squared distance, or 1 - cosine). Returns key(i, j) and the distance of an array of keys."""
    c = counts.toarray().astype(np.int64)
    n_local = int(c.sum(axis=1)[0])
    if power != 1:  # counts to the power, in fixed point
        c, n_local = np.rint(POWER_SCALE * c**power).astype(np.int64), round(POWER_SCALE * n_local**power)
    v = c * (counts_weights(counts, weighting) if weights is None else weights)
    unit = 1 if weighting == "raw" else IDF_SCALE

    def key(i, j):
        dot, na, nb = int(v[i] @ v[j]), int(v[i] @ v[i]), int(v[j] @ v[j])
        if metric == "euclidean":
            return float(na + nb - 2 * dot)
        return 1.0 - float(dot) / (np.sqrt(float(na)) * np.sqrt(float(nb)))

    def distance(keys):
        keys = np.asarray(keys, dtype=np.float64)
        return np.sqrt(keys) / (n_local * unit) if metric == "euclidean" else np.maximum(keys, 0.0) + 0.0

    return key, distance


def brute_force(counts, ids, k, weighting="raw", metric="euclidean", power=1.0):
    """The tie rule spelled out, pair by pair: the key (:func:`brute_keys`), then ascending ID,
    self excluded."""
    key, distance = brute_keys(counts, weighting, metric, power)
    result, distances = [], []
    for i in range(counts.shape[0]):
        others = sorted((j for j in range(counts.shape[0]) if j != i), key=lambda j: (key(i, j), ids[j]))[:k]
        result.append(others)
        distances.append(distance([key(i, j) for j in others]))
    return np.array(result), np.array(distances)


def random_counts(seed, n=60, words=4, n_local=5, zipf=None):
    rng = np.random.default_rng(seed)
    if zipf:
        p = 1.0 / np.arange(1, words + 1) ** zipf
        draws = rng.choice(words, size=(n, n_local), p=p / p.sum())
    else:
        draws = rng.integers(0, words, size=(n, n_local))
    return word_histograms(draws, words)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("weighting, metric", DISTANCES)
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_methods_follow_the_tie_rule_on_tie_heavy_histograms(method, seed, k, weighting, metric, power):
    # few words and few descriptors: many images share a histogram or a distance
    counts = random_counts(seed)
    ids = np.random.default_rng(seed).permutation(1000)[:60]
    expected, expected_d = brute_force(counts, ids, k, weighting, metric, power)
    got, got_d = method(WeightedHistograms(counts, 5, ids, weighting, metric, power=power), k=k, chunk_size=7)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got_d, expected_d, rtol=1e-12, atol=1e-15)


def test_tfidf_weights_are_the_smoothed_idf_in_fixed_point():
    # 4 images; word 0 in all of them, word 1 in one, word 2 in none
    counts = word_histograms(np.array([[0, 0], [0, 1], [0, 0], [0, 0]]), 3)
    expected = [np.log(5 / 5) + 1, np.log(5 / 2) + 1, np.log(5 / 1) + 1]
    np.testing.assert_array_equal(counts_weights(counts, "tfidf"), np.rint(np.array(expected) * IDF_SCALE))
    np.testing.assert_array_equal(word_weights([4, 1, 0], 4, "tfidf"), counts_weights(counts, "tfidf"))
    np.testing.assert_array_equal(counts_weights(counts, "raw"), [1, 1, 1])
    with pytest.raises(ConfigError, match=r"\[neighbours\] weighting='bm25'"):
        word_weights([4, 1, 0], 4, "bm25")


@pytest.mark.parametrize("weighting, metric", DISTANCES)
def test_similarity_is_100_for_the_same_histogram_and_0_at_the_largest_distance(weighting, metric):
    # images 0 and 1 put all their descriptors on one word each: as far apart as two can be
    counts = word_histograms(np.array([[0, 0], [1, 1], [0, 1], [2, 2]]), 3)
    data = WeightedHistograms(counts, 2, np.arange(4), weighting, metric, power=1.0)
    neighbours, distances = sparse_neighbours(data, k=3)
    farthest = data.similarity(distances[:, -1])
    assert data.similarity(np.zeros(1))[0] == 100
    assert 0 <= farthest.min() and farthest.max() <= 100
    if weighting == "raw":  # words 0 and 1 have the two largest weights
        assert data.similarity(distances[0][neighbours[0] == 1])[0] == pytest.approx(0, abs=1e-9)
    similarities = data.similarity(distances)
    assert (np.diff(similarities, axis=1) <= 0).all()  # in the order of the neighbours


@pytest.mark.parametrize("weighting, metric", DISTANCES)
def test_images_outside_the_collection_get_the_neighbours_they_would_have_in_it(weighting, metric):
    counts = random_counts(7, n=80, words=30, n_local=9, zipf=0.8)
    ids = np.random.default_rng(7).permutation(80)
    expected, expected_d = brute_force(counts, ids, 4, weighting, metric)
    full = WeightedHistograms(counts, 9, ids, weighting, metric, power=1.0)
    outside = np.arange(70, 80)
    # the collection without the last 10 images, with the word weights of the whole
    inside = WeightedHistograms(counts[:70], 9, ids[:70], weighting, metric, weights=full.weights, power=1.0)
    got, got_d = query_neighbours(inside, counts[outside], k=4, chunk_size=3)
    for row, image in enumerate(outside):
        kept = [j for j in expected[image] if j < 70]
        assert got[row][: len(kept)].tolist() == kept[: len(got[row])]
    # an image of the collection asked as a query finds itself first, at distance 0
    self_found, self_d = query_neighbours(full, counts[:5], k=1)
    np.testing.assert_array_equal(self_found[:, 0], np.arange(5))
    np.testing.assert_allclose(self_d[:, 0], 0, atol=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("weighting, metric", DISTANCES)
def test_sparse_equals_balltree_on_zipf_words(seed, weighting, metric):
    # word frequencies falling off as 1/rank, as on a real codebook; 49 descriptors per image
    counts = random_counts(seed, n=400, words=300, n_local=49, zipf=1.0)
    ids = np.random.default_rng(seed).permutation(400) * 7
    data = WeightedHistograms(counts, 49, ids, weighting, metric, power=1.0)
    tree, tree_d = balltree_neighbours(data, k=5)
    for dense_share in (0.0, 0.03, 1.0):
        fast, fast_d = sparse_neighbours(data, k=5, dense_share=dense_share)
        np.testing.assert_array_equal(fast, tree)
        np.testing.assert_array_equal(fast_d, tree_d)


@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize("dense_share", [0.0, 0.1, 1.0])  # every word, the frequent ones, none dense
@pytest.mark.parametrize(
    "weighting, metric, power", [("raw", "euclidean", 1.0), ("tfidf", "cosine", 1.0), ("tfidf", "cosine", 0.5)]
)
def test_sparse_blocks_of_images_give_the_same_neighbours(block, dense_share, weighting, metric, power):
    # the images first in the order of sharing no word (fewest repeated words) fall in other blocks than most queries
    counts = random_counts(5, n=150, words=40, n_local=6, zipf=0.6)
    ids = np.random.default_rng(5).permutation(150)
    expected, expected_d = brute_force(counts, ids, 4, weighting, metric, power)
    got, got_d = sparse_neighbours(
        WeightedHistograms(counts, 6, ids, weighting, metric, power=power), k=4, block=block, dense_share=dense_share
    )
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got_d, expected_d, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("power", [1.0, 0.5])
@pytest.mark.parametrize("weighting, metric", [("raw", "euclidean"), ("tfidf", "cosine")])
def test_postings_hold_counts_up_to_an_images_whole_mass(power, weighting, metric):
    # a posting keeps the image's count of its word (147 at most: 49 descriptors with assign = 3),
    # and the kernel weighs it: counts of every size, weights to IDF_SCALE, blocks of 1 to 2**16
    rng = np.random.default_rng(13)
    words = rng.choice(12, size=(70, 147), p=np.arange(12, 0, -1) / 78)
    words[:6] = rng.integers(12)  # six images with all 147 on one word
    words[6:9, :140] = words[6:9, :1]
    counts = word_histograms(words, 12)
    ids = rng.permutation(70)
    expected, expected_d = brute_force(counts, ids, 4, weighting, metric, power)
    data = WeightedHistograms(counts, 147, ids, weighting, metric, power=power)
    for block in (1, 9, 1 << 16):
        got, got_d = sparse_neighbours(data, k=4, block=block, dense_share=1.0)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_allclose(got_d, expected_d, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="at most 65536"):
        sparse_neighbours(data, k=4, block=(1 << 16) + 1)


@pytest.mark.parametrize("dense_share", [0.0, 1.0])
@pytest.mark.parametrize("weighting, metric", DISTANCES)
def test_sparse_finds_images_that_share_no_word(dense_share, weighting, metric):
    # image 0 shares no word with anyone: its neighbours have no product with it
    counts = word_histograms(np.array([[0, 0], [1, 1], [2, 2], [1, 2], [3, 3]]), 4)
    ids = np.array([5, 3, 4, 1, 2])
    expected, _ = brute_force(counts, ids, 3, weighting, metric)
    for block in (2, 1 << 15):
        data = WeightedHistograms(counts, 2, ids, weighting, metric, power=1.0)
        got = sparse_neighbours(data, k=3, block=block, dense_share=dense_share)[0]
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_multiple_assignment_counts_follow_the_tie_rule(method, power):
    # each of 12 descriptors counted for its 3 nearest words: rows sum to 36, counts up to 12 per word
    rng = np.random.default_rng(11)
    words = np.sort(rng.choice(20, size=(90, 12, 3)), axis=2)
    counts = word_histograms(words.reshape(90, 36), 20)
    ids = rng.permutation(90)
    expected, expected_d = brute_force(counts, ids, 5, "tfidf", "cosine", power)
    got, got_d = method(WeightedHistograms(counts, 36, ids, "tfidf", "cosine", power=power), k=5)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got_d, expected_d, rtol=1e-12, atol=1e-15)


def test_power_takes_the_counts_to_the_power_in_fixed_point():
    from pipeline.weighting import power_table

    np.testing.assert_array_equal(power_table(4, 1.0), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(power_table(4, 0.5), np.rint(POWER_SCALE * np.sqrt([0, 1, 2, 3, 4])))
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match=r"\[neighbours\] power"):
            power_table(4, bad)
    # the Euclidean distance stays that of (counts / n_local) ** power
    counts = word_histograms(np.array([[0, 0, 0, 1], [1, 1, 1, 1]]), 2)
    _, d = sparse_neighbours(WeightedHistograms(counts, 4, np.arange(2), "raw", "euclidean", power=0.5), k=1)
    expected = np.hypot(np.sqrt(3 / 4) - 0, np.sqrt(1 / 4) - 1)
    assert d[0, 0] == pytest.approx(expected, rel=1e-2)


@pytest.mark.parametrize("method", METHODS)
def test_no_image_is_its_own_neighbour_even_among_duplicates(method):
    counts = word_histograms(np.zeros((4, 3), dtype=int), 2)
    neighbours, distances = method(WeightedHistograms(counts, 3, np.array([40, 10, 30, 20])), k=3)
    for i, row in enumerate(neighbours):
        assert i not in row
    assert neighbours[0].tolist() == [1, 3, 2]  # equal distances: ascending database ID
    assert (distances == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_rows_are_sorted_and_string_ids_break_ties(method):
    rng = np.random.default_rng(3)
    ids = np.array([f"id{i:03d}" for i in rng.permutation(50)])
    neighbours, distances = method(WeightedHistograms(random_counts(3, n=50, words=12, n_local=8), 8, ids), k=5)
    assert (np.diff(distances, axis=1) >= 0).all()
    assert neighbours.shape == (50, 5)


@pytest.mark.parametrize("k", [0, 4])
def test_k_must_leave_room_for_the_query(k):
    with pytest.raises(ConfigError, match=r"\[neighbours\] k"):
        nearest_neighbours(WeightedHistograms(np.eye(4, dtype=int), 1, np.arange(4)), k=k)


def test_unknown_method_names_the_setting():
    with pytest.raises(ConfigError, match=r"\[neighbours\] method='kd'"):
        nearest_neighbours(WeightedHistograms(np.eye(4, dtype=int), 1, np.arange(4)), k=1, method="kd")


@pytest.mark.parametrize("method", METHODS)
def test_resumed_query_reuses_committed_chunks(method, tmp_path):
    data = WeightedHistograms(random_counts(5, n=40, words=6), 5, np.arange(40))
    whole = method(data, k=3, chunk_size=8)
    checkpoints = Checkpoints(str(tmp_path / "work"))
    method(data, k=3, chunk_size=8, checkpoints=checkpoints)
    # a committed chunk is taken as it is: mark one to see it used
    marked = checkpoints.load(2)
    marked["distances"] = marked["distances"] + 100
    checkpoints.save(2, marked)
    resumed = method(data, k=3, chunk_size=8, checkpoints=checkpoints)
    np.testing.assert_array_equal(resumed[0], whole[0])
    np.testing.assert_array_equal(resumed[1][16:24], whole[1][16:24] + 100)
    np.testing.assert_array_equal(np.delete(resumed[1], range(16, 24), 0), np.delete(whole[1], range(16, 24), 0))


@pytest.mark.parametrize("method", METHODS)
def test_chunk_size_does_not_change_the_neighbours(method):
    data = WeightedHistograms(random_counts(6, n=300, words=50, n_local=10, zipf=1.0), 10, np.arange(300))
    small = method(data, k=5, chunk_size=3)
    large = method(data, k=5, chunk_size=1000)
    np.testing.assert_array_equal(small[0], large[0])
    np.testing.assert_array_equal(small[1], large[1])


@pytest.mark.parametrize("method", METHODS)
def test_identical_histograms_are_at_distance_zero_never_below(method):
    # |a|^2 = 3: sqrt(3) * sqrt(3) rounds below 3, so 1 - a.a / (|a| |a|) comes out as -2.2e-16
    counts = word_histograms(np.array([[0, 1, 2], [0, 1, 2], [3, 3, 3], [0, 3, 3]]), 4)
    data = WeightedHistograms(counts, 3, np.arange(4), "raw", "cosine", power=1.0)
    _, distances = method(data, k=2)
    assert distances[0, 0] == 0 and not np.signbit(distances).any()
    _, outside = query_neighbours(data, counts[:1], k=1)
    assert outside[0, 0] == 0 and not np.signbit(outside).any()


def changed_collection(rng, ids, rows, words, n_local, zipf, added, changed, removed):
    """The collection after a night: ``removed`` images gone, ``changed`` given new histograms,
    ``added`` new ones, in a new order. Returns (ids, rows, is_new)."""
    keep = rng.permutation(len(ids))[removed:]
    ids, rows = ids[keep], [rows[i] for i in keep]
    is_new = np.zeros(len(ids), dtype=bool)
    for i in rng.choice(len(ids), size=changed, replace=False):
        rows[i], is_new[i] = (
            random_counts(int(rng.integers(1 << 30)), n=1, words=words, n_local=n_local, zipf=zipf),
            True,
        )
    fresh = ids.max() + 1 + rng.permutation(10 * added + 1)[:added]
    ids = np.concatenate([ids, fresh])
    rows += [random_counts(int(rng.integers(1 << 30)), n=1, words=words, n_local=n_local, zipf=zipf) for _ in fresh]
    is_new = np.concatenate([is_new, np.ones(added, dtype=bool)])
    order = rng.permutation(len(ids))
    return ids[order], [rows[i] for i in order], is_new[order]


@pytest.mark.parametrize("words, n_local, zipf", [(4, 5, None), (30, 9, 0.8)])  # tie-heavy, and Zipf words
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("weighting, metric", DISTANCES)
@pytest.mark.parametrize("power", [1.0, 0.5])
def test_incremental_neighbours_equal_a_full_search_night_after_night(
    words, n_local, zipf, k, weighting, metric, power
):
    rng = np.random.default_rng(words + k)
    ids = rng.permutation(1000)[:70]
    rows = [random_counts(i, n=1, words=words, n_local=n_local, zipf=zipf) for i in range(70)]
    weights = WeightedHistograms(
        sp.vstack(rows), n_local, ids, weighting, metric, power=1.0
    ).weights  # frozen from night 0

    def histograms(ids, rows):
        return WeightedHistograms(sp.vstack(rows), n_local, ids, weighting, metric, weights=weights, power=power)

    neighbours, _ = sparse_neighbours(histograms(ids, rows), k=k)
    nights = [(6, 3, 4), (0, 0, 0), (1, 0, 0), (0, 2, 0), (0, 0, 3), (12, 5, 9)]  # added, changed, removed
    for added, changed, removed in nights:
        lists = dict(zip(ids, ids[neighbours]))  # each image's list, as IDs
        ids, rows, is_new = changed_collection(rng, ids, rows, words, n_local, zipf, added, changed, removed)
        position = {i: p for p, i in enumerate(ids)}
        # each image's earlier list as positions now, -1 where gone (new images: none)
        previous = np.array([[position.get(j, -1) for j in lists.get(i, [-1] * k)] for i in ids])
        expected, expected_d = sparse_neighbours(histograms(ids, rows), k=k)
        got, got_d, queried = update_neighbours(histograms(ids, rows), previous, is_new, k=k, chunk_size=7)
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got_d, expected_d)
        assert queried[is_new].all()
        if added + changed + removed == 0:
            assert not queried.any()
        # in shards of rows sharing one inverted file: the same lists, the same images queried
        data = histograms(ids, rows)
        shards = [update_neighbours(data, previous, is_new, k=k, rows=part) for part in thirds(len(ids))]
        kept = data.inverted_file(k)
        assert data.inverted_file(k) is kept  # made once, for every shard
        for i, whole in enumerate((got, got_d, queried)):
            np.testing.assert_array_equal(np.concatenate([shard[i] for shard in shards]), whole)
        neighbours = got


def thirds(n):
    """Three blocks of rows, of unequal sizes."""
    return np.split(np.arange(n), [n // 5, n // 2])


@pytest.mark.parametrize("method", ["balltree", "sparse"])
def test_blocks_of_rows_searched_apart_give_the_whole_search(method):
    ids = np.random.default_rng(3).permutation(500)[:90]
    data = WeightedHistograms(random_counts(5, n=90, words=6, n_local=5), 5, ids, "tfidf", "cosine", power=0.5)
    whole = nearest_neighbours(data, k=4, method=method)
    parts = [nearest_neighbours(data, k=4, method=method, rows=rows) for rows in thirds(90)]
    for i in range(2):
        np.testing.assert_array_equal(np.concatenate([part[i] for part in parts]), whole[i])


def test_the_library_defaults_are_the_shipped_settings():
    import inspect

    from pipeline.cms import Destination
    from pipeline.search import NeighbourSettings
    from tasks import config

    shipped = config.neighbours()
    assert Distance() == Distance(shipped.weighting, shipped.metric, shipped.power)
    assert config.neighbour_settings() == NeighbourSettings() and config.destination() == Destination()
    defaults = {k: p.default for k, p in inspect.signature(WeightedHistograms).parameters.items()}
    assert Distance(defaults["weighting"], defaults["metric"], defaults["power"]) == Distance()
    counts = random_counts(2, n=30, words=9, n_local=6)
    made = WeightedHistograms(counts, 6, np.arange(30))
    assert made.distance == Distance() and str(made.distance) == f"{shipped.weighting}/{shipped.metric}, power 0.5"
