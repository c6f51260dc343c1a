"""The web app over plain HTTP (Flask's test client): the pages and their JSON on a made-up run,
the status of bad input, the login, the CSRF token, the proxy's header, the verdicts written
through the verdict command's code, and a night's new lists served without a restart."""

import csv
import io
import os
import re
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from benchmarks.synthetic import served_run
from pipeline.output import read_similarities
from pipeline.thumbnails import Inbox, update_views
from tasks import config, serve
from webapp import ServeSettings, create_app
from webapp.security import Users

from .conftest import luigi_config, write_config

N = 60
PASSWORD = "a long password"


class Served:
    """A made-up run served by the app, its verdicts in a CSV file; ``client`` is a fresh browser."""

    def __init__(self, root, monkeypatch, **settings):
        self.root, self.monkeypatch = root, monkeypatch
        self.artifacts = root / "artifacts"
        self.ids = served_run(self.artifacts, N, per_record=6, group_share=0.2)
        self.verdicts = root / "verdicts.csv"
        self.config = write_config(
            root / "luigi.cfg",
            {
                "paths": {"artifacts": self.artifacts, "content": root / "content"},
                "verdicts": {"csv": self.verdicts},
                "serve": {"users": root / "curators.txt", "secret_key": root / "secret.key"},
            },
        )
        with luigi_config(monkeypatch, self.config):
            Users(config.serve().users).add("curator", PASSWORD)
            self.settings = ServeSettings(**{**vars(serve.serve_settings()), "reload_seconds": 0.1, **settings})
            self.site = serve.site()
        self.app = create_app(self.settings, self.site, start=False)
        self.state = self.app.extensions["webapp"]
        self.refresh()

    def refresh(self):
        with luigi_config(self.monkeypatch, self.config):
            self.state.served.refresh()
            self.state.served.ledger.refresh()

    def client(self):
        return self.app.test_client()

    def logged_in(self, name="curator", password=PASSWORD):
        client = self.client()
        token = csrf(client.get("/login"))
        answer = client.post("/login", data={"name": name, "password": password, "csrf_token": token})
        assert answer.status_code == 303, answer.text
        return client, csrf(client.get("/"))

    def judge(self, client, image, other, verdict, token, **kwargs):
        with luigi_config(self.monkeypatch, self.config):
            return client.post(
                f"/images/{image}/verdicts",
                data={"similar_image_id": str(other), "verdict": verdict, "csrf_token": token},
                **kwargs,
            )

    def rows(self):
        if not self.verdicts.exists():
            return []
        with open(self.verdicts, newline="") as f:
            return list(csv.DictReader(f))


def csrf(answer):
    found = re.search(r'name="csrf-token" content="([^"]+)"', answer.text)
    assert found, answer.text[:500]
    return found.group(1)


@pytest.fixture()
def served(tmp_path, monkeypatch):
    return Served(tmp_path, monkeypatch)


def test_an_image_page_shows_its_list_and_its_json_equals_similarities_hdf5(served):
    result = read_similarities(served.artifacts / "similarities.hdf5")
    client = served.client()
    for row in (0, 17, N - 1):
        image = int(result["ids"][row])
        listing = client.get(f"/images/{image}.json").get_json()
        assert listing["id"] == image and listing["ppn"] == result["ppn"][row]
        assert [n["id"] for n in listing["neighbours"]] == result["neighbours"][row].tolist()
        assert [n["distance"] for n in listing["neighbours"]] == [float(d) for d in result["distances"][row]]
        assert np.float32(listing["neighbours"][0]["distance"]) == result["distances"][row][0]
        page = client.get(f"/images/{image}")
        assert page.status_code == 200
        for n in listing["neighbours"]:
            assert f'data-id="{n["id"]}"' in page.text and f"{n['similarity']:.1f} %" in page.text


