import numpy as np
import pytest

from pipeline.blocks import ArrayBlocks
from pipeline.codebook import HEAD, Codebook, auto_size, fit_codebook, resolve_size
from pipeline.errors import ConfigError
from pipeline.histograms import compute_histograms
from pipeline.reduction import Reducer
from pipeline.weighting import counts_weights


@pytest.mark.parametrize("n, k", [(1, 2), (15_337, 1917), (2450, 306), (67_996, 8500), (147_000, 8500), (10**9, 8500)])
def test_auto_size(n, k):
    assert auto_size(n) == k


@pytest.mark.parametrize("size, n, expected", [("auto", 100, 12), ("AUTO", 100, 12), ("7", 100, 7), (100, 100, 100)])
def test_resolve_size(size, n, expected):
    assert resolve_size(size, n) == expected


@pytest.mark.parametrize(
    "size, message",
    [("many", "whole number or auto"), ("101", "number of sampled descriptors=100"), ("1", "between 2")],
)
def test_bad_size_names_the_setting(size, message):
    with pytest.raises(ConfigError, match=r"\[codebook\] size=.*" + message):
        resolve_size(size, 100)


def blobs(seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10, size=(4, 8))
    return np.concatenate([c + rng.normal(size=(50, 8)) for c in centres]), centres


def test_codebook_finds_separated_clusters_and_predicts_nearest_word():
    x, centres = blobs()
    codebook = Codebook(4, random_state=0).fit(x)
    words = codebook.predict(x)
    assert len(set(words[:50])) == 1 and len(set(words)) == 4
    brute = np.argmin(((x[:, None, :] - codebook.centers_[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(words, brute)


def test_fit_codebook_is_deterministic_and_independent_of_blocks():
    x, _ = blobs(1)
    descriptors = x.reshape(40, 5, 8).astype(np.float16)
    reducer = Reducer(1.0).fit(x)
    a = fit_codebook(ArrayBlocks(descriptors, block_size=3), reducer, "auto", 120, random_state=0)
    b = fit_codebook(ArrayBlocks(descriptors, block_size=17), reducer, "auto", 120, random_state=0)
    assert a.size == auto_size(120)  # 120 // 5 = 24 whole images
    np.testing.assert_array_equal(a.centers_, b.centers_)


def test_fit_codebook_reads_only_the_sampled_images():
    x, _ = blobs(1)
    reducer = Reducer(1.0).fit(x)
    blocks = ArrayBlocks(x.reshape(40, 5, 8), block_size=4)
    seen = []
    read = blocks.read
    blocks.read = lambda positions: seen.extend(positions) or read(positions)
    fit_codebook(blocks, reducer, 3, 50, random_state=0)
    assert len(seen) == 10 and len(set(seen)) == 10  # 50 descriptors = 10 images of 5, each read once


def test_save_and_load_round_trip(tmp_path):
    x, _ = blobs(2)
    codebook = Codebook(4, random_state=0).fit(x)
    codebook.save(tmp_path / "c.h5", {"digest": "d"})
    loaded = Codebook.load(tmp_path / "c.h5")
    np.testing.assert_array_equal(loaded.predict(x), codebook.predict(x))
    np.testing.assert_array_equal(loaded.word_weights("tfidf", 2), codebook.word_weights("tfidf", 2))


@pytest.mark.parametrize("assign", [1, 2, 3])
def test_word_weights_are_those_of_the_images_fitted_on(assign):
    x, _ = blobs(3)
    descriptors = x.reshape(40, 5, 8)
    reducer = Reducer(1.0).fit(x)
    blocks = ArrayBlocks(descriptors, block_size=7)
    codebook = fit_codebook(blocks, reducer, 6, 200, random_state=0)  # every image sampled
    counts, _, _ = compute_histograms(blocks, np.arange(40).astype(str), reducer, codebook, assign=assign)
    assert codebook.documents_ == 40
    np.testing.assert_array_equal(codebook.word_weights("tfidf", assign), counts_weights(counts, "tfidf"))
    np.testing.assert_array_equal(codebook.word_weights("raw", assign), np.ones(6))
    # a sample of the images: the weights of the sample, kept as the collection changes
    sampled = fit_codebook(blocks, reducer, 6, 50, random_state=0)
    assert sampled.documents_ == 10 and sampled.document_frequency_.max() <= 10


def test_nearest_words_are_in_order_of_distance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    codebook = Codebook(9, random_state=0).fit(x)
    distances = ((x[:, None, :] - codebook.centers_[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(codebook.nearest(x, 3, chunk_size=64), np.argsort(distances, axis=1)[:, :3])
    np.testing.assert_array_equal(codebook.nearest(x, 1)[:, 0], codebook.predict(x))


@pytest.mark.parametrize("head", [0, 5, 64])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_nearest_words_are_exact_where_float32_cannot_tell_them_apart(m, head):
    """Words at the same distance (twins), and words nearer by less than float32 can tell in a
    score of the dot product: the exact order, ties by word number, whatever the chunk, and
    whether the bound on the components past ``head`` decides (5), leaves every descriptor to
    the whole product (0: no component scored before the bound) or has nothing to bound (64)."""
    rng = np.random.default_rng(6)
    words = rng.normal(size=(40, 64))
    words = np.concatenate([words, words[:10], words[:5] + 1e-6])  # twins, and near-twins
    codebook = Codebook(len(words))
    codebook.centers_ = words.astype(np.float32)
    picked = rng.integers(0, 40, size=200)
    x = (words[picked] * 0.999 + rng.normal(scale=1e-4, size=(200, 64))).astype(np.float32)
    x[:20] = 0.5 * (codebook.centers_[0] + codebook.centers_[1])  # halfway between two words
    exact = ((x[:, None, :].astype(np.float64) - codebook.centers_[None].astype(np.float64)) ** 2).sum(axis=2)
    order = np.lexsort((np.broadcast_to(np.arange(len(words)), exact.shape), exact), axis=1)[:, :m]
    for chunk_size in (7, 64, 4096):
        np.testing.assert_array_equal(codebook.nearest(x, m, chunk_size=chunk_size, head=head), order)
    assert codebook.nearest(x, 3).shape == (200, 3) and Codebook(2).fit(x[:50]).nearest(x, 3).shape == (200, 2)


@pytest.mark.parametrize("head", [0, 16, HEAD])
def test_nearest_words_of_clustered_descriptors_are_exact_whatever_the_bound(head):
    """Descriptors of decreasing variance per component, as the reducer gives them, unit length,
    and words fitted on them: the bound leaves few words for most and many for some (those far
    from every word), which take the whole product; the words are the brute force's."""
    rng = np.random.default_rng(7)
    themes = rng.normal(size=(30, 96)) * np.linspace(2, 0.2, 96)
    x = themes[rng.integers(0, 30, size=3000)] + rng.normal(size=(3000, 96)) * np.linspace(0.6, 0.1, 96)
    x[:100] = rng.normal(size=(100, 96))  # far from every theme
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    codebook = Codebook(400, random_state=0).fit(x[:2000])
    exact = ((x[:, None, :].astype(np.float64) - codebook.centers_[None].astype(np.float64)) ** 2).sum(axis=2)
    order = np.lexsort((np.broadcast_to(np.arange(400), exact.shape), exact), axis=1)[:, :3]
    np.testing.assert_array_equal(codebook.nearest(x, 3, head=head), order)
