"""The collection's most similar images of any image file, from the last run's reducer, codebook
and histograms, without adding the file to the collection."""

import json
import logging
import os

import numpy as np

from . import histograms, store
from .backends import ModelSpec
from .codebook import Codebook
from .errors import ArtifactError
from .h5io import read_attrs
from .int8 import CALIBRATION_IMAGES
from .neighbours import query_neighbours
from .output import honoured_verdicts
from .reduction import Reducer
from .search import rerank
from .verdicts import Judgements
from .verify import Verifier
from .weighting import Distance, WeightedHistograms

logger = logging.getLogger(__name__)


def _inputs(attrs):
    return json.loads(attrs.get("inputs", "{}"))


def run_counts(histograms_path, codebook, ids, similarity_attrs, rows=None):
    """The word counts of histograms.h5, and the WeightedHistograms a run's similarities were found
    with (its weighting, metric and power, from the attributes of its similarities.hdf5; its word
    weights, from its Codebook ``codebook``); of the images at positions ``rows`` only (``ids``
    are then theirs), when given.

    Returns
    -------
    counts : csr_matrix of shape (n_images, K)
    data : pipeline.weighting.WeightedHistograms
    """
    counts, n_local = histograms.load_counts_of(histograms_path, rows)
    data = WeightedHistograms.from_codebook(
        counts, n_local, ids, codebook, histograms.load_assign(histograms_path), Distance.recorded(similarity_attrs)
    )
    return counts, data


