"""The neighbour search: its shards and similarities.hdf5 (``pipeline.search``)."""

import json
import logging

import numpy as np

from pipeline import collection, histograms, output, store
from pipeline import search as search_
from pipeline.codebook import Codebook as CodebookModel
from pipeline.errors import ConfigError
from pipeline.model import MODEL, RANDOM_WEIGHTS_NOTE
from pipeline.report import read_json
from pipeline.search import list_identities, plan_night
from pipeline.verdicts import load_verdicts

from . import config
from .base import ArtifactTask, Progress, settings_digest
from .checks import SelfCheck
from .extraction import Features
from .fitting import Codebook
from .histograms import Histograms
from .inputs import LastRun, previous
from .inventory import Inventory
from .shards import Shard, repairs, shard_attrs
from .verdicts import Verdicts

logger = logging.getLogger("luigi-interface")


class NeighbourInputs(ArtifactTask):
    """What the neighbours are found from, and how, for Similarities and its shards."""

    sections = ("neighbours", "resnet")

    def inputs(self):
        return {
            "features": Features(date=self.date),
            "codebook": Codebook(**self.run_args()),
            "histograms": Histograms(**self.run_args()),
            "verdicts": Verdicts(date=self.date),
            "previous": LastRun(date=self.date),
        }

    def made_from(self):
        inputs = self.inputs()  # the number of shards changes nothing
        return [inputs["features"], inputs["histograms"], inputs["verdicts"]]

    @staticmethod
    def neighbour_settings():
        return config.neighbour_settings().identity()

    def basis(self):
        """What the distances between unchanged images depend on: the settings, the codebook (and
        with it the reducer and the word weights) and the histograms' settings. An earlier run
        on the same basis has lists that stay valid where nothing near them changed."""
        codebook = self.inputs()["codebook"].identity()
        return settings_digest([self.neighbour_settings(), codebook, Histograms.histogram_settings()])

    def records(self, index):
        """Each image's catalogue record, in the order of ``index`` (the run's FeatureIndex)."""
        inventory = collection.load_inventory(Inventory(date=self.date).output().path)
        return inventory.records_of([f"PPN{p}/{f}" for p, f in zip(index.ppn, index.filename)])

    def earlier(self, ids, keys):
        """The previous run's similarities.hdf5 (``output.Earlier``), or None when there is none
        or it cannot be read."""
        try:
            return output.Earlier(previous(self, Similarities.filename), ids, keys)
        except (OSError, KeyError):  # missing or damaged
            return None


#: The collection as the neighbour search of this process sees it, kept between the shards a
#: worker runs: (what it was made from, NightSearch).
_SEARCH = {}


def night_search(task):
    """The :class:`~pipeline.search.NightSearch` of ``task``'s inputs, read once per worker process
    for all the shards it runs."""
    settings = config.neighbour_settings()
    made_from = (json.dumps(task.input_identities()), task.full, task.refit, settings)
    if made_from not in _SEARCH:
        _SEARCH.clear()  # another run's, or other inputs: released first
        index = store.load_index(task.input()["features"].path)
        paths = {name: task.input()[name].path for name in ("histograms", "codebook", "verdicts")}
        paths["previous"] = previous(task, Similarities.filename)
        search = plan_night(index, task.records(index), paths, settings, task.full, task.refit, task.basis())
        _SEARCH[made_from] = search
    return _SEARCH[made_from]


class NeighbourShard(Shard, NeighbourInputs):
    """The exact neighbours of one block of the run's images against all of them (only where
    they can have changed, between refits), raw and under the verdicts; Similarities gathers the
    blocks. Shards run independently, on any worker of any machine; a worker reads the
    collection once for all the shards it runs."""

    kind = "neighbours"

    def requires(self):
        return self.inputs()

    def settings(self):
        return self.of_shard(self.neighbour_settings())

    def make(self, tmp):
        search = night_search(self)
        rows = output.block_rows(len(search.data), self.shard, self.shards)
        lists = search.lists(rows, self.checkpoints(), Progress(self, "neighbours of"))
        attrs = self.attrs(
            search="incremental" if search.why_full is None else "full",
            queried=int(lists.queried.sum()),
            judged=len(lists.judged),
            judged_queried=int(lists.judged_queried.sum()),
            verified=int(lists.verified),
        )
        search_.write_neighbours(tmp, lists, attrs)


