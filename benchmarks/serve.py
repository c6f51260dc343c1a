"""The web app's figures: server time of an image's page and of searches on a made-up run of a
million images, 32 clients browsing over loopback while a night's new lists replace the old,
the app's memory, a query by upload with the model warm, and the map's frames in a browser.

    python -m benchmarks.serve [--images 1000000] [--clients 32] [--seconds 60] [--record]

The pages are served by the app itself (:func:`webapp.create_app` under waitress, as
``similar-images-serve`` runs it), in a process of their own; the clients run in this one.
The upload is queried against the run of luigi.cfg's ``[paths] artifacts`` (``make demo`` makes
one) at its shipped precision, through the app's own ``POST /search``.
"""

import argparse
import http.client
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from .common import ROOT, Timer, add_record_option, free_port, recording, report, scan_like_images
from .synthetic import served_run

#: Distinct thumbnails the made-up run's images share (a view store of a million images would
#: take tens of GB; the app reads one row per request either way).
VIEWS = 64


def views_for(folder, ids):
    """A view store where every image has one of VIEWS thumbnails and previews."""
    from pipeline.thumbnails import Inbox, ViewStore, update_views

    inbox = Inbox(os.path.join(folder, "incoming"))
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(VIEWS):
        image = Image.fromarray(rng.integers(0, 255, size=(150, 200, 3), dtype=np.uint8))
        thumbnail, preview = io.BytesIO(), io.BytesIO()
        image.save(thumbnail, "JPEG")
        image.resize((640, 480)).save(preview, "JPEG")
        pairs.append((thumbnail.getvalue(), preview.getvalue()))
    keys = [f"k{i % VIEWS}" for i in range(len(ids))]
    inbox.put(keys[:VIEWS], pairs)
    update_views(ViewStore(os.path.join(folder, "thumbnails", "views.sqlite")), inbox, ids, keys, [""] * len(ids))


def _site(folder):
    from pipeline.thumbnails import ViewStore
    from webapp import Site

    def no_verdicts(*args, **kwargs):
        raise RuntimeError("the benchmark writes no verdict")

    return Site(
        judge=no_verdicts,
        read_verdicts=lambda: None,
        make_querier=no_verdicts,
        views=ViewStore(os.path.join(folder, "thumbnails", "views.sqlite")),
    )


def serve_folder(folder, port, threads):
    """Serve ``folder`` as similar-images-serve does (the benchmark's server process)."""
    import waitress

    from webapp import ServeSettings, create_app

    settings = ServeSettings(
        artifacts=folder, secret_key=os.path.join(folder, "secret.key"), threads=threads, reload_seconds=1.0
    )
    app = create_app(settings, _site(folder))
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "queue depth" under 32 clients
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=threads, ident="bench")
    print("ready", flush=True)
    server.run()


def server_times(folder, ids, n_requests=400):
    """p50, p95 and max milliseconds of each kind of request, timed inside the app (no network)."""
    from webapp import ServeSettings, create_app

    app = create_app(
        ServeSettings(artifacts=folder, secret_key=os.path.join(folder, "secret.key")), _site(folder), start=False
    )
    with Timer() as load:
        app.extensions["webapp"].served.refresh()
    client = app.test_client()
    rng = np.random.default_rng(1)
    run = app.extensions["webapp"].served.snapshot.run
    kinds = {
        "image page": lambda i: f"/images/{ids[i]}",
        "image JSON": lambda i: f"/images/{ids[i]}.json",
        "search by ID": lambda i: f"/search?q={ids[i]}",
        "search by PPN": lambda i: f"/search?q=PPN{run.ppn[i]}",
        "search by file name": lambda i: f"/search?q={run.filename[i][:6]}",
        "thumbnail": lambda i: f"/images/{ids[i]}/thumbnail.jpg",
    }
    found = {}
    for name, path in kinds.items():
        times = []
        for i in rng.integers(0, len(ids), size=n_requests):
            start = time.perf_counter()
            answer = client.get(path(int(i)))
            times.append(1000 * (time.perf_counter() - start))
            if answer.status_code not in (200, 302):
                raise RuntimeError(f"{path(int(i))}: {answer.status_code}")
        found[name] = np.percentile(times, [50, 95, 100])
    return load.seconds, found


