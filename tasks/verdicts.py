"""The curators' verdicts on pairs, read once per run date from ``[verdicts] source`` and checked
against the run's images (``pipeline.verdicts``)."""

import logging
import os

from pipeline import collection, store, verdicts
from pipeline.cms import shown

from . import config, inputs
from .base import ArtifactTask, settings_digest
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


def checked(ids, known=()):
    """The configured verdicts checked against the images ``ids`` (``pipeline.verdicts.check_verdicts``):
    (Verdicts, bad rows, superseded, the rows read)."""
    rows = read_rows(ids)
    return (*verdicts.check_verdicts(rows, ids, known, config.neighbours().k), rows)


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
        honoured, bad, superseded, rows = checked(index.ids, known)
        n_rows = len(rows)
        named = {str(i) for i in (*honoured.image_id.tolist(), *honoured.similar_image_id.tolist())}
        self.found = settings_digest(
            [
                honoured.image_id.tolist(),
                honoured.similar_image_id.tolist(),
                honoured.right.tolist(),
                honoured.time.tolist(),
                honoured.author.tolist(),
                [list(b) for b in bad],
            ]
        )
        n_right = int(honoured.right.sum())
        logger.info(
            "verdicts from %s: %d rows, %d pairs honoured (%d wrong, %d right), %d rows replaced by a later verdict "
            "on their pair, %d left out",
            where(),
            n_rows,
            len(honoured),
            len(honoured) - n_right,
            n_right,
            superseded,
            len(bad),
        )
        if bad:
            listed = "; ".join(f"{b.row}: {b.reason}" for b in bad[:20])
            logger.warning(
                "%d verdict rows cannot be honoured: %s%s", len(bad), listed, " ..." if len(bad) > 20 else ""
            )
        attrs = self.attrs(
            rows=n_rows,
            honoured=len(honoured),
            wrong=len(honoured) - n_right,
            right=n_right,
            superseded=superseded,
            bad=len(bad),
            where=where() or "none",
        )
        # the IDs of the rows that were images once stay known, so that they keep being "gone"
        mentioned = {str(v).strip() for column in ("image_id", "similar_image_id") for v in rows[column]}
        verdicts.save_verdicts(tmp, honoured, bad, earlier | named | (known & mentioned), attrs)
