"""The CMS database: the ID mapping read from it, and the similarities loaded into it in one transaction.

Everything goes through SQLAlchemy, so SQLite, PostgreSQL and MariaDB/MySQL take the same
code; only the bulk write differs (COPY on PostgreSQL, batched executemany elsewhere).
"""

import datetime
import json
import logging
import os
import time

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from .collection import MAPPING_COLUMNS, check_mapping
from .errors import CmsError, ConfigError, MappingError

logger = logging.getLogger(__name__)

#: Seconds between two progress lines of a load.
PROGRESS_SECONDS = 10.0
#: Defaults of ``[cms] table``, ``marker_table`` and ``batch_rows``.
TABLE, MARKER_TABLE, BATCH_ROWS = "image_similarity", "image_similarity_load", 10_000


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
        raise ConfigError("[cms] url is empty; set it to the CMS database's SQLAlchemy URL, env:NAME or file:PATH")
    if setting.startswith("env:"):
        name = setting[len("env:") :]
        value, where = os.environ.get(name, "").strip(), f"the environment variable {name}"
        if not value:
            raise ConfigError(f"[cms] url={setting}: {where} is not set; set it to the database's SQLAlchemy URL")
    elif setting.startswith("file:"):
        path = setting[len("file:") :]
        where = f"the file {path}"
        try:
            with open(path, encoding="utf-8") as f:
                value = next((line.strip() for line in f if line.strip()), "")
        except OSError as exc:
            raise ConfigError(f"[cms] url={setting}: {where} cannot be read ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"[cms] url={setting}: {where} is empty; write the database's SQLAlchemy URL in it")
    else:
        value, where = setting, "luigi.cfg"
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError(
            f"[cms] url in {where} is not an SQLAlchemy URL such as postgresql+psycopg://user@host/database"
        ) from None
    if where == "luigi.cfg" and url.password is not None:
        raise ConfigError(
            "[cms] url in luigi.cfg holds a password; move the URL to an environment variable "
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
        raise ConfigError(f"[cms] url={shown(url)} cannot be used: {_one_line(exc)}") from None


def _one_line(exc):
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


def read_mapping(
    engine, table="images", id_column="id", ppn_column="ppn", filename_column="filename", query="", record_column=""
):
    """Read the ID mapping from the CMS: a table's id, ppn and filename columns, or a query.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    table, id_column, ppn_column, filename_column : str
        Where the mapping is, when no query is given.
    query : str
        A SELECT returning the columns id, ppn and filename (and optionally record); replaces
        the table when given.
    record_column : str
        The table's column of each image's catalogue record, when it is not the PPN (empty).

    Returns
    -------
    mapping : DataFrame from :func:`pipeline.collection.check_mapping`

    Raises
    ------
    MappingError
        When the query fails (a missing table or column), a value is NULL or empty, or an ID
        or a (ppn, filename) pair repeats.
    """
    if query.strip():
        statement, source = sa.text(query), "[cms] ids_query"
        fix = "the query must return the columns id, ppn and filename"
    else:
        columns, names = (id_column, ppn_column, filename_column), MAPPING_COLUMNS
        if record_column.strip():
            columns, names = (*columns, record_column.strip()), (*names, "record")
        statement = sa.select(*(sa.column(c).label(name) for c, name in zip(columns, names)))
        statement = statement.select_from(sa.table(table))
        source = f"[cms] images_table={table!r}"
        fix = "set [cms] id_column, ppn_column, filename_column (and record_column) to its columns"
    try:
        with engine.connect() as conn:
            result = conn.execute(statement)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()), dtype=object)
    except SQLAlchemyError as exc:
        raise MappingError(f"{source} cannot be read from {shown(engine.url)}: {_one_line(exc)}") from None
    logger.info("%d rows of the ID mapping read from %s", len(frame), shown(engine.url))
    return check_mapping(frame, source, fix, "row")


