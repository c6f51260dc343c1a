"""The copies of one picture across the collection: copies.h5 and copies.csv (``pipeline.copies``)."""

import json
import os

from pipeline import copies
from pipeline import histograms as histograms_
from pipeline.codebook import Codebook as CodebookModel
from pipeline.errors import ConfigError, named
from pipeline.h5io import read_attrs
from pipeline.output import read_similarities
from pipeline.query import run_counts
from pipeline.report import read_json
from pipeline.verify import Verifier

from . import config
from .base import ArtifactTask
from .checks import SelfCheck
from .fitting import Codebook
from .histograms import Histograms
from .inputs import LastRun, previous
from .neighbours import Similarities


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

    def threshold(self, verified):
        """The verification score copies reach (``verified``: the lists were re-ranked) or the
        distance within which images are copies, and where it came from."""
        if config.copies().threshold != "auto":
            return float(config.copies().threshold), "[copies] threshold"
        check = read_json(self.input()["selfcheck"].path)
        if verified:
            threshold = check["verification"]["threshold"]
            if threshold is None:
                raise ConfigError(
                    f"{named('copies_threshold')} = auto needs the self-check's verification threshold, and it had no "
                    f"hard negatives; raise {named('selfcheck_sample')} or set {named('copies_threshold')} to a score"
                )
            return threshold, Similarities.threshold_source(check)
        distances = check.get("first_distances", [])
        return copies.selfcheck_threshold(distances), f"the self-check's {len(distances)} copies found first"

    def make(self, tmp):
        result = read_similarities(self.input()["similarities"].path)
        codebook = CodebookModel.load(self.input()["codebook"].path)
        verified = "candidates" in result
        threshold, source = self.threshold(verified)
        # what a set's groups depend on besides its images: the histograms' words, weights and distance
        made = [read_attrs(self.input()[name].path) for name in ("codebook", "histograms")]
        basis = json.dumps(
            [made[0]["digest"], made[1]["settings_digest"], repr(threshold)]
            + [str(result["attrs"].get(name)) for name in ("weighting", "metric", "power")]
        )

        def histograms(rows):
            ids = result["ids"][rows]
            return run_counts(self.input()["histograms"].path, codebook, ids, result["attrs"], rows)[1]

        if verified:  # the verification of the images' words, as the lists were re-ranked
            words = histograms_.load_words(self.input()["histograms"].path)
            assign = histograms_.load_assign(self.input()["histograms"].path)
            pairwise = copies.by_verification(Verifier.of_codebook(words, codebook, assign))
        else:
            pairwise = copies.by_distance(histograms)
        earlier = copies.load_copies(previous(self, self.filename))
        numbered, grouping, summary = copies.night_groups(
            result, threshold, source, pairwise, basis, earlier, self.date.isoformat()
        )
        copies.save_copies(tmp, numbered, self.attrs(**summary), grouping.settled)
        copies.write_csv(os.path.join(config.paths().artifacts, self.csv), numbered.rows)


def copies_wanted():
    """Whether the run makes copies.csv (``[copies] threshold`` is not off; a bad value: no, CheckSettings names it)."""
    try:
        return config.copies().threshold != "off"
    except ConfigError:
        return False
