"""The settings check: the first setting of luigi.cfg or the command line that cannot work, as
a one-line message naming it and the fix, before any work."""

import os

import luigi

from pipeline.cms import resolve_url
from pipeline.errors import ConfigError
from pipeline.model import layer_side, unknown_layer_message

from .config import SECTIONS, cms, copies, ids, lock, resnet, selfcheck, verdict_source, verdicts

#: (section, key, check, what the value must be) of the settings whose type cannot say what
#: they must be; the others are Choice and Number parameters, checked as they are read.
RULES = (
    (
        "codebook",
        "size",
        lambda v: v.strip().lower() == "auto" or (v.strip().isdigit() and int(v) >= 2),
        "auto or a whole number >= 2",
    ),
    ("lock", "stale_after", lambda v: v >= 3 * lock().heartbeat, "a number of seconds >= 3 x [lock] heartbeat"),
)


#: Settings that moved: (section, old key) -> where the setting is now.
MOVED = {("resnet", "decode_threads"): "it is now [images] decode_processes (decoding runs in processes)"}


def _typed(parameter, raw):
    """A setting's text as its type reads it (``0`` for ``k = 0``), or the text when it cannot."""
    try:
        return getattr(parameter, "_var_type", str)(raw)
    except (ValueError, TypeError):
        return raw


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
    names = {c.__name__ for c in SECTIONS}
    used = names if sections is None else set(sections) & names
    needed = used | {read for owner, reads, _ in AGREEMENTS if owner in used for read in reads}
    return _unreadable(needed) or next(
        (problem for owner, _, agree in AGREEMENTS if owner in used for problem in [agree()] if problem), None
    )


def _unreadable(needed):
    """The first setting of the sections ``needed`` that is not one, or cannot be read, or is out of range."""
    sections = {c.__name__: c for c in SECTIONS if c.__name__ in needed}
    parser = luigi.configuration.get_config()
    for name, config_class in sections.items():
        known = dict(config_class.get_params())
        for key in parser.options(name) if parser.has_section(name) else ():
            if key.replace("-", "_") not in known:
                fix = MOVED.get((name, key), f"the settings of [{name}] are {', '.join(known)}")
                return f"[{name}] {key} is not a setting; {fix}"
        for key, parameter in known.items():
            raw = parser.get(name, key, None)
            if raw is None:
                continue
            try:
                parameter.parse(raw)
            except (ValueError, TypeError) as exc:
                if hasattr(parameter, "must"):
                    return f"[{name}] {key}={_typed(parameter, raw)!r} must be {parameter.must}"
                return f"[{name}] {key}={raw!r} cannot be read ({exc}); {parameter.description}"
    for name, key, check, must in RULES:
        if name in sections and not check(getattr(sections[name](), key)):
            return f"[{name}] {key}={getattr(sections[name](), key)!r} must be {must}"
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


#: The settings that must agree with each other: (the section whose tasks need them, the sections
#: read, the check). A run checks those of the sections its tasks read.
AGREEMENTS = (
    ("resnet", ("resnet",), _model),
    ("cms", ("cms", "ids"), _cms_url),
    ("verdicts", ("verdicts", "cms"), _verdicts),
    ("copies", ("copies", "selfcheck", "cms", "verdicts"), _copies),
)
