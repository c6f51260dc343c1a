"""The copies of one picture across the collection: copies.h5 and copies.csv (``pipeline.copies``)."""

import json
import logging
import os

import pandas as pd

from pipeline import copies
from pipeline.codebook import Codebook as CodebookModel
from pipeline.h5io import read_attrs
from pipeline.output import read_similarities
from pipeline.query import run_counts
from pipeline.report import read_json

from . import config
from .base import ArtifactTask
from .checks import SelfCheck
from .fitting import Codebook
from .histograms import Histograms
from .inputs import LastRun, previous
from .neighbours import Similarities

logger = logging.getLogger("luigi-interface")


class Copies(ArtifactTask):
    """The groups of images that show the same picture, numbered stably from night to night:
    ``copies.h5`` (the artifact, with the threshold it used) and ``copies.csv`` beside it."""

    filename = "copies.h5"
    csv = "copies.csv"
    sections = ("copies", "selfcheck", "neighbours")

    def requires(self):
        required = {
            "similarities": Similarities(**self.run_args()),
            "histograms": Histograms(**self.run_args()),
            "codebook": Codebook(**self.run_args()),
            "previous": LastRun(date=self.date),
        }
        if config.copies().threshold == "auto":
            required["selfcheck"] = SelfCheck(**self.run_args())
        return required

    def made_from(self):
        return [self.requires()["similarities"]]

    def settings(self):
        settings = {"threshold": config.copies().threshold, "max_component": copies.MAX_COMPONENT}
        if config.copies().threshold == "auto":
            settings.update(quantile=copies.QUANTILE, sample=config.selfcheck().sample, seed=config.selfcheck().seed)
        return settings

    def threshold(self):
        """The distance within which images are copies, and where it came from."""
        if config.copies().threshold != "auto":
            return float(config.copies().threshold), "[copies] threshold"
        check = read_json(self.input()["selfcheck"].path)
        distances = check.get("first_distances", [])
        return copies.selfcheck_threshold(distances), f"the self-check's {len(distances)} copies found first"

    def make(self, tmp):
        path = self.input()["similarities"].path
        result = read_similarities(path)
        ids, keys = result["ids"], result.get("keys", result["ids"].astype(str))
        at = pd.Index(ids)
        listed = at.get_indexer(result["neighbours"].ravel()).reshape(result["neighbours"].shape)
        codebook = CodebookModel.load(self.input()["codebook"].path)
        verdicts = result["verdicts"]
        a, b = at.get_indexer(verdicts.image_id), at.get_indexer(verdicts.similar_image_id)
        wrong = [(x, y) for x, y, right in zip(a, b, verdicts.right) if x >= 0 and y >= 0 and not right]
        threshold, source = self.threshold()
        # what a set's groups depend on besides its images: the histograms' words, weights and distance
        made = [read_attrs(self.input()[name].path) for name in ("codebook", "histograms")]
        basis = json.dumps(
            [made[0]["digest"], made[1]["settings_digest"], repr(threshold)]
            + [str(result["attrs"].get(name)) for name in ("weighting", "metric", "power")]
        )
        earlier = copies.load_copies(previous(self, self.filename))
        known = copies.known_sets(*earlier) if earlier else {}

        def histograms(rows):
            return run_counts(self.input()["histograms"].path, codebook, ids[rows], result["attrs"], rows)[1]

        grouping = copies.copy_groups(
            listed, result["distances"], threshold, histograms, wrong, ids=ids, keys=keys, basis=basis, known=known
        )
        numbered = copies.number_groups(
            grouping.groups,
            ids,
            result["ppn"],
            result["filename"],
            self.date.isoformat(),
            earlier[0].rows if earlier else None,
            earlier[0].next_group if earlier else 1,
            sets=grouping.keys,
        )
        spanning = copies.spanning(numbered.rows)
        attrs = self.attrs(
            threshold=threshold,
            threshold_source=source,
            groups=len(grouping.groups),
            images=int(sum(len(g) for g in grouping.groups)),
            spanning_records=len(spanning),
            new=len(numbered.new_groups),
            crowded=grouping.crowded,
            left_out=grouping.left_out,
            sets=grouping.sets,
            regrouped=grouping.regrouped,
        )
        copies.save_copies(tmp, numbered, attrs, grouping.settled)
        copies.write_csv(os.path.join(config.paths().artifacts, self.csv), numbered.rows)
        logger.info(
            "%d groups of copies (%d images, %d spanning several records, %d new) within distance %.4g (%s); "
            "%d of %d sets of linked images worked out, the others as the earlier night left them",
            len(grouping.groups),
            attrs["images"],
            len(spanning),
            len(numbered.new_groups),
            threshold,
            source,
            grouping.regrouped,
            grouping.sets,
        )


def copies_wanted():
    """Whether the run makes copies.csv (``[copies] threshold`` is not off; a bad value: no, CheckSettings names it)."""
    try:
        return config.copies().threshold != "off"
    except ValueError:
        return False
