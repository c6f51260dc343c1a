"""The settings of luigi.cfg and the command line, read: one section in, one dataclass of
:mod:`pipeline.settings` out.

For each section a ``luigi.Config`` class of its name is made from the dataclass, so that Luigi
reads the section and its command-line flags (``--neighbours-k 3``, ``--collection-allow-removals``)
as it reads its own; the dataclass parses the text, checks it and names the key of a bad value.
"""

import dataclasses
import functools
import logging
import os

import luigi

from pipeline import backends, settings
from pipeline.backends import ModelSpec
from pipeline.cms import Destination
from pipeline.errors import ConfigError
from pipeline.search import NeighbourSettings
from pipeline.thumbnails import Inbox, ViewStore
from pipeline.weighting import Distance


class Text(luigi.Parameter):
    """A setting's text as luigi.cfg or the command line gives it (None where neither does)."""


class Flag(luigi.BoolParameter):
    """A setting the command line gives as a flag (``--collection-allow-removals``): True, or
    luigi.cfg's text (None where neither gives it); the dataclass reads it."""

    def parse(self, x):
        return x

    def normalize(self, x):
        return x


def _luigi_config(section):
    """The ``luigi.Config`` class of ``section`` (a :class:`pipeline.settings.Section`): a parameter per key."""
    parameters = {
        key: (Flag if key in section.flags() else Text)(default=None, significant=False, description=doc)
        for key, _, _, doc in section.described()
    }
    return type(section.section, (luigi.Config,), {"__module__": __name__, "__doc__": section.__doc__, **parameters})


#: The ``luigi.Config`` class of each section, by its name.
LUIGI = {section.section: _luigi_config(section) for section in settings.SECTIONS}


def read(section):
    """``section``'s dataclass with the values luigi.cfg and the command line give it; ConfigError
    naming the key of the first value that cannot work (a key luigi.cfg misspells is left to the
    settings check, which names it)."""
    given = LUIGI[section.section]()
    return section.from_text({key: value for key, value in given.param_kwargs.items() if value is not None})


def _reader(section):
    def reader():
        return read(section)

    reader.__name__ = reader.__qualname__ = section.section
    reader.__doc__ = f"The ``[{section.section}]`` settings: :class:`pipeline.settings.{section.__name__}`."
    return reader


paths = _reader(settings.Paths)
ids = _reader(settings.Ids)
cms = _reader(settings.Cms)
resnet = _reader(settings.Resnet)
features = _reader(settings.Features)
images = _reader(settings.Images)
reduction = _reader(settings.Reduction)
codebook = _reader(settings.Codebook)
histograms = _reader(settings.Histograms)
neighbours = _reader(settings.Neighbours)
verdicts = _reader(settings.Verdicts)
collection = _reader(settings.Collection)
evaluate = _reader(settings.Evaluate)
selfcheck = _reader(settings.Selfcheck)
copies = _reader(settings.Copies)
report = _reader(settings.Report)
progress = _reader(settings.Progress)
lock = _reader(settings.Lock)
serve = _reader(settings.Serve)


def shards(section):
    """``[section] shards``, or 1 while a setting of the section cannot be read: the tasks are
    scheduled, and CheckSettings then stops the run with the setting's name before any work."""
    try:
        return read({s.section: s for s in settings.SECTIONS}[section]).shards
    except ConfigError:
        return 1


@functools.cache
def _logged(precision, reason):
    logging.getLogger("luigi-interface").info("[resnet] precision: %s (%s)", precision, reason)


def neighbour_settings():
    """The :class:`~pipeline.search.NeighbourSettings` of ``[neighbours]``."""
    n = neighbours()
    return NeighbourSettings(
        n.k, Distance(n.weighting, n.metric, n.power), n.same_record, n.method, n.rerank == "on", n.candidates
    )


def destination():
    """The :class:`~pipeline.cms.Destination` of ``[cms]``: where the lists are loaded."""
    c = cms()
    return Destination(c.mode, c.table, c.marker_table, c.images_table, c.id_column, c.siblings_column, c.batch_rows)


def precision():
    """The precision the model computes in, and why (a :class:`~pipeline.precision.Decision`,
    logged once): ``[resnet] precision``, with ``auto`` measured by the first run that needs it
    and kept in ``<artifacts>/features/precision-<digest of the model's settings>.json``, which
    every later run and every worker follows (:func:`pipeline.backends.decide_precision`)."""
    spec = _spec_as_set()
    record = (
        os.path.join(paths().artifacts, "features", backends.record_name(spec)) if spec.precision == "auto" else None
    )
    decision = backends.decide_precision(spec, record, resnet().batch_size)
    _logged(decision.precision, decision.reason)
    return decision


def _spec_as_set():
    return ModelSpec(
        weights=resnet().weights,
        layer=resnet().layer,
        seed=resnet().seed,
        precision=resnet().precision,
        colour=images().colour,
        trim=images().trim,
        calibration_images=resnet().calibration_images,
    )


def model_spec(**changes):
    """The :class:`~pipeline.backends.ModelSpec` of ``[resnet]`` and ``[images]`` with the
    precision decided (:func:`precision`), and ``changes`` (another ``layer``, ``colour`` or ``trim``)."""
    return dataclasses.replace(_spec_as_set(), precision=precision().precision, **changes)


def view_store():
    """The store of the images' thumbnails and previews, ``<artifacts>/thumbnails/views.sqlite``."""
    return ViewStore(os.path.join(paths().artifacts, "thumbnails", "views.sqlite"))


def inbox():
    """Where the extraction leaves each batch's views, ``<artifacts>/thumbnails/incoming/``."""
    return Inbox(os.path.join(paths().artifacts, "thumbnails", "incoming"))


def views_made():
    """Whether the night makes each image's thumbnail and preview (no ``[serve] image_url``
    serves them; a bad value: yes, CheckSettings names it)."""
    try:
        return not serve().image_url.strip()
    except ConfigError:
        return True


def verdict_source():
    """Where the verdicts are: ("cms", table), ("csv", path) or ("none", None), ``auto`` decided
    (none while a setting cannot be read: the tasks are scheduled, and CheckSettings then stops
    the run with the setting's name before any work)."""
    try:
        source = verdicts().source
    except ConfigError:
        return "none", None
    if source == "auto":
        source = "csv" if verdicts().csv.strip() else "cms" if cms().url.strip() else "none"
    if source == "cms":
        return "cms", verdicts().table
    if source == "csv":
        return "csv", verdicts().csv
    return "none", None
