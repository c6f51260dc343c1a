"""The web app as a person uses it, in Debian's chromium driven by Playwright (no browser is
downloaded): searching by ID, PPN and upload, browsing from neighbour to neighbour, judging with
keys, the verdict in the CMS's table and honoured by the next night, the refusals, and the map.

The app serves a night of the small collection made with the tiny stand-in model (the pages are
the point, not the model); the upload is queried through the query command's path with it.
"""

import base64
import datetime
import shutil
import threading

import luigi
import pytest
import sqlalchemy as sa

from pipeline import cms
from pipeline.output import read_similarities
from tasks import Nightly, Verdicts, config, serve
from webapp import ServeSettings, create_app
from webapp.security import Users

from .conftest import environment_lacks, luigi_config, pipeline_config

FIRST, SECOND = datetime.date(2026, 12, 1), datetime.date(2026, 12, 2)
PASSWORD = "a long password"
CHROMIUM = "/usr/bin/chromium"
#: Chromium as this machine runs it headless: nothing fetched from the (closed) network.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def night(monkeypatch, config_path, date):
    with luigi_config(monkeypatch, config_path):
        result = luigi.build([Nightly(date=date)], local_scheduler=True, detailed_summary=True, workers=1)
    assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text


@pytest.fixture(scope="module")
def site(small_collection, tmp_path_factory):
    """A night of the small collection, loaded into an SQLite CMS, and the app serving it."""
    root = tmp_path_factory.mktemp("served")
    (root / "content").symlink_to(small_collection[0])
    config_path = pipeline_config(
        root,
        cms__url=f"sqlite:///{root / 'cms.sqlite'}",
        serve__users=root / "curators.txt",
        serve__secret_key=root / "secret.key",
        serve__max_upload_mb=1,
        serve__reload_seconds=0.2,
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        night(monkeypatch, config_path, FIRST)
        with luigi_config(monkeypatch, config_path):
            Users(config.serve().users).add("curator", PASSWORD)
            app = create_app(ServeSettings(**vars(serve.serve_settings())), serve.site())
        import waitress

        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            yield {
                "root": root,
                "config": config_path,
                "url": f"http://127.0.0.1:{server.effective_port}",
                "app": app,
                "result": read_similarities(root / "artifacts" / "similarities.hdf5"),
            }
        finally:
            app.extensions["webapp"].served.stop()
            app.extensions["webapp"].queries.close()
            server.close()


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        environment_lacks("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, site, monkeypatch):
    """A fresh browser window on the app, luigi.cfg the site's while the test runs (the app's
    verdicts go through the verdict command's code, which reads it)."""
    with luigi_config(monkeypatch, site["config"]):
        context = browser.new_context(base_url=site["url"])
        window = context.new_page()
        errors = []
        window.on("pageerror", lambda error: errors.append(str(error)))
        yield window
        context.close()
        assert errors == []


def log_in(page):
    page.goto("/login")
    page.fill('input[name="name"]', "curator")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_selector("text=Log out")


def test_search_by_id_by_ppn_and_by_upload(page, site):
    result = site["result"]
    image = int(result["ids"][4])
    page.goto("/")
    page.fill('header input[name="q"]', str(image))
    page.press('header input[name="q"]', "Enter")
    page.wait_for_url(f"**/images/{image}")
    assert page.text_content("h1").startswith(f"Image {image}")

    ppn = result["ppn"][4]
    page.goto("/")
    page.fill("#q", f"PPN{ppn}")
    page.press("#q", "Enter")
    page.wait_for_url("**/search?q=*")
    in_record = int((result["ppn"] == ppn).sum())
    assert page.locator(".gallery .figure").count() == in_record

    page.goto("/")
    path = site["root"] / "content" / f"PPN{ppn}" / result["filename"][4]
    page.set_input_files("#file", str(path))  # the form goes when a file is chosen
    page.wait_for_selector("text=The images most similar to")
    found = [int(i) for i in page.locator("ol.neighbours .neighbour .id a").all_text_contents()]
    assert image in found  # an image of the collection finds itself, at distance 0 (its copies may tie)
    assert page.locator("ol.neighbours .similarity").first.text_content() == "100.0 %"

    page.goto("/")  # the same file dropped on the form
    dropped = page.evaluate_handle(
        """(b64) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const files = new DataTransfer(); files.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
        return files; }""",
        base64.b64encode(path.read_bytes()).decode(),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    page.wait_for_selector("text=The images most similar to dropped.jpg")
    assert image in [int(i) for i in page.locator("ol.neighbours .neighbour .id a").all_text_contents()]


def test_browsing_from_neighbour_to_neighbour(page, site):
    result = site["result"]
    image, first, second = int(result["ids"][0]), int(result["neighbours"][0][0]), int(result["neighbours"][0][1])
    page.goto(f"/images/{image}")
    page.keyboard.press("ArrowRight")  # opens the chosen (first) neighbour
    page.wait_for_url(f"**/images/{first}")
    page.keyboard.press("ArrowLeft")  # back
    page.wait_for_url(f"**/images/{image}")
    page.click(f'.neighbour[data-id="{second}"] .id a')
    page.wait_for_url(f"**/images/{second}")
    assert page.locator(".neighbour[data-id]").count() >= 5


def test_judging_with_keys_writes_the_cms_table_and_the_next_night_honours_it(page, site, monkeypatch):
    result = site["result"]
    image, other = int(result["ids"][2]), int(result["neighbours"][2][1])
    log_in(page)
    page.goto(f"/images/{image}")
    page.keyboard.press("ArrowDown")  # the second neighbour
    page.keyboard.press("w")
    page.wait_for_selector(f'.neighbour[data-id="{other}"] .badge.wrong')
    assert page.locator(f'.neighbour[data-id="{other}"] .pending').text_content() == "from the next night on"
    engine = cms.connect(cms.resolve_url(f"sqlite:///{site['root'] / 'cms.sqlite'}"))
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT image_id, similar_image_id, verdict, author FROM image_similarity_verdict")
        ).fetchall()
    assert (image, other, "wrong", "curator") in [tuple(r) for r in rows]

    night(monkeypatch, site["config"], SECOND)
    page.wait_for_function("async () => (await (await fetch('/health')).json()).date === '2026-12-02'", timeout=20_000)
    page.goto(f"/images/{image}")
    assert page.locator(f'ol.neighbours .neighbour[data-id="{other}"]').count() == 0
    judged = page.locator(f'ul.judged .neighbour[data-id="{other}"]')
    assert judged.locator(".badge.wrong").count() == 1 and judged.locator(".pending").count() == 0
    with engine.connect() as connection:
        listed = connection.execute(
            sa.text("SELECT count(*) FROM image_similarity WHERE image_id = :a AND similar_image_id = :b"),
            {"a": image, "b": other},
        ).scalar()
    assert listed == 0


def test_a_verdict_written_while_a_night_runs_is_kept_for_the_next_night(page, site, monkeypatch):
    third, fourth = datetime.date(2026, 12, 3), datetime.date(2026, 12, 4)
    with luigi_config(monkeypatch, site["config"]):  # the night has read the verdicts, and goes on
        assert luigi.build([Verdicts(date=third)], local_scheduler=True, workers=1)
    result = read_similarities(site["root"] / "artifacts" / "similarities.hdf5")
    image, other = int(result["ids"][7]), int(result["neighbours"][7][0])
    log_in(page)
    page.goto(f"/images/{image}")
    page.keyboard.press("w")
    page.wait_for_selector(f'.neighbour[data-id="{other}"] .badge.wrong')
    night(monkeypatch, site["config"], third)
    listed = read_similarities(site["root"] / "artifacts" / "similarities.hdf5")
    at = list(listed["ids"]).index(image)
    assert other in listed["neighbours"][at]  # this night read the verdicts before it was written
    page.wait_for_function("async () => (await (await fetch('/health')).json()).date === '2026-12-03'", timeout=20_000)
    page.goto(f"/images/{image}")
    assert page.locator(f'.neighbour[data-id="{other}"] .pending').text_content() == "from the next night on"
    night(monkeypatch, site["config"], fourth)
    listed = read_similarities(site["root"] / "artifacts" / "similarities.hdf5")
    assert other not in listed["neighbours"][list(listed["ids"]).index(image)]


def test_a_verdict_is_refused_when_logged_out_and_without_the_csrf_token(page, site):
    result = site["result"]
    image, other = int(result["ids"][5]), int(result["neighbours"][5][0])
    page.goto(f"/images/{image}")
    post = """async ([url, token, other]) => (await fetch(url, {method: "POST",
        headers: token ? {"X-CSRF-Token": token} : {},
        body: new URLSearchParams({similar_image_id: other, verdict: "right"})})).status"""
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    assert page.evaluate(post, [f"/images/{image}/verdicts", token, str(other)]) == 403  # logged out
    page.keyboard.press("r")
    page.wait_for_selector("#message")
    assert "Not written" in page.text_content("#message")
    log_in(page)
    page.goto(f"/images/{image}")
    assert page.evaluate(post, [f"/images/{image}/verdicts", "", str(other)]) == 403  # no token
    assert page.evaluate(post, [f"/images/{image}/verdicts", "forged", str(other)]) == 403


def test_an_oversized_upload_an_unknown_id_and_a_path_out_of_the_app(page, site, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2 * 2**20))
    page.goto("/")
    page.set_input_files("#file", str(big))
    page.wait_for_selector("h1:has-text('413')")
    assert page.goto("/images/424242").status == 404
    assert page.goto("/images/..%2F..%2F..%2Fetc%2Fpasswd").status == 404
    assert page.goto("/static/..%2F..%2Fluigi.cfg").status == 404


def test_the_map_draws_every_image_on_its_canvas(page, site):
    page.goto("/map")
    page.wait_for_selector("#map[data-drawn]")
    assert int(page.get_attribute("#map", "data-drawn")) == len(site["result"]["ids"])
    page.mouse.wheel(0, -600)  # zoomed in: thumbnails
    page.wait_for_timeout(300)
    inked = page.evaluate(
        """() => { const c = document.getElementById("map");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) { n++; } }
        return n; }"""
    )
    assert inked > 1000
