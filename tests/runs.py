"""What the tests of whole pipeline runs share: the runs made once per session (the small
collection's, the demo's), copies a test may change, and helpers to run the tasks and the
commands as a user does."""

import html.parser
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import luigi
import numpy as np
import pytest
from PIL import Image

from pipeline import backends
from pipeline.output import read_similarities
from tasks import (
    Nightly,
    Similarities,
)

from .conftest import luigi_config, made_once, pipeline_config, png_declaring

ARTIFACTS = ("inventory.h5", "features.h5", "reducer.h5", "codebook.h5", "histograms.h5", "similarities.hdf5")


def build(monkeypatch, config, task=Similarities):
    with luigi_config(monkeypatch, config):
        return luigi.build([task()], local_scheduler=True, detailed_summary=True, workers=1)


def mtimes(artifacts):
    return {name: os.stat(artifacts / name).st_mtime_ns for name in ARTIFACTS}


@pytest.fixture(scope="session")
def run(small_collection, tmp_path_factory):
    """One pipeline run on the small collection (made once per session, whichever test process
    asks first): its folder, and the collection's groups of like images."""
    content, groups = small_collection

    def make(folder):
        with pytest.MonkeyPatch.context() as monkeypatch:
            (folder / "content").symlink_to(content)
            result = build(monkeypatch, pipeline_config(folder))
            assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text

    folder, _ = made_once(tmp_path_factory, "run", make)
    return folder, groups


class OwnRun:
    """A copy of a run's artifacts under ``root``, reading the same collection."""

    def __init__(self, original, root):
        self.root = root
        shutil.copytree(original / "artifacts", root / "artifacts", ignore=shutil.ignore_patterns("run.lock*"))
        # the same content and mapping paths: the copied inventory stays valid
        self.inputs = {"paths__content": original / "content", "ids__csv": original / "content" / "image_ids.csv"}
        self.config()

    def config(self, **overrides):
        """Write the copy's luigi.cfg with ``overrides``; its path."""
        return pipeline_config(self.root, **self.inputs, **overrides)


@pytest.fixture()
def own_run(run, tmp_path):
    """A copy of the module's first run that a test may change: the module's run stays as it
    was whatever the test does, and whether it passes."""
    first, _ = run
    return OwnRun(first, tmp_path)


def luigi_in_process(monkeypatch, config, cwd, task="Similarities"):
    """The exit code of the ``luigi`` command's own main (``luigi.retcodes.run_with_retcodes``), run in
    this process with ``config``: the command line's behaviour without starting a Python."""
    from luigi.retcodes import run_with_retcodes

    monkeypatch.chdir(cwd)
    with luigi_config(monkeypatch, config), pytest.raises(SystemExit) as done:
        run_with_retcodes(["--module", "tasks", task, "--local-scheduler", "--no-lock"])
    return done.value.code


def luigi_cli(config, cwd):
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    luigi_bin = os.path.join(os.path.dirname(sys.executable), "luigi")
    return subprocess.run(
        # Luigi's own lock in the test's folder: it admits one such command line per folder of locks
        [luigi_bin, "--module", "tasks", "Similarities", "--local-scheduler", "--lock-pid-dir", str(cwd / "locks")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cms_rows(database, table="image_similarity"):
    with sqlite3.connect(database) as db:
        return db.execute(
            f"SELECT image_id, rank, similar_image_id, distance, run_id FROM {table} ORDER BY 1, 2"
        ).fetchall()


def nightly_equals(monkeypatch, config, expected_root, root):
    """Run Nightly with ``config``, check its neighbours equal those under ``expected_root``; its report."""
    result = build(monkeypatch, config, Nightly)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
    a = read_similarities(expected_root / "artifacts" / "similarities.hdf5")
    b = read_similarities(root / "artifacts" / "similarities.hdf5")
    for key in ("ids", "neighbours", "distances"):
        np.testing.assert_array_equal(a[key], b[key])
    return json.loads((root / "artifacts" / "run_report.json").read_text())


def write_bad_files(folder):
    """Files a collection holds that must be rejected, by name -> what they are."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    photo = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(photo).save(folder / "full.jpg")
    Image.fromarray(photo).save(folder / "full.png")
    bad = {
        "zero bytes.jpg": b"",
        "truncated.jpg": (folder / "full.jpg").read_bytes()[:2000],
        "truncated.png": (folder / "full.png").read_bytes()[:3000],
        "error page.jpg": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "random.png": rng.bytes(5000),
    }
    (folder / "full.jpg").unlink()
    (folder / "full.png").unlink()
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    png_declaring(folder / "bomb.png", 100_000, 100_000)
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "notes.txt").write_text("not an image, yet named by the mapping")
    (folder / "Thumbs.db").write_bytes(b"thumbs")  # skipped quietly, by rule
    (folder / ".DS_Store").write_bytes(b"finder")
    return [*bad, "bomb.png", "dangling.jpg", "loop.jpg", "notes.txt"]


def write_unusual_images(folder):
    """Valid images of the kinds scanners and exports write, by name; each must be processed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.random((90, 120)) * 65535).astype(np.uint16)).save(folder / "grey 16-bit.png")
    photo.convert("1").save(folder / "one-bit.png", transparency=0)
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    photo.convert("RGBA").save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(folder / "rotated.jpg", exif=exif)
    photo.save(folder / "pages.tif", save_all=True, append_images=[photo.rotate(90)])
    photo.save(folder / "animated.gif", save_all=True, append_images=[photo.rotate(90)], duration=100)
    Image.new("RGB", (1, 1), (90, 10, 200)).save(folder / "pixel.png")
    Image.new("RGB", (20000, 10), (10, 90, 200)).save(folder / "strip.png")
    photo.save(folder / "überschrift ñ.jpg")
    # the mapping decides what an image is, not the extension: each of these is decoded
    for name in ("colour.ppm", "grey.pgm", "bitonal.pbm", "any.pnm", "photo.tga", "UPPER.JPG", "no extension"):
        mode = {"grey.pgm": "L", "bitonal.pbm": "1"}.get(name, "RGB")
        photo.convert(mode).save(folder / name, {"photo.tga": "TGA", "no extension": "PNG"}.get(name))
    for name in ("stream.j2k", "container.jpf", "extended.jpx"):
        photo.save(folder / name, "JPEG2000", no_jp2=name.endswith(".j2k"))
    return sorted(p.name for p in folder.iterdir())


