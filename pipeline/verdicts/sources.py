"""Where the verdicts are kept: the CMS's table or a CSV file, read and written (by the verdict
command) under the rule of :mod:`pipeline.verdicts`."""

import csv
import datetime
import fcntl
import logging
import os

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ..errors import CmsError, ConfigError, named
from ..h5io import atomic_path
from ..settings import Verdicts

logger = logging.getLogger(__name__)

#: Default name of the verdict table; its columns, ``author`` optional.
TABLE = Verdicts.table
COLUMNS = ("image_id", "similar_image_id", "verdict", "verdict_time", "author")
REQUIRED = COLUMNS[:4]


def verdict_table(name=TABLE, id_type=sa.BigInteger, metadata=None):
    """The verdict table the pipeline creates: one row per verdict, ``verdict_time`` set by the
    database when a writer leaves it out, and a key of its own for the CMS's tools."""
    return sa.Table(
        name,
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("verdict_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", id_type, nullable=False),
        sa.Column("similar_image_id", id_type, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("verdict_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("author", sa.String(255), nullable=True),
    )


def id_type_of(ids):
    """The column type of database IDs like ``ids``: BigInteger for integers, else String(255)."""
    return sa.BigInteger if np.asarray(ids).dtype.kind in "iu" else sa.String(255)


def _one_line(exc):
    error = getattr(exc, "orig", None) or exc
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _where(engine, table):
    return f"{named('verdicts_table')}={table!r} of {engine.url.render_as_string(hide_password=True)}"


def ensure_table(engine, table=TABLE, id_type=sa.BigInteger):
    """Create the verdict table when it is missing; returns whether it was created."""
    try:
        with engine.connect() as conn:
            if sa.inspect(conn).has_table(table):
                return False
        verdict_table(table, id_type).create(engine, checkfirst=True)
    except SQLAlchemyError as exc:
        raise CmsError(f"{_where(engine, table)} cannot be created: {_one_line(exc)}") from None
    logger.info("%s did not exist: created, empty", _where(engine, table))
    return True


def read_table(engine, table=TABLE):
    """The rows of the verdict table as a DataFrame of COLUMNS (``author`` empty when the table has
    none) and ``where`` (how a row is named in a message).

    Raises
    ------
    CmsError
        When the table cannot be read or lacks a required column.
    """
    try:
        with engine.connect() as conn:
            present = {c["name"] for c in sa.inspect(conn).get_columns(table)}
            missing = [c for c in REQUIRED if c not in present]
            if missing:
                raise CmsError(
                    f"{_where(engine, table)} has no column {missing[0]!r}; its columns must be "
                    f"{', '.join(REQUIRED)} (and optionally author)"
                )
            chosen = [c for c in COLUMNS if c in present]
            rows = conn.execute(sa.select(*(sa.column(c) for c in chosen)).select_from(sa.table(table))).fetchall()
    except SQLAlchemyError as exc:
        raise CmsError(f"{_where(engine, table)} cannot be read: {_one_line(exc)}") from None
    frame = pd.DataFrame(rows, columns=chosen, dtype=object)
    if "author" not in frame:
        frame["author"] = None
    frame["where"] = "row"
    return frame


def count_rows(engine, table=TABLE):
    """How many rows the verdict table holds: 0 when it does not exist.

    Raises
    ------
    CmsError
        When the database cannot be read.
    """
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                return 0
            return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one())
    except SQLAlchemyError as exc:
        raise CmsError(f"{_where(engine, table)} cannot be read: {_one_line(exc)}") from None


def vanished(where, rows_before, where_before):
    """The line that stops a night whose verdict source (``where``) holds no rows, where the last
    run read ``rows_before`` from ``where_before``: a file on a volume that did not mount, or an
    emptied table, would otherwise bring back every pair judged wrong."""
    return (
        f"{where} holds no verdicts, where the last run read {rows_before:,} rows from {where_before}; the lists and "
        f"the CMS are left as they were: mount or restore the verdicts and run again, or, if every verdict was "
        f"withdrawn on purpose, run once with {named('allow_empty')}"
    )


def read_csv(path):
    """The rows of a verdict CSV file (header: COLUMNS, ``author`` optional) as :func:`read_table`
    gives them, each named by its line; a missing file holds no verdicts.

    Raises
    ------
    ConfigError
        When the file cannot be read or lacks a required column.
    """
    where = f"{named('verdicts_csv')}={str(path)!r}"
    if not os.path.exists(path):
        logger.info("%s does not exist yet: no verdicts", where)
        return no_rows()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:  # an empty file
                return no_rows()
            header = [c.strip() for c in reader.fieldnames]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise ConfigError(f"{where} has no column {missing[0]!r}; its header must be {','.join(COLUMNS)}")
            rows = [
                {**{k.strip(): v for k, v in row.items() if k is not None}, "where": f"line {reader.line_num}"}
                for row in reader
            ]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "where"], dtype=object)
    return frame


