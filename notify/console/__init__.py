"""The admin console: server-rendered pages under /console for the product team and
support, on the same domain functions as the admin API (issue #9)."""

from __future__ import annotations

from aiohttp import web

from notify.console.base import STATIC, setup_templates
from notify.console.routes import ROUTES

PREFIX = "/console"
#: The console's Content-Security-Policy: its own script and stylesheet files only, its
#: own JSON for the live progress, inline styles for the email previews (shown in a
#: sandboxed frame), and still never framed itself.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def setup_console(app: web.Application) -> None:
    setup_templates(app)
    for method, path, view in ROUTES:
        app.router.add_route(method, path, view)
    app.router.add_static(PREFIX + "/static", STATIC, append_version=False)


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")
