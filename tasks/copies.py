"""The copies of one picture across the collection: copies.h5 and copies.csv (``pipeline.copies``)."""

import logging
import os

import pandas as pd

from pipeline import copies
from pipeline.codebook import Codebook as CodebookModel
from pipeline.output import honoured_verdicts, read_similarities
from pipeline.query import run_counts
from pipeline.report import read_json

from . import config
from .base import ArtifactTask
from .checks import SelfCheck
from .neighbours import Similarities
from .stages import Codebook, Histograms

logger = logging.getLogger("luigi-interface")


class Copies(ArtifactTask):
    """The groups of images that show the same picture, numbered stably from night to night:
    ``copies.h5`` (the artifact, with the threshold it used) and ``copies.csv`` beside it."""

    filename = "copies.h5"
    csv = "copies.csv"

    def requires(self):
        required = {
            "similarities": Similarities(**self.run_args()),
            "histograms": Histograms(**self.run_args()),
            "codebook": Codebook(**self.run_args()),
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
        ids = result["ids"]
        at = pd.Index(ids)
        listed = at.get_indexer(result["neighbours"].ravel()).reshape(result["neighbours"].shape)
        codebook = CodebookModel.load(self.input()["codebook"].path)
        _, data = run_counts(self.input()["histograms"].path, codebook, ids, result["attrs"])
        verdicts = honoured_verdicts(path)
        a, b = at.get_indexer(verdicts.image_id), at.get_indexer(verdicts.similar_image_id)
        wrong = [(x, y) for x, y, right in zip(a, b, verdicts.right) if x >= 0 and y >= 0 and not right]
        threshold, source = self.threshold()
        groups, crowded, left_out = copies.copy_groups(data, listed, result["distances"], threshold, wrong)
        earlier = copies.load_copies(self.output().path)
        numbered = copies.number_groups(
            groups, ids, result["ppn"], result["filename"], self.date.isoformat(),
            earlier.rows if earlier else None, earlier.next_group if earlier else 1,
        )  # fmt: skip
        spanning = copies.spanning(numbered.rows)
        attrs = self.attrs(
            threshold=threshold, threshold_source=source, groups=len(groups),
            images=int(sum(len(g) for g in groups)), spanning_records=len(spanning),
            new=len(numbered.new_groups), crowded=crowded, left_out=left_out,
        )  # fmt: skip
        copies.save_copies(tmp, numbered, attrs)
        copies.write_csv(os.path.join(config.paths().artifacts, self.csv), numbered.rows)
        logger.info(
            "%d groups of copies (%d images, %d spanning several records, %d new) within distance %.4g (%s)",
            len(groups), attrs["images"], len(spanning), len(numbered.new_groups), threshold, source,
        )  # fmt: skip


def copies_wanted():
    """Whether the run makes copies.csv (``[copies] threshold`` is not off; a bad value: no, CheckSettings names it)."""
    try:
        return config.copies().threshold != "off"
    except ValueError:
        return False
