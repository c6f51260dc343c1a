"""The settings check: the first setting of luigi.cfg or the command line that cannot work, as
a one-line message naming it and the fix, before any work."""

import os

import luigi

from pipeline.cms import resolve_url
from pipeline.errors import ConfigError
from pipeline.model import layer_side, unknown_layer_message
from pipeline.settings import SECTIONS

from .config import cms, copies, ids, neighbours, read, resnet, selfcheck, verdict_source, verdicts


def settings_problem(sections=None):
    """The first setting of ``sections`` (the names of luigi.cfg's sections a run reads; default:
    all) that cannot work, as a one-line message naming it and the fix; None if all can.

    Checks what can be known before any work: every value parses, the values are in range, no
    key is unknown (a misspelt key would otherwise be ignored), the weights are ``imagenet``,
    ``random`` or a readable file, the layer is one of ResNet50's, the CMS URL resolves when it
    is needed, and the settings that depend on each other agree. Settings that depend on the
    data (``k`` against the number of images, K against the number of descriptors) are checked
    once the inventory is taken, before any extraction.
    """
    names = {section.section for section in SECTIONS}
    used = names if sections is None else set(sections) & names
    needed = used | {name for owner, reads, _ in AGREEMENTS if owner in used for name in reads}
    return _unreadable(needed) or next(
        (problem for owner, _, agree in AGREEMENTS if owner in used for problem in [agree()] if problem), None
    )


def _unreadable(needed):
    """The first setting of the sections ``needed`` that is not one, or cannot be read, or does not work."""
    parser = luigi.configuration.get_config()
    for section in SECTIONS:
        if section.section not in needed:
            continue
        problem = section.unknown(parser.options(section.section) if parser.has_section(section.section) else ())
        if problem:
            return problem
        try:
            read(section)
        except ConfigError as exc:
            return str(exc)
    return None


def _model():
    if layer_side(resnet().layer) is None:
        return unknown_layer_message(resnet().layer)
    weights = resnet().weights
    if weights not in ("imagenet", "random") and not os.access(weights, os.R_OK):
        return f"[resnet] weights={weights!r} is not a readable file; give the path of a Keras weights file, or imagenet or random"
    return None


def _cms_url():
    if not (ids().source == "cms" or cms().url.strip()):
        return None
    try:
        resolve_url(cms().url)
    except ConfigError as exc:
        return str(exc)
    return None


def _verdicts():
    if verdicts().source == "cms" and not cms().url.strip():
        return "[verdicts] source = cms needs [cms] url; set it, or keep the verdicts in a file: [verdicts] csv = PATH"
    if verdicts().source == "csv" and not verdicts().csv.strip():
        return "[verdicts] source = csv needs [verdicts] csv, the path of the verdicts' CSV file"
    if verdict_source()[0] == "cms" and not verdicts().table.strip():
        return "[verdicts] table is empty; name the table of the verdicts (default image_similarity_verdict)"
    return None


def _copies():
    if copies().threshold == "auto" and selfcheck().sample == 0:
        return "[copies] threshold = auto needs the self-check; set [selfcheck] sample above 0, a distance, or off"
    copies_table = cms().copies_table.strip()
    if copies_table and not cms().url.strip():
        return "[cms] copies_table needs [cms] url; set it, or leave copies_table empty (copies.csv only)"
    if copies_table and copies().threshold == "off":
        return (
            "[cms] copies_table is set but [copies] threshold = off makes no copies; set a threshold or empty the table"
        )
    if copies_table and copies_table in (cms().table, cms().marker_table, cms().images_table, verdicts().table):
        return f"[cms] copies_table={copies_table!r} is another table of the pipeline's; name a table of its own"
    return None


def _rerank():
    if neighbours().rerank == "on" and selfcheck().sample == 0:
        return (
            "[neighbours] rerank = on needs the self-check (it sets the verification's threshold); "
            "set [selfcheck] sample above 0, or rerank = off"
        )
    return None


#: The settings that must agree with each other: (the section whose tasks need them, the sections
#: read, the check). A run checks those of the sections its tasks read.
AGREEMENTS = (
    ("resnet", ("resnet",), _model),
    ("cms", ("cms", "ids"), _cms_url),
    ("verdicts", ("verdicts", "cms"), _verdicts),
    ("copies", ("copies", "selfcheck", "cms", "verdicts"), _copies),
    ("neighbours", ("neighbours", "selfcheck"), _rerank),
)
