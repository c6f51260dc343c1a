"""Curators' verdicts on pairs of images: read from the CMS's table or a CSV file and written by the
verdict command (:mod:`.sources`), checked row by row and scored against the raw lists (:mod:`.judged`).

One rule holds everywhere: a verdict is on the unordered pair of two database IDs, so it holds in
both directions, and of several verdicts on a pair the latest (``verdict_time``; at one time,
``wrong`` before ``right``) is the pair's verdict. A row that cannot be honoured (an unknown ID,
a self-pair, an unknown verdict or time, an image that has gone) is listed with its reason and
never stops a night.
"""

from .judged import (
    VERDICTS,
    BadRow,
    Judgements,
    Verdicts,
    bad_reasons,
    changed_images,
    check_verdicts,
    latest_verdicts,
    load_verdicts,
    night_verdicts,
    save_verdicts,
    verdict_scores,
    verdicts_in_force,
)
from .sources import (
    COLUMNS,
    REQUIRED,
    TABLE,
    add_to_csv,
    add_to_table,
    count_rows,
    ensure_table,
    id_type_of,
    no_rows,
    read_csv,
    read_table,
    vanished,
    verdict_table,
    withdraw_from_csv,
    withdraw_from_table,
)

__all__ = [
    "BadRow",
    "COLUMNS",
    "Judgements",
    "REQUIRED",
    "TABLE",
    "VERDICTS",
    "Verdicts",
    "add_to_csv",
    "add_to_table",
    "bad_reasons",
    "changed_images",
    "check_verdicts",
    "count_rows",
    "ensure_table",
    "id_type_of",
    "load_verdicts",
    "night_verdicts",
    "no_rows",
    "read_csv",
    "read_table",
    "save_verdicts",
    "latest_verdicts",
    "verdict_scores",
    "verdicts_in_force",
    "vanished",
    "verdict_table",
    "withdraw_from_csv",
    "withdraw_from_table",
]
