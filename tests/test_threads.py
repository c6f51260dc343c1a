import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from pipeline.codebook import Codebook
from pipeline.histograms import assign_words
from pipeline.reduction import Reducer
from pipeline.threads import by_rows, one_blas_thread


def blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_rows_are_split_among_the_cores_blas_would_use_and_kept_in_order(cores):
    x = np.arange(1000 * 3).reshape(1000, 3)
    calls = []

    def double(part):
        calls.append((len(part), threading.get_ident(), blas_threads()))
        return 2 * part

    with threadpool_limits(cores, user_api="blas"):
        np.testing.assert_array_equal(by_rows(double, x, min_rows=100), 2 * x)
        assert blas_threads() == [cores] * len(blas_threads())  # the limit is as it was
    assert sorted(n for n, _, _ in calls) == sorted(len(p) for p in np.array_split(x, cores))
    assert all(threads == [1] * len(threads) for _, _, threads in calls)  # one BLAS thread each
    calls.clear()
    with threadpool_limits(cores, user_api="blas"):
        assert by_rows(double, x[:150], min_rows=100).shape == (150, 3)  # too few rows for two threads
    assert [(n, threads) for n, _, threads in calls] == [(150, [1] * len(calls[0][2]))]  # here, on one BLAS thread


def test_a_failure_in_a_thread_reaches_the_caller_and_the_limit_is_restored():
    def fail(part):
        raise ValueError(f"bad part of {len(part)} rows")

    before = blas_threads()
    with threadpool_limits(2, user_api="blas"), pytest.raises(ValueError, match="bad part"):
        by_rows(fail, np.zeros((1000, 2)), min_rows=100)
    assert blas_threads() == before


def test_a_descriptors_words_do_not_depend_on_the_rows_beside_it():
    """The histograms split a block's descriptors among threads: each image's words are
    those it gets alone."""
    rng = np.random.default_rng(3)
    descriptors = rng.normal(size=(40, 49, 64)).astype(np.float32)
    reducer = Reducer(0.9).fit(descriptors[:10].reshape(-1, 64))
    codebook = Codebook(300, random_state=0).fit(reducer.transform(descriptors[:10].reshape(-1, 64)), 49)
    with threadpool_limits(2, user_api="blas"):
        together = assign_words(descriptors, reducer, codebook, 2)  # 1,960 descriptors: two threads
    alone = np.concatenate([assign_words(descriptors[i : i + 1], reducer, codebook, 2) for i in range(40)])
    np.testing.assert_array_equal(together, alone)


def test_one_blas_thread_inside_and_as_it_is_within_a_split():
    with threadpool_limits(2, user_api="blas"):
        with one_blas_thread():
            assert set(blas_threads()) == {1}
            with one_blas_thread():  # nested: no second lock
                assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {2}

        def inner(part):
            with one_blas_thread():  # in a split's thread: as it is, no lock
                return part + (set(blas_threads()) == {1})

        np.testing.assert_array_equal(by_rows(inner, np.zeros(1000), min_rows=100), np.ones(1000))
        assert set(blas_threads()) == {2}
