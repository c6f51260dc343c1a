"""Thumbnails and previews: made from the decoder's reduced copy, in colour even where the model
sees grey; moved from the extraction's inbox into the store, made for the images without, and
forgotten for the images gone; and nights that keep them up to date with the collection."""

import datetime
import io
import json
import os
import shutil

import luigi
import numpy as np
import pytest
from PIL import Image

from pipeline.decoders import DecoderPool
from pipeline.demo import make_collection
from pipeline.images import PREVIEW, THUMBNAIL, decode_image, decode_views, make_views
from pipeline.thumbnails import Inbox, ViewStore, update_views
from tasks import Nightly

from .conftest import SMALL_BASES, luigi_config, pipeline_config


def jpeg(data):
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image


def colourful(path, size=(1140, 840)):
    rng = np.random.default_rng(0)
    pixels = np.zeros((*size[::-1], 3), dtype=np.uint8)
    pixels[..., 0] = 200
    pixels[..., 2] = rng.integers(0, 60, size=size[::-1])
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.mark.parametrize("size", [(1140, 840), (300, 2000), (90, 60)])
def test_views_fit_their_sides_and_keep_the_aspect(size):
    thumbnail, preview = (jpeg(v) for v in make_views(Image.new("RGB", size, (10, 120, 200))))
    for view, side in ((thumbnail, THUMBNAIL), (preview, PREVIEW)):
        assert max(view.size) <= max(side, max(size) if max(size) < side else 0)
        assert abs(view.size[0] / view.size[1] - size[0] / size[1]) < 0.1
    assert max(preview.size) >= min(max(size), PREVIEW // 2)


@pytest.mark.parametrize(
    "coding, size",
    [
        ({}, (1140, 840)),  # JFIF, YCbCr: read once, in YCbCr
        ({}, (5000, 4800)),  # reduced after libjpeg's 1/8
        ({"keep_rgb": True}, (1140, 840)),  # coded in RGB: libjpeg gives no YCbCr, so read twice
        ({"exif": 6}, (1140, 840)),  # turned upright
    ],
)
def test_a_colour_jpeg_read_in_grey_for_the_model_has_views_in_colour(tmp_path, coding, size):
    path = colourful(tmp_path / "red.jpg", size=size)
    if coding:
        exif = Image.Exif()
        exif[0x0112] = coding.get("exif", 1)
        Image.open(path).save(path, quality=90, keep_rgb=coding.get("keep_rgb", False), exif=exif)
    decoded = decode_image(path, colour="grey", views=True)
    assert (decoded.pixels[..., 0] == decoded.pixels[..., 2]).all()  # the model's input: grey
    thumbnail = jpeg(decoded.views[0]).convert("RGB")
    assert np.asarray(thumbnail, dtype=int)[..., 0].mean() > np.asarray(thumbnail, dtype=int)[..., 2].mean() + 100
    upright = size[::-1] if coding.get("exif") == 6 else size
    assert abs(thumbnail.size[0] / thumbnail.size[1] - upright[0] / upright[1]) < 0.02
    # the input is the same, bit for bit, whether the views are made or not
    np.testing.assert_array_equal(decoded.pixels, decode_image(path, colour="grey").pixels)


def test_a_grey_file_has_grey_views(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("L", (400, 300), 90).save(grey)
    assert jpeg(decode_image(grey, views=True).views[1]).mode == "L"
    Image.new("L", (400, 300), 90).save(tmp_path / "grey.jpg")
    assert jpeg(decode_image(tmp_path / "grey.jpg", colour="grey", views=True).views[1]).mode == "L"


def test_the_store_takes_the_inbox_makes_the_missing_and_forgets_the_gone(tmp_path):
    paths = [colourful(tmp_path / f"{i}.jpg", size=(300 + i, 200)) for i in range(4)]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    paths.append(tmp_path / "broken.jpg")
    keys = [f"PPN1/{p.name}|1|{i}" for i, p in enumerate(paths)]
    ids = np.arange(10, 15)
    inbox, store = Inbox(tmp_path / "incoming"), ViewStore(tmp_path / "views" / "views.sqlite")
    inbox.put(keys[:2], [make_views(Image.open(p)) for p in paths[:2]])
    inbox.put(["PPN9/gone.jpg|1|1"], [make_views(Image.open(paths[0]))])
    with DecoderPool(processes=1, decode=decode_views) as pool:
        done = update_views(store, inbox, ids, keys, [str(p) for p in paths], pool)
    assert (done.images, done.from_extraction, done.decoded, done.removed) == (5, 2, 2, 0)
    assert [k for k, _ in done.failed] == [keys[4]] and "not a recognised image format" in done.failed[0][1]
    assert inbox.files() == []
    for i in range(4):
        assert max(jpeg(store.view(ids[i], "thumbnail")).size) <= THUMBNAIL
        assert jpeg(store.view(str(ids[i]), "preview")).size == Image.open(paths[i]).size
    assert store.view(14, "thumbnail") is None and store.view(99, "preview") is None
    with pytest.raises(ValueError):
        store.view(10, "original")
    done = update_views(store, inbox, ids[1:3], keys[1:3], [str(p) for p in paths[1:3]])
    assert (done.decoded, done.removed) == (0, 2)
    assert store.view(10, "thumbnail") is None and store.view(11, "thumbnail") is not None


def test_an_unreadable_store_is_set_aside_and_made_anew(tmp_path):
    path = colourful(tmp_path / "a.jpg")
    store = ViewStore(tmp_path / "views.sqlite")
    (tmp_path / "views.sqlite").write_bytes(b"garbage" * 1000)
    with DecoderPool(processes=1, decode=decode_views) as pool:
        done = update_views(store, Inbox(tmp_path / "in"), np.array([1]), ["k"], [str(path)], pool)
    assert "views.sqlite is unreadable" in done.repaired and done.decoded == 1
    assert (tmp_path / "views.sqlite.damaged").exists() and store.view(1, "preview") is not None


def test_nights_keep_the_views_up_to_date_with_the_collection(tmp_path, monkeypatch):
    make_collection(tmp_path / "content", bases=SMALL_BASES)
    config = pipeline_config(tmp_path)
    artifacts = tmp_path / "artifacts"

    def views_of(date):
        with luigi_config(monkeypatch, config):
            result = luigi.build([Nightly(date=date)], local_scheduler=True, detailed_summary=True, workers=1)
        assert result.status == luigi.execution_summary.LuigiStatusCode.SUCCESS, result.summary_text
        return json.loads((artifacts / "run_report.json").read_text())["thumbnails"]

    day = datetime.date(2026, 12, 1)
    first = views_of(day)
    assert (first["images"], first["from_extraction"], first["decoded"], first["failed"]) == (18, 18, 0, 0)
    assert 1_000 < first["bytes_per_image"] < 100_000
    assert not os.listdir(artifacts / "thumbnails" / "incoming")
    record = sorted((tmp_path / "content").glob("PPN*"))[0]
    changed = sorted(record.glob("*.jpg"))[0]
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)  # replaced in place
    second = views_of(day + datetime.timedelta(days=1))
    assert (second["from_extraction"], second["decoded"], second["removed"]) == (1, 0, 1)
    (artifacts / "thumbnails" / "views.sqlite").unlink()
    shutil.rmtree(artifacts / "runs")
    third = views_of(day + datetime.timedelta(days=2))
    assert (third["from_extraction"], third["decoded"]) == (0, 18)
