import numpy as np

from pipeline.codebook import Codebook
from pipeline.histograms import compute_histograms, load_histograms, save_histograms, word_histograms
from pipeline.reduction import Reducer


def test_word_histograms_count_per_image():
    words = np.array([[0, 0, 2], [1, 1, 1]])
    counts = word_histograms(words, 4)
    assert counts.toarray().tolist() == [[2, 0, 1, 0], [0, 3, 0, 0]]
    assert counts.nnz == 3


def test_chunked_histograms_equal_the_whole_and_keep_positions(tmp_path):
    rng = np.random.default_rng(0)
    descriptors = rng.normal(size=(30, 6, 5)).astype(np.float16)
    flat = descriptors.reshape(-1, 5).astype(np.float32)
    reducer = Reducer(1.0).fit(flat)
    codebook = Codebook(7, random_state=0).fit(reducer.transform(flat))
    whole = word_histograms(codebook.predict(reducer.transform(flat)).reshape(30, 6), 7).toarray()

    order = rng.permutation(30)
    chunks = [(order[s : s + 4], descriptors[order[s : s + 4]]) for s in range(0, 30, 4)]
    counts, n_local = compute_histograms(chunks, 30, reducer, codebook)
    assert n_local == 6
    np.testing.assert_array_equal(counts.toarray(), whole)

    save_histograms(tmp_path / "h.h5", counts, n_local, {"digest": "d"})
    normalised = load_histograms(tmp_path / "h.h5")
    np.testing.assert_allclose(normalised.toarray(), whole / 6)
    np.testing.assert_allclose(normalised.sum(axis=1), 1)
