"""The web app's settings: ``[serve]`` of luigi.cfg and the artifacts folder, as one frozen value."""

import dataclasses
import string

from pipeline.errors import ConfigError, named
from pipeline.settings import Paths, Serve

#: The fields each URL template may name.
TEMPLATE_FIELDS = {"viewer_url": ("ppn", "filename", "id"), "image_url": ("ppn", "filename", "id", "side")}


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    """What the app serves and how: ``[serve]`` (:class:`pipeline.settings.Serve`, which documents
    each) and ``[paths] artifacts``, the trusted proxies as a tuple; the shipped ones by default."""

    artifacts: str = Paths.artifacts
    host: str = Serve.host
    port: int = Serve.port
    public: bool = Serve.public
    users: str = Serve.users
    secret_key: str = Serve.secret_key
    trusted_proxy: tuple = ()
    user_header: str = Serve.user_header
    viewer_url: str = Serve.viewer_url
    image_url: str = Serve.image_url
    max_upload_mb: float = Serve.max_upload_mb
    threads: int = Serve.threads
    reload_seconds: float = Serve.reload_seconds
    secure_cookies: bool = Serve.secure_cookies

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
