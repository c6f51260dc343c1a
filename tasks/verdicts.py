"""The curators' verdicts on pairs, read once per run date from ``[verdicts] source`` and checked
against the run's images (``pipeline.verdicts``)."""

import logging
import os

from pipeline import collection, store, verdicts
from pipeline.cms import shown
from pipeline.errors import CmsError, ConfigError
from pipeline.h5io import read_attrs

from . import config, inputs
from .base import ArtifactTask, RunGuard, settings_digest
from .extraction import Features
from .inventory import Inventory

logger = logging.getLogger("luigi-interface")


def where():
    """How the log and the report name the verdicts' place, or None when there is none."""
    kind, place = config.verdict_source()
    if kind == "cms":
        return f"[verdicts] table={place!r} of {shown(inputs.engine().url)}"
    if kind == "csv":
        return f"[verdicts] csv={os.path.abspath(place)!r}"
    return None


def read_rows(ids):
    """The rows of the configured verdicts (``pipeline.verdicts.read_table``), the table created
    when missing with the column type of the run's ``ids``."""
    kind, place = config.verdict_source()
    if kind == "cms":
        verdicts.ensure_table(inputs.engine(), place, verdicts.id_type_of(ids))
        return verdicts.read_table(inputs.engine(), place)
    if kind == "csv":
        return verdicts.read_csv(place)
    return verdicts.no_rows()


def vanished_problem():
    """One line when the last run read verdicts and ``[verdicts] source`` holds none tonight
    (missing or empty), unless ``[verdicts] allow_empty`` confirms it; else None. A source that
    cannot be read is the Verdicts stage's to report."""
    kind, place = config.verdict_source()
    if kind == "none" or config.verdicts().allow_empty:
        return None
    try:
        last = read_attrs(os.path.join(config.paths().artifacts, Verdicts.filename))
    except OSError:  # none yet, or damaged (made again)
        return None
    if not int(last.get("rows", 0)):
        return None
    try:
        now = verdicts.count_rows(inputs.engine(), place) if kind == "cms" else len(verdicts.read_csv(place))
    except (CmsError, ConfigError):
        return None
    return None if now else verdicts.vanished(where(), int(last["rows"]), last.get("where", "its source"))


class VerdictsKept(RunGuard):
    """The verdicts still there: when the last run read some and ``[verdicts] source`` holds none
    tonight, the night stops before its lists are made, as for a missing input (exit code 20),
    unless ``[verdicts] allow_empty`` confirms that every verdict was withdrawn."""

    sections = ("verdicts",)

    def check(self):
        return vanished_problem()


class Verdicts(ArtifactTask):
    """The verdicts this run honours (``verdicts.h5``): those of ``[verdicts] source`` that name two
    images of the run, one per pair; every row left out is listed with its reason."""

    filename = "verdicts.h5"
    observed = True  # its identity is that of the verdicts it read
    sections = ("verdicts", "neighbours")

    def requires(self):
        required = {
            "features": Features(date=self.date),
            "inventory": Inventory(date=self.date),
            "previous": inputs.LastRun(date=self.date),
            "kept": VerdictsKept(date=self.date),
        }
        if config.verdict_source()[0] == "cms":
            required["cms"] = inputs.CmsDatabase(date=self.date)
        return required

    def settings(self):
        kind, place = config.verdict_source()
        return {
            "date": self.date.isoformat(),  # read again on every run date, as the collection is
            "source": kind,
            "place": os.path.abspath(place) if kind == "csv" else place,
            "k": config.neighbours().k,
        }

    def previous_known(self):
        """The IDs the previous run's verdicts.h5 knew as images (none when it cannot be read)."""
        try:
            return verdicts.load_verdicts(inputs.previous(self, self.filename))[2]
        except (OSError, KeyError):
            return set()

    def make(self, tmp):
        index = store.load_index(self.input()["features"].path)
        inventory = collection.load_inventory(self.input()["inventory"].path)
        earlier = self.previous_known()
        # images once: the mapping's rows without a file, images without a list (rejected), earlier ones
        known = earlier | {m.split(" ", 1)[0] for m in inventory.missing}
        known |= set(map(str, inventory.ids.tolist())) - set(map(str, index.ids.tolist()))
        night = verdicts.night_verdicts(read_rows(index.ids), index.ids, known, config.neighbours().k, where())
        self.found = settings_digest(night.found())
        attrs = self.attrs(**night.summary(), where=where() or "none")
        verdicts.save_verdicts(tmp, night.honoured, night.bad, earlier | night.known, attrs)
