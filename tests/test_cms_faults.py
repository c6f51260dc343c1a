"""Database faults during the CMS load, on servers of the tests' own (``tests.servers``): a
connection killed in the middle of the load, and a server that is down when the load starts.
The load rolls back, readers see the previous lists whole, and the next night loads every list
that changed since the last load that succeeded."""

import datetime
import json
import shutil

import luigi
import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.cms import load as cms_load
from pipeline.output import read_similarities
from tasks import Nightly

from .conftest import luigi_config, pipeline_config
from .runs import change_collection
from .servers import SERVERS

Status = luigi.execution_summary.LuigiStatusCode
NIGHTS = [datetime.date(2026, 6, d) for d in range(1, 6)]


@pytest.fixture(params=[pytest.param(kind, marks=pytest.mark.slow) for kind in SERVERS])
def server(request):
    own = SERVERS[request.param]()
    yield own
    own.close()


def night(monkeypatch, root, server, date):
    config = pipeline_config(root, cms__url=server.url, cms__batch_rows=20)
    with luigi_config(monkeypatch, config):
        return luigi.build([Nightly(date=date)], local_scheduler=True, detailed_summary=True, workers=1)


def table_rows(server):
    engine = sa.create_engine(server.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT image_id, rank, similar_image_id, distance FROM image_similarity ORDER BY 1, 2")
            ).fetchall()
    finally:
        engine.dispose()
    return [(int(i), int(r), int(s), round(float(d), 5)) for i, r, s, d in rows]


def lists_of(root):
    """The rows a complete load of the night's similarities.hdf5 gives."""
    result = read_similarities(root / "artifacts" / "similarities.hdf5")
    return sorted(
        (int(i), rank + 1, int(s), round(float(d), 5))
        for i, row, distances in zip(result["ids"], result["neighbours"], result["distances"])
        for rank, (s, d) in enumerate(zip(row, distances))
    )


def report_of(root, date):
    return json.loads((root / "artifacts" / "runs" / date.isoformat() / "run_report.json").read_text())


def test_a_killed_load_or_a_down_server_rolls_back_and_the_next_night_loads_every_changed_list(
    server, small_collection, tmp_path, monkeypatch
):
    root = tmp_path
    shutil.copytree(small_collection[0], root / "content")
    rng = np.random.default_rng(3)
    assert night(monkeypatch, root, server, NIGHTS[0]).status == Status.SUCCESS
    first = table_rows(server)
    assert first == lists_of(root)

    # the connection killed after the first batch of rows: the load rolls back
    write_rows = cms_load._write_rows

    def killed_midway(conn, similarity, columns, run_id, batch_rows, where):
        write_rows(conn, similarity, [c[:batch_rows] for c in columns], run_id, batch_rows, where)
        server.kill(conn)
        write_rows(conn, similarity, [c[batch_rows:] for c in columns], run_id, batch_rows, where)

    change_collection(root / "content", rng, NIGHTS[1].isoformat())
    with monkeypatch.context() as killing:
        killing.setattr(cms_load, "_write_rows", killed_midway)
        result = night(monkeypatch, root, server, NIGHTS[1])
    assert result.status == Status.FAILED, result.summary_text
    report = report_of(root, NIGHTS[1])
    assert report["status"] == "failed" and report["failed_stage"] == "LoadSimilarities"
    assert "rolled back" in report["error"]
    assert table_rows(server) == first  # readers see the previous lists, whole

    # the next night loads every list changed since the last load that succeeded (the first night's)
    change_collection(root / "content", rng, NIGHTS[2].isoformat())
    assert night(monkeypatch, root, server, NIGHTS[2]).status == Status.SUCCESS
    third = lists_of(root)
    assert table_rows(server) == third

    # the server down when the load starts: the night stops, the table is as it was once it is back
    change_collection(root / "content", rng, NIGHTS[3].isoformat())
    server.stop()
    result = night(monkeypatch, root, server, NIGHTS[3])
    assert result.status == Status.MISSING_EXT, result.summary_text  # exit code 20, before any work
    report = report_of(root, NIGHTS[3])
    assert report["status"] == "failed" and "does not answer" in report["error"]
    server.start()
    assert table_rows(server) == third
    assert night(monkeypatch, root, server, NIGHTS[3]).status == Status.SUCCESS  # the same night again
    assert table_rows(server) == lists_of(root)
