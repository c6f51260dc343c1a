"""The ID mapping read from the CMS: its images table's columns, or a query's rows."""

import logging

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ..collection import MAPPING_COLUMNS, check_mapping
from ..errors import MappingError, named
from .url import one_line, shown

logger = logging.getLogger(__name__)


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
        statement, source = sa.text(query), named("ids_query")
        fix = "the query must return the columns id, ppn and filename"
    else:
        columns, names = (id_column, ppn_column, filename_column), MAPPING_COLUMNS
        if record_column.strip():
            columns, names = (*columns, record_column.strip()), (*names, "record")
        statement = sa.select(*(sa.column(c).label(name) for c, name in zip(columns, names)))
        statement = statement.select_from(sa.table(table))
        source = f"{named('images_table')}={table!r}"
        fix = f"set {named('id_column')}, {named('ppn_column')}, {named('filename_column')} (and {named('record_column')}) to its columns"
    try:
        with engine.connect() as conn:
            result = conn.execute(statement)
            frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()), dtype=object)
    except SQLAlchemyError as exc:
        raise MappingError(f"{source} cannot be read from {shown(engine.url)}: {one_line(exc)}") from None
    logger.info("%d rows of the ID mapping read from %s", len(frame), shown(engine.url))
    return check_mapping(frame, source, fix, "row")
