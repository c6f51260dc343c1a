"""The night's neighbour lists: each image's raw list (its k nearest, searched in full or only
where it can have changed) and, for a judged image, the list the verdicts make of it.

A judged image's list is the images judged right with it, nearest first (at most k), then its
nearest images not judged with it, up to k, ordered by ranking value then database ID
(``pipeline.neighbours``). With re-ranking (``[neighbours] rerank``), these lists are short
lists of ``candidates`` images, each pair verified (``pipeline.verify``), and a list of k is
its short list's verified images (and those judged right) first, then the rest, each in that
order (:func:`rerank`). The lists are a function of the histograms and the verdicts alone:
the full, sharded and incremental searches give the same, value for value."""

import dataclasses
import logging

import h5py
import numpy as np

from .codebook import Codebook
from .errors import ArtifactError, named
from .h5io import create, read_attrs
from .histograms import load_assign, load_counts, load_words
from .inverted import InvertedFile
from .neighbours import nearest_neighbours, ranking_values, skip_lists, update_neighbours
from .output import Earlier
from .records import SameRecord, limited_best, record_best
from .settings import Neighbours
from .verdicts import Judgements, changed_images, load_verdicts
from .verify import Verifier
from .weighting import Distance, WeightedHistograms

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NeighbourSettings:
    """How the lists are found: ``[neighbours]`` (:class:`pipeline.settings.Neighbours`) as the
    search takes it, validated by its table; the shipped ones by default."""

    k: int = Neighbours.k
    distance: Distance = Distance()
    same_record: SameRecord = Neighbours.same_record
    method: str = Neighbours.method
    """The full search's method (``pipeline.settings.METHODS``): all give the same lists."""
    rerank: bool = Neighbours.rerank == "on"
    """Whether each list is its short list re-ranked by geometric verification (:func:`rerank`)."""
    candidates: int = Neighbours.candidates

    def __post_init__(self):
        for name in ("k", "same_record", "method", "candidates"):
            Neighbours.check(name, getattr(self, name))

    def width(self, n):
        """The length of the lists searched among ``n`` images: the short list with ``rerank``, else k."""
        return max(self.k, min(self.candidates, n - 1)) if self.rerank else self.k

    @property
    def own(self):
        """The most neighbours from an image's own record, or None (no limit): ``SameRecord.own``."""
        return self.same_record.own(self.k)

    def identity(self):
        """What the lists depend on of these settings, as the artifacts' digests take them (the
        method does not count; ``same_record`` only where it limits the lists)."""
        return {
            "k": self.k,
            "metric": self.distance.metric,
            "weighting": self.distance.weighting,
            "power": self.distance.power,
            "same_record": str(self.same_record),
            **({"rerank": "on", "candidates": self.candidates} if self.rerank else {}),
        }


def why_full(full=False, refit=False, earlier=None, recorded_basis=None, basis=None):
    """Why every raw list is searched again, or None when only those that can have changed are.

    Parameters
    ----------
    full, refit : bool
        The run asks for it (``--full``, ``--refit``).
    earlier : pipeline.output.Earlier or None
        The earlier run's similarities, when readable.
    recorded_basis, basis : str
        What the earlier run's distances depended on, and tonight's (codebook, word weights,
        settings): lists stay valid only on the same basis.
    """
    if full:
        return "--full"
    if refit:
        return "--refit"
    if earlier is None:
        return "no earlier similarities"
    if recorded_basis != basis:
        return "the codebook, word weights or settings changed"
    return None


