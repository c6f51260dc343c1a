"""Nights of curators' verdicts through the Luigi tasks: verdicts added, changed, withdrawn and bad,
honoured in similarities.hdf5 and in the CMS, every night equal to a --full search with the same
verdicts, and what the evaluation, the run report and report.html say of them."""

import datetime
import json
import shutil

import luigi
import numpy as np
import pytest
import sqlalchemy as sa

from pipeline import cms, verdicts
from pipeline.collection import load_inventory
from pipeline.output import read_similarities
from tasks import Nightly, Similarities
from tasks.verdict import main as verdict_command

from .conftest import SERVERS, Database, environment_lacks, luigi_config, pipeline_config

DAYS = [datetime.date(2026, 12, d) for d in (1, 2, 3, 4)]


def build(monkeypatch, config, task):
    with luigi_config(monkeypatch, config):
        result = luigi.build([task], local_scheduler=True, detailed_summary=True, workers=1)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    return result


class Site:
    """A site's collection, CMS and verdicts (in the CMS's table, or a CSV file), night after night."""

    def __init__(self, root, content, source, database):
        self.root, self.source, self.db = root, source, database
        root.mkdir()
        (root / "content").symlink_to(content)
        settings = dict(
            cms__url=database.url,
            cms__table=database.table,
            cms__marker_table=database.marker,
            verdicts__table=database.verdicts,
            selfcheck__sample=0,
            report__sample=2,
        )
        if source == "csv":
            settings["verdicts__csv"] = root / "verdicts.csv"
        self.settings = settings
        self.config = pipeline_config(root, **settings)

    def judge(self, a, b, verdict, when):
        """A verdict written as the CMS or a curator's script would, at ``when``."""
        time = datetime.datetime.combine(when, datetime.time(15, 30), datetime.UTC)
        if self.source == "csv":
            verdicts.add_to_csv(self.root / "verdicts.csv", a, b, verdict, "curator", time=time)
        else:
            verdicts.add_to_table(self.db.engine, self.db.verdicts, a, b, verdict, "curator", time=time)

    def raw_row(self, *values):
        """A row written outside the pipeline's checks (a bad one, say)."""
        if self.source == "csv":
            with open(self.root / "verdicts.csv", "a") as f:
                f.write(",".join(map(str, values)) + "\n")
        else:
            columns = ", ".join(verdicts.COLUMNS[:4])
            with self.db.engine.begin() as conn:
                conn.execute(
                    sa.text(f"INSERT INTO {self.db.verdicts} ({columns}) VALUES (:a, :b, :v, :t)"),
                    dict(zip("abvt", values)),
                )

    def night(self, monkeypatch, date):
        build(monkeypatch, self.config, Nightly(date=date))
        return read_similarities(self.root / "artifacts" / "similarities.hdf5")

    def full(self, monkeypatch, tmp_path, date):
        """similarities.hdf5 of a --full search with the same verdicts, on a copy of the artifacts."""
        copy = tmp_path / f"full-{date}"
        shutil.copytree(self.root / "artifacts", copy / "artifacts", ignore=shutil.ignore_patterns("run.lock*"))
        # the same collection and verdicts; Similarities alone, so the CMS is not loaded
        config = pipeline_config(
            copy,
            **self.settings,
            paths__content=self.root / "content",
            ids__csv=self.root / "content" / "image_ids.csv",
        )
        build(monkeypatch, config, Similarities(date=date + datetime.timedelta(days=30), full=True))
        return read_similarities(copy / "artifacts" / "similarities.hdf5")

    def cms_lists(self):
        """Each image's list in the CMS table: {id: [similar ids, by rank]}."""
        lists = {}
        for image, _, other, *_ in sorted(self.db.rows()):
            lists.setdefault(int(image), []).append(int(other))
        return lists

    def loaded_rows(self):
        with self.db.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(f"SELECT n_rows FROM {self.db.marker} ORDER BY load_id"))]


def first_missing(root):
    """The ID of the mapping's row whose file is not on disk."""
    return load_inventory(root / "artifacts" / "inventory.h5").missing[0].split()[0]


