"""Judging: a curator's verdict on a pair (``POST /images/{id}/verdicts``), written where the site
keeps verdicts by the verdict command's own code, and the review queue (``GET /review``) of the
pairs most worth a curator's minute (``pipeline.review``; docs/operations.md says why)."""

import logging

import numpy as np
from flask import Blueprint, abort, redirect, render_template, request, url_for

from pipeline.errors import CmsError, ConfigError, PipelineError
from pipeline.review import KINDS, pair_distances

from .common import curator, image_src, json_answer, local_path, row_or_404, shown, snapshot, state, wants_json
from .images import verdict_of
from .state import in_queue_order

logger = logging.getLogger(__name__)
blueprint = Blueprint("judging", __name__)

CHOICES = ("right", "wrong", "withdraw")


@blueprint.post("/images/<image_id>/verdicts")
def write(image_id):
    author = curator()
    served = snapshot()
    run = served.run
    row = row_or_404(run, image_id)
    other = request.form.get("similar_image_id", "").strip()
    verdict = request.form.get("verdict", "").strip().lower()
    if verdict not in CHOICES:
        abort(400, description=f"verdict={verdict[:20]!r} must be one of {', '.join(CHOICES)}")
    if not other or len(other) > 255:
        abort(400, description="similar_image_id names the other image of the pair")
    me = run.id_of(row)
    try:
        message = state().site.judge(me, other, verdict, author, images=run)
    except (CmsError, ConfigError) as exc:  # the place of the verdicts, not the request, is at fault
        abort(503, description=str(exc))
    except PipelineError as exc:
        abort(400, description=str(exc))
    state().served.ledger.wrote(me, other, verdict, author)
    logger.info("verdict by %s: %s and %s %s (%s)", author, me, other, verdict, request.remote_addr)
    if wants_json():
        return json_answer({"message": message, "verdict": verdict_of(served, me, other)})
    return redirect(local_path(request.form.get("next", ""), url_for("images.page", image_id=str(me))), 303)


def _queue():
    served = snapshot()
    return served, in_queue_order(served, state().served.ledger)


@blueprint.get("/review.json")
def queue_json():
    served, (a, b, kinds) = _queue()
    run = served.run
    return json_answer(
        {
            "date": run.date,
            "pairs": [
                {"image": run.entry(x), "similar_image": run.entry(y), "kind": KINDS[k]}
                for x, y, k in zip(a.tolist(), b.tolist(), kinds.tolist())
            ],
        }
    )


@blueprint.get("/review")
def queue():
    served, (a, b, kinds) = _queue()
    run = served.run
    try:
        at = max(0, int(request.args.get("at", "0")))
    except ValueError:
        abort(400, description="at must be a whole number: the pair's place in the queue")
    if at >= len(a):
        return render_template("review.html", run=run, pair=None, at=at, total=len(a), kinds=KINDS)
    x, y = int(a[at]), int(b[at])
    distance = float(pair_distances(run, a[at : at + 1], b[at : at + 1])[0])
    distance = distance if np.isfinite(distance) else None
    pair = {
        "image": {**shown(run, x), "preview": image_src(run, x, "preview")},
        "other": {**shown(run, y), "preview": image_src(run, y, "preview")},
        "kind": KINDS[int(kinds[at])],
        "distance": distance,
        "similarity": float(run.similarity([distance])[0]) if distance is not None else None,
        "verdict": verdict_of(served, run.id_of(x), run.id_of(y)),
    }
    return render_template("review.html", run=run, pair=pair, at=at, total=len(a), kinds=KINDS)
