"""Who is asking, and what protects the app from a hostile network: the curators' users file
(argon2 hashes), a reverse proxy's user header (only from the proxy named in the settings), the
CSRF token of every writing request, a login throttle and the response headers.
"""

import contextlib
import fcntl
import ipaddress
import logging
import os
import re
import secrets
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from pipeline.errors import ConfigError, named
from pipeline.h5io import atomic_path

logger = logging.getLogger(__name__)

#: A curator's name: letters, digits and . _ @ -, at most 64 (it is the verdicts' author).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
#: Failed logins from one address that make it wait, and for how many seconds.
FAILURES, LOCKOUT = 5, 300
#: The methods that write.
WRITING = ("POST", "PUT", "PATCH", "DELETE")
_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))  # verified against for an unknown name: the same time either way


def valid_name(name):
    return bool(NAME.fullmatch(name or ""))


class Users:
    """The users file: one ``name:argon2-hash`` per line, read again when it changes.

    Parameters
    ----------
    path : str
    """

    def __init__(self, path):
        self.path = path
        self._read_as = None
        self._hashes = {}
        self._lock = threading.Lock()

    def hashes(self):
        """name -> hash ({} when there is no file)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return {}
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if identity != self._read_as:
                hashes = {}
                with open(self.path, encoding="utf-8") as f:
                    for line in f:
                        name, _, hashed = line.strip().partition(":")
                        if valid_name(name) and hashed:
                            hashes[name] = hashed
                self._hashes, self._read_as = hashes, identity
            return dict(self._hashes)

    def __contains__(self, name):
        return name in self.hashes()

    def verify(self, name, password):
        """Whether ``password`` is ``name``'s (False for an unknown name, after the same work)."""
        hashed = self.hashes().get(name)
        try:
            return _HASHER.verify(hashed or _DUMMY, password or "") and hashed is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def add(self, name, password):
        """Add a curator, or give one a new password."""
        if not valid_name(name):
            raise ConfigError(f"{name!r} is not a curator's name: letters, digits and . _ @ -, at most 64")
        if len(password or "") < 8:
            raise ConfigError("a password has at least 8 characters")
        self._rewrite(name, _HASHER.hash(password))

    def remove(self, name):
        """Remove a curator; False when there was none of that name."""
        if name not in self.hashes():
            return False
        self._rewrite(name, None)
        return True

    def _rewrite(self, name, hashed):
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f".{os.path.basename(self.path)}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            hashes = self.hashes()
            if hashed is None:
                hashes.pop(name, None)
            else:
                hashes[name] = hashed
            with atomic_path(self.path) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(f"{n}:{h}\n" for n, h in sorted(hashes.items()))
                os.chmod(tmp, 0o600)


def secret_key(path):
    """The key that signs the session cookies: read from ``path``, made there (mode 0600) when missing."""
    with contextlib.suppress(FileNotFoundError):
        with open(path, "rb") as f:
            key = f.read().strip()
        if len(key) >= 32:
            return key
        raise ConfigError(f"the key file {path!r} holds fewer than 32 bytes; remove it and a new one is made")
    key = secrets.token_hex(32).encode()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(key)
        os.chmod(tmp, 0o600)
    logger.info("a new key signs the app's session cookies: %s", path)
    return key


class Throttle:
    """Failed logins per address: after FAILURES within LOCKOUT seconds, the address waits."""

    def __init__(self, failures=FAILURES, lockout=LOCKOUT):
        self.failures, self.lockout = failures, lockout
        self._seen = {}
        self._lock = threading.Lock()

    def _recent(self, address, now):
        return [t for t in self._seen.get(address, []) if now - t < self.lockout]

    def blocked(self, address):
        with self._lock:
            return len(self._recent(address, time.monotonic())) >= self.failures

    def failed(self, address):
        now = time.monotonic()
        with self._lock:
            self._seen[address] = [*self._recent(address, now), now]
            if len(self._seen) > 10_000:  # an address flood: forget the oldest
                self._seen.pop(next(iter(self._seen)))


def proxies(addresses):
    """The trusted proxies' networks from their addresses (or CIDR ranges)."""
    networks = []
    for text in addresses:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{named('trusted_proxy')} has {text.strip()!r}, which is not an IP address") from None
    return tuple(networks)


class ProxyFix:
    """WSGI middleware: a request from a trusted proxy gets its client's address, scheme, host and
    path prefix from the X-Forwarded-* headers, and is marked ``webapp.proxied`` (its user header
    may then be believed). A request from anywhere else is left as it came, headers ignored."""

    def __init__(self, app, networks):
        self.app, self.networks = app, networks

    def trusted(self, address):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def __call__(self, environ, start_response):
        environ["webapp.proxied"] = False
        if self.networks and self.trusted(environ.get("REMOTE_ADDR", "")):
            environ["webapp.proxied"] = True
            forwarded_for = environ.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip()
            if forwarded_for:
                environ["REMOTE_ADDR"] = forwarded_for
            scheme = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
            if scheme in ("http", "https"):
                environ["wsgi.url_scheme"] = scheme
            host = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
            if host:
                environ["HTTP_HOST"] = host
            prefix = environ.get("HTTP_X_FORWARDED_PREFIX", "").strip().rstrip("/")
            if prefix and re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix):
                environ["SCRIPT_NAME"] = prefix
        return self.app(environ, start_response)


def content_security_policy(image_origin=""):
    """The Content-Security-Policy of every response: scripts, styles and requests of the app's
    own origin only, images also from the site's image server and as data URIs (the map)."""
    images = " ".join(filter(None, ["'self'", "data:", "blob:", image_origin]))
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src {images}; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
