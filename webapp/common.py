"""What the pages share: the app's state, the served snapshot, how an image is shown (its
thumbnail, preview and viewer link), and answers in HTML or JSON."""

import dataclasses
import urllib.parse

from flask import abort, current_app, g, jsonify, request, url_for

from pipeline.images import PREVIEW, THUMBNAIL


@dataclasses.dataclass
class Site:
    """What the app takes from the pipeline's application layer (``tasks.serve`` makes it).

    Attributes
    ----------
    judge : callable(image_id, similar_image_id, verdict, author, images) -> str
        Writes a verdict where the site keeps them, as ``similar-images-verdict`` does; raises
        PipelineError (a bad pair, no place for verdicts) or CmsError (the database does not answer).
    read_verdicts : callable() -> DataFrame or None
        The verdict rows at the source (None: the site keeps none).
    make_querier : callable(previous) -> object with query(files, k) and close()
        The query command's path for the run served now.
    views : pipeline.thumbnails.ViewStore or None
        The night's thumbnails and previews (None: the site's image server shows them).
    verdicts_where : str
        Where verdicts are written, in words (for the pages).
    """

    judge: object
    read_verdicts: object
    make_querier: object
    views: object = None
    verdicts_where: str = ""


def state():
    """The app's state (webapp.App)."""
    return current_app.extensions["webapp"]


def snapshot():
    """The served snapshot; 503 when there is none."""
    served = state().served.snapshot
    if served is None:
        abort(503, description=f"no finished run can be read: {state().served.problem}")
    return served


def wants_json():
    """Whether the answer is for a script: a .json URL, or JSON preferred to HTML."""
    if request.path.endswith(".json"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def json_answer(document, status=200):
    response = jsonify(document)
    response.status_code = status
    return response


def row_or_404(run, image_id):
    """The row of a database ID as given in a URL; 404 for any text that is not an image of the run."""
    row = run.row_of(image_id)
    if row is None:
        abort(404, description=f"no image has the database ID {image_id!r} in the run of {run.date}")
    return row


def _template(template, run, row, **extra):
    values = {
        "id": run.id_of(row),
        "ppn": run.ppn[row],
        "filename": run.filename[row],
        **extra,
    }
    return template.format(**{k: urllib.parse.quote(str(v), safe="") for k, v in values.items()})


def image_src(run, row, kind):
    """The URL of an image's thumbnail or preview: the site's image server's, or the app's own."""
    image_url = state().settings.image_url
    if image_url:
        return _template(image_url, run, row, side=THUMBNAIL if kind == "thumbnail" else PREVIEW)
    return url_for("images.view", image_id=str(run.id_of(row)), kind=kind)


def viewer_href(run, row):
    """The image's page in the site's viewer, or None when no ``[serve] viewer_url`` is set."""
    template = state().settings.viewer_url
    return _template(template, run, row) if template else None


def shown(run, row, **extra):
    """An image as the templates show it."""
    return {
        **run.entry(row),
        "href": url_for("images.page", image_id=str(run.id_of(row))),
        "thumbnail": image_src(run, row, "thumbnail"),
        "viewer": viewer_href(run, row),
        **extra,
    }


def local_path(target, default):
    """``target`` when it is a path of this site (``/...``, no scheme, host or backslash), else ``default``:
    a redirect never leaves the app."""
    parts = urllib.parse.urlsplit(target or "")
    if (
        not target
        or not target.startswith("/")
        or "\\" in target
        or parts.scheme
        or parts.netloc
        or target.startswith("//")
    ):
        return default
    return target


def curator():
    """The curator's name for a writing request; 403 without one."""
    if not g.user:
        abort(403, description="writing a verdict needs a curator's login")
    return g.user
