"""The exceptions the pipeline raises; each message is one line that names the value and the fix.

A message names a setting as luigi.cfg sets it (``k`` is ``[neighbours] k``): :func:`named`,
from :data:`NAMES`, the one table of those names.
"""

#: How messages name the library's parameters: {parameter: the luigi.cfg setting}.
NAMES = {
    "the settings": "luigi.cfg",
    "content_dir": "[paths] content",
    "ids_csv": "[ids] csv",
    "url": "[cms] url",
    "ids_query": "[cms] ids_query",
    "images_table": "[cms] images_table",
    "id_column": "[cms] id_column",
    "ppn_column": "[cms] ppn_column",
    "filename_column": "[cms] filename_column",
    "record_column": "[cms] record_column",
    "mode": "[cms] mode",
    "table": "[cms] table",
    "marker_table": "[cms] marker_table",
    "siblings_column": "[cms] siblings_column",
    "copies_table": "[cms] copies_table",
    "layer": "[resnet] layer",
    "weights": "[resnet] weights",
    "precision": "[resnet] precision",
    "max_pixels": "[images] max_pixels",
    "decode_timeout": "[images] decode_timeout",
    "codebook_size": "[codebook] size",
    "k": "[neighbours] k",
    "same_record": "[neighbours] same_record",
    "candidates": "[neighbours] candidates",
    "verdicts_table": "[verdicts] table",
    "verdicts_csv": "[verdicts] csv",
    "allow_empty": "--verdicts-allow-empty",
    "fingerprint": "[collection] fingerprint",
    "max_removed": "[collection] max_removed",
    "allow_removals": "--collection-allow-removals",
    "labels": "[evaluate] labels",
    "selfcheck_sample": "[selfcheck] sample",
    "copies_threshold": "[copies] threshold",
    "stale_after": "[lock] stale_after",
    "trusted_proxy": "[serve] trusted_proxy",
    "viewer_url": "[serve] viewer_url",
    "image_url": "[serve] image_url",
    "max_upload_mb": "[serve] max_upload_mb",
}


def named(parameter):
    """How the messages name the library's ``parameter``: :data:`NAMES`'s name, else the parameter."""
    return NAMES.get(parameter, parameter)


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """A setting is missing, malformed or inconsistent with the data."""


class MappingError(PipelineError):
    """The ID mapping (database ID -> ppn, filename) is malformed."""


class CollectionError(PipelineError):
    """The content folder cannot be used as a collection."""


class WeightsError(PipelineError):
    """The model weights cannot be loaded."""


class ArtifactError(PipelineError):
    """An artifact on disk is missing, unreadable or inconsistent with the others."""


class ImageError(PipelineError):
    """One image file cannot be decoded; the run goes on without it."""


class CmsError(PipelineError):
    """The CMS database cannot be read or written; a load that fails is rolled back."""
