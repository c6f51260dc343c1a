"""The tables the pipeline writes into the CMS: the similarity table, the copies table and the marker table of loads."""

import logging

import sqlalchemy as sa

from ..settings import Cms

logger = logging.getLogger(__name__)
#: Defaults of ``[cms] table``, ``marker_table`` and ``batch_rows``.
TABLE, MARKER_TABLE, BATCH_ROWS = Cms.table, Cms.marker_table, Cms.batch_rows


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
    return metadata, similarity, marker_of(metadata, marker_table)


def marker_of(metadata, marker_table):
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


def siblings_target(images_table, siblings_column):
    """What the marker table calls a load in siblings mode."""
    return f"{images_table}.{siblings_column}"


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
