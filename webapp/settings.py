"""The web app's settings: ``[serve]`` of luigi.cfg and the artifacts folder, as one frozen value."""

import dataclasses
import string

from pipeline.errors import ConfigError, named

#: The fields each URL template may name.
TEMPLATE_FIELDS = {"viewer_url": ("ppn", "filename", "id"), "image_url": ("ppn", "filename", "id", "side")}


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """What the app serves and how; the defaults are the shipped ones (tasks.config.serve documents each)."""

    artifacts: str = "artifacts"
    host: str = "127.0.0.1"
    port: int = 8000
    public: bool = True
    users: str = "curators.txt"
    secret_key: str = "serve-secret.key"
    trusted_proxy: tuple = ()
    user_header: str = "X-Remote-User"
    viewer_url: str = ""
    image_url: str = ""
    max_upload_mb: float = 20.0
    threads: int = 8
    reload_seconds: float = 5.0
    secure_cookies: bool = False

    def __post_init__(self):
        _check_template(self.viewer_url, named("viewer_url"), TEMPLATE_FIELDS["viewer_url"])
        _check_template(self.image_url, named("image_url"), TEMPLATE_FIELDS["image_url"])


def _check_template(template, name, fields):
    """ConfigError unless ``template`` is a URL template naming only ``fields``."""
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"{name}={template!r} is not a URL template ({exc})") from None
    unknown = sorted(used - set(fields))
    if unknown:
        raise ConfigError(
            f"{name}={template!r} names {{{unknown[0]}}}; a template may name {', '.join(f'{{{f}}}' for f in fields)}"
        )
    if template and not template.startswith(("http://", "https://", "/")):
        raise ConfigError(f"{name}={template!r} must be an http(s) URL or a path starting with /")
