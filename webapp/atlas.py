"""The map (``GET /map``): the whole collection on a canvas, zoomable and pannable, thumbnails on
zoom, a click opening an image's page. The page draws what ``/map/points.bin`` (each image's place
and marks) and ``/map/ids.json`` give, made once per served run."""

import json
import threading

import numpy as np
from flask import Blueprint, make_response, render_template, request, url_for

from .common import snapshot

blueprint = Blueprint("atlas", __name__)

#: Marks of an image on the map: in a copy group, its list changed tonight.
IN_GROUP, CHANGED = 1, 2
_made = {}
_lock = threading.Lock()


def _data(run):
    """(points, ids) of a run: float32 x, y per image (NaN: not placed) then one uint8 of marks per
    image; the IDs as a JSON array. Made at the first request and kept for the run."""
    with _lock:
        if run.digest not in _made:
            n = len(run)
            xy = run.xy if run.xy is not None else np.full((n, 2), np.nan, dtype=np.float32)
            marks = (run.group >= 0).astype(np.uint8) * IN_GROUP
            if run.changed is not None:
                marks |= run.changed.astype(np.uint8) * CHANGED
            points = np.ascontiguousarray(xy, dtype="<f4").tobytes() + marks.tobytes()
            ids = json.dumps(run.ids.tolist(), separators=(",", ":")).encode()
            _made.clear()  # one run at a time
            _made[run.digest] = (points, ids)
        return _made[run.digest]


def _cached(body, mimetype, tag):
    response = make_response(body)
    response.mimetype = mimetype
    response.set_etag(tag)
    response.headers["Cache-Control"] = "no-cache"
    return response.make_conditional(request)


@blueprint.get("/map")
def page():
    run = snapshot().run
    placed = 0 if run.xy is None else int(np.isfinite(run.xy[:, 0]).sum())
    return render_template(
        "map.html",
        run=run,
        placed=placed,
        points=url_for("atlas.points", run=run.digest),
        ids=url_for("atlas.ids", run=run.digest),
        image=url_for("images.page", image_id="ID"),
        thumbnail=url_for("images.view", image_id="ID", kind="thumbnail"),
    )


@blueprint.get("/map/points.bin")
def points():
    run = snapshot().run
    return _cached(_data(run)[0], "application/octet-stream", run.digest)


@blueprint.get("/map/ids.json")
def ids():
    run = snapshot().run
    return _cached(_data(run)[1], "application/json", run.digest)
