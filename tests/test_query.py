import numpy as np
import pytest

from pipeline.blocks import ArrayBlocks
from pipeline.codebook import fit_codebook
from pipeline.errors import ArtifactError
from pipeline.histograms import compute_histograms
from pipeline.neighbours import sparse_neighbours
from pipeline.query import SimilarityIndex
from pipeline.reduction import Reducer
from pipeline.store import FeatureIndex, dequantize, quantize
from pipeline.weighting import WeightedHistograms


@pytest.fixture(scope="module")
def collection():
    """30 images of 12 local descriptors in 3 well separated groups, as the pipeline stores them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 1, 16)) * 5
    raw = centres[np.arange(30) % 3] + rng.normal(size=(30, 12, 16))
    descriptors = dequantize(*quantize(raw))
    blocks = ArrayBlocks(descriptors)
    ids = np.arange(500, 530)
    keys = np.array([f"k{i}" for i in range(30)])
    index = FeatureIndex(ids, np.array(["1"] * 30), np.array([f"{i}.jpg" for i in range(30)]), keys, keys, ids, [])
    reducer = Reducer(0.9).fit(blocks)
    codebook = fit_codebook(blocks, reducer, size=12, sample_size=10_000, random_state=0)
    counts, _, _ = compute_histograms(blocks, keys, reducer, codebook)
    return raw, index, counts, reducer, codebook


@pytest.mark.parametrize("weighting, metric", [("raw", "euclidean"), ("tfidf", "cosine")])
def test_an_image_of_the_collection_finds_itself_then_its_run_neighbours(collection, weighting, metric):
    raw, index, counts, reducer, codebook = collection
    data = WeightedHistograms(counts, 12, index.ids, weighting, metric, power=1.0)
    query = SimilarityIndex(index, data, reducer, codebook, None)
    found, distances = query.query(raw[[4, 7]], k=6)
    np.testing.assert_array_equal(found[:, 0], [4, 7])  # the same histogram as in the collection
    np.testing.assert_allclose(distances[:, 0], 0, atol=1e-12)
    # and then the neighbours the run gives it, as far as the tie rule decides the same
    run, run_d = sparse_neighbours(data, k=5)
    np.testing.assert_allclose(distances[:, 1:], run_d[[4, 7]], rtol=1e-12)
    described = query.describe(found, distances)
    assert described[0][0] == {
        "rank": 1,
        "id": 504,
        "ppn": "1",
        "filename": "4.jpg",
        "distance": 0.0,
        "similarity": 100.0,
    }
    assert all(0 <= n["similarity"] <= 100 for row in described for n in row)
    assert [n["similarity"] for n in described[1]] == sorted((n["similarity"] for n in described[1]), reverse=True)


def test_descriptors_of_another_layer_are_refused(collection):
    raw, index, counts, reducer, codebook = collection
    query = SimilarityIndex(index, WeightedHistograms(counts, 12, index.ids), reducer, codebook, None)
    with pytest.raises(ArtifactError, match="13 local descriptors per image; the run's have 12"):
        query.query(np.zeros((1, 13, 16)))


def test_a_query_needs_the_artifacts_of_a_run(tmp_path):
    with pytest.raises(ArtifactError, match=r"features\.h5 cannot be read .*run the pipeline"):
        SimilarityIndex.load(*(str(tmp_path / name) for name in ("features.h5", "r.h5", "c.h5", "h.h5", "s.hdf5")))


def test_a_judged_neighbour_of_a_collection_image_is_marked(collection, tmp_path):
    from pipeline.verdicts import Judgements

    raw, index, counts, reducer, codebook = collection
    data = WeightedHistograms(counts, 12, index.ids, "tfidf", "cosine", power=1.0)
    found, distances = SimilarityIndex(index, data, reducer, codebook, None).query(raw[[4]], k=4)
    first, second = found[0, 1], found[0, 2]
    judgements = Judgements(30, np.array([4, second]), np.array([first, 4]), np.array([False, True]))
    query = SimilarityIndex(index, data, reducer, codebook, None, judgements=judgements)
    described = query.describe(found, distances, selves=np.array([4]))[0]
    assert [n.get("verdict") for n in described] == [None, "wrong", "right", None]
    # a file outside the collection: nothing to mark
    assert all("verdict" not in n for n in query.describe(found, distances)[0])
    content = tmp_path / "content"
    (content / "PPN1").mkdir(parents=True)
    (content / "PPN1" / "4.jpg").write_bytes(b"")
    other = tmp_path / "elsewhere.jpg"
    other.write_bytes(b"")
    assert query.positions_of([str(content / "PPN1" / "4.jpg"), str(other)], str(content)).tolist() == [4, -1]


def test_a_query_is_re_ranked_as_the_runs_lists_were(tmp_path):
    from pipeline.histograms import save_histograms
    from pipeline.verify import Verifier

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 9, 16)) * 3  # four pictures, each cell its own content
    raw = centres[np.arange(24) % 4] + rng.normal(size=(24, 9, 16))
    descriptors = dequantize(*quantize(raw))
    blocks = ArrayBlocks(descriptors)
    ids, keys = np.arange(100, 124), np.array([f"k{i}" for i in range(24)])
    index = FeatureIndex(ids, np.array(["1"] * 24), np.array([f"{i}.jpg" for i in range(24)]), keys, keys, ids, [])
    reducer = Reducer(0.9).fit(blocks)
    codebook = fit_codebook(blocks, reducer, size=20, sample_size=10_000, random_state=0)
    counts, _, words = compute_histograms(blocks, keys, reducer, codebook)
    save_histograms(tmp_path / "h.h5", keys, counts, 9, {}, words=words)
    query = SimilarityIndex(
        index, WeightedHistograms(counts, 9, ids, "tfidf", "cosine", power=0.5), reducer, codebook, None
    )
    query.histograms_path = tmp_path / "h.h5"
    nearest, nearest_d = query.query(raw[[5]], k=12)  # by distance: the run's lists were not re-ranked
    together = np.concatenate([words, words[[5]]])  # the query's words are the collection image's
    scores = Verifier.of_codebook(together, codebook, 1).scores(np.array([24]), nearest)[0][0]
    threshold = float(np.sort(scores)[-4])  # the four best pairs verified
    query.rerank = (threshold, 12)
    found, found_d = query.query(raw[[5]], k=6)
    verified = scores >= threshold
    expected = np.concatenate([nearest[0][verified], nearest[0][~verified]])[:6]
    np.testing.assert_array_equal(found[0], expected)
    np.testing.assert_array_equal(found_d[0], np.concatenate([nearest_d[0][verified], nearest_d[0][~verified]])[:6])
    assert found[0, 0] == 5 and verified.sum() >= 4
    assert not np.array_equal(found[0], nearest[0][:6])  # the verification moved some
