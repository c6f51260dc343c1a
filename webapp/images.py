"""An image's page (``GET /images/{id}``), its list as JSON (``GET /images/{id}.json``, equal to
similarities.hdf5), and its thumbnail and preview from the night's store. An image is addressed
by its database ID only: no URL reaches the file system."""

import hashlib

from flask import Blueprint, abort, make_response, render_template, request

from pipeline.thumbnails import KINDS

from .common import image_src, json_answer, row_or_404, shown, snapshot, state, viewer_href
from .state import pair_of

blueprint = Blueprint("images", __name__)

#: Images of the record shown on an image's page at most (the search by PPN lists them all).
RECORD_SHOWN = 48


def verdict_of(served, a, b):
    """What is known of the pair's verdict: ``honoured`` (in force in the lists: right, wrong or
    None) and ``written`` (at the source now), and ``pending`` when they differ (from the next night on)."""
    honoured = served.honoured.get(pair_of(a, b))
    ledger = state().served.ledger
    at_source = ledger.verdict(a, b)
    written = at_source[0] if at_source else None
    pending = ledger.read_at is not None and written != honoured
    return {
        "honoured": honoured,
        "written": written,
        "author": at_source[2] if at_source else "",
        "pending": pending,
        "shown": written if pending else honoured,
    }


@blueprint.get("/images/<image_id>.json")
def listing(image_id):
    run = snapshot().run
    return json_answer(run.listing(row_or_404(run, image_id)))


@blueprint.get("/images/<image_id>")
def page(image_id):
    served = snapshot()
    run = served.run
    row = row_or_404(run, image_id)
    me = run.id_of(row)
    neighbours = []
    for n in run.neighbours_of(row):
        neighbours.append(
            shown(
                run,
                n["row"],
                distance=n["distance"],
                similarity=n["similarity"],
                verdict=verdict_of(served, me, n["id"]),
            )
        )
    listed = {str(n["id"]) for n in neighbours}
    judged = (state().served.ledger.partners(me) | served.honoured_by_image.get(str(me), set())) - listed
    others = []
    for other in sorted(judged):
        other_row = run.row_of(other)
        if other_row is not None:
            others.append(shown(run, other_row, verdict=verdict_of(served, me, run.id_of(other_row))))
    record = run.record_rows(run.ppn[row])
    at = int((record == row).argmax()) if len(record) else 0
    group = run.group_rows(row)
    return render_template(
        "image.html",
        run=run,
        image={**shown(run, row), "preview": image_src(run, row, "preview"), "viewer": viewer_href(run, row)},
        neighbours=neighbours,
        others=others,
        group=[shown(run, r) for r in group if r != row],
        group_number=int(run.group[row]),
        record=[shown(run, r) for r in record[:RECORD_SHOWN] if r != row],
        record_total=len(record),
        previous=shown(run, record[at - 1]) if at > 0 else None,
        following=shown(run, record[at + 1]) if at + 1 < len(record) else None,
        changed=bool(run.changed[row]) if run.changed is not None else None,
        verdicts_where=state().site.verdicts_where,
        problem=state().served.ledger.problem,
    )


@blueprint.get("/images/<image_id>/<kind>.jpg")
def view(image_id, kind):
    """The night's thumbnail or preview of the image (404 when it has none)."""
    if kind not in KINDS:
        abort(404, description=f"an image has a thumbnail and a preview; there is no {kind!r}")
    run = snapshot().run
    row = row_or_404(run, image_id)
    views = state().site.views
    data = views.view(run.id_of(row), kind) if views is not None else None
    if data is None:
        abort(404, description="the night has made no such view of this image yet")
    response = make_response(data)
    response.mimetype = "image/jpeg"
    response.set_etag(hashlib.sha1(data).hexdigest()[:20])
    response.headers["Cache-Control"] = "public, max-age=300"
    return response.make_conditional(request)
