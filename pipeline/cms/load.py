"""The loads into the CMS, each in one transaction with its marker row (Luigi's marker-table
pattern), and the probes that tell whether the database still holds a load.

Everything goes through SQLAlchemy, so SQLite, PostgreSQL and MariaDB/MySQL take the same
code; only the bulk write differs (COPY on PostgreSQL, batched executemany elsewhere).
"""

import datetime
import json
import logging
import time

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ..errors import CmsError, named
from .schema import BATCH_ROWS, MARKER_TABLE, TABLE, copies_table, marker_of, siblings_target, similarity_tables
from .url import one_line, shown

logger = logging.getLogger(__name__)

#: Seconds between two progress lines of a load.
PROGRESS_SECONDS = 10.0


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


def loaded_run(engine, table=TABLE, marker_table=MARKER_TABLE):
    """The run_id of the last load into ``table`` (or :func:`siblings_target`), or None when none is recorded."""
    marker = marker_of(sa.MetaData(), marker_table)
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
            f"{named('marker_table')}={marker_table!r} cannot be read from {shown(engine.url)}: {one_line(exc)}"
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
        raise CmsError(
            f"{named('table')}={rows.name!r} cannot be read from {shown(engine.url)}: {one_line(exc)}"
        ) from None
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
            f"loading {named('table')}={table!r} into {where} failed and was rolled back: {one_line(exc)}"
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


def load_copies(engine, rows, run_id, run_date, table, marker_table=MARKER_TABLE, batch_rows=BATCH_ROWS):
    """Replace the rows of the copies table by ``rows`` (copies.csv's: group, image_id,
    first_seen) and record the load, in one transaction: readers see last night's groups whole
    until the commit, tonight's after it. Returns the rows written."""
    ids = rows["image_id"].to_numpy()
    id_type = sa.BigInteger if ids.dtype.kind in "iu" else sa.String(255)
    metadata, copies = copies_table(table, id_type)
    marker = marker_of(metadata, marker_table)
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
            f"loading {named('copies_table')}={table!r} into {where} failed and was rolled back: {one_line(exc)}"
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
            f"{named('copies_table')}={table!r} cannot be read from {shown(engine.url)}: {one_line(exc)}"
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
    marker = marker_of(metadata, marker_table)
    where, source = shown(engine.url), f"{named('siblings_column')}={siblings_column!r}"
    images = sa.table(images_table, sa.column(id_column), sa.column(siblings_column))
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns(images_table)}
        if siblings_column not in columns or id_column not in columns:
            missing = siblings_column if siblings_column not in columns else id_column
            raise CmsError(
                f"{source}: {missing!r} is not a column of {named('images_table')}={images_table!r} in {where}; "
                f"add it (siblings: a JSON or text column) or set {named('mode')} = table"
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
        raise CmsError(f"{named('images_table')}={images_table!r} does not exist in {where}") from None
    except SQLAlchemyError as exc:
        raise CmsError(f"loading {source} into {where} failed and was rolled back: {one_line(exc)}") from None
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