class ReportPage(html.parser.HTMLParser):
    """What report.html shows: per sampled image its figures, the plots, the map's dots, the rejected rows."""

    def __init__(self, text):
        super().__init__()
        self.queries, self.plots, self.dots, self.rejected, self.images = [], 0, 0, 0, []
        self.places = []
        self._in_rejected_table = False
        self.feed(text)
        self.text = text

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "query":
            self.queries.append([])
        elif tag == "img" and self.queries and not self.dots:
            self.queries[-1].append(attrs["src"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "figure" and attrs.get("class") == "plot":
            self.plots += 1
        if tag == "div" and attrs.get("class") == "dot":
            self.dots += 1
            self.places.append(attrs["style"])
        if tag == "table":
            self._in_rejected_table = attrs.get("class") == "rejected"
        if tag == "td" and self._in_rejected_table:
            self.rejected += 1


def check_report_page(artifacts, sample=12):
    """report.html beside run_report.json: every sampled image with five neighbour thumbnails."""
    run = json.loads((artifacts / "run_report.json").read_text())
    page = ReportPage((artifacts / "report.html").read_text())
    assert len(page.queries) == min(sample, run["images_with_neighbours"])
    assert all(
        len(figures) == 6 and all(src.startswith("data:image/jpeg;base64,") for src in figures)
        for figures in page.queries
    )
    assert page.plots == 5 and page.dots == run["images_with_neighbours"]
    assert len(set(page.places)) == page.dots  # one cell each on the map
    captions = re.findall(r"distance (\d+\.\d{4}), similarity (\d+\.\d) %", page.text)
    assert len(captions) == 5 * len(page.queries)
    assert all(abs(float(s) - 100 * (1 - float(d))) < 0.06 for d, s in captions)  # cosine: 100 x (1 - distance)
    assert page.rejected == 2 * len(run["rejected"])  # path and reason
    assert "http" not in "".join(page.images)  # self-contained
    return page


DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "content")


def run_module(module, config, *args):
    """``python -m module args`` in the folder of ``config``, as a user runs it."""
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=config.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


#: Images of the demo the self-check alters (6 copies each): forward passes of ResNet50, the test's cost.
SELFCHECK = 10


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A nightly run on the bundled demo collection with its labels and a self-check of 20 of its
    images (made once per session)."""

    def make(root):
        (root / "content").symlink_to(DEMO)
        config = pipeline_config(
            root,
            evaluate__labels=os.path.join(DEMO, "labels.csv"),
            selfcheck__sample=SELFCHECK,
            report__sample=2,
            copies__threshold="auto",
        )
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setitem(backends.BACKENDS, "keras", backends.KerasBackend)  # ResNet50
            result = build(monkeypatch, config, Nightly)
        assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text

    return made_once(tmp_path_factory, "demo", make)[0]


def change_collection(content, rng, date):
    """A night's change: one image removed, one rescanned (changed), two added (IDs from 7000 on)."""
    header, *rows = (content / "image_ids.csv").read_text().splitlines()
    rows = [r for r in rows if os.path.exists(content / r.split(",")[1] / r.split(",")[2])]
    removed, changed, source = (rows[i] for i in rng.choice(len(rows), size=3, replace=False))
    rows.remove(removed)
    _, ppn, name = removed.split(",")
    os.remove(content / ppn / name)
    _, ppn, name = changed.split(",")
    with Image.open(content / ppn / name) as image:
        image.rotate(3, expand=True).convert("L").convert("RGB").save(content / ppn / name, "JPEG", quality=60)
    _, ppn, name = source.split(",")
    for n in range(2):
        with Image.open(content / ppn / name) as image:
            image.crop((n * 8, 0, image.width, image.height - n * 8)).save(content / ppn / f"{date}-{n}.jpg", "JPEG")
        rows.append(f"{7000 + len(rows) * 10 + n},{ppn},{date}-{n}.jpg")
    (content / "image_ids.csv").write_text("\n".join([header, *rows]) + "\n")
