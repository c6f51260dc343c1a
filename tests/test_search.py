"""The night's lists under the verdicts: full, sharded and incremental searches against a brute force."""

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.histograms import word_histograms
from pipeline.output import Earlier, write_similarities
from pipeline.records import SameRecord
from pipeline.search import NeighbourSettings, NightSearch, gather_neighbours, why_full, write_neighbours
from pipeline.verdicts import Judgements, Verdicts
from pipeline.verify import Verifier, verify_pairs
from pipeline.weighting import WeightedHistograms

from .test_neighbours import brute_keys, changed_collection, random_counts, thirds


def settings(k, own=None, method="auto"):
    """The NeighbourSettings of ``k`` neighbours, at most ``own`` of the image's own record (None: no limit)."""
    same_record = SameRecord() if own is None else SameRecord("at_most", own) if own else SameRecord("exclude")
    return NeighbourSettings(k, same_record=same_record, method=method, rerank=False)


def brute_force_lists(counts, ids, k, verdicts, weighting, metric, power, weights, records=None, own=None):
    """Each image's list under the verdicts, the rule spelled out pair by pair: the images judged
    right with it, nearest first (at most k), then the nearest not judged with it, up to k, of
    which at most ``own`` in all are of its own record (``records``; None: no limit); the list in
    the order of (key, ID). ``verdicts``: {(id, id): right}."""
    key, distance = brute_keys(counts, weighting, metric, power, weights)
    by_id = {int(i): p for p, i in enumerate(ids)}
    wrong, right = {p: set() for p in range(len(ids))}, {p: set() for p in range(len(ids))}
    for (x, y), is_right in verdicts.items():
        a, b = by_id[x], by_id[y]
        (right if is_right else wrong)[a].add(b)
        (right if is_right else wrong)[b].add(a)
    lists, distances = [], []
    for i in range(len(ids)):

        def rank(j, i=i):
            return (key(i, j), ids[j])

        chosen = sorted(right[i], key=rank)[:k]
        mine = sum(records[j] == records[i] for j in chosen) if own is not None else 0
        for j in sorted((j for j in range(len(ids)) if j != i and j not in wrong[i] | right[i]), key=rank):
            if len(chosen) == k:
                break
            if own is not None and records[j] == records[i]:
                if mine >= own:
                    continue
                mine += 1
            chosen.append(j)
        chosen = sorted(chosen, key=rank)
        lists.append(chosen)
        distances.append(distance([key(i, j) for j in chosen]))
    return np.array(lists), np.array(distances)


def write_night(path, ids, keys, night, found, verdicts, ranked=None):
    """The similarities.hdf5 of a night's :class:`Lists` ``found``, for the next night: its lists
    under the verdicts, or (``ranked``: (k, threshold, judgements)) re-ranked, with the short lists."""
    if ranked is None:
        got, got_d = found.assembled()
        raw = (found.judged, *found.judged_raw())
    else:
        got, got_d, raw_lists, raw_d = found.ranked(*ranked)
        raw = (found.judged, raw_lists, raw_d)
    write_similarities(
        path,
        ids,
        ids.astype(str),
        ids.astype(str),
        got,
        got_d,
        {"digest": str(night)},
        keys=keys,
        raw=raw,
        verdicts=verdicts,
        short=found if ranked else None,
    )


def as_verdicts(pairs):
    """{(id, id): right} as Verdicts."""
    items = sorted(pairs.items())
    return Verdicts(
        image_id=np.array([a for (a, _), _ in items], dtype=np.int64),
        similar_image_id=np.array([b for (_, b), _ in items], dtype=np.int64),
        right=np.array([r for _, r in items], dtype=bool),
        time=np.array(["2026-12-01T00:00:00+00:00"] * len(items), dtype=str),
        author=np.array([""] * len(items), dtype=str),
    )


def judge(rng, ids, neighbours, pairs, n_wrong, n_right, n_flipped, n_withdrawn):
    """A night of curators: first neighbours judged wrong, pairs far apart judged right, some
    verdicts turned over, some withdrawn. ``neighbours``: last night's lists as IDs per ID."""
    pairs = dict(pairs)
    for image in rng.choice(ids, size=n_wrong, replace=False):
        other = int(neighbours[int(image)][0]) if int(image) in neighbours else None
        if other is not None and other in set(ids.tolist()):
            pairs[tuple(sorted((int(image), other)))] = False
    for _ in range(n_right):
        a, b = rng.choice(ids, size=2, replace=False)
        pairs[tuple(sorted((int(a), int(b))))] = True
    listed = sorted(pairs)
    for i in rng.permutation(len(listed))[:n_flipped]:
        pairs[listed[i]] = not pairs[listed[i]]
    for i in rng.permutation(len(listed))[n_flipped : n_flipped + n_withdrawn]:
        pairs.pop(listed[i])
    return pairs


