"""The web app: curators and readers browse, search and judge the lists of the last finished run.

Pages are rendered on the server (Flask, Jinja2 with every value escaped) with a little plain
JavaScript; one module per group of pages (:mod:`.search`, :mod:`.images`, :mod:`.judging`,
:mod:`.atlas`, :mod:`.run`, :mod:`.auth`), each calling the same library functions as the tasks
and the query command. ``similar-images-serve`` (``tasks.serve``) runs it under waitress.
"""

import dataclasses
import logging
import secrets
import urllib.parse

from flask import Flask, abort, g, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException, InternalServerError

from . import atlas, auth, images, judging, run, search, security
from .common import Site, json_answer, wants_json
from .settings import ServeSettings
from .state import Ledger, Queries, Served

logger = logging.getLogger(__name__)

__all__ = ["App", "ServeSettings", "Site", "create_app"]

#: Paths open without a login when ``[serve] public = false``.
OPEN = ("auth.login", "auth.check", "auth.logout", "run.health", "static")


@dataclasses.dataclass
class App:
    """The app's state between requests."""

    settings: ServeSettings
    site: Site
    served: Served
    queries: Queries
    users: security.Users
    throttle: security.Throttle


def create_app(settings, site, start=True):
    """The WSGI app serving ``settings.artifacts``; with ``start``, the run is read now and watched."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=security.secret_key(settings.secret_key),
        MAX_CONTENT_LENGTH=int(settings.max_upload_mb * 2**20) + 64 * 1024,  # the file and its form
        SESSION_COOKIE_NAME="similar_images_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )
    app.json.sort_keys = False
    served = Served(settings.artifacts, settings.reload_seconds, Ledger(site.read_verdicts))
    app.extensions["webapp"] = App(
        settings, site, served, Queries(site.make_querier), security.Users(settings.users), security.Throttle()
    )
    for module in (search, images, judging, atlas, run, auth):
        app.register_blueprint(module.blueprint)
    origin = urllib.parse.urlsplit(settings.image_url)
    policy = security.content_security_policy(f"{origin.scheme}://{origin.netloc}" if origin.netloc else "")

    @app.before_request
    def identify():
        g.user = None
        proxied = request.environ.get("webapp.proxied")
        if proxied and request.headers.get(settings.user_header):
            name = request.headers[settings.user_header].strip()
            g.user = name if security.valid_name(name) else None
        elif session.get("user") and session["user"] in app.extensions["webapp"].users:
            g.user = session["user"]
        if request.method in security.WRITING:
            _check_csrf()
        if not settings.public and g.user is None and request.endpoint not in OPEN:
            if wants_json() or request.method != "GET":
                abort(403, description="this app needs a curator's login")
            return redirect(url_for("auth.login", next=request.full_path))
        return None

    @app.context_processor
    def template_values():
        return {"csrf_token": csrf_token, "user": g.get("user"), "public": settings.public}

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = policy
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(HTTPException)
    def http_error(error):
        if wants_json() or request.method != "GET" and not request.accept_mimetypes.accept_html:
            return json_answer({"error": error.description, "status": error.code}, error.code)
        return render_template("error.html", error=error), error.code

    @app.errorhandler(Exception)
    def unexpected(error):
        logger.exception("%s %s failed", request.method, request.path)
        message = "the app failed on this request; the error is in its log"
        if wants_json():
            return json_answer({"error": message, "status": 500}, 500)
        return render_template("error.html", error=InternalServerError(message)), 500

    app.wsgi_app = security.ProxyFix(app.wsgi_app, security.proxies(settings.trusted_proxy))
    if start:
        served.start()
    return app


def csrf_token():
    """This session's CSRF token (made at its first form)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _check_csrf():
    """403 for a writing request without this session's token, or from another site's page."""
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != request.host:
        abort(403, description="a request from another site's page is refused")
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token", "")
    expected = session.get("csrf")
    if not expected or not secrets.compare_digest(str(sent), expected):
        abort(403, description="the form's CSRF token is missing or out of date; reload the page and try again")