def lists_of(result):
    return {int(i): [int(n) for n in row] for i, row in zip(result["ids"], result["neighbours"])}


@pytest.fixture(
    params=[
        "csv",
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.slow),
        pytest.param("mariadb", marks=pytest.mark.slow),
    ]
)
def site(request, small_collection, tmp_path, monkeypatch):
    backend = "sqlite" if request.param == "csv" else request.param
    url = f"sqlite:///{tmp_path / 'cms.sqlite'}" if backend == "sqlite" else SERVERS[backend]
    db = Database(url)
    if backend != "sqlite" and not cms.reachable(db.engine):
        environment_lacks(f"no {backend} server answers at {url}")
    yield Site(tmp_path / "site", small_collection[0], request.param, db)
    db.drop()


def test_verdicts_added_changed_withdrawn_and_bad_over_four_nights(site, monkeypatch, tmp_path):
    first = site.night(monkeypatch, DAYS[0])
    raw = lists_of(first)
    ids = sorted(raw)
    assert site.cms_lists() == raw

    # night 2: three first neighbours judged wrong, two pairs from outside the lists judged right, bad rows
    wrong = []
    for image in ids[:3]:
        pair = (image, raw[image][0])
        if tuple(reversed(pair)) not in wrong:
            wrong.append(pair)
    right = []
    for a in ids[::-1]:
        for b in ids:
            if (
                a != b
                and b not in raw[a]
                and a not in raw[b]
                and len(right) < 2
                and not {a, b} & {x for p in right for x in p}
            ):
                right.append((a, b))
    for a, b in wrong:
        site.judge(a, b, "wrong", DAYS[0])
    for a, b in right:
        site.judge(b, a, "right", DAYS[1])  # written either way round
    site.raw_row(ids[0], 424242, "wrong", "2026-12-01 10:00:00")  # an unknown ID
    site.raw_row(ids[1], ids[1], "wrong", "2026-12-01 10:00:00")  # a self-pair
    site.raw_row(ids[1], ids[2], "maybe", "2026-12-01 10:00:00")  # an unknown verdict
    gone = int(first_missing(site.root))
    site.raw_row(ids[1], gone, "right", "2026-12-01 10:00:00")  # an image whose file has gone
    second = site.night(monkeypatch, DAYS[1])
    lists = lists_of(second)
    for a, b in wrong:
        assert b not in lists[a] and a not in lists[b]
    for a, b in right:
        assert b in lists[a] and a in lists[b]
    assert site.cms_lists() == lists
    full = site.full(monkeypatch, tmp_path, DAYS[1])
    for key in ("ids", "neighbours", "distances"):
        np.testing.assert_array_equal(second[key], full[key], err_msg=key)
    # the cost follows the change: no image is searched again but the judged ones, and the load
    # writes only the lists that changed
    attrs = second["attrs"]
    judged = {x for pair in wrong + right for x in pair}
    assert attrs["search"] == "incremental" and attrs["queried"] == 0
    assert attrs["judged"] == attrs["judged_queried"] == len(judged)
    changed = {i for i in ids if lists[i] != raw[i]}
    assert changed <= judged | {x for a, _ in wrong for x in raw[a]} | {x for pair in right for x in pair}
    assert site.loaded_rows()[-1] == 5 * int(second["changed"].sum())
    assert attrs["changed_by_verdicts"] == len(judged)

    report = json.loads((site.root / "artifacts" / "run_report.json").read_text())
    found = report["verdicts"]
    assert (found["honoured"], found["wrong"], found["right"]) == (len(wrong) + 2, len(wrong), 2)
    assert found["lists_changed"] == len(judged)
    assert found["bad_reasons"] == {"unknown ID": 1, "self-pair": 1, "unknown verdict": 1, "image has gone": 1}
    assert f"image {gone} has gone from the collection" in [b["reason"] for b in found["bad"]]
    scores = found["scores"]
    # the raw lists held every wrong pair (first neighbours) and none of the right ones (from outside)
    assert scores["right_found"] == 0.0 and scores["judged_right"] == 0.0
    assert set(scores["per_day"]) == {DAYS[0].isoformat(), DAYS[1].isoformat()}
    assert scores["per_day"][DAYS[0].isoformat()]["wrong"] == len(wrong)
    page = (site.root / "artifacts" / "report.html").read_text()
    assert "Curators' verdicts" in page and "Recently judged pairs" in page and "424242" in page

    # night 3: a wrong pair turned right, another withdrawn (the command), a new one judged wrong
    (a1, b1), (a2, b2) = wrong[0], wrong[1]
    site.judge(a1, b1, "right", DAYS[2])
    with luigi_config(monkeypatch, site.config):
        assert verdict_command([str(b2), str(a2), "withdraw"]) == 0
        third_wrong = (ids[5], raw[ids[5]][1])
        assert verdict_command([str(third_wrong[0]), str(third_wrong[1]), "wrong", "--author", "a reader"]) == 0
        assert verdict_command([str(ids[5]), "424242", "wrong"]) == 2  # unknown to the last run: refused
    third = site.night(monkeypatch, DAYS[2])
    lists = lists_of(third)
    assert b1 in lists[a1] and a1 in lists[b1]
    assert lists[a2][0] == raw[a2][0] == b2  # withdrawn: its first neighbour is back
    assert third_wrong[1] not in lists[third_wrong[0]] and third_wrong[0] not in lists[third_wrong[1]]
    assert site.cms_lists() == lists
    full = site.full(monkeypatch, tmp_path, DAYS[2])
    for key in ("ids", "neighbours", "distances"):
        np.testing.assert_array_equal(third[key], full[key], err_msg=key)
    assert third["attrs"]["queried"] == 0

    # night 4: nothing new: nothing searched, nothing loaded
    fourth = site.night(monkeypatch, DAYS[3])
    assert lists_of(fourth) == lists and site.cms_lists() == lists
    assert fourth["attrs"]["queried"] == 0 and fourth["attrs"]["judged_queried"] == 0
    assert site.loaded_rows()[-1] == 0


