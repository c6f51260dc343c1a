import numpy as np
import pytest

from pipeline.blocks import ArrayBlocks
from pipeline.checkpoints import Checkpoints
from pipeline.codebook import Codebook
from pipeline.histograms import (
    assign_words,
    compute_histograms,
    load_assign,
    load_counts,
    load_rows,
    load_words,
    save_histograms,
    word_histograms,
)
from pipeline.query import word_counts
from pipeline.reduction import Reducer


def test_word_histograms_count_per_image():
    words = np.array([[0, 0, 2], [1, 1, 1]])
    counts = word_histograms(words, 4)
    assert counts.toarray().tolist() == [[2, 0, 1, 0], [0, 3, 0, 0]]
    assert counts.nnz == 3


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(30, 6, 5)).astype(np.float16)
    flat = descriptors.reshape(-1, 5).astype(np.float32)
    reducer = Reducer(1.0).fit(flat)
    codebook = Codebook(7, random_state=0).fit(reducer.transform(flat))
    whole = word_histograms(codebook.predict(reducer.transform(flat)).reshape(30, 6), 7).toarray()
    keys = np.array([f"k{i}" for i in range(30)])
    return descriptors, keys, reducer, codebook, whole


@pytest.mark.parametrize("block_size", [1, 4, 64])
def test_blocked_histograms_equal_the_whole(fitted, block_size, tmp_path):
    descriptors, keys, reducer, codebook, whole = fitted
    counts, n_reused, words = compute_histograms(
        ArrayBlocks(descriptors), keys, reducer, codebook, block_size=block_size
    )
    assert n_reused == 0
    np.testing.assert_array_equal(counts.toarray(), whole)
    assert counts.getnnz(axis=1).max() <= 6
    np.testing.assert_array_equal(word_histograms(words, 7).toarray(), whole)  # the words per cell give the counts
    assert words.dtype == np.uint16

    save_histograms(tmp_path / "h.h5", keys, counts, 6, {"digest": "d"}, words=words)
    np.testing.assert_array_equal(load_words(tmp_path / "h.h5"), words)
    np.testing.assert_array_equal(load_words(tmp_path / "h.h5", [2, 5]), words[[2, 5]])
    loaded_keys, loaded, n_local = load_counts(tmp_path / "h.h5")
    assert loaded_keys.tolist() == keys.tolist() and n_local == 6
    np.testing.assert_array_equal(loaded.toarray(), whole)
    for rows in ([], [3], [0, 1, 2, 7, 29], list(range(0, 30, 2))):  # row by row, and one read of the whole
        np.testing.assert_array_equal(load_rows(tmp_path / "h.h5", rows).toarray(), whole[rows].reshape(-1, 7))


class CountingBlocks(ArrayBlocks):
    def __init__(self, descriptors):
        super().__init__(descriptors)
        self.read_positions = []

    def read(self, positions):
        self.read_positions.extend(np.asarray(positions).tolist())
        return super().read(positions)


def test_unchanged_images_reuse_their_rows(fitted):
    descriptors, keys, reducer, codebook, whole = fitted
    previous_keys = np.array([*keys[10:20][::-1], "gone"])
    previous_words = np.zeros((11, 6), dtype=np.uint16)
    previous = (previous_keys, word_histograms(previous_words, 7).tocsr(), previous_words)
    blocks = CountingBlocks(descriptors)
    counts, n_reused, words = compute_histograms(blocks, keys, reducer, codebook, previous=previous, block_size=4)
    assert n_reused == 10
    assert sorted(blocks.read_positions) == [*range(10), *range(20, 30)]
    dense = counts.toarray()
    np.testing.assert_array_equal(dense[10:20], np.tile([6, 0, 0, 0, 0, 0, 0], (10, 1)))  # the previous rows
    np.testing.assert_array_equal(dense[:10], whole[:10])
    np.testing.assert_array_equal(dense[20:], whole[20:])
    np.testing.assert_array_equal(word_histograms(words, 7).toarray(), dense)  # the words follow the counts
    assert (words[10:20] == 0).all()


def test_a_resumed_computation_reads_only_the_missing_blocks(fitted, tmp_path):
    descriptors, keys, reducer, codebook, whole = fitted
    checkpoints = Checkpoints(str(tmp_path / "work"))
    compute_histograms(
        ArrayBlocks(descriptors[:12]), keys[:12], reducer, codebook, checkpoints=checkpoints, block_size=4
    )
    blocks = CountingBlocks(descriptors)
    counts, _, _ = compute_histograms(blocks, keys, reducer, codebook, checkpoints=checkpoints, block_size=4)
    assert blocks.read_positions == list(range(12, 30))
    np.testing.assert_array_equal(counts.toarray(), whole)


def test_multiple_assignment_counts_each_descriptor_for_its_nearest_words(fitted, tmp_path):
    descriptors, keys, reducer, codebook, whole = fitted
    flat = reducer.transform(descriptors.reshape(-1, 5).astype(np.float32))
    distances = ((flat[:, None, :] - codebook.centers_[None]) ** 2).sum(axis=2)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(assign_words(descriptors, reducer, codebook, 2), nearest.reshape(30, 12))
    np.testing.assert_array_equal(
        assign_words(descriptors, reducer, codebook, 1), codebook.predict(flat).reshape(30, 6)
    )
    counts, _, words = compute_histograms(ArrayBlocks(descriptors), keys, reducer, codebook, assign=2, block_size=7)
    assert words.shape == (30, 12)
    assert (counts.sum(axis=1) == 12).all() and (counts.toarray() >= whole).all()
    # a query counts its descriptors as the run counted the collection's (after the store's 8-bit coding)
    np.testing.assert_array_equal(
        np.asarray(word_counts(descriptors[:3], reducer, codebook, 2).sum(axis=1)).ravel(), [12, 12, 12]
    )
    save_histograms(tmp_path / "h.h5", keys, counts, 6, {"digest": "d"}, assign=2)
    assert load_assign(tmp_path / "h.h5") == 2
