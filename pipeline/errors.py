"""The exceptions the pipeline raises; each message is one line that names the value and the fix."""


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