def similarity_tables(table=TABLE, marker_table=MARKER_TABLE, id_type=sa.BigInteger):
    """The table the neighbours are loaded into and the table recording each load.

    ``table``: one row per image and rank: image_id, rank (1..k, nearest first),
    similar_image_id, distance, run_id; primary key (image_id, rank).
    ``marker_table``: one row per load: load_id, target_table, run_id, run_date, n_rows, loaded_at.
    """
    metadata = sa.MetaData()
    similarity = sa.Table(
        table,
        metadata,
        sa.Column("image_id", id_type, primary_key=True, autoincrement=False),
        sa.Column("rank", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("similar_image_id", id_type, nullable=False),
        sa.Column("distance", sa.Double, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )
    return metadata, similarity, _marker(metadata, marker_table)


def _marker(metadata, marker_table):
    return sa.Table(
        marker_table,
        metadata,
        sa.Column("load_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("target_table", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("run_date", sa.String(10), nullable=False),
        sa.Column("n_rows", sa.BigInteger, nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
    )


def _record(conn, marker, target, run_id, run_date, n_rows):
    """The marker row of a load, written in the load's transaction."""
    conn.execute(
        marker.insert().values(
            target_table=target,
            run_id=run_id,
            run_date=run_date,
            n_rows=n_rows,
            loaded_at=datetime.datetime.now(datetime.UTC),
        )
    )


def siblings_target(images_table, siblings_column):
    """What the marker table calls a load in siblings mode."""
    return f"{images_table}.{siblings_column}"


def loaded_run(engine, table=TABLE, marker_table=MARKER_TABLE):
    """The run_id of the last load into ``table`` (or :func:`siblings_target`), or None when none is recorded."""
    marker = _marker(sa.MetaData(), marker_table)
    statement = (
        sa.select(marker.c.run_id).where(marker.c.target_table == table).order_by(marker.c.load_id.desc()).limit(1)
    )
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(marker_table):
                return None
            return conn.execute(statement).scalar()
    except SQLAlchemyError as exc:
        raise CmsError(
            f"[cms] marker_table={marker_table!r} cannot be read from {shown(engine.url)}: {_one_line(exc)}"
        ) from None


#: Images whose rows :func:`holds_load` looks up: enough to notice a dropped, emptied or restored
#: table, few enough to cost a handful of primary-key lookups at any size.
SAMPLED_ROWS = 16


def sampled_ids(ids, n=SAMPLED_ROWS):
    """``n`` IDs spread evenly over ``ids`` (all when fewer), as Python values."""
    ids = np.asarray(ids)
    if len(ids) == 0:
        return []
    return ids[np.unique(np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(np.int64))].tolist()


def holds_load(engine, run_id, ids, table=TABLE, marker_table=MARKER_TABLE, siblings=None, written=None):
    """Whether the CMS holds the load of ``run_id``: the marker table's last row for the target
    names it, and the target still holds it (its table exists, the first-rank rows of a sample
    of ``ids`` are there and those of a sample of ``written`` carry ``run_id``; in siblings
    mode, the sampled images' siblings are set). A table dropped, emptied or restored from a
    backup outside the pipeline is loaded again.

    Parameters
    ----------
    ids : sequence
        The database IDs of the load's images.
    siblings : (images_table, id_column, siblings_column), optional
        The siblings mode's target, instead of ``table``.
    written : sequence, optional
        The IDs whose rows the load wrote (all of ``ids`` by default; an incremental load
        writes only the changed images' rows, the others keep the run that wrote them).
    """
    target = table if siblings is None else siblings_target(siblings[0], siblings[2])
    if loaded_run(engine, target, marker_table) != run_id:
        return False
    sample = sampled_ids(ids)
    written = sampled_ids(ids if written is None else written)
    if siblings is None:
        rows = sa.table(table, sa.column("image_id"), sa.column("rank"), sa.column("run_id"))
        checks = [
            (sample, [rows.c.image_id.in_(sample), rows.c.rank == 1]),
            (written, [rows.c.image_id.in_(written), rows.c.rank == 1, rows.c.run_id == run_id]),
        ]
    else:
        images_table, id_column, siblings_column = siblings
        rows = sa.table(images_table, sa.column(id_column), sa.column(siblings_column))
        checks = [(sample, [rows.c[id_column].in_(sample), rows.c[siblings_column].is_not(None)])]
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(rows.name):
                return False
            for chosen, where in checks:
                if chosen and conn.execute(sa.select(sa.func.count()).select_from(rows).where(*where)).scalar() != len(
                    chosen
                ):
                    return False
    except SQLAlchemyError as exc:
        raise CmsError(f"[cms] table={rows.name!r} cannot be read from {shown(engine.url)}: {_one_line(exc)}") from None
    return True


def load_similarities(
    engine,
    ids,
    neighbours,
    distances,
    run_id,
    run_date,
    table=TABLE,
    marker_table=MARKER_TABLE,
    batch_rows=BATCH_ROWS,
    changed=None,
    removed=(),
):
    """Bring the similarity table to this run's rows, and record the load, in one transaction.

    The tables are created when absent. Readers see last night's complete set until the
    commit and tonight's complete set after it, never a mix or an empty table; a load that
    is killed or fails rolls back and leaves the previous set in place.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    ids : ndarray of shape (n,)
        Database IDs, int64 or str.
    neighbours : ndarray of shape (n, k)
        Database IDs of each image's neighbours, nearest first.
    distances : ndarray of shape (n, k)
    run_id, run_date : str
        Identity and date of the run, kept in the rows written and in the marker row.
    batch_rows : int
        Rows per write.
    changed : ndarray of shape (n,), bool, optional
        Load only the rows of these images over a table that holds the earlier run's (an
        incremental load): their rows and those of ``removed`` are deleted, theirs written, and
        every other row stays. By default the table's rows are all replaced.
    removed : sequence
        With ``changed``: IDs of the earlier run's images that are gone.

    Returns
    -------
    n_rows : int
        Rows written.
    """
    ids, neighbours = np.asarray(ids), np.asarray(neighbours)
    n, k = neighbours.shape
    chosen = np.ones(n, dtype=bool) if changed is None else np.asarray(changed, dtype=bool)
    id_type = sa.BigInteger if ids.dtype.kind in "iu" else sa.String(255)
    metadata, similarity, marker = similarity_tables(table, marker_table, id_type)
    where = shown(engine.url)
    started = time.monotonic()
    written = int(chosen.sum()) * k
    try:
        metadata.create_all(engine)  # before the transaction: MariaDB commits around DDL
        with engine.begin() as conn:
            if changed is None:
                conn.execute(similarity.delete())
            else:
                gone = np.concatenate([ids[chosen], np.asarray(removed, dtype=ids.dtype)]).tolist()
                for start in range(0, len(gone), batch_rows):
                    conn.execute(similarity.delete().where(similarity.c.image_id.in_(gone[start : start + batch_rows])))
            columns = (
                np.repeat(ids[chosen], k),
                np.tile(np.arange(1, k + 1), int(chosen.sum())),
                neighbours[chosen].ravel(),
                np.asarray(distances, dtype=np.float64)[chosen].ravel(),
            )
            _write_rows(conn, similarity, columns, run_id, batch_rows, where)
            _record(conn, marker, table, run_id, run_date, written)
    except (SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:  # the driver's own, from COPY
        raise CmsError(
            f"loading [cms] table={table!r} into {where} failed and was rolled back: {_one_line(exc)}"
        ) from None
    logger.info(
        "%d similarity rows of run %s loaded into %s of %s in %.1f s%s",
        written,
        run_id,
        table,
        where,
        time.monotonic() - started,
        "" if changed is None else f" (the rows of {int(chosen.sum())} changed images; {len(removed)} removed)",
    )
    return written


def _write_rows(conn, similarity, columns, run_id, batch_rows, where):
    """Insert the rows (one array per column but run_id) inside the caller's transaction, batch by batch."""
    total = len(columns[0])
    names = [c.name for c in similarity.columns]
    copy = None
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        quote = conn.dialect.identifier_preparer
        copy = f"COPY {quote.format_table(similarity)} ({', '.join(quote.quote(n) for n in names)}) FROM STDIN"
    last_report = time.monotonic()
    for start in range(0, total, batch_rows):
        # Python values a batch at a time: the driver needs them, memory stays one batch
        rows = zip(*(column[start : start + batch_rows].tolist() for column in columns))
        if copy:
            with conn.connection.driver_connection.cursor() as cursor, cursor.copy(copy) as out:
                for row in rows:
                    out.write_row((*row, run_id))
        else:
            conn.execute(similarity.insert(), [dict(zip(names, (*row, run_id))) for row in rows])
        done = min(start + batch_rows, total)
        logger.debug("%d of %d rows written to %s of %s", done, total, similarity.name, where)
        if time.monotonic() - last_report >= PROGRESS_SECONDS:
            logger.info("%d of %d rows written to %s of %s (not yet committed)", done, total, similarity.name, where)
            last_report = time.monotonic()


def copies_table(table, id_type=sa.BigInteger):
    """The table the copies are loaded into (``[cms] copies_table``): one row per image in a group
    of copies: copy_group (its number, kept from night to night), image_id, first_seen (the
    date it joined the group), run_id; primary key image_id (an image is in one group at most)."""
    metadata = sa.MetaData()
    copies = sa.Table(
        table,
        metadata,
        sa.Column("copy_group", sa.BigInteger, nullable=False, index=True),
        sa.Column("image_id", id_type, primary_key=True, autoincrement=False),
        sa.Column("first_seen", sa.String(10), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )
    return metadata, copies


def load_copies(engine, rows, run_id, run_date, table, marker_table=MARKER_TABLE, batch_rows=BATCH_ROWS):
    """Replace the rows of the copies table by ``rows`` (copies.csv's: group, image_id,
    first_seen) and record the load, in one transaction: readers see last night's groups whole
    until the commit, tonight's after it. Returns the rows written."""
    ids = rows["image_id"].to_numpy()
    id_type = sa.BigInteger if ids.dtype.kind in "iu" else sa.String(255)
    metadata, copies = copies_table(table, id_type)
    marker = _marker(metadata, marker_table)
    where = shown(engine.url)
    columns = (rows["group"].to_numpy(dtype=np.int64), ids, rows["first_seen"].astype(str).to_numpy())
    try:
        metadata.create_all(engine)  # before the transaction: MariaDB commits around DDL
        with engine.begin() as conn:
            conn.execute(copies.delete())
            _write_rows(conn, copies, columns, run_id, batch_rows, where)
            _record(conn, marker, table, run_id, run_date, len(ids))
    except (SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:
        raise CmsError(
            f"loading [cms] copies_table={table!r} into {where} failed and was rolled back: {_one_line(exc)}"
        ) from None
    logger.info("%d rows of copies (run %s) loaded into %s of %s", len(ids), run_id, table, where)
    return len(ids)


def holds_copies(engine, run_id, n_rows, table, marker_table=MARKER_TABLE):
    """Whether the copies table holds the load of ``run_id``: the marker table's last row for it
    names the run, and ``n_rows`` rows carry it."""
    if loaded_run(engine, table, marker_table) != run_id:
        return False
    rows = sa.table(table, sa.column("run_id"))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                return False
            return (
                conn.execute(sa.select(sa.func.count()).select_from(rows).where(rows.c.run_id == run_id)).scalar()
                == n_rows
            )
    except SQLAlchemyError as exc:
        raise CmsError(
            f"[cms] copies_table={table!r} cannot be read from {shown(engine.url)}: {_one_line(exc)}"
        ) from None


def load_siblings(
    engine,
    ids,
    neighbours,
    run_id,
    run_date,
    images_table="images",
    id_column="id",
    siblings_column="siblings",
    marker_table=MARKER_TABLE,
    batch_rows=BATCH_ROWS,
    changed=None,
    removed=(),
):
    """The original CMS's shape: each image's neighbour IDs as a JSON array, nearest first, in
    a column of the images table; one transaction, with the marker row, as :func:`load_similarities`.

    Images of the table that this run has no neighbours for get NULL. The column must exist
    (a JSON or text column): the pipeline does not change the CMS's own tables' schema.
    With ``changed`` (and ``removed``), as :func:`load_similarities`: only the changed images'
    siblings are written and the removed images' set to NULL.

    Returns
    -------
    n_images : int
        Images whose siblings were written.
    """
    ids, neighbours = np.asarray(ids), np.asarray(neighbours)
    metadata = sa.MetaData()
    marker = _marker(metadata, marker_table)
    where, source = shown(engine.url), f"[cms] siblings_column={siblings_column!r}"
    images = sa.table(images_table, sa.column(id_column), sa.column(siblings_column))
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns(images_table)}
        if siblings_column not in columns or id_column not in columns:
            missing = siblings_column if siblings_column not in columns else id_column
            raise CmsError(
                f"{source}: {missing!r} is not a column of [cms] images_table={images_table!r} in {where}; "
                "add it (siblings: a JSON or text column) or set [cms] mode = table"
            )
        metadata.create_all(engine)
        update = (
            images.update()
            .where(images.c[id_column] == sa.bindparam("b_id"))
            .values({siblings_column: sa.bindparam("b_siblings")})
        )
        chosen = np.ones(len(ids), dtype=bool) if changed is None else np.asarray(changed, dtype=bool)
        ids, neighbours = ids[chosen], neighbours[chosen]
        with engine.begin() as conn:
            if changed is None:
                conn.execute(images.update().values({siblings_column: None}))
            else:
                gone = list(np.asarray(removed).tolist())
                for start in range(0, len(gone), batch_rows):
                    part = gone[start : start + batch_rows]
                    conn.execute(images.update().where(images.c[id_column].in_(part)).values({siblings_column: None}))
            for start in range(0, len(ids), batch_rows):
                part = slice(start, start + batch_rows)
                conn.execute(
                    update,
                    [
                        {"b_id": i, "b_siblings": json.dumps(n)}
                        for i, n in zip(ids[part].tolist(), neighbours[part].tolist())
                    ],
                )
            _record(conn, marker, siblings_target(images_table, siblings_column), run_id, run_date, len(ids))
    except sa.exc.NoSuchTableError:
        raise CmsError(f"[cms] images_table={images_table!r} does not exist in {where}") from None
    except SQLAlchemyError as exc:
        raise CmsError(f"loading {source} into {where} failed and was rolled back: {_one_line(exc)}") from None
    logger.info(
        "siblings of %d images (run %s) written to %s.%s of %s in %.1f s",
        len(ids),
        run_id,
        images_table,
        siblings_column,
        where,
        time.monotonic() - started,
    )
    return len(ids)
