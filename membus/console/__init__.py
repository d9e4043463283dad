"""The governance console: a browser view of what a team of agents remembers, at ``/ui``.

Server-rendered pages (jinja2) with htmx served from ``static/`` (no CDN, no front-end build).
Signing in takes an API key, the same keys as the HTTP API; every page then acts as that key's
agent through the bus and its gate (see ``membus.console.web``, ``membus.console.govern``).

``mount(app)`` adds it to an app built by ``membus.service.app.create_app`` (``membus serve``
passes it in ``mounts``).

Owns: ``session`` (sign-in, cookies, CSRF), ``web`` (what every page shares), ``pages``
(sign-in, Memories, Live feed), ``govern`` (Access, Audit, Dead letters, Erasure, Health), and
the ``templates/`` and ``static/`` files (htmx vendored, no CDN).
May import: ``membus.service`` and the layers below it; jinja2. Nothing imports it but the CLI.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from membus.console import govern, pages
from membus.console.session import Sessions
from membus.console.web import (
    HERE,
    Console,
    SecurityHeaders,
    SignIn,
    environment,
    on_error,
    on_sign_in,
)
from membus.errors import MembusError
from membus.service.app import Service

PREFIX = "/ui"


def mount(app: FastAPI) -> None:
    """Serve the console at ``/ui`` of ``app`` (its ``state.membus`` is the service)."""
    svc: Service = app.state.membus
    ui = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    ui.state.console = Console(svc, Sessions(), environment())
    ui.add_exception_handler(MembusError, on_error)
    ui.add_exception_handler(SignIn, on_sign_in)
    ui.add_middleware(SecurityHeaders)
    ui.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    ui.include_router(pages.router)
    ui.include_router(govern.router)
    app.mount(PREFIX, ui)
