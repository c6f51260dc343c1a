"""Geometric verification of candidate pairs: how much of two images' local descriptors agree at
places that one transform of the grid explains.

Each image's descriptors lie on a grid of cells over the whole picture as the model saw it. A copy
of a picture (a crop, a rescan, a page border, a small turn) shows the same content at places
related by a scale and a shift of each axis; two unrelated pictures whose words happen to agree
show them at places no one such transform explains. A pair's tentative matches are its cells with
the same visual word; the transforms are found by votes of every match under each scale of
``SCALES`` per axis, and the score is the weight of the matches the best transform explains, each
cell of either image counted once.
"""

import dataclasses

import numba
import numpy as np

from .weighting import IDF_SCALE

#: The scales of an axis a copy may have (b's size of a's content over a's): crops to half a side,
#: borders and margins to half the size again.
SCALES = np.geomspace(0.5, 2.0, 11)
#: The largest ratio of the two axes' scales (a border on a long page, an image squeezed to the grid).
MAX_ASPECT = 1.35
#: How far, in cells, a match may lie from where the transform puts it and still count.
TOLERANCE = 0.75
#: The transforms of each axis tried together (the best votes of each).
CANDIDATES = 3
#: The shifts voted for, in cells: half a cell each.
STEP = 0.5


def cell_centres(side):
    """The centres of a ``side`` x ``side`` grid's cells, row by row, in cells: (x, y) of each."""
    rows, cols = np.divmod(np.arange(side * side), side)
    return np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)


@numba.njit(cache=True)
def _votes(a, b, weight, scales, side, best):
    """The ``best`` (scale, shift) of one axis by the matches' weighted votes (a, b: the matches'
    coordinates on the axis, in cells), shifts in steps of STEP cells."""
    low = -2.0 * side  # the shifts a scale in SCALES leaves some overlap at
    n_shift = int(4 * side / STEP) + 1
    tally = np.zeros((len(scales), n_shift))
    for m in range(len(a)):
        for s in range(len(scales)):
            shift = int(np.floor((b[m] - scales[s] * a[m] - low) / STEP + 0.5))
            if 0 <= shift < n_shift:
                tally[s, shift] += weight[m]
    found = np.empty((best, 2))
    for t in range(best):
        at = np.argmax(tally)
        s, shift = at // n_shift, at % n_shift
        found[t, 0], found[t, 1] = scales[s], low + STEP * shift
        tally[s, shift] = -1.0
    return found


@numba.njit(cache=True)
def _explained(xa, ya, xb, yb, weight, cell_a, cell_b, sx, tx, sy, ty, tolerance, n_local):
    """The weight of the matches the transform puts within ``tolerance`` of where they are, each
    cell of either image once (the matches in decreasing weight)."""
    used_a = np.zeros(n_local, dtype=np.bool_)
    used_b = np.zeros(n_local, dtype=np.bool_)
    total = 0.0
    count = 0
    for m in range(len(xa)):
        if used_a[cell_a[m]] or used_b[cell_b[m]]:
            continue
        if abs(sx * xa[m] + tx - xb[m]) <= tolerance and abs(sy * ya[m] + ty - yb[m]) <= tolerance:
            used_a[cell_a[m]] = True
            used_b[cell_b[m]] = True
            total += weight[m]
            count += 1
    return total, count


@numba.njit(cache=True)
def _verify_pair(words_a, words_b, assign, word_weight, centres, scales, max_aspect, tolerance, candidates):
    n_local = len(words_a) // assign
    side = int(np.sqrt(n_local) + 0.5)
    # tentative matches: cells that share a word, weighted by the word's weight over its burst
    # (how often the word is in each image: a word on every cell of both is one piece of evidence);
    # two cells that share several words match once, by the heaviest
    count_a = np.zeros(len(word_weight), dtype=np.int64)
    count_b = np.zeros(len(word_weight), dtype=np.int64)
    for w in words_a:
        count_a[w] += 1
    for w in words_b:
        count_b[w] += 1
    most = 0
    for w in words_a:
        most += count_b[w]
    cell_a = np.empty(most, dtype=np.int64)
    cell_b = np.empty(most, dtype=np.int64)
    weight = np.empty(most)
    n = 0
    for i in range(n_local):
        for j in range(n_local):
            best = 0.0
            for u in range(assign):
                w = words_a[i * assign + u]
                for v in range(assign):
                    if words_b[j * assign + v] == w:
                        best = max(best, word_weight[w] / np.sqrt(count_a[w] * count_b[w]))
            if best > 0.0:
                cell_a[n], cell_b[n], weight[n] = i, j, best
                n += 1
    if n == 0:
        return 0.0, 0
    order = np.argsort(-weight[:n], kind="mergesort")
    cell_a, cell_b, weight = cell_a[order], cell_b[order], weight[order]
    xa, ya = centres[cell_a, 0], centres[cell_a, 1]
    xb, yb = centres[cell_b, 0], centres[cell_b, 1]
    along_x = _votes(xa, xb, weight, scales, side, candidates)
    along_y = _votes(ya, yb, weight, scales, side, candidates)
    best, best_count = 0.0, 0
    for p in range(candidates):
        sx, tx = along_x[p, 0], along_x[p, 1]
        for q in range(candidates):
            sy, ty = along_y[q, 0], along_y[q, 1]
            if max(sx / sy, sy / sx) > max_aspect:
                continue
            total, count = _explained(xa, ya, xb, yb, weight, cell_a, cell_b, sx, tx, sy, ty, tolerance, n_local)
            if total > best:
                best, best_count = total, count
    return best, best_count


