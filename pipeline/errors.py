"""The exceptions the pipeline raises; each message is one line that names the value and the fix.

A message names a setting by the library's name of the parameter (``k``, ``max_pixels``) unless
the application that calls the library names its settings otherwise (``tasks`` names ``k``
``[neighbours] k``, as luigi.cfg sets it): :func:`named`, from :data:`NAMES`.
"""

#: How messages name the library's parameters, where the application names them otherwise:
#: {parameter: name}, filled by the application (``tasks.config``).
NAMES = {}


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
