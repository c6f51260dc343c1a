import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline.errors import ConfigError
from pipeline.reduction import Reducer


def correlated(n=600, c=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)) @ rng.normal(size=(6, c)) + 0.1 * rng.normal(size=(n, c))
    x[:, 3] = 5.0  # a constant channel, as ReLU outputs that never fire
    return x * rng.uniform(0.5, 20, size=c) + rng.uniform(-3, 50, size=c)


@pytest.mark.parametrize("variance", [0.5, 0.9, 0.97, 1.0])
def test_matches_standard_scaler_plus_pca(variance):
    x = correlated()
    reference = PCA(n_components=variance if variance < 1 else None, svd_solver="full")
    expected = reference.fit_transform(StandardScaler().fit_transform(x))
    reducer = Reducer(variance, "raw", "raw").fit(x)  # the method itself, without the shipped normalisations
    assert reducer.n_components_ == (reference.n_components_ if variance < 1 else x.shape[1])
    got = reducer.transform(x)
    k = min(reducer.n_components_, reference.n_components_)
    # the last components of variance 1.0 have near-zero variance and arbitrary direction
    k = k if variance < 1 else 6
    np.testing.assert_allclose(got[:, :k], expected[:, :k], atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(
        reducer.explained_variance_ratio_[:k], reference.explained_variance_ratio_[:k], rtol=1e-6, atol=1e-12
    )


def test_streamed_chunks_give_the_whole_fit():
    x = correlated(seed=1)
    whole = Reducer(0.97).fit(x)
    streamed = Reducer(0.97).fit(np.array_split(x, 7))
    np.testing.assert_allclose(streamed.transform(x), whole.transform(x), rtol=1e-5, atol=1e-4)


def test_save_and_load_round_trip(tmp_path):
    x = correlated(seed=2)
    reducer = Reducer(0.9).fit(x)
    reducer.save(tmp_path / "r.h5", {"digest": "d"})
    again = Reducer.load(tmp_path / "r.h5")
    np.testing.assert_array_equal(again.transform(x), reducer.transform(x))
    assert again.variance == 0.9


@pytest.mark.parametrize("variance", [0, -0.1, 1.5])
def test_variance_out_of_range_names_the_setting(variance):
    with pytest.raises(ConfigError, match=r"\[reduction\] variance"):
        Reducer(variance).fit(correlated())


class Killed(Exception):
    pass


class Blocks(list):
    """Blocks that fail (as a killed process would stop) when block ``fail_at`` is read."""

    fail_at = None
    read = ()

    def __getitem__(self, i):
        if i == self.fail_at:
            raise Killed
        self.read = [*self.read, i]
        return list.__getitem__(self, i)


def test_a_resumed_fit_equals_an_uninterrupted_one(tmp_path):
    from pipeline.checkpoints import Checkpoints

    x = correlated(seed=3)
    blocks = Blocks(np.array_split(x, 8))
    whole = Reducer(0.97).fit(blocks)

    checkpoints = Checkpoints(str(tmp_path / "work"), state_interval=0)
    blocks.fail_at, blocks.read = 5, []
    with pytest.raises(Killed):
        Reducer(0.97).fit(blocks, checkpoints=checkpoints)
    blocks.fail_at, blocks.read = None, []
    resumed = Reducer(0.97).fit(blocks, checkpoints=checkpoints)
    assert blocks.read == [5, 6, 7]  # blocks 0-4 were not read again
    np.testing.assert_array_equal(resumed.components_, whole.components_)
    np.testing.assert_array_equal(resumed.mean_, whole.mean_)


@pytest.mark.parametrize("norm", ["l2", "root"])
def test_descriptor_normalisation_comes_before_the_scaler(norm):
    x = np.abs(correlated(seed=3))  # post-ReLU outputs are non-negative
    x[5] = 0  # a descriptor of zeros stays zero
    if norm == "l2":
        normalised = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    else:  # RootSIFT: the square root of the L1-normalised values
        normalised = np.sqrt(x / np.maximum(x.sum(axis=1, keepdims=True), 1e-300))
    reference = PCA(n_components=0.9, svd_solver="full").fit(StandardScaler().fit(normalised).transform(normalised))
    expected = reference.transform(StandardScaler().fit(normalised).transform(normalised))
    reducer = Reducer(0.9, descriptors=norm, reduced="raw").fit(np.array_split(x, 3))
    assert reducer.n_components_ == reference.n_components_
    np.testing.assert_allclose(reducer.transform(x), expected, atol=1e-4 * np.abs(expected).max())


def test_reduced_normalisation_gives_unit_rows_and_survives_saving(tmp_path):
    x = correlated(seed=4)
    reducer = Reducer(0.9, descriptors="root", reduced="l2").fit(x)
    np.testing.assert_allclose(np.linalg.norm(reducer.transform(x), axis=1), 1, rtol=1e-5)
    reducer.save(tmp_path / "r.h5", {"digest": "d"})
    again = Reducer.load(tmp_path / "r.h5")
    assert (again.descriptors, again.reduced) == ("root", "l2")
    np.testing.assert_array_equal(again.transform(x), reducer.transform(x))


def test_unknown_normalisation_names_the_setting():
    with pytest.raises(ConfigError, match=r"\[reduction\] descriptors='l1'"):
        Reducer(0.9, descriptors="l1").fit(correlated())


def test_another_reduced_normalisation_keeps_the_fit():
    x = correlated(seed=5)
    fitted = Reducer(0.9, reduced="raw").fit(x)
    unit = fitted.with_reduced("l2")
    raw = fitted.transform(x)
    np.testing.assert_allclose(unit.transform(x), raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)
    assert fitted.reduced == "raw"  # the original is unchanged


@pytest.mark.parametrize("norm", ["raw", "l2", "root"])
def test_a_descriptors_reduction_does_not_depend_on_the_others_beside_it(norm):
    """Bit for bit, whatever images it is reduced with (a night reduces only the new images),
    and on however many BLAS threads."""
    rng = np.random.default_rng(4)
    x = np.abs(rng.normal(size=(130 * 49, 64)) @ rng.normal(size=(64, 512))).astype(np.float32).reshape(130, 49, 512)
    reducer = Reducer(0.97, descriptors=norm).fit(x[:60])
    with threadpool_limits(2, user_api="blas"):
        together = reducer.transform(x)
    assert together.shape == (130, 49, reducer.n_components_) and together.dtype == np.float32
    for size in (1, 3, 128):
        np.testing.assert_array_equal(reducer.transform(x[2 : 2 + size]), together[2 : 2 + size])
    np.testing.assert_array_equal(reducer.transform(x[7]), together[7])  # one image, shape (n_local, c)


def test_no_descriptors_reduce_to_none():
    reducer = Reducer(0.9).fit(np.random.default_rng(0).normal(size=(200, 16)))
    assert reducer.transform(np.zeros((0, 16), np.float32)).shape == (0, reducer.n_components_)
    assert reducer.transform(np.zeros((0, 49, 16), np.float32)).shape == (0, 49, reducer.n_components_)
