"""The CMS database's URL (its password kept out of luigi.cfg), the engine, and whether the database answers."""

import logging
import os

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ..errors import ConfigError, named

logger = logging.getLogger(__name__)


def resolve_url(setting):
    """The SQLAlchemy URL that the ``[cms] url`` setting names.

    ``env:NAME`` reads the URL from the environment variable NAME and ``file:PATH`` from the
    first non-empty line of the file PATH: the two places a password may be. Anything else is
    the URL itself, which then must not hold a password (luigi.cfg is no place for one; a
    PostgreSQL URL without one still authenticates through ~/.pgpass or the server's rules).

    Returns
    -------
    sqlalchemy.engine.URL

    Raises
    ------
    ConfigError
        When the setting is empty, the variable or file is missing, the URL does not parse,
        or a URL written in luigi.cfg holds a password. No message shows a password.
    """
    setting = str(setting).strip()
    if not setting:
        raise ConfigError(
            f"{named('url')} is empty; set it to the CMS database's SQLAlchemy URL, env:NAME or file:PATH"
        )
    if setting.startswith("env:"):
        name = setting[len("env:") :]
        value, where = os.environ.get(name, "").strip(), f"the environment variable {name}"
        if not value:
            raise ConfigError(f"{named('url')}={setting}: {where} is not set; set it to the database's SQLAlchemy URL")
    elif setting.startswith("file:"):
        path = setting[len("file:") :]
        where = f"the file {path}"
        try:
            with open(path, encoding="utf-8") as f:
                value = next((line.strip() for line in f if line.strip()), "")
        except OSError as exc:
            raise ConfigError(f"{named('url')}={setting}: {where} cannot be read ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{named('url')}={setting}: {where} is empty; write the database's SQLAlchemy URL in it")
    else:
        value, where = setting, named("the settings")
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError(
            f"{named('url')} in {where} is not an SQLAlchemy URL such as postgresql+psycopg://user@host/database"
        ) from None
    if where == named("the settings") and url.password is not None:
        raise ConfigError(
            f"{named('url')} in {where} holds a password; move the URL to an environment variable "
            "(url = env:NAME) or to a file only the job can read (url = file:PATH)"
        )
    return url


def shown(url):
    """The URL as logs and messages show it: the password replaced by ***."""
    return url.render_as_string(hide_password=True)


def connect(url):
    """An engine for the URL; SQLite waits up to a minute for a lock instead of failing at once. A
    server's pooled connections are tested before use, so that a server restarted or stopped since
    (a keep-alive worker, the next night in one process) reads as such, not as a lost connection."""
    try:
        if url.get_backend_name() == "sqlite":
            return sa.create_engine(url, connect_args={"timeout": 60})
        return sa.create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"{named('url')}={shown(url)} cannot be used: {one_line(exc)}") from None


def one_line(exc):
    """The first line of a database error, without SQLAlchemy's background link."""
    error = getattr(exc, "orig", None) or exc
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def reachable(engine, table=None):
    """Whether the database answers (and holds ``table``, when one is named)."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database and not os.path.exists(url.database):
        return False  # connecting would create an empty database file
    try:
        with engine.connect() as conn:
            return table is None or sa.inspect(conn).has_table(table)
    except SQLAlchemyError:
        return False
