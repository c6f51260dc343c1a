import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline import cms
from pipeline.errors import CmsError, ConfigError, MappingError


def similarities(n=40, k=5, seed=0, ids=None):
    """A result as LoadSimilarities passes it: IDs, neighbour IDs (n, k), distances (n, k)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1, dtype=np.int64) * 10 if ids is None else ids
    neighbours = ids[rng.integers(0, n, size=(n, k))]
    return ids, neighbours, np.sort(rng.random((n, k)), axis=1)


def expected_rows(result, run_id):
    ids, neighbours, distances = result
    n, k = neighbours.shape
    return sorted(
        (
            int(ids[i]) if ids.dtype.kind == "i" else str(ids[i]),
            r + 1,
            int(neighbours[i, r]) if ids.dtype.kind == "i" else str(neighbours[i, r]),
            float(distances[i, r]),
            run_id,
        )
        for i in range(n)
        for r in range(k)
    )


# -- the URL ------------------------------------------------------------------------------


def test_url_from_an_environment_variable(monkeypatch):
    monkeypatch.setenv("CMS_URL", "postgresql+psycopg://cms:s3cret@db.example/cms")
    url = cms.resolve_url("env:CMS_URL")
    assert url.password == "s3cret" and "s3cret" not in cms.shown(url)


def test_url_from_a_credentials_file(tmp_path):
    path = tmp_path / "cms.url"
    path.write_text("\n  mysql+pymysql://cms:s3cret@db.example/cms  \n")
    url = cms.resolve_url(f"file:{path}")
    assert url.username == "cms" and url.password == "s3cret"


@pytest.mark.parametrize(
    "setting, message",
    [
        ("postgresql+psycopg://cms:s3cret@db.example/cms", "holds a password"),
        ("env:CMS_NOT_SET", "CMS_NOT_SET is not set"),
        ("file:/nonexistent/cms.url", "cannot be read"),
        ("not a url", "not an SQLAlchemy URL"),
        ("", "is empty"),
    ],
)
def test_bad_urls_are_one_line_errors_that_never_show_a_password(setting, message, monkeypatch):
    monkeypatch.delenv("CMS_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=message) as info:
        cms.resolve_url(setting)
    assert "\n" not in str(info.value) and "s3cret" not in str(info.value) and "[cms] url" in str(info.value)


def test_a_password_in_an_unparsable_url_from_the_environment_is_not_shown(monkeypatch):
    monkeypatch.setenv("CMS_URL", "s3cret garbage")
    with pytest.raises(ConfigError) as info:
        cms.resolve_url("env:CMS_URL")
    assert "s3cret" not in str(info.value)


# -- the ID mapping -----------------------------------------------------------------------


def make_images(db, rows, columns=("id", "ppn", "filename")):
    with db.engine.begin() as conn:
        table = sa.Table(
            db.images,
            sa.MetaData(),
            sa.Column(columns[0], sa.BigInteger),
            sa.Column(columns[1], sa.String(64)),
            sa.Column(columns[2], sa.String(255)),
            *(sa.Column(c, sa.String(64)) for c in columns[3:]),
        )
        table.create(conn)
        if rows:
            conn.execute(table.insert(), [dict(zip(columns, row)) for row in rows])


def test_mapping_read_from_a_table(database):
    make_images(database, [(7, "PPN1", "a.jpg"), (8, " 2", "b.jpg")], columns=("image_id", "record", "file"))
    mapping = cms.read_mapping(database.engine, database.images, "image_id", "record", "file")
    assert mapping.to_dict("records") == [
        {"id": "7", "ppn": "1", "filename": "a.jpg", "record": "PPN1"},
        {"id": "8", "ppn": "2", "filename": "b.jpg", "record": "PPN2"},
    ]


def test_the_catalogue_record_is_read_from_a_column_when_one_is_named(database):
    rows = [(7, "PPN1", "a.jpg", "work-3"), (8, "2", "b.jpg", None)]
    make_images(database, rows, columns=("id", "ppn", "filename", "work"))
    mapping = cms.read_mapping(database.engine, database.images, record_column="work")
    assert mapping["record"].tolist() == ["work-3", "PPN2"]  # NULL: the PPN


def test_mapping_read_from_a_query(database):
    make_images(database, [(7, "PPN1", "a.jpg"), (8, "PPN2", "b.jpg")])
    query = f"SELECT id, ppn, filename FROM {database.images} WHERE id > 7"
    assert cms.read_mapping(database.engine, query=query)["id"].tolist() == ["8"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([(7, "PPN1", "a.jpg"), (8, None, "b.jpg")], r"empty or NULL values on row\(s\) 2"),
        ([(7, "PPN1", "a.jpg"), (7, "PPN2", "b.jpg")], "repeats the same ID on rows 1, 2"),
        ([(7, "PPN1", "a.jpg"), (8, "1", "a.jpg")], r"repeats the same \(ppn, filename\) pair on rows 1, 2"),
    ],
)
def test_bad_mapping_rows_are_one_line_errors(database, rows, message):
    make_images(database, rows)
    with pytest.raises(MappingError, match=message) as info:
        cms.read_mapping(database.engine, database.images)
    assert "\n" not in str(info.value)


def test_a_missing_column_names_the_setting(database):
    make_images(database, [(7, "PPN1", "a.jpg")])
    with pytest.raises(MappingError, match=r"\[cms\] images_table=.*cannot be read") as info:
        cms.read_mapping(database.engine, database.images, filename_column="file_name")
    assert "\n" not in str(info.value)
    with pytest.raises(MappingError, match="lacks the column"):
        cms.read_mapping(database.engine, query=f"SELECT id, ppn FROM {database.images}")


# -- the load -----------------------------------------------------------------------------


def test_load_creates_the_tables_and_records_the_run(database):
    result = similarities()
    assert database.loaded() is None
    assert database.load(result, "run-1") == 200
    assert database.rows() == expected_rows(result, "run-1")
    assert database.loaded() == "run-1"


def test_a_new_run_replaces_the_whole_set(database):
    database.load(similarities(n=40, seed=0), "run-1")
    second = similarities(n=30, seed=1)
    database.load(second, "run-2", batch_rows=7)
    assert database.rows() == expected_rows(second, "run-2")
    assert database.loaded() == "run-2"


def test_a_load_is_held_only_while_its_table_holds_its_rows(database):
    result = similarities(n=40)
    assert not cms.holds_load(database.engine, "run-1", result[0], database.table, database.marker)
    database.load(result, "run-1")
    assert cms.holds_load(database.engine, "run-1", result[0], database.table, database.marker)
    assert not cms.holds_load(database.engine, "run-2", result[0], database.table, database.marker)
    quoted = database.engine.dialect.identifier_preparer.quote(database.table)
    for change in (
        f"DELETE FROM {quoted}",
        f"DROP TABLE {quoted}",
        f"UPDATE {quoted} SET run_id = 'run-0'",
        f"DELETE FROM {quoted} WHERE image_id = 400",
    ):
        with database.engine.begin() as conn:
            conn.execute(sa.text(change))
        assert not cms.holds_load(database.engine, "run-1", result[0], database.table, database.marker), change
        database.load(result, "run-1")
        assert cms.holds_load(database.engine, "run-1", result[0], database.table, database.marker)


def test_sampled_ids_spread_over_the_load():
    assert cms.sampled_ids(np.arange(100), n=4) == [0, 33, 66, 99]
    assert cms.sampled_ids(np.array(["a", "b"]), n=16) == ["a", "b"] and cms.sampled_ids([], n=4) == []


def test_string_ids_are_loaded_as_strings(database):
    ids = np.array([f"img-{i:03d}" for i in range(12)])
    result = similarities(n=12, ids=ids)
    database.load(result, "run-1")
    assert database.rows() == expected_rows(result, "run-1")


def test_a_failed_load_leaves_the_previous_set(database, monkeypatch):
    first = similarities(seed=0)
    database.load(first, "run-1")
    # the second load fails half-way: NULL neighbour IDs from the 101st row on
    ids, neighbours, distances = similarities(seed=1)
    neighbours = neighbours.astype(object)
    neighbours[20:] = None
    broken = ids, neighbours, distances
    with pytest.raises(CmsError, match="rolled back") as info:
        database.load(broken, "run-2", batch_rows=50)
    assert "\n" not in str(info.value)
    assert database.rows() == expected_rows(first, "run-1")
    assert database.loaded() == "run-1"


def test_readers_during_a_load_see_one_complete_set(database):
    first = similarities(n=400, seed=0)
    database.load(first, "run-1")
    seen, stop = [], threading.Event()

    def read():
        reader = cms.connect(cms.resolve_url(database.url))
        query = sa.text(f"SELECT COUNT(*), COUNT(DISTINCT run_id), MIN(run_id) FROM {database.table}")
        while not stop.is_set():
            with reader.connect() as conn:
                seen.append(tuple(conn.execute(query).one()))
        reader.dispose()

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for run in range(2, 6):
            database.load(similarities(n=400, seed=run), f"run-{run}", batch_rows=100)
    finally:
        stop.set()
        thread.join()
    assert seen and set(seen) <= {(2000, 1, f"run-{run}") for run in range(1, 6)}


def next_night(result, seed, removed=3, changed=5, added=4):
    """The next run's result: ``removed`` images gone, ``changed`` with another list, ``added`` new.
    Returns (result, changed mask, removed IDs)."""
    ids, neighbours, distances = result
    rng = np.random.default_rng(seed)
    gone = rng.choice(len(ids), size=removed, replace=False)
    keep = np.setdiff1d(np.arange(len(ids)), gone)
    fresh = ids.max() + 1 + np.arange(added)
    new_ids = np.concatenate([ids[keep], fresh])
    new_neighbours = np.concatenate([neighbours[keep], new_ids[rng.integers(0, len(new_ids), size=(added, 5))]])
    new_distances = np.concatenate([distances[keep], np.sort(rng.random((added, 5)), axis=1)])
    other = rng.choice(len(keep), size=changed, replace=False)
    new_neighbours[other] = new_ids[rng.integers(0, len(new_ids), size=(changed, 5))]
    mask = np.zeros(len(new_ids), dtype=bool)
    mask[other], mask[len(keep) :] = True, True
    return (new_ids, new_neighbours, new_distances), mask, ids[gone]


def test_an_incremental_load_writes_only_the_changed_rows(database):
    first = similarities(n=40, seed=0)
    database.load(first, "run-1")
    second, changed, removed = next_night(first, 1)
    written = database.load(second, "run-2", changed=changed, removed=removed, batch_rows=4)
    assert written == changed.sum() * 5 == 45
    ids = second[0]
    expected = [
        (*row[:4], "run-2" if row[0] in set(ids[changed].tolist()) else "run-1") for row in expected_rows(second, "")
    ]
    assert database.rows() == sorted(expected)
    assert database.loaded() == "run-2"
    holds = lambda **kw: cms.holds_load(database.engine, "run-2", ids, database.table, database.marker, **kw)  # noqa: E731
    assert holds(written=ids[changed]) and not holds()  # the unchanged rows keep run-1


def test_the_load_plan_writes_only_the_changed_rows_where_the_table_holds_their_base(database):
    destination = cms.Destination(table=database.table, marker_table=database.marker)
    first = similarities(n=40, seed=0)
    as_read = lambda result, **more: dict(zip(("ids", "neighbours", "distances"), result), attrs={}, **more)  # noqa: E731
    assert cms.load_lists(database.engine, destination, as_read(first), "run-1", "2026-11-23").why_whole == (
        "no earlier run to compare with"
    )
    second, changed, removed = next_night(first, 1)
    night = as_read(second, changed=changed, removed=removed)
    night["attrs"]["earlier_digest"] = "run-0"  # not what the table holds: every row
    plan = cms.plan_load(database.engine, destination, night)
    assert (
        plan.changed is None and plan.why_whole == f"{database.table} does not hold the load of the earlier run run-0"
    )
    assert cms.plan_load(database.engine, destination, night, share=0.1).why_whole == "22% of the images changed"
    night["attrs"]["earlier_digest"] = "run-1"
    plan = cms.load_lists(database.engine, destination, night, "run-2", "2026-11-24")
    assert plan.why_whole is None and plan.changed is changed and list(plan.removed) == list(removed)
    ids = second[0]
    assert database.rows() == sorted(
        (*row[:4], "run-2" if row[0] in set(ids[changed].tolist()) else "run-1") for row in expected_rows(second, "")
    )
    assert destination.holds(database.engine, "run-2", ids, written=ids[changed])


def test_readers_during_an_incremental_load_see_one_complete_set(database):
    result = similarities(n=400, seed=0)
    database.load(result, "run-1")
    sets = {frozenset((r[0], r[1], r[2]) for r in expected_rows(result, ""))}
    nights = []
    for night in range(2, 6):
        result, changed, removed = next_night(result, night, removed=30, changed=60, added=30)
        sets.add(frozenset((r[0], r[1], r[2]) for r in expected_rows(result, "")))
        nights.append((result, changed, removed))
    seen, stop = [], threading.Event()

    def read():
        reader = cms.connect(cms.resolve_url(database.url))
        query = sa.text(
            f"SELECT image_id, {reader.dialect.identifier_preparer.quote('rank')}, similar_image_id FROM {database.table}"
        )
        while not stop.is_set():
            with reader.connect() as conn:
                seen.append(frozenset(tuple(r) for r in conn.execute(query)))
        reader.dispose()

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for night, (result, changed, removed) in enumerate(nights, start=2):
            database.load(result, f"run-{night}", changed=changed, removed=removed, batch_rows=20)
    finally:
        stop.set()
        thread.join()
    assert seen and all(s in sets for s in seen)


LOADER = """
import logging, sys
import numpy as np
from pipeline import cms
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(message)s")
n = int(sys.argv[5])
ids = np.arange(1, n + 1, dtype=np.int64)
neighbours = ids[np.random.default_rng(3).integers(0, n, size=(n, 5))]
engine = cms.connect(cms.resolve_url(sys.argv[1]))
cms.load_similarities(engine, ids, neighbours, np.ones((n, 5)), sys.argv[4], "2026-11-24", sys.argv[2], sys.argv[3], batch_rows=500)
"""


def run_loader(database, run_id, n):
    args = [sys.executable, "-c", LOADER, database.url, database.table, database.marker, run_id, str(n)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_load_leaves_the_previous_set_and_a_rerun_completes_it(database):
    first = similarities(seed=0)
    database.load(first, "run-1")
    loader = run_loader(database, "run-2", 40_000)
    for line in loader.stdout:
        if "rows written to" in line and not line.startswith("500 of"):
            break  # some batches written, not committed
    else:
        pytest.fail(f"the loader ended before writing: exit {loader.wait()}")
    loader.send_signal(signal.SIGKILL)
    loader.wait()
    deadline = time.monotonic() + 30  # a server notices the dropped connection and rolls back
    while True:
        try:
            assert database.rows() == expected_rows(first, "run-1")
            break
        except sa.exc.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert database.loaded() == "run-1"
    rerun = run_loader(database, "run-2", 40_000)
    output = rerun.communicate()[0]
    assert rerun.returncode == 0, output
    assert database.loaded() == "run-2"
    with database.engine.connect() as conn:
        count = conn.execute(sa.text(f"SELECT COUNT(*), MIN(run_id), MAX(run_id) FROM {database.table}")).one()
    assert tuple(count) == (200_000, "run-2", "run-2")


# -- the siblings mode --------------------------------------------------------------------


def siblings(database):
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, siblings FROM {database.images} ORDER BY id")).all()
    return [(image_id, None if value is None else json.loads(value)) for image_id, value in rows]


def add_siblings_column(database):
    with database.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {database.images} ADD COLUMN siblings TEXT"))


def load_siblings(database, result, run_id, **kwargs):
    ids, neighbours, _ = result
    return cms.load_siblings(
        database.engine, ids, neighbours, run_id, "2026-11-23", database.images, marker_table=database.marker, **kwargs
    )


def test_siblings_are_written_as_json_arrays_and_others_cleared(database):
    make_images(database, [(i, "PPN1", f"{i}.jpg") for i in (10, 20, 30, 40, 99)])
    add_siblings_column(database)
    first = (np.array([10, 20, 30, 40, 99]), np.array([[20, 30], [10, 30], [20, 10], [30, 20], [10, 20]]), None)
    load_siblings(database, first, "run-1")
    second = (np.array([10, 20, 30, 40]), np.array([[40, 30], [10, 40], [40, 10], [30, 20]]), None)
    assert load_siblings(database, second, "run-2", batch_rows=3) == 4
    assert siblings(database) == [(10, [40, 30]), (20, [10, 40]), (30, [40, 10]), (40, [30, 20]), (99, None)]
    assert cms.loaded_run(database.engine, cms.siblings_target(database.images, "siblings"), database.marker) == "run-2"


def test_an_incremental_siblings_load_writes_only_the_changed_images(database):
    make_images(database, [(i, "PPN1", f"{i}.jpg") for i in (10, 20, 30, 40, 99)])
    add_siblings_column(database)
    first = (np.array([10, 20, 30, 40, 99]), np.array([[20, 30], [10, 30], [20, 10], [30, 20], [10, 20]]), None)
    load_siblings(database, first, "run-1")
    with database.engine.begin() as conn:  # what an incremental load must leave alone
        conn.execute(sa.text(f"UPDATE {database.images} SET siblings = '[1, 2]' WHERE id = 40"))
    # 99 is gone, 10 has another list
    second = (np.array([10, 20, 30, 40]), np.array([[40, 30], [10, 30], [20, 10], [30, 20]]), None)
    changed = np.array([True, False, False, False])
    assert load_siblings(database, second, "run-2", changed=changed, removed=np.array([99])) == 1
    assert siblings(database) == [(10, [40, 30]), (20, [10, 30]), (30, [20, 10]), (40, [1, 2]), (99, None)]


def test_siblings_cleared_outside_the_pipeline_are_no_longer_held(database):
    make_images(database, [(i, "PPN1", f"{i}.jpg") for i in (10, 20, 30)])
    add_siblings_column(database)
    result = (np.array([10, 20, 30]), np.array([[20, 30], [10, 30], [20, 10]]), None)
    load_siblings(database, result, "run-1")
    target = (database.images, "id", "siblings")
    assert cms.holds_load(database.engine, "run-1", result[0], marker_table=database.marker, siblings=target)
    with database.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {database.images} SET siblings = NULL"))
    assert not cms.holds_load(database.engine, "run-1", result[0], marker_table=database.marker, siblings=target)


def test_siblings_need_their_column(database):
    make_images(database, [(10, "PPN1", "a.jpg")])
    with pytest.raises(CmsError, match=r"'siblings' is not a column of \[cms\] images_table.*mode = table"):
        load_siblings(database, (np.array([10]), np.array([[10]]), None), "run-1")


def copies_rows(groups, date="2026-11-23"):
    import pandas as pd

    rows = [(g, i, date) for g, members in groups.items() for i in members]
    return pd.DataFrame(rows, columns=["group", "image_id", "first_seen"]).astype({"image_id": np.int64})


def test_copies_are_replaced_whole_and_a_failed_load_keeps_the_previous_groups(database):
    table = database.table
    assert (
        cms.load_copies(
            database.engine, copies_rows({1: [10, 11], 2: [20, 21, 22]}), "c-1", "2026-11-23", table, database.marker
        )
        == 5
    )
    assert cms.holds_copies(database.engine, "c-1", 5, table, database.marker)
    second = copies_rows({1: [10, 11, 12], 3: [30, 31]}, "2026-11-24")
    cms.load_copies(database.engine, second, "c-2", "2026-11-24", table, database.marker)
    copies = sa.table(
        table, sa.column("copy_group"), sa.column("image_id"), sa.column("first_seen"), sa.column("run_id")
    )
    with database.engine.connect() as conn:
        rows = sorted(tuple(r) for r in conn.execute(sa.select(copies)))
    assert rows == [
        (1, 10, "2026-11-24", "c-2"),
        (1, 11, "2026-11-24", "c-2"),
        (1, 12, "2026-11-24", "c-2"),
        (3, 30, "2026-11-24", "c-2"),
        (3, 31, "2026-11-24", "c-2"),
    ]
    assert not cms.holds_copies(database.engine, "c-1", 5, table, database.marker)
    # an image in two groups breaks the primary key: rolled back, the groups of c-2 stay whole
    with pytest.raises(CmsError, match=f"loading \\[cms\\] copies_table='{table}' into .* failed and was rolled back"):
        cms.load_copies(
            database.engine, copies_rows({4: [40, 41], 5: [41]}), "c-3", "2026-11-25", table, database.marker
        )
    assert cms.holds_copies(database.engine, "c-2", 5, table, database.marker)
    with database.engine.begin() as conn:
        conn.execute(copies.delete())  # emptied outside the pipeline: no longer held, loaded again
    assert not cms.holds_copies(database.engine, "c-2", 5, table, database.marker)