class SimilarityIndex:
    """The collection as a run left it: its images, word counts, reducer and codebook, and the
    model, weighting and distance its similarities were made with.

    Made by :meth:`load` from the run's artifacts; :meth:`query` finds the nearest collection
    images of new descriptors exactly as the run found those of the collection's images.
    """

    def __init__(
        self,
        images,
        histograms_,
        reducer,
        codebook,
        spec,
        store=None,
        assign=histograms.DEFAULT_ASSIGN,
        judgements=None,
    ):
        self.images = images
        """FeatureIndex: the run's images (IDs, PPNs, file names), in the order of the histograms."""
        self.histograms = histograms_
        """WeightedHistograms of the run's images, weighted and compared as its neighbours were."""
        self.reducer, self.codebook, self.assign = reducer, codebook, assign
        self.spec = spec
        """ModelSpec: what the run's descriptors were made with."""
        self.store = store
        """The run's feature store, where its backend's calibration is kept (None for older runs)."""
        self.judgements = judgements if judgements is not None else Judgements(len(images), [], [], [])
        """The verdicts the run's lists honoured, over the positions of ``images``."""
        self.histograms_path = None
        """The run's histograms.h5, when it was read from one (:meth:`of_run`)."""
        self.rerank = None
        """(threshold, short list's length) of the run's re-ranked lists, or None: lists by distance."""

    @classmethod
    def load(cls, features, reducer, codebook, histograms_path, similarities):
        """Read the artifacts of one run (paths of features.h5, reducer.h5, codebook.h5,
        histograms.h5, similarities.hdf5).

        Raises
        ------
        ArtifactError
            When one is missing or unreadable, or they are not all of one run (a run was
            interrupted between two stages, or is running).
        """
        paths = {"Features": features, "Reducer": reducer, "Codebook": codebook, "Histograms": histograms_path}
        attrs = {}
        for stage, path in {**paths, "Similarities": similarities}.items():
            try:
                attrs[stage] = read_attrs(path)
            except OSError:
                reason = "not a readable HDF5 file" if os.path.exists(path) else "no such file"
                raise ArtifactError(
                    f"{path} cannot be read ({reason}); run the pipeline (luigi --module tasks Nightly "
                    "--local-scheduler) before querying"
                ) from None
        made_from = {"Histograms": ("Features", "Reducer", "Codebook"), "Similarities": ("Features", "Histograms")}
        for stage, inputs in made_from.items():
            recorded = _inputs(attrs[stage])
            for source in inputs:
                if recorded.get(source) != attrs[source]["digest"]:
                    raise ArtifactError(
                        f"{paths.get(stage, similarities)} was not made from the current {paths[source]}: the last run "
                        "did not finish; finish it (luigi --module tasks Nightly --local-scheduler) and query again"
                    )
        judgements = honoured_verdicts(similarities).judgements(store.load_index(features).ids)
        distance = Distance.recorded(attrs["Similarities"])
        index = cls.of_run(features, reducer, codebook, histograms_path, distance, judgements)
        if "rerank_threshold" in attrs["Similarities"]:  # queries are ranked as the run's lists
            index.rerank = (float(attrs["Similarities"]["rerank_threshold"]), int(attrs["Similarities"]["candidates"]))
        return index

    @classmethod
    def of_run(cls, features, reducer, codebook, histograms_path, distance, judgements=None):
        """The collection of one run's features.h5, reducer.h5, codebook.h5 and histograms.h5 (paths),
        compared by ``distance`` (pipeline.weighting.Distance), before its lists are found."""
        attrs = {"Features": read_attrs(features)}
        index = store.load_index(features)
        codebook_ = Codebook.load(codebook)
        counts, n_local = histograms.load_counts_of(histograms_path)
        assign = histograms.load_assign(histograms_path)
        data = WeightedHistograms.from_codebook(counts, n_local, index.ids, codebook_, assign, distance)
        feature_settings = json.loads(attrs["Features"]["settings"])
        spec = ModelSpec(
            weights=attrs["Features"]["weights"],
            layer=attrs["Features"]["layer"],
            seed=feature_settings.get("seed") or 0,
            precision=feature_settings.get("precision", "float32"),
            colour=feature_settings.get("colour", "rgb"),  # runs before [images] colour and trim
            trim=feature_settings.get("trim", False),
            calibration_images=feature_settings.get("calibration_images", CALIBRATION_IMAGES),
        )
        trunk = attrs["Features"].get("int8_trunk")  # runs before the store was recorded
        folder = attrs["Features"].get("store", trunk and os.path.dirname(trunk))
        made = cls(index, data, Reducer.load(reducer), codebook_, spec, folder, assign, judgements)
        made.histograms_path = histograms_path
        return made

    def positions_of(self, files, content_dir):
        """The position of each file among the run's images (the same file under ``content_dir``), -1 for
        a file outside the collection."""
        where = {
            os.path.realpath(os.path.join(content_dir, f"PPN{p}", f)): i
            for i, (p, f) in enumerate(zip(self.images.ppn, self.images.filename))
        }
        return np.array([where.get(os.path.realpath(f), -1) for f in files], dtype=np.int64)

    def words_of(self, descriptors):
        """The words per cell of new images' descriptors, as the run assigned the collection's
        (:func:`query_words`); their counts are ``histograms.word_histograms(words, K)``."""
        n_local = self.histograms.n_local // self.assign
        if descriptors.shape[1] != n_local:
            raise ArtifactError(
                f"descriptors have {descriptors.shape[1]} local descriptors per image; the run's have {n_local}"
            )
        return query_words(descriptors, self.reducer, self.codebook, self.assign)

    def word_counts(self, descriptors):
        """Visual-word counts of descriptors, as the run counted the collection's (see :func:`word_counts`)."""
        return histograms.word_histograms(self.words_of(descriptors), self.codebook.size)

    def verifier(self, words, rows=None):
        """The :class:`~pipeline.verify.Verifier` of the collection's images (those at ``rows``,
        increasing, when given) and, after them, of new images with ``words`` (:meth:`words_of`)."""
        kept = histograms.load_words(self.histograms_path, rows)
        return Verifier.of_codebook(np.concatenate([kept, words.astype(kept.dtype)]), self.codebook, self.assign)

    def query(self, descriptors, k=5):
        """The k nearest collection images of each image's descriptors, re-ranked as the run's lists
        were (:attr:`rerank`).

        Parameters
        ----------
        descriptors : ndarray of shape (n, n_local, c)
        k : int

        Returns
        -------
        neighbours : ndarray of shape (n, k), int64 positions in ``self.images``, nearest first
        distances : ndarray of shape (n, k), float64
        """
        words = self.words_of(descriptors)
        counts = histograms.word_histograms(words, self.codebook.size)
        if self.rerank is None:
            return query_neighbours(self.histograms, counts, k=k)
        threshold, candidates = self.rerank
        found, distances = query_neighbours(self.histograms, counts, k=max(k, min(candidates, len(self.images))))
        listed, at = np.unique(found, return_inverse=True)  # only the listed images' words are read
        scores = self.verifier(words, listed).scores(len(listed) + np.arange(len(found)), at.reshape(found.shape))[0]
        return rerank(found, distances, scores >= threshold, k)

    def describe(self, neighbours, distances, selves=None):
        """The neighbour lists as dicts: rank, id, ppn, filename, distance, similarity (percent), and
        ``verdict`` (wrong or right) where the query is the collection image ``selves[i]`` (-1:
        none) and its pair with the neighbour has a verdict."""
        similarity = self.histograms.similarity(distances)
        selves = np.full(len(neighbours), -1) if selves is None else selves
        described = []
        for row, row_d, row_s, me in zip(neighbours, distances, similarity, selves):
            entries = []
            for rank, (p, d, s) in enumerate(zip(row, row_d, row_s)):
                entry = {
                    "rank": rank + 1,
                    "id": self.images.ids[p].item(),
                    "ppn": str(self.images.ppn[p]),
                    "filename": str(self.images.filename[p]),
                    "distance": round(float(d), 6),
                    "similarity": round(float(s), 1),
                }
                verdict = self.judgements.verdict(me, p) if me >= 0 else None
                if verdict:
                    entry["verdict"] = verdict
                entries.append(entry)
            described.append(entries)
        return described


def word_counts(descriptors, reducer, codebook, assign=histograms.DEFAULT_ASSIGN):
    """Visual-word counts of new descriptors, as a run counts the collection's.

    The descriptors pass through the feature store's 8-bit coding first, as the
    collection's did, so an image of the collection gets its own histogram back.

    Parameters
    ----------
    descriptors : ndarray of shape (n, n_local, c)
    reducer : Reducer
    codebook : Codebook
    assign : int
        Words each descriptor counts for, as the run's histograms.

    Returns
    -------
    counts : csr_matrix of shape (n, K), int32
    """
    return histograms.word_histograms(query_words(descriptors, reducer, codebook, assign), codebook.size)


def query_words(descriptors, reducer, codebook, assign=histograms.DEFAULT_ASSIGN):
    """Each new image's words per cell (after the feature store's 8-bit coding, as the collection's),
    in the type histograms.h5 keeps them: ndarray of shape (n, n_local * assign)."""
    restored = store.dequantize(*store.quantize(descriptors))
    words = histograms.assign_words(restored, reducer, codebook, assign)
    return words.astype(histograms.word_type(codebook.size))
