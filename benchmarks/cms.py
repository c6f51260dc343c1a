"""Loading similarities into the CMS database: rows per second of one transactional load on
each database that answers (SQLite in a temporary file, PostgreSQL and MariaDB on 127.0.0.1).

    python -m benchmarks.cms [--images 100000] [--databases sqlite postgresql mariadb]

The tables are made under names of their own and dropped afterwards.
"""

import argparse
import os
import tempfile
import uuid

import numpy as np
import sqlalchemy as sa

from pipeline import cms

from .common import Timer, add_record_option, recording, report

URLS = {
    "postgresql": os.environ.get("CMS_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("CMS_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


def run(images=100_000, databases=("sqlite", "postgresql", "mariadb"), k=5):
    ids = np.arange(1, images + 1, dtype=np.int64)
    neighbours = ids[np.random.default_rng(0).integers(0, images, size=(images, k))]
    distances = np.sort(np.random.default_rng(1).random((images, k)), axis=1)
    rows, figures = [], {"bench": "cms", "n_images": images, "rows": images * k}
    with tempfile.TemporaryDirectory() as tmp:
        for name in databases:
            url = f"sqlite:///{tmp}/cms.sqlite" if name == "sqlite" else URLS[name]
            engine = cms.connect(cms.resolve_url(url))
            if name != "sqlite" and not cms.reachable(engine):
                rows.append((name, f"no server at {url}"))
                continue
            table, marker = f"bench_sim_{uuid.uuid4().hex[:8]}", f"bench_load_{uuid.uuid4().hex[:8]}"
            try:
                seconds = []
                for run_id in ("first", "second"):  # the second replaces a full table, as every night does
                    with Timer() as t:
                        cms.load_similarities(engine, ids, neighbours, distances, run_id, "2026-01-01", table, marker)
                    seconds.append(t.seconds)
            finally:
                with engine.begin() as conn:
                    for drop in (table, marker):
                        conn.execute(sa.text(f"DROP TABLE IF EXISTS {drop}"))
                engine.dispose()
            figures[f"{name}_seconds"] = round(seconds[1], 1)
            figures[f"{name}_rows_per_s"] = round(images * k / seconds[1])
            rows.append(
                (
                    name,
                    f"{images * k} rows: first load {seconds[0]:.1f} s, replacing load {seconds[1]:.1f} s "
                    f"({images * k / seconds[1]:,.0f} rows/s)",
                )
            )
    report(rows, figures)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql", "mariadb"])
    add_record_option(parser)
    args = parser.parse_args(argv)
    with recording("cms", args, argv):
        run(args.images, tuple(args.databases))


if __name__ == "__main__":
    main()