@pytest.mark.parametrize(
    "path",
    [
        "/images/99",
        "/images/1000001.5",
        "/images/..%2F..%2Fetc%2Fpasswd",
        "/images/../../etc/passwd",
        "/images/1000001/..%2F..%2Fluigi.cfg.jpg",
        "/images/1000001/../../luigi.cfg",
        "/static/../luigi.cfg",
        "/static/..%2F..%2Fluigi.cfg",
        "/images/%2e%2e%2f%2e%2e%2fluigi.cfg.json",
    ],
)
def test_unknown_ids_and_paths_out_of_the_app_are_404(served, path):
    answer = served.client().get(path)
    assert answer.status_code == 404
    assert "Traceback" not in answer.text and "[paths]" not in answer.text


def test_bad_input_gets_a_page_or_json_with_its_status(served):
    client = served.client()
    page = client.get("/images/99")
    assert page.mimetype == "text/html" and "no image has the database ID" in page.text
    answer = client.get("/images/99.json")
    assert answer.status_code == 404 and answer.get_json()["status"] == 404
    assert client.get("/review?at=x").status_code == 400
    assert client.get("/search?q=" + "x" * 600).status_code == 400


def test_search_by_id_ppn_and_file_name(served):
    client = served.client()
    first = int(served.ids[0])
    assert client.get(f"/search?q={first}").headers["Location"].endswith(f"/images/{first}")
    by_ppn = client.get("/search.json?q=PPN600000001").get_json()
    assert by_ppn["matched"] == "ppn" and [i["id"] for i in by_ppn["images"]] == served.ids[6:12].tolist()
    by_name = client.get("/search.json?q=00000003").get_json()
    assert by_name["matched"] == "filename" and by_name["total"] == N // 6
    page = client.get("/search?q=600000001")
    assert page.status_code == 200 and page.text.count('class="figure thumb"') == 6
    assert client.get("/search.json?q=nothing-like-it").get_json()["total"] == 0


def test_every_value_is_escaped(tmp_path, monkeypatch):
    served = Served(tmp_path, monkeypatch)
    path = served.artifacts / "similarities.hdf5"
    with h5py.File(path, "a") as f:
        names = f["filename"].asstr()[:]
        names[3] = '<script>alert("x")</script>.jpg'
        del f["filename"]
        f.create_dataset("filename", data=names.astype(object), dtype=h5py.string_dtype())
    served.refresh()
    page = served.client().get(f"/images/{served.ids[3]}")
    assert "<script>alert" not in page.text and "&lt;script&gt;alert" in page.text


def test_pages_carry_a_content_security_policy_and_the_cookie_is_httponly_and_samesite(served):
    answer = served.client().get("/")
    policy = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_a_verdict_needs_a_login_and_this_sessions_csrf_token(served):
    image, other = served.ids[0], served.ids[1]
    anonymous = served.client()
    token = csrf(anonymous.get("/"))
    assert served.judge(anonymous, image, other, "wrong", token).status_code == 403
    client, token = served.logged_in()
    assert served.judge(client, image, other, "wrong", "").status_code == 403
    assert served.judge(client, image, other, "wrong", "not-the-token").status_code == 403
    assert (
        served.judge(client, image, other, "wrong", token, headers={"Origin": "http://elsewhere.example"}).status_code
        == 403
    )
    assert served.rows() == []
    answer = served.judge(client, image, other, "wrong", token)
    assert answer.status_code == 303
    (row,) = served.rows()
    assert (row["image_id"], row["similar_image_id"], row["verdict"], row["author"]) == (
        str(image),
        str(other),
        "wrong",
        "curator",
    )


def test_a_verdict_written_shows_at_once_as_from_the_next_night_on(served):
    client, token = served.logged_in()
    image, other = served.ids[4], int(read_similarities(served.artifacts / "similarities.hdf5")["neighbours"][4][0])
    answer = served.judge(client, image, other, "wrong", token, headers={"Accept": "application/json"})
    assert answer.status_code == 200
    assert answer.get_json()["verdict"] == {
        "honoured": None,
        "written": "wrong",
        "author": "curator",
        "pending": True,
        "shown": "wrong",
    }
    page = client.get(f"/images/{image}")
    assert 'class="pending"' in page.text
    answer = served.judge(client, image, other, "withdraw", token, headers={"Accept": "application/json"})
    assert answer.get_json()["verdict"]["pending"] is False and served.rows() == []
    served.refresh()
    assert 'class="pending"' not in client.get(f"/images/{image}").text