class Clients:
    """Clients browsing as a person does: an image's page, then three of its thumbnails and its JSON."""

    def __init__(self, port, ids, n):
        self.port, self.ids, self.n = port, ids, n
        self.times, self.errors, self.statuses = [], [], {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _browse(self, seed):
        rng = np.random.default_rng(seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            image = int(self.ids[rng.integers(len(self.ids))])
            paths = [f"/images/{image}", *(f"/images/{image}/thumbnail.jpg" for _ in range(3)), f"/images/{image}.json"]
            for path in paths:
                start = time.perf_counter()
                try:
                    connection.request("GET", path)
                    answer = connection.getresponse()
                    body = answer.read()
                    status = answer.status
                except (OSError, http.client.HTTPException) as exc:
                    status, body = type(exc).__name__, b""
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                elapsed = 1000 * (time.perf_counter() - start)
                with self._lock:
                    self.times.append((time.monotonic(), elapsed))
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status != 200 or not body:
                        self.errors.append(f"{path}: {status}")

    def run(self, seconds, during=None):
        threads = [threading.Thread(target=self._browse, args=(s,), daemon=True) for s in range(self.n)]
        for t in threads:
            t.start()
        if during is not None:
            time.sleep(seconds / 2)
            during()
            time.sleep(seconds / 2)
        else:
            time.sleep(seconds)
        self._stop.set()
        for t in threads:
            t.join()


def _memory_mb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def browsing(folder, other, ids, clients, seconds):
    """32 clients over loopback for ``seconds``, the artifacts replaced by ``other``'s halfway."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serve", "--serve-folder", folder, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        loaded_mb = _memory_mb(server.pid, "VmRSS")
        swapped = {}

        def night():
            swapped["at"] = time.monotonic()
            for name in ("similarities.hdf5", "copies.h5", "map.h5", "run_report.json"):
                shutil.copy(os.path.join(other, name), os.path.join(folder, f".{name}.new"))
                os.replace(os.path.join(folder, f".{name}.new"), os.path.join(folder, name))

        browsers = Clients(port, ids, clients)
        browsers.run(seconds, during=night)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/health")
        health = connection.getresponse().read().decode()
        peak_mb = _memory_mb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(30)
    times = np.array([t for _, t in browsers.times])
    after = np.array([t for at, t in browsers.times if at >= swapped["at"]])
    return {
        "requests": len(times),
        "per_second": len(times) / seconds,
        "p50": float(np.percentile(times, 50)),
        "p95": float(np.percentile(times, 95)),
        "p95_after_swap": float(np.percentile(after, 95)) if len(after) else None,
        "errors": browsers.errors,
        "statuses": browsers.statuses,
        "swapped": '"date":"2026-12-02"' in health,
        "loaded_mb": loaded_mb,
        "peak_mb": peak_mb,
    }


def upload_query(queries=10):
    """Seconds of a query by upload of a 1140 x 840 JPEG through POST /search: the first (the model
    built) and p50 / p95 of the next ``queries``, against luigi.cfg's run; None without one."""
    from tasks import config, serve
    from webapp import ServeSettings, create_app

    if not os.path.exists(os.path.join(config.paths().artifacts, "similarities.hdf5")):
        return None
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        (path,) = scan_like_images(scratch, 1, size=(1200, 900))
        Image.open(path).crop((30, 30, 1170, 870)).save(path, "JPEG", quality=90)  # 1140 x 840
        settings = ServeSettings(**{**vars(serve.serve_settings()), "secret_key": os.path.join(scratch, "key")})
        app = create_app(settings, serve.site(), start=False)
        app.extensions["webapp"].served.refresh()
        client = app.test_client()
        token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)

        def once():
            with open(path, "rb") as f, Timer() as t:
                answer = client.post(
                    "/search",
                    data={"file": (f, "scan.jpg"), "csrf_token": token},
                    headers={"Accept": "application/json"},
                )
            if answer.status_code != 200:
                raise RuntimeError(f"POST /search: {answer.status_code} {answer.text[:200]}")
            return t.seconds

        first = once()
        warm = [once() for _ in range(queries)]
        app.extensions["webapp"].queries.close()
    return first, np.percentile(warm, 50), np.percentile(warm, 95), config.precision()


def upload_search(images, words=8_500, queries=5):
    """Seconds of an upload's search (``query_neighbours``, the query command's) among ``images``
    made-up histograms at the shipped distance (the median of ``queries``), and the MB of the
    weighted histograms the app then holds."""
    from pipeline.neighbours import query_neighbours
    from pipeline.weighting import counts_weights

    from .neighbours import synthetic_counts
    from .nightly import SETTINGS, weigh

    counts = synthetic_counts(images + queries, words, seed=3)
    collection, asked = counts[:images], counts[images:]
    data = weigh(collection, np.arange(images), counts_weights(collection, SETTINGS.distance.weighting))
    times = []
    for row in range(queries):
        with Timer() as t:
            query_neighbours(data, asked[row], k=5)
        times.append(t.seconds)
    arrays = (
        data.vectors.data,
        data.vectors.indices,
        data.vectors.indptr,
        data.norms,
        data.roots,
        data.id_rank,
        data.records,
    )
    return float(np.median(times)), sum(a.nbytes for a in arrays) / 2**20


#: The map page in a browser: its images at most, and Debian's chromium.
MAP_IMAGES, CHROMIUM = 100_000, "/usr/bin/chromium"
#: Zoom steps about the map's centre, each waiting for two animation frames (a frame is drawn
#: in the first, so at 60 frames a second a step takes 33 ms when drawing keeps up).
ZOOM_STEPS = """async () => {
  const c = document.getElementById("map"); const r = c.getBoundingClientRect(); const gaps = [];
  let last = performance.now();
  for (let i = 0; i < 40; i++) {
    c.dispatchEvent(new WheelEvent("wheel", {deltaY: i < 20 ? -40 : 40, clientX: r.left + r.width / 2,
                                             clientY: r.top + r.height / 2, bubbles: true, cancelable: true}));
    await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
    const now = performance.now(); gaps.push(now - last); last = now;
  }
  return gaps;
}"""


def map_frames(images):
    """Milliseconds of a zoom step on the map page (median, p95) with ``images`` made-up images, in
    Debian's chromium, and the seconds until the page has drawn; None without chromium."""
    import waitress
    from playwright.sync_api import sync_playwright

    from webapp import ServeSettings, create_app

    if not os.path.exists(CHROMIUM):
        return None
    with tempfile.TemporaryDirectory(prefix="bench-map-") as folder:
        served_run(folder, images)
        app = create_app(ServeSettings(artifacts=folder, secret_key=os.path.join(folder, "key")), _site(folder))
        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
        threading.Thread(target=server.run, daemon=True).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                with Timer() as drawn:
                    page.goto(f"http://127.0.0.1:{server.effective_port}/map")
                    page.wait_for_selector("#map[data-drawn]", timeout=120_000)
                gaps = page.evaluate(ZOOM_STEPS)
                browser.close()
        finally:
            app.extensions["webapp"].served.stop()
            server.close()
    return float(np.median(gaps)), float(np.percentile(gaps, 95)), drawn.seconds


def run(images=1_000_000, clients=32, seconds=60.0, requests=400):
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        folder, other = os.path.join(scratch, "artifacts"), os.path.join(scratch, "next-night")
        with Timer() as made:
            ids = served_run(folder, images)
            served_run(other, images, seed=1, date="2026-12-02")
            views_for(folder, ids)
        load_seconds, times = server_times(folder, ids, requests)
        browsed = browsing(folder, other, ids, clients, seconds)
    uploaded = upload_query()
    search_seconds, search_mb = upload_search(images)
    frames = map_frames(min(images, MAP_IMAGES))
    rows = [("made-up run", f"{images:,} images, k = 5 ({made.seconds:.0f} s to write two nights)")]
    rows.append(("the app reads the run (and works out its review queue)", f"{load_seconds:.1f} s"))
    for name, (p50, p95, top) in times.items():
        rows.append((f"{name}: server time p50 / p95 / max", f"{p50:.1f} / {p95:.1f} / {top:.1f} ms"))
    rows += [
        (
            f"{clients} clients browsing {seconds:.0f} s over loopback, a night's swap halfway",
            f"{browsed['requests']:,} requests ({browsed['per_second']:.0f}/s), p50 {browsed['p50']:.1f} ms, "
            f"p95 {browsed['p95']:.1f} ms (after the swap {browsed['p95_after_swap']:.1f} ms)",
        ),
        ("errors while browsing", f"{len(browsed['errors'])} ({', '.join(browsed['errors'][:3]) or 'none'})"),
        ("the new night served after the swap", "yes" if browsed["swapped"] else "no"),
        (
            "app memory: after reading the run / peak (two runs during the swap)",
            f"{browsed['loaded_mb']:,.0f} / {browsed['peak_mb']:,.0f} MB",
        ),
    ]
    figures = {
        "bench": "serve",
        "images": images,
        "load_seconds": round(load_seconds, 2),
        **{f"{name.replace(' ', '_')}_p95_ms": round(float(v[1]), 2) for name, v in times.items()},
        "clients": clients,
        "browse_p95_ms": round(browsed["p95"], 1),
        "browse_errors": len(browsed["errors"]),
        "swap_served": browsed["swapped"],
        "rss_mb": round(browsed["loaded_mb"]),
        "peak_rss_mb": round(browsed["peak_mb"]),
    }
    if uploaded is None:
        rows.append(("query by upload", "not measured: no run in [paths] artifacts (make demo makes one)"))
    else:
        first, p50, p95, (precision, reason, _) = uploaded
        rows.append(
            (
                f"query by upload of a 1140 x 840 JPEG at {precision} ({reason})",
                f"first {first:.1f} s (the model built), then p50 {p50:.2f} s, p95 {p95:.2f} s",
            )
        )
        figures.update(upload_first_s=round(first, 2), upload_p95_s=round(float(p95), 3), precision=precision)
    rows.append(
        (
            f"an upload's search among {images:,} made-up histograms (8,500 words), and the memory they take",
            f"{search_seconds:.2f} s, {search_mb:,.0f} MB",
        )
    )
    figures.update(upload_search_s=round(search_seconds, 3), upload_search_mb=round(search_mb, 1))
    if frames is None:
        rows.append(("the map in a browser", f"not measured: no {CHROMIUM} (Debian's chromium)"))
    else:
        median, p95, drawn = frames
        rows.append(
            (
                f"the map of {min(images, MAP_IMAGES):,} images in Debian's chromium: a zoom step of two frames, "
                "median / p95 (33 ms: every frame drawn at 60 a second); loaded and drawn",
                f"{median:.1f} / {p95:.1f} ms; {drawn:.1f} s",
            )
        )
        figures.update(map_step_ms=round(median, 1), map_step_p95_ms=round(p95, 1))
    report(rows, figures)
    return figures


def main(argv=None):
    parser = add_record_option(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--images", type=int, default=1_000_000, help="images of the made-up run")
    parser.add_argument("--clients", type=int, default=32, help="clients browsing at once")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they browse")
    parser.add_argument("--requests", type=int, default=400, help="requests of each kind timed inside the app")
    parser.add_argument("--serve-folder", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_folder:
        serve_folder(args.serve_folder, args.port, threads=8)
        return
    with recording("serve", args, argv):
        run(args.images, args.clients, args.seconds, args.requests)


if __name__ == "__main__":
    main()
