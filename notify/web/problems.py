"""RFC 9457 problem responses, and the one middleware that turns every error into one.

The HTTP status of each error class is chosen here and nowhere else. A bug still answers
a plain 500 problem, logged with its traceback on our side, never shown to the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError
from pydantic import ValidationError

from notify.db import is_unavailable
from notify.errors import Conflict, FieldError, InvalidRequest, NotFound, NotifyError
from notify.web.schemas import FieldProblem, Problem

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class BadRequest(NotifyError):
    title = "Malformed request"


class Unauthorized(NotifyError):
    title = "Unauthorized"


class Forbidden(NotifyError):
    title = "Forbidden"


class PayloadTooLarge(NotifyError):
    title = "Request body too large"


class UnsupportedMediaType(NotifyError):
    title = "Unsupported media type"


STATUS: dict[type[NotifyError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidRequest: 422,
}


def problem(status: int, title: str, detail: str, errors: list[FieldError] | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    body = Problem(
        title=title,
        status=status,
        detail=detail,
        errors=[FieldProblem(field=e.field, message=e.message) for e in errors or []],
    )
    return web.Response(
        status=status,
        text=json.dumps(body.as_dict()),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def validation_errors(exc: ValidationError, where: str) -> list[FieldError]:
    """Name each failing field as ``body.email`` or ``query.limit``."""
    found = []
    for error in exc.errors(include_url=False):
        path = ".".join(str(part) for part in (where, *error["loc"]))
        # pydantic prefixes messages from our own validators with "Value error, ".
        found.append(FieldError(path, error["msg"].removeprefix("Value error, ")))
    return found


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotifyError as exc:
        status = next(code for cls, code in STATUS.items() if isinstance(exc, cls))
        headers = {"WWW-Authenticate": 'Bearer realm="notify"'} if status == 401 else None
        return problem(status, exc.title, exc.detail, exc.errors, headers)
    except (RequestPayloadError, BadHttpMessage) as exc:
        # The body could not be read as sent: a Content-Encoding it does not have (gzip
        # that is not gzip), a broken chunked transfer, a multipart part with a malformed
        # header. The caller's error, not ours. The rest of such a body cannot be skipped
        # reliably, so aiohttp drops the connection after answering: say so, or a client
        # reuses it and loses its next request.
        response = problem(400, BadRequest.title, f"the request body could not be read: "
                           f"{_first_line(exc)}", [FieldError("body", "unreadable body")])
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 413:
            return problem(413, PayloadTooLarge.title, exc.text or "request body too large")
        return problem(exc.status, exc.reason, exc.reason, headers=_allow(exc))
    except Exception as exc:
        if is_unavailable(exc):
            # The database restarts, fails over or is unreachable: nothing is wrong with
            # the request, so the caller is told to come back (a mail provider retries a
            # one-click POST), and our log gets one line, not a traceback per request.
            # The route, not the path: a page's path holds its link's token.
            log.warning("database unavailable for %s %s: %s", request.method, _route(request),
                        f"{type(exc).__name__}: {exc}")
            return unavailable(request)
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "Internal error", "an internal error occurred; it has been logged")


#: Seconds a client is asked to wait while the database is away (a restart takes a few).
RETRY_AFTER = "5"


def unavailable(request: web.Request) -> web.Response:
    """503 with Retry-After: a page for a person's browser, a problem for the rest."""
    headers = {"Retry-After": RETRY_AFTER}
    if "text/html" in request.headers.get("Accept", "") and not request.path.startswith("/v1/"):
        from notify.web.pages import browser_page  # the pages import this module

        response = browser_page(request, "unavailable.html", status=503)
        response.headers.update(headers)
        return response
    return problem(503, "Service unavailable", "the database is unavailable; retry shortly",
                   headers=headers)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def _first_line(exc: BaseException) -> str:
    """aiohttp's message for a payload error, without the status it carries in front."""
    text = str(exc.__cause__ or exc).strip()
    return (text.split("message:", 1)[-1].strip().splitlines() or ["unknown"])[0]


def _allow(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None