@dataclasses.dataclass
class Lists:
    """The lists of a block of rows: raw for every row, under the verdicts for the judged ones."""

    rows: np.ndarray
    """Positions of the images, shape (m,)."""
    raw: np.ndarray
    """Their raw lists, positions, shape (m, k), nearest first."""
    raw_distances: np.ndarray
    queried: np.ndarray
    """bool, shape (m,): raw lists searched against the whole collection."""
    judged: np.ndarray
    """Positions of the judged images among ``rows``, increasing, shape (j,)."""
    final: np.ndarray
    """Their lists under the verdicts, shape (j, k)."""
    final_distances: np.ndarray
    judged_queried: np.ndarray
    """bool, shape (j,): judged lists searched against the whole collection."""
    scores: np.ndarray = None
    """With re-ranking, the verification score of each pair of :meth:`assembled`, shape (m, width)."""
    raw_scores: np.ndarray = None
    """With re-ranking, those of the judged images' raw lists, shape (j, width)."""
    verified: int = 0
    """Pairs verified tonight (the others' scores were known)."""

    def assembled(self):
        """Every row's list under the verdicts: (neighbours, distances), the raw lists but for the judged images'."""
        neighbours, distances = self.raw.copy(), self.raw_distances.copy()
        at = np.searchsorted(self.rows, self.judged)
        neighbours[at], distances[at] = self.final, self.final_distances
        return neighbours, distances

    def judged_raw(self):
        """The judged images' raw lists: (neighbours, distances)."""
        at = np.searchsorted(self.rows, self.judged)
        return self.raw[at], self.raw_distances[at]

    def ranked(self, k, threshold, judgements):
        """The night's lists of k, and the judged images' raw lists of k: each short list re-ranked
        (:func:`rerank`) with the pairs scoring ``threshold`` or more and those judged right
        verified, or (without scores) the lists as they are.

        Returns
        -------
        neighbours, distances : ndarray of shape (m, k)
        raw, raw_distances : ndarray of shape (j, k)
        """
        lists, distances = self.assembled()
        raw, raw_distances = self.judged_raw()
        if self.scores is None:
            return lists, distances, raw, raw_distances
        verified = self.scores >= threshold
        for i in np.flatnonzero(np.isin(self.rows, judgements.rows)):
            verified[i] |= np.isin(lists[i], judgements.partners(self.rows[i])[1])
        return (*rerank(lists, distances, verified, k), *rerank(raw, raw_distances, self.raw_scores >= threshold, k))


