"""The endpoint table's machinery: authentication, body and query parsing, and OpenAPI.

Each route in ``notify.web.routes`` is an :class:`Endpoint` naming its scope and its
pydantic models. The same objects register the aiohttp routes and generate
``/openapi.json``, so the document cannot drift from the code. (aiohttp-pydantic was
considered; its class-based views own request parsing and error bodies, and we need RFC
9457 problems, size and media-type checks in one middleware.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from tortoise.context import TortoiseContext

from notify import __version__
from notify.errors import InvalidRequest
from notify.postman import Postman
from notify.settings import ApiKey, Settings
from notify.web.problems import (
    STATUS,
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    validation_errors,
)
from notify.web.ratelimit import Limiter
from notify.web.schemas import Problem

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", TortoiseContext)
POSTMAN = web.AppKey("postman", Postman)
LIMITER = web.AppKey("limiter", Limiter)


@dataclass(slots=True)
class Call:
    """One authenticated, parsed API call, handed to a view."""

    request: web.Request
    key: ApiKey | None
    body: Any = None
    query: Any = None

    @property
    def settings(self) -> Settings:
        return self.request.app[SETTINGS]


View = Callable[[Call], Awaitable[BaseModel | web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    view: View
    summary: str
    scope: str | None = "app"  # None: public; "app": app or admin keys; "admin": admin only
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    tag: str = "users"
    #: Statuses the view itself also answers (201 for a PUT that creates, 409 for a
    #: conflict), so /openapi.json documents them; the machinery's own (401, 403, 400, 413,
    #: 415, 422, 404) follow from the scope, body, query and path.
    also: tuple[int, ...] = ()

    def handler(self) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            key = authenticate(request, self.scope) if self.scope else None
            call = Call(request, key)
            if self.query is not None:
                call.query = _validate(self.query, dict(request.query), "query")
            if self.body is not None:
                call.body = _validate(self.body, await read_json(request), "body")
            result = await self.view(call)
            if isinstance(result, web.StreamResponse):
                return result
            return web.json_response(text=result.model_dump_json(), status=self.status)

        handle.__name__ = getattr(self.view, "__name__", "handle")
        return handle


def authenticate(request: web.Request, scope: str) -> ApiKey:
    """Check the bearer key in constant time against every configured key."""
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("send an API key as 'Authorization: Bearer KEY'")
    offered = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
    match: ApiKey | None = None
    for key in request.app[SETTINGS].api_keys:
        # Compare digests of equal length and never stop early, so timing says nothing.
        if hmac.compare_digest(offered, key.digest):
            match = key
    if match is None:
        raise Unauthorized("the API key is not valid")
    if scope == "admin" and match.scope != "admin":
        raise Forbidden("this operation needs an admin key")
    return match


async def read_json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"send the body as application/json (got {request.content_type or 'nothing'})",
            field="header.Content-Type",
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the body is larger than {request.app[SETTINGS].max_body_bytes} bytes"
        ) from None
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8", field="body") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", field="body") from None


def _validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    if where == "body" and not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest("the request has invalid fields",
                             errors=validation_errors(exc, where)) from None


def openapi(endpoints: tuple[Endpoint, ...], public_url: str) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document from the endpoint table and its pydantic models."""
    models: list[tuple[type[BaseModel], str]] = [(Problem, "serialization")]
    for e in endpoints:
        if e.body:
            models.append((e.body, "validation"))
        if e.response:
            models.append((e.response, "serialization"))
    keys, schema = models_json_schema(models, ref_template="#/components/schemas/{model}")
    ref = {model: keys[(model, mode)] for model, mode in models}
    problem = {"application/problem+json": {"schema": ref[Problem]}}
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        responses: dict[str, Any] = {
            str(e.status): {
                "description": "OK",
                **({"content": {"application/json": {"schema": ref[e.response]}}}
                   if e.response else {}),
            }
        }
        for status in e.also:
            if status < 400:
                responses[str(status)] = {**responses[str(e.status)],
                                          "description": _reason(status)}
        for status in _error_statuses(e):
            responses[str(status)] = {"description": _reason(status), "content": problem}
        op: dict[str, Any] = {
            "operationId": getattr(e.view, "__name__", e.path),
            "summary": e.summary,
            "tags": [e.tag],
            "responses": responses,
            "parameters": _parameters(e),
        }
        if e.scope:
            op["security"] = [{"bearer": []}]
            op["description"] = f"Needs an {'admin' if e.scope == 'admin' else 'app or admin'} key."
        if e.body:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": ref[e.body]}}}
        paths.setdefault(e.path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "notify", "version": __version__,
                 "description": "Consent-aware notification service."},
        "servers": [{"url": public_url}],
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


#: What an ``{id}`` in a path is: the main app's user id, or a campaign's number.
_ID_PATTERNS = {"users": r"^[A-Za-z0-9._:@+\-]{1,255}$", "campaigns": r"^[0-9]{1,18}$"}


def _parameters(e: Endpoint) -> list[dict[str, Any]]:
    params = [
        {"name": name.strip("{}"), "in": "path", "required": True,
         "schema": {"type": "string", "pattern": _ID_PATTERNS[e.tag]}
         if name == "{id}" else {"type": "string"}}
        for name in e.path.split("/") if name.startswith("{")
    ]
    if e.query:
        for name, field in e.query.model_json_schema()["properties"].items():
            params.append({"name": name, "in": "query", "required": False, "schema": field})
    return params


def _error_statuses(e: Endpoint) -> list[int]:
    # 429: too many refused keys from the caller's address (notify.web.ratelimit).
    statuses = [401, 403, 429] if e.scope else []
    # 503: the database is away for a moment (problems.problem_middleware, Retry-After).
    statuses += [503]
    if e.body:
        statuses += [400, 413, 415]
    if e.body or e.query or "{" in e.path:
        statuses += [422]
    if "{" in e.path:
        statuses += [404]
    statuses += [status for status in e.also if status >= 400]
    return sorted(set(statuses))


def _reason(status: int) -> str:
    for cls, code in STATUS.items():
        if code == status:
            return cls.title
    return HTTPStatus(status).phrase