@numba.njit(parallel=True, cache=True)
def _verify_all(words, pairs, assign, word_weight, centres, scales, max_aspect, tolerance, candidates):
    scores = np.zeros(len(pairs))
    counts = np.zeros(len(pairs), dtype=np.int64)
    for p in numba.prange(len(pairs)):
        scores[p], counts[p] = _verify_pair(
            words[pairs[p, 0]],
            words[pairs[p, 1]],
            assign,
            word_weight,
            centres,
            scales,
            max_aspect,
            tolerance,
            candidates,
        )
    return scores, counts


def verify_pairs(words, pairs, word_weight, side, tolerance=TOLERANCE, assign=1):
    """The verification score of each pair of images.

    Parameters
    ----------
    words : ndarray of shape (n_images, side * side * assign), int
        Each image's visual words per cell of its grid, row by row, ``assign`` per cell (as
        :func:`pipeline.histograms.assign_words` gives them).
    pairs : ndarray of shape (n_pairs, 2), int
        Rows of ``words``.
    word_weight : ndarray of shape (n_words,)
        Each word's weight (its idf, or ones).
    side : int
        The grid's side.
    tolerance : float
        How far, in cells, a match may lie from where the transform puts it.
    assign : int
        Words per cell: two cells match when they share one.

    Returns
    -------
    scores : ndarray of shape (n_pairs,)
        The weight of the matches the best transform explains (0 without a match).
    matches : ndarray of shape (n_pairs,), int64
        How many matches it explains.
    """
    words = np.ascontiguousarray(words)
    if words.dtype.kind not in "iu":
        words = words.astype(np.int64)
    if words.shape[1] != side * side * assign:
        raise ValueError(f"{words.shape[1]} words, {assign} a cell, do not lie on a {side} x {side} grid")
    pairs = np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1, 2)
    return _verify_all(
        words,
        pairs,
        int(assign),
        np.ascontiguousarray(word_weight, dtype=np.float64),
        cell_centres(side),
        SCALES,
        MAX_ASPECT,
        float(tolerance),
        CANDIDATES,
    )


def pair_codes(rows, lists, n):
    """Each (row, listed image) pair as one integer, row * n + image: ndarray of the shape of ``lists``."""
    return np.asarray(rows, dtype=np.int64)[:, None] * n + np.asarray(lists, dtype=np.int64)


@dataclasses.dataclass
class Verifier:
    """The verification of a collection's pairs: its images' words per cell and the words' weights.

    Parameters
    ----------
    words : ndarray of shape (n_images, cells * assign)
        As histograms.h5 keeps them (``pipeline.histograms.load_words``).
    word_weight : ndarray of shape (K,)
        Each word's idf (:meth:`of_codebook`).
    assign : int
        Words per cell.
    known : (codes, scores), optional
        Scores of pairs verified before (:func:`pair_codes` over the same positions, increasing):
        taken as they are instead of being worked out again.
    """

    words: np.ndarray
    word_weight: np.ndarray
    assign: int = 1
    known: tuple = None

    @classmethod
    def of_codebook(cls, words, codebook, assign, known=None):
        """The Verifier of words assigned with ``codebook``: each word weighs its idf (whatever the lists' weighting)."""
        return cls(words, codebook.word_weights("tfidf", assign) / IDF_SCALE, assign, known)

    @property
    def side(self):
        cells = self.words.shape[1] // self.assign
        side = int(round(np.sqrt(cells)))
        if side * side != cells:
            raise ValueError(f"{cells} cells do not lie on a square grid")
        return side

    def scores(self, rows, lists):
        """The score of each image of ``rows`` with each of its ``lists`` images (positions, -1: none, scored 0).

        Returns
        -------
        scores : ndarray of the shape of ``lists``, float64
            Rounded to float32, as similarities.hdf5 keeps them: a known score is the same.
        worked_out : int
            Pairs verified now (the others were known).
        """
        lists = np.asarray(lists, dtype=np.int64)
        lists = lists.reshape(len(rows), lists.shape[-1] if lists.ndim == 2 else -1)
        scores = np.zeros(lists.shape)
        wanted = lists >= 0
        if self.known is not None and len(self.known[0]):
            codes, known_scores = self.known
            wanted_codes = pair_codes(rows, lists, len(self.words))[wanted]
            at = np.minimum(np.searchsorted(codes, wanted_codes), len(codes) - 1)
            hit = codes[at] == wanted_codes
            scores[wanted] = np.where(hit, known_scores[at], 0.0)
            left = np.zeros(lists.shape, dtype=bool)
            left[wanted] = ~hit
        else:
            left = wanted
        pairs = np.stack([np.broadcast_to(np.asarray(rows)[:, None], lists.shape)[left], lists[left]], axis=1)
        if len(pairs):
            found = verify_pairs(self.words, pairs, self.word_weight, self.side, assign=self.assign)[0]
            scores[left] = found.astype(np.float32)
        return scores, len(pairs)