@pytest.mark.parametrize("words, n_local, zipf", [(4, 5, None), (30, 9, 0.8)])  # tie-heavy, and Zipf words
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("weighting, metric, power", [("tfidf", "cosine", 0.5), ("raw", "euclidean", 1.0)])
@pytest.mark.parametrize("own", [None, 0, 1])  # same_record: keep, exclude, at_most 1
def test_lists_under_verdicts_equal_a_brute_force_night_after_night(
    tmp_path, words, n_local, zipf, k, weighting, metric, power, own
):
    rng = np.random.default_rng(words + 10 * k)
    ids = rng.permutation(1000)[:60]
    rows = [random_counts(i, n=1, words=words, n_local=n_local, zipf=zipf) for i in range(60)]
    versions = dict.fromkeys(ids.tolist(), 0)
    weights = WeightedHistograms(
        sp.vstack(rows), n_local, ids, weighting, metric, power=1.0
    ).weights  # frozen from night 0
    pairs, lists, earlier_path = {}, {}, None
    # added, changed, removed images; then wrong, right, flipped and withdrawn verdicts
    nights = [
        (0, 0, 0, 6, 3, 0, 0),
        (0, 0, 0, 0, 0, 0, 0),
        (5, 3, 4, 4, 2, 1, 1),
        (0, 0, 0, 3, 0, 2, 0),
        (0, 2, 0, 0, 0, 0, 3),
        (8, 4, 6, 5, 4, 2, 2),
    ]
    for night, (added, changed, removed, *judging) in enumerate(nights):
        if added + changed + removed:
            ids, rows, is_new = changed_collection(rng, ids, rows, words, n_local, zipf, added, changed, removed)
            for i, new in zip(ids.tolist(), is_new):
                versions[i] = versions.get(i, -1) + int(new)
        present = set(ids.tolist())
        pairs = {p: r for p, r in pairs.items() if set(p) <= present}  # an image gone: its verdicts are bad rows
        pairs = judge(rng, ids, lists, pairs, *judging)
        keys = np.array([f"{i} {versions[i]}" for i in ids.tolist()])
        records = ids % 6  # records of about ten images each
        data = WeightedHistograms(
            sp.vstack(rows), n_local, ids, weighting, metric, weights=weights, power=power, records=records
        )
        verdicts = as_verdicts(pairs)
        judgements = verdicts.judgements(ids)
        expected, expected_d = brute_force_lists(
            sp.vstack(rows), ids, k, pairs, weighting, metric, power, weights, records, own
        )

        earlier = Earlier(earlier_path, ids, keys) if earlier_path else None
        reason = why_full(earlier=earlier, recorded_basis="same", basis="same")
        assert (reason is None) == (night > 0)
        tonight = NightSearch(data, settings(k, own), judgements, earlier, reason).lists()
        full = NightSearch(data, settings(k, own), judgements, None, "--full").lists()
        balltree = NightSearch(data, settings(k, own, "balltree"), judgements, None, "--full").lists()
        shards = [
            NightSearch(data, settings(k, own), judgements, earlier, reason).lists(part) for part in thirds(len(ids))
        ]
        for found in (tonight, full, balltree):
            got, got_d = found.assembled()
            np.testing.assert_array_equal(got, expected, err_msg=f"night {night}")
            np.testing.assert_allclose(got_d, expected_d, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(np.concatenate([s.assembled()[0] for s in shards]), expected)
        np.testing.assert_array_equal(np.concatenate([s.assembled()[1] for s in shards]), tonight.assembled()[1])
        np.testing.assert_array_equal(tonight.raw, full.raw)  # the raw lists ignore the verdicts
        own_record = (records[tonight.raw] == records[:, None]).sum(axis=1)
        assert own_record.max() <= (k if own is None else own)
        if night > 0 and not added + changed + removed and not any(judging):
            assert not tonight.queried.any() and not tonight.judged_queried.any()  # nothing changed: nothing searched

        # the next night starts from tonight's similarities.hdf5
        earlier_path = tmp_path / f"night-{night}.hdf5"
        write_night(earlier_path, ids, keys, night, tonight, verdicts)
        got = tonight.assembled()[0]
        lists = dict(zip(ids.tolist(), ids[got].tolist()))


def test_a_new_verdict_searches_only_the_two_images_it_judges(tmp_path):
    ids = np.arange(100, 180)
    counts = random_counts(3, n=80, words=30, n_local=9, zipf=0.8)
    data = WeightedHistograms(counts, 9, ids, "tfidf", "cosine", power=0.5)
    keys = ids.astype(str)
    before = as_verdicts({(100, 101): False, (102, 150): True})
    first = NightSearch(data, settings(5), before.judgements(ids), None, "no earlier similarities").lists()
    got, got_d = first.assembled()
    path = tmp_path / "first.hdf5"
    write_similarities(
        path,
        ids,
        keys,
        keys,
        got,
        got_d,
        {"digest": "first"},
        keys=keys,
        raw=(first.judged, first.raw[first.judged], first.raw_distances[first.judged]),
        verdicts=before,
    )
    after = as_verdicts({(100, 101): False, (102, 150): True, (110, 111): False})
    tonight = NightSearch(data, settings(5), after.judgements(ids), Earlier(path, ids, keys), None).lists()
    assert not tonight.queried.any()
    assert sorted(ids[tonight.judged[tonight.judged_queried]].tolist()) == [110, 111]
    assert 111 not in ids[tonight.assembled()[0][10]] and 110 not in ids[tonight.assembled()[0][11]]


def test_more_images_judged_right_than_k_keep_the_nearest_k():
    counts = random_counts(4, n=30, words=6, n_local=5)
    ids = np.arange(30)
    data = WeightedHistograms(counts, 5, ids, "raw", "euclidean", power=1.0)
    pairs = {(0, j): True for j in range(1, 8)}
    found = NightSearch(data, settings(3), as_verdicts(pairs).judgements(ids), None, "--full").lists()
    expected, _ = brute_force_lists(counts, ids, 3, pairs, "raw", "euclidean", 1.0, data.weights)
    np.testing.assert_array_equal(found.assembled()[0], expected)
    assert set(found.assembled()[0][0]) <= set(range(1, 8))


def test_judgements_hold_in_both_directions():
    judgements = Judgements(6, np.array([0, 2]), np.array([3, 0]), np.array([False, True]))
    assert judgements.rows.tolist() == [0, 2, 3]
    assert [x.tolist() for x in judgements.partners(0)] == [[3], [2]]
    assert [x.tolist() for x in judgements.partners(3)] == [[0], []]
    assert judgements.verdict(2, 0) == "right" and judgements.verdict(0, 3) == "wrong"
    assert judgements.verdict(1, 2) is None


def window_words(rng, bases, vocabulary):
    """One image's words on a 3 x 3 grid: a window of one of ``bases`` (5 x 5 grids of words) at a
    random place, with a cell or two of other words (two windows of a base are views of one picture)."""
    base = bases[rng.integers(len(bases))]
    y, x = rng.integers(0, 3, size=2)
    words = base[y : y + 3, x : x + 3].ravel().copy()
    noisy = rng.choice(9, size=rng.integers(0, 3), replace=False)
    words[noisy] = rng.integers(0, vocabulary, size=len(noisy))
    return words


def brute_force_ranked(lists, words, rows_words_ids, threshold, k, right=None):
    """Each short list re-ranked, the rule spelled out pair by pair: the images whose pair scores
    ``threshold`` or more (verified one pair at a time) or is judged right (``right``: {row: set}),
    in the list's order, then the others in the list's order; the first k."""
    ranked = []
    for i, short in enumerate(lists):
        scores = [verify_pairs(words, np.array([[i, j]]), np.ones(VOCABULARY), 3)[0][0] for j in short]
        verified = [
            np.float32(s) >= threshold or (right is not None and j in right.get(i, ())) for s, j in zip(scores, short)
        ]
        ranked.append([j for j, v in zip(short, verified) if v] + [j for j, v in zip(short, verified) if not v])
    return np.array([r[:k] for r in ranked])


VOCABULARY = 24


@pytest.mark.parametrize("own", [None, 0, 1])  # same_record: keep, exclude, at_most 1
def test_reranked_lists_equal_a_brute_force_in_full_sharded_and_incremental_nights(tmp_path, own):
    rng = np.random.default_rng(7)
    bases = rng.integers(0, VOCABULARY, size=(6, 5, 5))
    words = {int(i): window_words(rng, bases, VOCABULARY) for i in rng.permutation(1000)[:50]}
    k, width, threshold = 3, 12, np.float32(3.0)
    rerank_settings = NeighbourSettings(k, same_record=settings(k, own).same_record, rerank=True, candidates=width)
    weights, pairs, earlier_path = None, {}, None
    nights = [(0, 0, 0, 4, 2), (0, 0, 0, 0, 0), (4, 3, 3, 3, 2), (0, 0, 0, 0, 0), (6, 2, 4, 2, 3)]
    for night, (added, changed, removed, n_wrong, n_right) in enumerate(nights):
        ids_now = np.array(sorted(words))
        for i in rng.choice(ids_now, size=removed, replace=False):
            del words[int(i)]
        for i in rng.choice(np.array(sorted(words)), size=changed, replace=False):
            words[int(i)] = window_words(rng, bases, VOCABULARY)
        for i in 1000 + night * 100 + np.arange(added):
            words[int(i)] = window_words(rng, bases, VOCABULARY)
        versions = {i: hash(w.tobytes()) for i, w in words.items()}
        ids = rng.permutation(np.array(sorted(words)))
        grid = np.stack([words[int(i)] for i in ids]).astype(np.uint16)
        counts = word_histograms(grid, VOCABULARY)
        if weights is None:
            weights = WeightedHistograms(counts, 9, ids, "tfidf", "cosine", power=1.0).weights
        records = ids % 5
        data = WeightedHistograms(counts, 9, ids, "tfidf", "cosine", weights=weights, power=0.5, records=records)
        present = set(ids.tolist())
        pairs = {p: r for p, r in pairs.items() if set(p) <= present}
        for _ in range(n_wrong + n_right):
            a, b = rng.choice(ids, size=2, replace=False)
            pairs[tuple(sorted((int(a), int(b))))] = len(pairs) % 3 != 0
        verdicts = as_verdicts(pairs)
        judgements = verdicts.judgements(ids)
        keys = np.array([f"{i} {versions[int(i)]}" for i in ids])

        short, _ = brute_force_lists(counts, ids, width, pairs, "tfidf", "cosine", 0.5, weights, records, own)
        raw_short, _ = brute_force_lists(counts, ids, width, {}, "tfidf", "cosine", 0.5, weights, records, own)
        by_id = {int(i): p for p, i in enumerate(ids)}
        right = {}
        for (a, b), is_right in pairs.items():
            if is_right:
                right.setdefault(by_id[a], set()).add(by_id[b])
                right.setdefault(by_id[b], set()).add(by_id[a])
        expected = brute_force_ranked(short, grid, ids, threshold, k, right)
        expected_raw = brute_force_ranked(raw_short, grid, ids, threshold, k)

        earlier = Earlier(earlier_path, ids, keys) if earlier_path else None
        reason = why_full(earlier=earlier, recorded_basis="same", basis="same")

        def search(reason=reason, earlier=earlier, grid=grid, data=data, judgements=judgements):
            known = earlier.known_scores() if earlier is not None and reason is None else None
            verifier = Verifier(grid, np.ones(VOCABULARY), known=known)
            return NightSearch(data, rerank_settings, judgements, earlier, reason, verifier)

        tonight, full = search().lists(), search("--full", None).lists()
        shard_paths = []
        for s, part in enumerate(thirds(len(ids))):
            shard_paths.append(tmp_path / f"night-{night}-shard-{s}.h5")
            write_neighbours(shard_paths[-1], search().lists(part), {})
        gathered = gather_neighbours(shard_paths, len(ids), width)
        for found in (tonight, full, gathered):
            got, _, got_raw, _ = found.ranked(k, threshold, judgements)
            np.testing.assert_array_equal(got, expected, err_msg=f"night {night}")
            np.testing.assert_array_equal(got_raw, expected_raw[found.judged], err_msg=f"night {night}")
        np.testing.assert_array_equal(tonight.scores, full.scores)
        if night in (1, 3):  # nothing changed: every score was known
            assert tonight.verified == 0 and gathered.verified == 0
        assert full.verified > 0
        reranked = (got != short[:, :k]).any(axis=1)
        if night == 0:
            assert reranked.any()  # the test is about something: some lists moved

        earlier_path = tmp_path / f"night-{night}.hdf5"
        write_night(earlier_path, ids, keys, night, gathered, verdicts, (k, threshold, judgements))