@pytest.mark.parametrize(
    "other, verdict, status",
    [("1000002", "maybe", 400), ("", "wrong", 400), ("99", "wrong", 400), ("1000001", "right", 400)],
)
def test_a_bad_verdict_is_400_and_writes_nothing(served, other, verdict, status):
    client, token = served.logged_in()
    answer = served.judge(client, served.ids[0], other, verdict, token, headers={"Accept": "application/json"})
    assert answer.status_code == status and answer.get_json()["error"]
    assert served.rows() == []


def test_a_verdict_written_elsewhere_shows_after_the_next_reading(served):
    from tasks.verdict import main as verdict_command

    with luigi_config(served.monkeypatch, served.config):
        assert verdict_command([str(served.ids[7]), str(served.ids[8]), "right", "--author", "shell"]) == 0
    page = served.client().get(f"/images/{served.ids[7]}")
    assert "Other pairs judged" not in page.text
    served.refresh()
    page = served.client().get(f"/images/{served.ids[7]}")
    assert "Other pairs judged" in page.text and 'class="pending"' in page.text


def test_a_login_fails_with_a_wrong_password_and_addresses_that_keep_failing_wait(served):
    client = served.client()
    token = csrf(client.get("/login"))
    for _ in range(5):
        answer = client.post("/login", data={"name": "curator", "password": "wrong", "csrf_token": token})
        assert answer.status_code == 401 and "Wrong name or password" in answer.text
    answer = client.post("/login", data={"name": "curator", "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 429
    assert client.post("/login", data={"name": "curator", "password": PASSWORD}).status_code == 403


def test_a_closed_app_asks_for_a_login_except_for_its_health(tmp_path, monkeypatch):
    served = Served(tmp_path, monkeypatch, public=False)
    client = served.client()
    assert client.get("/").status_code == 302 and "/login" in client.get("/").headers["Location"]
    assert client.get(f"/images/{served.ids[0]}.json").status_code == 403
    assert client.get("/health").status_code == 200
    client, _ = served.logged_in()
    assert client.get(f"/images/{served.ids[0]}").status_code == 200


def test_the_proxy_header_is_believed_only_from_the_trusted_proxy(tmp_path, monkeypatch):
    served = Served(tmp_path, monkeypatch, trusted_proxy=("10.1.2.3",))
    image, other = served.ids[0], served.ids[1]
    for address, status in (("10.9.9.9", 403), ("10.1.2.3", 303)):
        client = served.client()
        environ = {"REMOTE_ADDR": address}
        token = csrf(client.get("/", environ_base=environ, headers={"X-Remote-User": "j.doe"}))
        answer = served.judge(
            client, image, other, "right", token, environ_base=environ, headers={"X-Remote-User": "j.doe"}
        )
        assert answer.status_code == status
    (row,) = served.rows()
    assert row["author"] == "j.doe"


def test_uploads_have_limits(tmp_path, monkeypatch):
    served = Served(tmp_path, monkeypatch, max_upload_mb=0.05)
    client = served.client()
    token = csrf(client.get("/"))
    big = io.BytesIO(os.urandom(80_000))
    answer = client.post(
        "/search", data={"file": (big, "big.jpg"), "csrf_token": token}, headers={"Accept": "application/json"}
    )
    assert answer.status_code == 413 and answer.get_json()["status"] == 413
    answer = client.post("/search", data={"file": (io.BytesIO(b"%!PS-Adobe-3.0 EPSF"), "x.eps"), "csrf_token": token})
    assert answer.status_code == 400 and "not an image file this app reads" in answer.text
    assert client.post("/search", data={"csrf_token": token}).status_code == 400
    image = io.BytesIO()
    Image.new("RGB", (20, 20)).save(image, "PNG")
    image.seek(0)
    assert client.post("/search", data={"file": (image, "x.png")}).status_code == 403


def test_thumbnails_come_from_the_nights_store_by_id_only(served, tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(jpeg, "JPEG")
    keys = [f"PPN6/{i}.jpg|1|1" for i in served.ids]
    Inbox(tmp_path / "incoming").put(keys[:2], [(jpeg.getvalue(), jpeg.getvalue())] * 2)
    done = update_views(served.site.views, Inbox(tmp_path / "incoming"), served.ids[:2], keys[:2], ["a", "b"])
    assert done.from_extraction == 2
    client = served.client()
    answer = client.get(f"/images/{served.ids[0]}/thumbnail.jpg")
    assert answer.status_code == 200 and answer.mimetype == "image/jpeg" and answer.data == jpeg.getvalue()
    assert (
        client.get(
            f"/images/{served.ids[0]}/thumbnail.jpg", headers={"If-None-Match": answer.headers["ETag"]}
        ).status_code
        == 304
    )
    assert client.get(f"/images/{served.ids[5]}/preview.jpg").status_code == 404
    assert client.get(f"/images/{served.ids[0]}/original.jpg").status_code == 404


def test_an_image_server_and_a_viewer_replace_the_nights_views_in_the_pages(tmp_path, monkeypatch):
    served = Served(
        tmp_path,
        monkeypatch,
        image_url="https://iiif.example.org/iiif/{ppn}/{filename}/full/!{side},{side}/0/default.jpg",
        viewer_url="https://viewer.example.org/{ppn}?page={filename}&id={id}",
    )
    answer = served.client().get(f"/images/{served.ids[0]}")
    assert "https://iiif.example.org/iiif/600000000/00000001.jpg/full/!640,640/0/default.jpg" in answer.text
    assert "https://viewer.example.org/600000000?page=00000001.jpg&amp;id=1000001" in answer.text
    assert "img-src 'self' data: blob: https://iiif.example.org" in answer.headers["Content-Security-Policy"]


def test_a_nights_new_lists_are_served_without_a_restart(served, tmp_path):
    client = served.client()
    before = client.get(f"/images/{served.ids[0]}.json").get_json()
    other = tmp_path / "other"
    served_run(other, N + 5, per_record=6, seed=7, date="2026-12-02")
    for name in ("similarities.hdf5", "copies.h5", "map.h5", "run_report.json"):
        shutil.copy(other / name, served.artifacts / f".{name}.new")
        os.replace(served.artifacts / f".{name}.new", served.artifacts / name)
    served.refresh()
    after = client.get(f"/images/{served.ids[0]}.json").get_json()
    assert after != before and after == served.state.served.snapshot.run.listing(0)
    assert client.get("/health").get_json()["date"] == "2026-12-02"
    assert client.get(f"/images/{1_000_001 + N + 2}").status_code == 200


def test_health_is_503_with_the_reason_until_a_run_can_be_read(tmp_path, monkeypatch):
    served = Served(tmp_path, monkeypatch)
    (served.artifacts / "similarities.hdf5").write_bytes(b"not hdf5")
    fresh = create_app(served.settings, served.site, start=False)
    fresh.extensions["webapp"].served.refresh()
    answer = fresh.test_client().get("/health")
    assert answer.status_code == 503 and "similarities.hdf5 cannot be read" in answer.get_json()["reason"]
    assert fresh.test_client().get("/").status_code == 503
    assert fresh.test_client().get(f"/images/{served.ids[0]}.json").status_code == 503


def test_the_review_queue_leaves_out_the_pairs_judged(served):
    client, token = served.logged_in()
    queue = client.get("/review.json").get_json()["pairs"]
    assert queue and queue[0]["kind"] == "copies across records"
    first = queue[0]
    assert served.judge(client, first["image"]["id"], first["similar_image"]["id"], "right", token).status_code == 303
    after = client.get("/review.json").get_json()["pairs"]
    assert len(after) == len(queue) - 1 and after[0] == queue[1]
    page = client.get("/review")
    assert page.status_code == 200 and f"Pair 1 of {len(after)}" in page.text


def test_the_maps_data_holds_every_image(served):
    client = served.client()
    points = client.get("/map/points.bin").data
    ids = client.get("/map/ids.json").get_json()
    assert ids == served.ids.tolist() and len(points) == 9 * N
    xy = np.frombuffer(points[: 8 * N], dtype="<f4").reshape(N, 2)
    assert np.isfinite(xy).all() and (0 <= xy).all() and (xy <= 1).all()
    assert client.get("/map").status_code == 200


def test_the_command_adds_curators_and_stops_on_a_bad_setting_or_a_port_in_use(tmp_path, monkeypatch, capsys):
    import socket

    users = tmp_path / "curators.txt"
    config_path = write_config(
        tmp_path / "luigi.cfg",
        {"paths": {"artifacts": tmp_path / "artifacts"}, "serve": {"users": users, "secret_key": tmp_path / "key"}},
    )
    with luigi_config(monkeypatch, config_path):
        monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        assert serve.main(["--add-user", "jdoe"]) == 0
        assert Users(users).verify("jdoe", PASSWORD) and not Users(users).verify("jdoe", "other password")
        assert oct(users.stat().st_mode & 0o777) == "0o600"
        monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
        assert serve.main(["--add-user", "ann"]) == 2
        assert "at least 8 characters" in capsys.readouterr().err
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            assert serve.main(["--port", str(taken.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    bad = write_config(tmp_path / "bad.cfg", {"serve": {"viewer_url": "https://viewer/{page}"}})
    with luigi_config(monkeypatch, bad):
        assert serve.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: [serve] viewer_url='https://viewer/{page}' names {page}") and "\n" not in err


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "/\\evil.example", "https://evil.example/", "javascript:alert(1)"]
)
def test_a_login_never_redirects_off_the_app(served, target):
    client = served.client()
    token = csrf(client.get("/login"))
    answer = client.post("/login", data={"name": "curator", "password": PASSWORD, "csrf_token": token, "next": target})
    assert answer.status_code == 303 and answer.headers["Location"] == "/"


def test_uploads_beyond_the_one_queried_and_the_one_waiting_are_refused_at_once():
    import threading
    import time

    from webapp.state import Queries

    release = threading.Event()

    class Slow:
        def query(self, files, k):
            release.wait(10)
            return [{"query": files[0], "neighbours": []}]

        def close(self):
            pass

    queries = Queries(lambda previous: Slow())
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(queries.query("x", 5, "d"))) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="keep the model busy"):
        queries.query("x", 5, "d")
    assert time.monotonic() - started < 1
    release.set()
    for t in threads:
        t.join()
    assert len(answers) == 2


def test_a_verdict_that_cannot_be_written_is_503_with_the_reason(tmp_path, monkeypatch):
    served = Served(tmp_path, monkeypatch)
    (tmp_path / "not-a-folder").write_text("")
    dead = write_config(
        tmp_path / "dead.cfg",
        {
            "paths": {"artifacts": served.artifacts},
            "cms": {"url": "postgresql+psycopg://postgres@127.0.0.1:1/test"},
            "verdicts": {"source": "cms"},
        },
    )
    for config_path, reason in (
        (
            write_config(tmp_path / "csv.cfg", {"verdicts": {"csv": tmp_path / "not-a-folder" / "v.csv"}}),
            "cannot be written",
        ),
        (dead, "does not answer"),
    ):
        served.config = config_path
        client, token = served.logged_in()
        answer = served.judge(
            client, served.ids[0], served.ids[1], "wrong", token, headers={"Accept": "application/json"}
        )
        assert answer.status_code == 503 and reason in answer.get_json()["error"]
        page = served.judge(client, served.ids[0], served.ids[1], "wrong", token)
        assert page.status_code == 503 and reason in page.text and "Traceback" not in page.text


def test_the_apps_settings_defaults_are_the_shipped_ones(tmp_path, monkeypatch):
    with luigi_config(monkeypatch, write_config(tmp_path / "empty.cfg", {})):
        assert serve.serve_settings() == ServeSettings()
