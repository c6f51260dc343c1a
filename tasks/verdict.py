"""``similar-images-verdict ID ID wrong|right|withdraw [--author NAME]`` (or ``python -m tasks.verdict``):
a curator's verdict on a pair of images, written where ``[verdicts] source`` keeps them; every night
from the next on honours it, in both images' lists. ``withdraw`` removes every verdict on the pair.

Exit status: 0 when written, 2 when it cannot be (a bad argument or setting, no place for verdicts,
an ID that is not an image of the last run, a database that does not answer).
"""

import argparse
import logging
import os
import sys

import h5py
import sqlalchemy as sa

from pipeline import verdicts
from pipeline.errors import CmsError, ConfigError, PipelineError
from pipeline.h5io import read_ids

from . import config, inputs, settings
from .neighbours import Similarities

CHOICES = (*verdicts.VERDICTS, "withdraw")


def last_run_ids():
    """The database IDs of the last run's similarities.hdf5, or None when there is none to read."""
    path = os.path.join(config.paths().artifacts, Similarities.filename)
    try:
        with h5py.File(path, "r") as f:
            return read_ids(f["ids"])
    except (OSError, KeyError):
        return None


class RunImages:
    """The images of the last run that a verdict may name: ``dtype`` of their IDs, and ``len`` and
    ``row_of`` as :class:`pipeline.browse.ServedRun` has them (the web app hands its own)."""

    def __init__(self, ids):
        self.dtype = ids.dtype
        self._known = set(map(str, ids.tolist()))

    def __len__(self):
        return len(self._known)

    def row_of(self, text):
        return 0 if str(text) in self._known else None


def judge(image_id, similar_image_id, verdict, author=None, images=None):
    """Write one verdict (or withdraw the pair's) where luigi.cfg keeps them; returns what was done,
    one line. ``images`` are the run's (:class:`RunImages`; by default the last run's, read now)."""
    problem = settings.settings_problem()
    if problem:
        raise ConfigError(problem)
    kind, place = config.verdict_source()
    if kind == "none":
        raise ConfigError(
            "no place for verdicts: [verdicts] source is none, or auto without [cms] url or [verdicts] csv; set one"
        )
    image_id, similar_image_id = str(image_id).strip(), str(similar_image_id).strip()
    if image_id == similar_image_id:
        raise PipelineError(f"a verdict is on two images; {image_id} and {similar_image_id} are the same one")
    if images is None:
        ids = last_run_ids()
        images = RunImages(ids) if ids is not None else None
    if images is not None:
        for x in (image_id, similar_image_id):
            if images.row_of(x) is None and verdict != "withdraw":
                raise PipelineError(f"ID {x} is not an image of the last run ({len(images):,} images); check the ID")
    integers = images.dtype.kind in "iu" if images is not None else image_id.isdigit() and similar_image_id.isdigit()
    pair = (int(image_id), int(similar_image_id)) if integers else (image_id, similar_image_id)
    where = f"[verdicts] csv={os.path.abspath(place)!r}" if kind == "csv" else f"[verdicts] table={place!r}"
    if kind == "csv":
        try:
            if verdict == "withdraw":
                gone = verdicts.withdraw_from_csv(place, *pair)
                return f"{gone} verdicts on {image_id} and {similar_image_id} withdrawn from {where}"
            verdicts.add_to_csv(place, *pair, verdict, author)
        except OSError as exc:  # a full or read-only volume, a file without write permission
            raise ConfigError(
                f"{where} cannot be written ({exc.strerror or exc}); the verdict was not written"
            ) from None
    else:
        engine = inputs.engine()
        if not inputs.CmsTable(None, new_file=True).exists():
            raise CmsError(f"the CMS database at [cms] url does not answer; {where} cannot be written")
        if verdict == "withdraw":
            gone = verdicts.withdraw_from_table(engine, place, *pair)
            return f"{gone} verdicts on {image_id} and {similar_image_id} withdrawn from {where}"
        id_type = sa.BigInteger if integers else sa.String(255)
        verdicts.add_to_table(engine, place, *pair, verdict, author, id_type=id_type)
    return f"{image_id} and {similar_image_id} judged {verdict} in {where}: honoured from the next night on"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[-1])
    parser.add_argument("image_id", help="database ID of one image")
    parser.add_argument("similar_image_id", help="database ID of the other")
    parser.add_argument("verdict", choices=CHOICES, help="wrong, right, or withdraw (remove the pair's verdicts)")
    parser.add_argument("--author", default=None, help="who judged (kept with the verdict)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(judge(args.image_id, args.similar_image_id, args.verdict, args.author))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