def rerank(lists, distances, verified, k):
    """The first k of each list with its ``verified`` images first, each part in its order (by
    distance, then database ID): a list of k with its verified copies in front.

    Parameters
    ----------
    lists, distances : ndarray of shape (m, width)
        Each image's short list, nearest first (-1 at the end where it is shorter).
    verified : ndarray of shape (m, width), bool
    k : int
    """
    order = np.argsort(~(verified & (lists >= 0)), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(lists, order, axis=1), np.take_along_axis(distances, order, axis=1)


def write_neighbours(path, lists, attrs):
    """Write a neighbour shard's :class:`pipeline.search.Lists`, as :func:`gather_neighbours` reads them."""
    with create(path) as f:
        f.attrs.update(attrs)
        f.create_dataset("rows", data=lists.rows)
        f.create_dataset("neighbours", data=lists.raw)
        f.create_dataset("distances", data=lists.raw_distances)
        f.create_dataset("judged", data=lists.judged)
        f.create_dataset("judged_neighbours", data=lists.final)
        f.create_dataset("judged_distances", data=lists.final_distances)
        f.create_dataset("queried", data=lists.queried)
        f.create_dataset("judged_queried", data=lists.judged_queried)
        if lists.scores is not None:
            f.create_dataset("scores", data=lists.scores)
            f.create_dataset("raw_scores", data=lists.raw_scores)


def gather_neighbours(paths, n, width):
    """Every image's lists from the files of the neighbour shards, which together hold each of
    the n images' rows once: :class:`pipeline.search.Lists` of all n, rows in order.

    Raises
    ------
    ArtifactError
        When they do not (shards of different runs).
    """
    raw, raw_distances = np.empty((n, width), dtype=np.int64), np.empty((n, width), dtype=np.float64)
    queried, seen = np.zeros(n, dtype=bool), np.zeros(n, dtype=np.int64)
    scores, parts = None, []
    for path in paths:
        with h5py.File(path, "r") as f:
            rows = f["rows"][:]
            if f["neighbours"].shape != (len(rows), width) or (len(rows) and not 0 <= rows.min() <= rows.max() < n):
                raise ArtifactError(f"{path} holds neighbours of another run; run the pipeline again")
            raw[rows], raw_distances[rows] = f["neighbours"][:], f["distances"][:]
            queried[rows] = f["queried"][:] if "queried" in f else True  # a shard of an earlier version
            np.add.at(seen, rows, 1)
            if "scores" in f:
                scores = np.zeros((n, width)) if scores is None else scores
                scores[rows] = f["scores"][:]
            parts.append(
                [f["judged"][:]]
                + [f[name][:].reshape(-1, width) for name in ("judged_neighbours", "judged_distances")]
                + [f["judged_queried"][:] if "judged_queried" in f else np.ones(len(f["judged"]), dtype=bool)]
                + ([f["raw_scores"][:].reshape(-1, width)] if "raw_scores" in f else [])
            )
    if not (seen == 1).all():
        raise ArtifactError(
            f"the neighbour shards hold {int((seen > 0).sum())} of the {n} images' lists, {int((seen > 1).sum())} "
            "more than once: they are not all of this run; run the pipeline again"
        )
    if scores is not None and any(len(p) < 5 for p in parts):
        raise ArtifactError("the neighbour shards are of several runs, re-ranked and not; run the pipeline again")
    judged = np.concatenate([p[0] for p in parts]).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    order = np.argsort(judged, kind="stable")
    final, final_distances, judged_queried, raw_scores = (
        np.concatenate([p[c] for p in parts])[order] if parts and len(parts[0]) > c else None for c in (1, 2, 3, 4)
    )
    lists = Lists(np.arange(n), raw, raw_distances, queried, judged[order], final, final_distances, judged_queried)
    lists.scores, lists.raw_scores = scores, raw_scores if scores is not None else None
    return lists


class NightSearch:
    """The search of one night over the collection's weighted histograms.

    Parameters
    ----------
    data : pipeline.weighting.WeightedHistograms
        Weighted by ``settings.distance``, with the records ``settings.same_record`` limits.
    settings : NeighbourSettings
    judgements : pipeline.verdicts.Judgements, optional
        The night's verdicts over the positions of ``data``; none by default.
    earlier : pipeline.output.Earlier, optional
        The earlier run's similarities: needed when ``why_full`` is None.
    why_full : str or None
        :func:`why_full`: every list searched again, or (None) only where it can have changed.
    verifier : pipeline.verify.Verifier, optional
        With ``settings.rerank``: the verification of the short lists' pairs.
    """

    def __init__(self, data, settings=NeighbourSettings(), judgements=None, earlier=None, why_full=None, verifier=None):
        self.data, self.settings, self.why_full, self.verifier = data, settings, why_full, verifier
        if settings.rerank and verifier is None:
            raise ValueError("re-ranking needs a Verifier")
        self.judgements = judgements if judgements is not None else Judgements(len(data), [], [], [])
        self.earlier = None
        if why_full is None and earlier.width != settings.width(len(data)):
            self.why_full = why_full = f"the short lists' length changed (fewer images than {named('candidates')})"
        if why_full is None:
            judged = len(self.judgements) > 0  # the lists under the verdicts are wanted only then
            self.earlier = (
                earlier.new,
                earlier.previous(),
                earlier.previous(final=True) if judged else None,
                changed_images(self.judgements, earlier.judgements()) if judged else None,
            )

    def lists(self, rows=None, checkpoints=None, progress=None):
        """The :class:`Lists` of the images at ``rows`` (all by default)."""
        n, own = len(self.data), self.settings.own
        k = self.settings.width(n)
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.why_full is None:
            new, previous, previous_final, changed = self.earlier
            raw, raw_distances, queried = update_neighbours(
                self.data, previous, new, k=k, rows=rows, checkpoints=checkpoints, progress=progress, own=own
            )
        else:
            logger.info("every image's neighbours are found again (%s)", self.why_full)
            raw, raw_distances = nearest_neighbours(
                self.data, k, self.settings.method, rows, checkpoints, progress, own=own
            )
            queried = np.ones(len(rows), dtype=bool)
            new = previous_final = changed = None
        judged = np.intersect1d(rows, self.judgements.rows)
        final, final_distances, judged_queried = judged_lists(
            self.data, self.judgements, judged, k, previous_final, new, changed, own=own
        )
        lists = Lists(rows, raw, raw_distances, queried, judged, final, final_distances, judged_queried)
        if self.settings.rerank:
            lists.scores, worked = self.verifier.scores(rows, lists.assembled()[0])
            lists.raw_scores, worked_raw = self.verifier.scores(judged, lists.judged_raw()[0])
            lists.verified = worked + worked_raw
            listed = int((lists.assembled()[0] >= 0).sum() + (lists.judged_raw()[0] >= 0).sum())
            logger.info("%d pairs of the short lists verified, %d known", lists.verified, listed - lists.verified)
        return lists


def judged_lists(data, judgements, rows, k, previous=None, new=None, verdicts_changed=None, own=None):
    """The lists of judged images under their verdicts (see the module).

    An image whose verdicts, histogram and earlier list are unchanged, and whose images judged
    right are unchanged, keeps its earlier list but for the new images, offered to it from an
    inverted file of them alone (as ``update_neighbours`` does); every other judged image is
    searched against the whole collection, leaving out itself and the images judged with it.

    Parameters
    ----------
    data : pipeline.weighting.WeightedHistograms
    judgements : pipeline.verdicts.Judgements
    rows : ndarray of int
        Positions of judged images.
    k : int
    previous : ndarray of shape (n_images, k), optional
        Each image's earlier list (under the earlier verdicts) as positions now, -1 where gone;
        None: every row is searched in full.
    new : ndarray of shape (n_images,), bool
        Images new or changed since then.
    verdicts_changed : ndarray of shape (n_images,), bool
        Images whose verdicts changed since then (:func:`pipeline.verdicts.changed_images`).
    own : int, optional
        The most neighbours from an image's own record, those judged right among them (see the
        module); None: no limit.

    Returns
    -------
    lists : ndarray of shape (len(rows), k), int64 positions
    distances : ndarray of shape (len(rows), k), float64
    queried : ndarray of shape (len(rows),), bool
    """
    rows = np.asarray(rows, dtype=np.int64)
    m = len(rows)
    lists = np.full((m, k), -1, dtype=np.int64)
    keys = np.full((m, k), np.inf)
    queried = np.zeros(m, dtype=bool)
    if m == 0:
        return lists, data.distances(np.zeros((0, k))), queried
    partners = [judgements.partners(r) for r in rows]
    wrong = [w for w, _ in partners]
    right = [r for _, r in partners]
    right_keys = _ranking_values_in_lists(data, rows, right)
    n_right = np.array([len(r) for r in right])
    fill = {}  # row index -> (candidate positions, their keys) from which the rest of the list is taken
    settled = np.zeros(m, dtype=bool)
    if previous is not None:
        earlier = previous[rows]
        valid = (earlier >= 0).all(axis=1) & ~new[np.maximum(earlier, 0)].any(axis=1)
        rights_new = np.array([new[r].any() for r in right], dtype=bool)
        settled = ~new[rows] & ~verdicts_changed[rows] & valid & ~rights_new
        kept_lists = [np.setdiff1d(earlier[i], right[i]) if settled[i] else None for i in range(m)]
        for i in np.flatnonzero(settled & (n_right < k)):
            if len(kept_lists[i]) != k - n_right[i]:  # not the list these verdicts made: searched again
                settled[i] = False
        offered = np.flatnonzero(settled & (n_right < k))
        if len(offered):
            kept = np.full((len(offered), k), -1, dtype=np.int64)  # k - (images judged right) each
            for j, i in enumerate(offered):
                kept[j, : len(kept_lists[i])] = kept_lists[i]
            kept_keys = np.where(
                kept >= 0, _ranking_values_of(data, rows[offered], np.where(kept >= 0, kept, 0)), np.inf
            )
            entering = np.flatnonzero(new)
            if len(entering):
                skip = [np.searchsorted(entering, np.intersect1d(wrong[i], entering)) for i in offered]
                found, found_keys = InvertedFile(data, k, entering).top_k(
                    rows[offered], skip_lists(skip), other_records=own is not None
                )
                found = np.where(found >= 0, entering[np.maximum(found, 0)], -1)
                kept, kept_keys = np.concatenate([kept, found], axis=1), np.concatenate([kept_keys, found_keys], axis=1)
                if own:
                    mine = record_best(data, rows[offered], own, among=new, skip=[wrong[i] for i in offered])
                    kept, kept_keys = np.hstack([kept, mine[0]]), np.hstack([kept_keys, mine[1]])
            for j, i in enumerate(offered):
                fill[i] = (kept[j], kept_keys[j])
    asked = np.flatnonzero(~settled & (n_right < k))
    if len(asked):
        skip = [np.concatenate([[rows[i]], wrong[i], right[i]]) for i in asked]
        found, found_keys = data.inverted_file(k).top_k(rows[asked], skip_lists(skip), other_records=own is not None)
        if own:
            mine = record_best(data, rows[asked], own, skip=skip)
            found, found_keys = np.hstack([found, mine[0]]), np.hstack([found_keys, mine[1]])
        for j, i in enumerate(asked):
            fill[i] = (found[j], found_keys[j])
        queried[asked] = True
    for i in range(m):
        chosen, chosen_keys = _best(data, right[i], right_keys[i], k)
        if len(chosen) < k:
            others, other_keys = fill[i]
            left = None if own is None else max(0, own - int((data.records[chosen] == data.records[rows[i]]).sum()))
            others, other_keys = (
                x[0] for x in limited_best(data, rows[i : i + 1], others[None], other_keys[None], k - len(chosen), left)
            )
            taken = others >= 0
            chosen = np.concatenate([chosen, others[taken]])
            chosen_keys = np.concatenate([chosen_keys, other_keys[taken]])
        order = np.lexsort((data.id_rank[chosen], chosen_keys))
        lists[i, : len(chosen)], keys[i, : len(chosen)] = chosen[order], chosen_keys[order]
    logger.info(
        "lists of %d judged images under their verdicts: %d searched in full, %d kept with the new images offered",
        m,
        int(queried.sum()),
        int((settled & (n_right < k)).sum()),
    )
    return lists, data.distances(keys), queried


def _best(data, positions, keys, k):
    """The k best of ``positions`` by (key, database ID)."""
    positions, keys = np.asarray(positions, dtype=np.int64), np.asarray(keys, dtype=np.float64)
    order = np.lexsort((data.id_rank[positions], keys))[:k]
    return positions[order], keys[order]


def _ranking_values_of(data, rows, listed):
    """The ranking values of each row with its ``listed`` images (positions, shape (m, L))."""
    v = data.vectors
    return ranking_values(
        np.asarray(rows, dtype=np.int64),
        np.asarray(listed, dtype=np.int64).reshape(len(rows), -1),
        v.indptr,
        v.indices,
        v.data,
        data.norms,
        data.roots,
        data.cosine,
    )


def _ranking_values_in_lists(data, rows, lists):
    """The ranking values of each row with each image of its own list (lists of several lengths)."""
    lengths = np.array([len(x) for x in lists])
    if not lengths.sum():
        return [np.zeros(0) for _ in lists]
    flat = _ranking_values_of(data, np.repeat(rows, lengths), np.concatenate(lists)[:, None])[:, 0]
    return np.split(flat, np.cumsum(lengths)[:-1])


def list_identities(keys, records, ppn):
    """What each image's list depends on besides the others' histograms: its image key and,
    where it is not its PPN, its record (an image whose record changes is searched again)."""
    own = np.char.add("PPN", np.asarray(ppn).astype(str))
    keys = np.asarray(keys).astype(str)
    return np.where(records == own, keys, np.char.add(np.char.add(keys, "\t"), records))


def plan_night(index, records, paths, settings, full=False, refit=False, basis=None):
    """The :class:`NightSearch` of a run: its images, their weighted histograms, the verdicts, and
    the previous run's lists where they stay valid.

    Parameters
    ----------
    index : pipeline.store.FeatureIndex
        The run's images.
    records : ndarray of shape (n,)
        Each image's catalogue record.
    paths : dict
        ``histograms``, ``codebook``, ``verdicts``: the run's artifacts; ``previous``: the previous
        run's similarities.hdf5 (which may be missing or damaged: every list is then searched).
    settings : NeighbourSettings
    full, refit : bool
        The run asks for every list to be searched again.
    basis : str
        What tonight's distances depend on (:func:`why_full`).
    """
    keys, counts, n_local = load_counts(paths["histograms"])
    keys = list_identities(keys, records, index.ppn)
    codebook, assign = Codebook.load(paths["codebook"]), load_assign(paths["histograms"])
    data = WeightedHistograms.from_codebook(
        counts, n_local, index.ids, codebook, assign, settings.distance, records=records
    )
    del counts  # the search reads the weighted copy
    try:
        earlier, recorded = Earlier(paths["previous"], index.ids, keys), read_attrs(paths["previous"])
    except (OSError, KeyError):  # none, or damaged
        earlier, recorded = None, {}
    reason = why_full(full, refit, earlier, recorded.get("basis"), basis)
    judgements = load_verdicts(paths["verdicts"])[0].judgements(index.ids)
    verifier = None
    if settings.rerank:  # the scores of the earlier short lists hold on the same basis
        known = earlier.known_scores() if reason is None else None
        verifier = Verifier.of_codebook(load_words(paths["histograms"]), codebook, assign, known)
    return NightSearch(data, settings, judgements, earlier, reason, verifier)