def test_verdicts_gone_stop_the_night_until_they_are_back_or_confirmed_withdrawn(site, monkeypatch):
    raw = lists_of(site.night(monkeypatch, DAYS[0]))
    image = sorted(raw)[0]
    site.judge(image, raw[image][0], "wrong", DAYS[0])
    judged = lists_of(site.night(monkeypatch, DAYS[1]))
    assert raw[image][0] not in judged[image]
    artifacts = site.root / "artifacts"
    kept = (artifacts / "similarities.hdf5").read_bytes(), site.cms_lists()

    # the verdicts vanish: a volume that did not mount, or an emptied table
    if site.source == "csv":
        (site.root / "verdicts.csv").rename(site.root / "unmounted.csv")
    else:
        with site.db.engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {site.db.verdicts}"))
    with luigi_config(monkeypatch, site.config):
        result = luigi.build([Nightly(date=DAYS[2])], local_scheduler=True, detailed_summary=True, workers=1)
    assert result.status == luigi.execution_summary.LuigiStatusCode.MISSING_EXT, result.summary_text
    report = json.loads((artifacts / "runs" / DAYS[2].isoformat() / "run_report.json").read_text())
    assert "holds no verdicts, where the last run read 1 rows" in report["error"]
    assert "--verdicts-allow-empty" in report["error"]
    assert ((artifacts / "similarities.hdf5").read_bytes(), site.cms_lists()) == kept

    # back the next night: the judged pair stays out
    if site.source == "csv":
        (site.root / "unmounted.csv").rename(site.root / "verdicts.csv")
    else:
        site.judge(image, raw[image][0], "wrong", DAYS[0])
    assert lists_of(site.night(monkeypatch, DAYS[2])) == judged

    # withdrawn on purpose, and confirmed for one night: the pair comes back
    with luigi_config(monkeypatch, site.config):
        assert verdict_command([str(image), str(raw[image][0]), "withdraw"]) == 0
    site.config = pipeline_config(site.root, **site.settings, verdicts__allow_empty="true")
    assert lists_of(site.night(monkeypatch, DAYS[3])) == raw
