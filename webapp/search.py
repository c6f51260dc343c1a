"""Search: by database ID, PPN or the beginning of a file name (``GET /search?q=``), and by an
uploaded image file (``POST /search``), queried as the query command queries it and never added
to the collection or written under the artifacts folder."""

import logging
import os
import tempfile

from flask import Blueprint, abort, redirect, render_template, request, url_for
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError, named

from .common import json_answer, shown, snapshot, state, wants_json

logger = logging.getLogger(__name__)
blueprint = Blueprint("search", __name__)

#: The formats an upload may be in (Pillow's names): those of the collections' scans.
UPLOAD_FORMATS = ("JPEG", "MPO", "PNG", "TIFF", "GIF", "BMP", "DIB", "WEBP", "TGA", "JPEG2000", "PPM")


@blueprint.get("/")
def home():
    served = snapshot()
    return render_template("home.html", run=served.run, queue=len(served.queue[0]))


@blueprint.get("/search.json")
def by_text_json():
    return by_text()


@blueprint.get("/search")
def by_text():
    run = snapshot().run
    text = request.args.get("q", "").strip()
    if len(text) > 500:
        abort(400, description="a search text has at most 500 characters")
    found = run.search(text)
    if wants_json():
        return json_answer(
            {
                "query": text,
                "matched": found.how,
                "total": found.total,
                "images": [
                    {**run.entry(r), "url": url_for("images.page", image_id=str(run.id_of(r)))}
                    for r in found.rows.tolist()
                ],
            }
        )
    if found.how == "id":
        return redirect(url_for("images.page", image_id=str(run.id_of(found.rows[0]))))
    images = [shown(run, r) for r in found.rows.tolist()]
    return render_template("search.html", run=run, text=text, found=found, images=images)


@blueprint.post("/search")
def by_upload():
    served = snapshot()
    run = served.run
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        abort(400, description="choose an image file to query (form field file)")
    limit = int(state().settings.max_upload_mb * 2**20)
    with tempfile.TemporaryDirectory(prefix="similar-images-upload-") as folder:
        path = os.path.join(folder, "upload")
        upload.save(path)
        size = os.path.getsize(path)
        if size > limit:
            abort(
                413,
                description=f"the file is larger than {named('max_upload_mb')}={state().settings.max_upload_mb:g} MB",
            )
        _check_format(path)
        k = int(run.attrs.get("k", 5))
        try:
            result = state().queries.query(path, k, served.run.digest)
        except TimeoutError as exc:
            abort(503, description=str(exc))
        except PipelineError as exc:
            abort(503, description=f"the query cannot be made: {exc}")
    name = os.path.basename(upload.filename)[:200]
    if result.get("error"):
        abort(400, description=f"{name} cannot be read: {result['error']}")
    neighbours = result["neighbours"]
    logger.info("query by upload: %s, %d bytes", name, size)
    if wants_json():
        return json_answer({"query": name, "neighbours": [{k: n[k] for k in _KEYS} for n in neighbours]})
    rows = [run.row_of(n["id"]) for n in neighbours]
    images = [
        shown(run, r, distance=n["distance"], similarity=n["similarity"])
        for r, n in zip(rows, neighbours)
        if r is not None
    ]
    return render_template("upload.html", run=run, name=name, images=images)


_KEYS = ("id", "ppn", "filename", "distance", "similarity")


def _check_format(path):
    """400 unless the file is an image in one of UPLOAD_FORMATS (read from its header only)."""
    try:
        with Image.open(path) as image:
            found = image.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        found = None
    if found not in UPLOAD_FORMATS:
        shown_formats = ", ".join(f.replace("JPEG2000", "JPEG 2000") for f in UPLOAD_FORMATS if f not in ("MPO", "DIB"))
        abort(400, description=f"not an image file this app reads; upload {shown_formats}")
