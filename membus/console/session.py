"""Console sign-in: an API key pasted once, then a server-side session behind an opaque cookie.

The cookie holds a random token, never the key: a stolen cookie dies with the session (logout,
expiry, restart) and the key itself is never sent again. The cookie is ``HttpOnly`` (no script
reads it), ``SameSite=Strict`` (no other site's page sends it) and ``Secure`` when the console
is reached over https. Every POST also carries the session's CSRF token (a form field or the
``X-CSRF-Token`` header htmx sends) and, when the browser says where it comes from, an
``Origin`` equal to the console's own; the sign-in form has its own token in a short-lived
cookie, so no other site can sign a browser in under an attacker's key.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from membus.errors import MembusError
from membus.service.auth import Principal

COOKIE = "membus_console"
LOGIN_COOKIE = "membus_console_login"
PATH = "/ui"
TTL_S = 8 * 3600
MAX_SESSIONS = 10_000


@dataclass
class Session:
    principal: Principal
    csrf: str
    expires: float


class Sessions:
    """Token -> session, in this process's memory (a restart signs everyone out), bounded: the
    oldest sessions go first when too many are open."""

    def __init__(self, ttl_s: float = TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s, self.max = ttl_s, max_sessions
        self._by_token: OrderedDict[str, Session] = OrderedDict()

    def open(self, principal: Principal) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(principal, secrets.token_urlsafe(32), time.monotonic() + self.ttl_s)
        self._by_token[token] = session
        while len(self._by_token) > self.max:
            self._by_token.popitem(last=False)
        return token, session

    def find(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if session.expires < time.monotonic():
            del self._by_token[token]
            return None
        return session

    def close(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)


def secure(request: Request) -> bool:
    """Whether the browser reached us over https (uvicorn sets the scheme from the socket, or
    from X-Forwarded-Proto only when told to trust the proxy)."""
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


def clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(
        name, path=PATH, httponly=True, samesite="strict", secure=secure(request)
    )


def same_origin(request: Request) -> bool:
    """No Origin header (an old browser, a script): the token alone decides. One given must be
    ours: a cross-site form post carries the attacker's origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return hmac.compare_digest(origin.encode(), own.encode())


class CsrfRejected(MembusError):
    """A console POST without this session's token, or from another site's page (403)."""

    code = "permission_denied"


def check_token(expected: str, presented: str | None) -> None:
    """Raise ``CsrfRejected`` unless ``presented`` is ``expected`` (constant time)."""
    if not presented or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise CsrfRejected("the form is stale or came from another site: reload the page")