def no_rows():
    """No verdict rows, as :func:`read_table` gives them."""
    return pd.DataFrame(columns=[*COLUMNS, "where"], dtype=object)


def _now():
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def add_to_table(engine, table, image_id, similar_image_id, verdict, author=None, id_type=sa.BigInteger, time=None):
    """Write one verdict into the verdict table (created when missing)."""
    ensure_table(engine, table, id_type)
    time = time or _now()
    if engine.dialect.name != "postgresql":  # DATETIME without a zone: UTC, as the pipeline reads it
        time = time.astimezone(datetime.UTC).replace(tzinfo=None)
    rows = sa.table(table, *(sa.column(c) for c in COLUMNS))
    values = dict(
        image_id=image_id, similar_image_id=similar_image_id, verdict=verdict, verdict_time=time, author=author
    )
    try:
        with engine.begin() as conn:
            has_author = "author" in {c["name"] for c in sa.inspect(conn).get_columns(table)}
            if not has_author:
                values.pop("author")
            conn.execute(rows.insert().values(**values))
    except SQLAlchemyError as exc:
        raise CmsError(f"{_where(engine, table)}: the verdict cannot be written: {_one_line(exc)}") from None


def withdraw_from_table(engine, table, image_id, similar_image_id):
    """Delete every verdict on the pair, in both directions; returns how many rows went."""
    rows = sa.table(table, sa.column("image_id"), sa.column("similar_image_id"))
    pair = sa.or_(
        sa.and_(rows.c.image_id == image_id, rows.c.similar_image_id == similar_image_id),
        sa.and_(rows.c.image_id == similar_image_id, rows.c.similar_image_id == image_id),
    )
    try:
        with engine.begin() as conn:
            if not sa.inspect(conn).has_table(table):
                return 0
            return conn.execute(rows.delete().where(pair)).rowcount
    except SQLAlchemyError as exc:
        raise CmsError(f"{_where(engine, table)}: the verdicts cannot be withdrawn: {_one_line(exc)}") from None


def add_to_csv(path, image_id, similar_image_id, verdict, author=None, time=None):
    """Append one verdict to the verdict CSV file (created with its header when missing); writers
    take turns on a lock of the file."""
    time = (time or _now()).astimezone(datetime.UTC).isoformat()
    with open(path, "a+", newline="", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0, os.SEEK_END)
        writer = csv.writer(f)
        if f.tell() == 0:
            writer.writerow(COLUMNS)
        writer.writerow([image_id, similar_image_id, verdict, time, author or ""])


def withdraw_from_csv(path, image_id, similar_image_id):
    """Remove every verdict on the pair from the CSV file, in both directions (the file is
    rewritten whole, atomically); returns how many rows went."""
    if not os.path.exists(path):
        return 0
    pair = {str(image_id), str(similar_image_id)}
    with open(path, "r+", newline="", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = list(csv.reader(f))
        header, body = (lines[0], lines[1:]) if lines else ([], [])
        columns = [c.strip() for c in header]
        a, b = columns.index("image_id"), columns.index("similar_image_id")
        kept = [row for row in body if len(row) <= max(a, b) or {row[a].strip(), row[b].strip()} != pair]
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as out:
                csv.writer(out).writerows([header, *kept])
            os.chmod(tmp, os.stat(path).st_mode & 0o777)
    return len(body) - len(kept)
