"""Logging in and out (``/login``, ``/logout``): a curator of the users file by name and password;
behind a trusted reverse proxy, the proxy's user header logs a curator in instead."""

import logging

from flask import Blueprint, abort, g, redirect, render_template, request, session, url_for

from .common import local_path, state

logger = logging.getLogger(__name__)
blueprint = Blueprint("auth", __name__)


def _next():
    return local_path(request.values.get("next", ""), url_for("search.home"))


@blueprint.get("/login")
def login():
    return render_template("login.html", next=_next(), failed=False)


@blueprint.post("/login")
def check():
    address = request.remote_addr or ""
    throttle = state().throttle
    if throttle.blocked(address):
        abort(429, description="too many failed logins from this address; wait five minutes")
    name = request.form.get("name", "").strip()
    if state().users.verify(name, request.form.get("password", "")):
        session.clear()
        session["user"] = name
        session.permanent = True
        logger.info("%s logged in from %s", name, address)
        return redirect(_next(), 303)
    throttle.failed(address)
    logger.warning("a failed login as %r from %s", name[:64], address)
    return render_template("login.html", next=_next(), failed=True), 401


@blueprint.post("/logout")
def logout():
    if g.user:
        logger.info("%s logged out", g.user)
    session.clear()
    return redirect(url_for("search.home"), 303)