class Similarities(NeighbourInputs):
    """Every image's k nearest other images under the verdicts, keyed to database IDs:
    similarities.hdf5, gathered from the neighbour shards."""

    filename = "similarities.hdf5"

    def requires(self):
        n = config.shards("neighbours")
        required = {**self.inputs(), "shards": [NeighbourShard(**self.run_args(), shard=i, shards=n) for i in range(n)]}
        if reranked():
            required["selfcheck"] = SelfCheck(**self.run_args())
        return required

    def made_from(self):
        made = super().made_from()
        return made + [self.requires()["selfcheck"]] if reranked() else made

    def settings(self):
        return self.neighbour_settings()

    def make(self, tmp):
        settings = config.neighbour_settings()
        index = store.load_index(self.input()["features"].path)
        records = self.records(index)
        keys = list_identities(histograms.load_keys(self.input()["histograms"].path), records, index.ppn)
        paths = [t.path for t in self.input()["shards"]]
        short = search_.gather_neighbours(paths, len(index.ids), settings.width(len(index.ids)))
        _SEARCH.clear()  # the shards are done: this process's search is released
        honoured = load_verdicts(self.input()["verdicts"].path)[0]
        threshold, source = self.verification_threshold()
        nearest, distances, raw, raw_distances = short.ranked(settings.k, threshold, honoured.judgements(index.ids))
        judged = short.judged
        shards, ran = shard_attrs(self)
        searches = {a["search"] for a in shards}
        attrs = self.attrs(
            **output.lists_summary(nearest, judged, raw, records, settings, honoured),
            codebook_size=CodebookModel.load(self.input()["codebook"].path).size,
            model=MODEL,
            layer=config.resnet().layer,
            weights=config.resnet().weights,
            **({"weights_note": RANDOM_WEIGHTS_NOTE} if config.resnet().weights == "random" else {}),
            basis=self.basis(),
            search=searches.pop() if len(searches) == 1 else "mixed",
            **self.reranking(short, nearest, threshold, source, sum(a.get("verified", 0) for a in shards)),
            queried=sum(a["queried"] for a in shards),
            shards=len(shards),
            shard_seconds=round(sum(a["seconds"] for a in ran), 3),
            judged_queried=sum(a.get("judged_queried", 0) for a in shards),
            **repairs(self, ran),
        )
        earlier = self.earlier(index.ids, keys)
        lists = (index.ids, index.ppn, index.filename, nearest, distances)
        output.write_similarities(
            tmp,
            *lists,
            attrs,
            keys=keys,
            earlier=earlier,
            raw=(judged, raw, raw_distances),
            verdicts=honoured,
            short=short if settings.rerank else None,
        )

    def verification_threshold(self):
        """The score a pair must reach to be verified, and where it came from; (None, None) without re-ranking."""
        if not reranked():
            return None, None
        check = read_json(self.input()["selfcheck"].path)
        if check["verification"]["threshold"] is None:
            return np.inf, "none: the self-check had no hard negatives"
        return check["verification"]["threshold"], self.threshold_source(check)

    @staticmethod
    def threshold_source(check):
        """Where the verification's threshold of the self-check's record ``check`` came from."""
        v = check["verification"]
        return f"the self-check's {v['hard_negatives']} hard negatives at a false-positive rate of {v['rate']}"

    @staticmethod
    def reranking(short, nearest, threshold, source, verified_tonight):
        """What the re-ranking did, for the attributes (none without it)."""
        if threshold is None:
            return {}
        verified = short.scores >= threshold
        moved = int((nearest != short.assembled()[0][:, : nearest.shape[1]]).any(axis=1).sum())
        logger.info(
            "lists re-ranked from the %d nearest: %d pairs verified (score >= %.2f, %s), %d lists changed",
            short.raw.shape[1],
            int(verified.sum()),
            threshold,
            source,
            moved,
        )
        return {
            "rerank_threshold": threshold,
            "rerank_threshold_source": source,
            "candidates": short.raw.shape[1],
            "verified_pairs": int(verified.sum()),
            "reranked_lists": moved,
            "pairs_verified_tonight": int(verified_tonight),
        }


def reranked():
    """Whether the lists are re-ranked (``[neighbours] rerank``; a bad setting: no, CheckSettings names it)."""
    try:
        return config.neighbour_settings().rerank
    except ConfigError:
        return False
