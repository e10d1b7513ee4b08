"""Console sessions and CSRF tokens, kept in one encrypted cookie: no session table.

The cookie is a Fernet token (``cryptography``: AES-CBC with HMAC-SHA256 and a timestamp)
holding the signed-in key's name, the CSRF token and the sign-in time. Fernet's own
timestamp gives the idle expiry: every answer re-issues the cookie, so a session lives
``console_session_minutes`` past its last request, and ``console_session_hours`` past
sign-in at most. The Fernet keys are derived (HKDF) from ``secret_keys``, newest first,
so rotating those rotates these. A session names its key by ``kid``: remove the key from
``api_keys`` (or make it an app key) and its sessions are dead at the next request.

Before sign-in there is an anonymous session too, carrying only a CSRF token, so the
sign-in form is protected like every other form (login CSRF).
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from notify.settings import ApiKey, Settings

COOKIE = "notify_console"
PATH = "/console"
#: The hidden form field that carries the CSRF token.
CSRF_FIELD = "csrf"


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    kid: str | None = None  # None: not signed in
    signed_in_at: int = 0  # Unix seconds

    @property
    def signed_in(self) -> bool:
        return self.kid is not None


def _fernet(settings: Settings) -> MultiFernet:
    keys = []
    for _kid, secret in settings.secret_keys:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                       info=b"notify console session").derive(secret)
        keys.append(Fernet(base64.urlsafe_b64encode(derived)))
    return MultiFernet(keys)


def anonymous() -> Session:
    return Session(csrf=secrets.token_urlsafe(32))


def signed_in(key: ApiKey, now: float | None = None) -> Session:
    """A fresh session for ``key``, with a new CSRF token (never the anonymous one)."""
    return Session(csrf=secrets.token_urlsafe(32), kid=key.kid,
                   signed_in_at=int(time.time() if now is None else now))


def encode(settings: Settings, session: Session, now: float | None = None) -> str:
    """The cookie value; ``now`` is the moment it counts as issued (tests make old ones)."""
    data = json.dumps(asdict(session), separators=(",", ":")).encode()
    return _fernet(settings).encrypt_at_time(data, int(time.time() if now is None else now)
                                             ).decode()


def decode(settings: Settings, value: str, now: float | None = None) -> Session | None:
    """The session in a cookie, or None when it is forged, expired or its key is gone."""
    now = time.time() if now is None else now
    try:
        data = json.loads(_fernet(settings).decrypt_at_time(
            value.encode(), settings.console_session_minutes * 60, int(now)))
        session = Session(csrf=str(data["csrf"]), kid=data["kid"],
                          signed_in_at=int(data["signed_in_at"]))
    except (InvalidToken, ValueError, KeyError, TypeError):
        return None
    if session.kid is None:
        return session  # its age is Fernet's idle limit
    if now - session.signed_in_at > settings.console_session_hours * 3600:
        return None
    return session if key_of(settings, session) is not None else None


def key_of(settings: Settings, session: Session) -> ApiKey | None:
    """The admin key a session was signed in with, if it is still configured."""
    for key in settings.api_keys:
        if key.kid == session.kid and key.scope == "admin":
            return key
    return None


def read(request: web.Request, settings: Settings) -> Session | None:
    value = request.cookies.get(COOKIE)
    return decode(settings, value) if value else None


def is_secure(request: web.Request, settings: Settings) -> bool:
    # Behind a TLS-terminating proxy the request itself is plain HTTP: the public URL says.
    return request.secure or settings.public_url.startswith("https://")


def store(response: web.StreamResponse, request: web.Request, settings: Settings,
          session: Session) -> None:
    response.set_cookie(COOKIE, encode(settings, session), path=PATH, httponly=True,
                        samesite="Strict", secure=is_secure(request, settings))


def forget(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path=PATH)


def is_valid_csrf(session: Session | None, offered: object) -> bool:
    if session is None or not isinstance(offered, str) or not offered:
        return False
    return hmac.compare_digest(session.csrf.encode(), offered.encode())
