"""``similar-images-serve [--host HOST] [--port PORT]`` (or ``python -m tasks.serve``): the web app
(:mod:`webapp`) on the last finished run of ``[paths] artifacts``, under waitress; ``--add-user
NAME`` and ``--remove-user NAME`` manage the curators of ``[serve] users``.

Exit status: 0 when stopped (Ctrl-C) or a curator was added or removed, 2 when it cannot start
(a bad setting, a port in use) or a curator cannot be added.
"""

import argparse
import getpass
import logging
import sys

import sqlalchemy as sa
import waitress

from pipeline import verdicts
from pipeline.errors import CmsError, ConfigError, PipelineError
from webapp import ServeSettings, Site, create_app
from webapp.security import Users

from . import config, inputs, settings
from .evaluation import latest_index
from .query import Querier
from .verdict import judge

logger = logging.getLogger("webapp")


def serve_settings():
    """The app's :class:`~webapp.ServeSettings` of ``[serve]`` and ``[paths] artifacts``."""
    section = config.serve()
    values = {name: getattr(section, name) for name in section.names()}
    values["trusted_proxy"] = tuple(p.strip() for p in section.trusted_proxy.split(",") if p.strip())
    return ServeSettings(artifacts=config.paths().artifacts, **values)


def read_verdicts():
    """The verdict rows where luigi.cfg keeps them (None: nowhere); a table not made yet holds none."""
    kind, place = config.verdict_source()
    if kind == "csv":
        return verdicts.read_csv(place)
    if kind == "cms":
        engine = inputs.engine()
        try:
            with engine.connect() as connection:
                if not sa.inspect(connection).has_table(place):
                    return verdicts.no_rows()
        except sa.exc.SQLAlchemyError as exc:
            raise CmsError(f"the CMS database at [cms] url does not answer ({type(exc).__name__})") from None
        return verdicts.read_table(engine, place)
    return None


def make_querier(previous):
    """The query command's :class:`~tasks.query.Querier` for the last run, one image per forward
    pass (an upload is one file: a batch of 16 would cost 16 images' pass), keeping ``previous``'s
    model when the run was made with the same one."""
    index = latest_index()
    querier = Querier(index, batch_size=1)
    if previous is not None:
        if previous.index.spec == index.spec and previous.index.store == index.store:
            querier._extractor, previous._extractor = previous._extractor, None
        previous.close()
    return querier


def site():
    """The :class:`~webapp.Site` of luigi.cfg: where verdicts go, the query, the night's views."""
    kind, place = config.verdict_source()
    # named as luigi.cfg names them, not by the machine's paths, which readers need not see
    where = {"csv": "the verdict file of [verdicts] csv", "cms": f"the CMS database's table {place}"}
    return Site(
        judge=judge,
        read_verdicts=read_verdicts,
        make_querier=make_querier,
        views=config.view_store() if config.views_made() else None,
        verdicts_where=where.get(kind, "nowhere: [verdicts] source is none"),
    )


def add_user(name, stream=None):
    """Add curator ``name`` to ``[serve] users`` with a password read from a prompt (twice), or
    from the first line of ``stream`` when it is not a terminal."""
    stream = stream or sys.stdin
    if stream.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("the same again: ") != password:
            raise ConfigError("the two passwords differ; nothing was changed")
    else:
        password = stream.readline().rstrip("\n")
    Users(config.serve().users).add(name, password)
    return f"curator {name} can log in: {config.serve().users}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[-1])
    parser.add_argument("--host", help="address to listen on (default [serve] host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default [serve] port, 8000)")
    parser.add_argument("--add-user", metavar="NAME", help="add a curator (or set a new password), then exit")
    parser.add_argument("--remove-user", metavar="NAME", help="remove a curator, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        problem = settings.settings_problem()
        if problem:
            raise ConfigError(problem)
        if args.add_user:
            print(add_user(args.add_user))
            return 0
        if args.remove_user:
            removed = Users(config.serve().users).remove(args.remove_user)
            print(f"curator {args.remove_user} {'removed' if removed else 'was not there'}")
            return 0
        chosen = serve_settings()
        host, port = args.host or chosen.host, args.port or chosen.port
        app = create_app(chosen, site(), start=False)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server = waitress.create_server(
            app,
            host=host,
            port=port,
            threads=chosen.threads,
            max_request_body_size=int(chosen.max_upload_mb * 2**20) + 2**20,
            ident="similar-images",
        )
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    app.extensions["webapp"].served.start()
    logger.info("the app of %s on http://%s:%d/ (Ctrl-C stops it)", chosen.artifacts, host, port)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        app.extensions["webapp"].served.stop()
        app.extensions["webapp"].queries.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
