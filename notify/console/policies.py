"""Console pages for policy versions: the list, publishing with a preview of the notice
(email in each language, who receives it, who not and why), and one version's page."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDictProxy
from pydantic import ValidationError

from notify import campaigns, notices
from notify.console.base import field_errors, form_of, key_of, page, render, settings_of
from notify.errors import Conflict, NotFound
from notify.models import PolicyVersion
from notify.web.campaigns_api import REASONS, PolicyIn, policy_values

FIELDS = ("version", "title", "summary", "url", "effective_at", "material")


def utc_input(value: str) -> str:
    """A ``datetime-local`` input's value, which the form labels as UTC."""
    value = value.strip()
    if value and "T" in value and not value.endswith("Z") and "+" not in value[10:]:
        return value + "Z"
    return value


def policy_form(form: MultiDictProxy[str]) -> dict[str, Any]:
    values: dict[str, Any] = {name: form.get(name, "") for name in FIELDS}
    values["effective_at"] = utc_input(values["effective_at"])
    material = values["material"]
    values["material"] = {"yes": True, "no": False}.get(material)
    return values


def _parse(form: MultiDictProxy[str]) -> tuple[PolicyIn | None, dict[str, str]]:
    try:
        return PolicyIn.model_validate(policy_form(form)), {}
    except ValidationError as exc:
        return None, field_errors(exc)


async def _list(request: web.Request, status: int = 200, *, values: dict[str, Any] | None = None,
                errors: dict[str, str] | None = None) -> web.Response:
    return render(request, "policies.html", status=status, title="Policy versions",
                  policies=await campaigns.policies(), values=values or {},
                  errors=errors or {})


@page
async def policies_page(request: web.Request) -> web.Response:
    return await _list(request)


@page
async def preview(request: web.Request) -> web.Response:
    """Step 2 of publishing: what the notice would say and who would get it."""
    form = form_of(request)
    body, errors = _parse(form)
    if body is None:
        return await _list(request, 422, values=dict(form), errors=errors)
    if await PolicyVersion.exists(version=body.version):
        return await _list(request, 409, values=dict(form), errors={
            "version": f"version {body.version!r} is published already; a published "
                       "version cannot change, choose a new label"})
    found = await notices.preview(settings_of(request),
                                  notices.unsaved_policy(policy_values(body)))
    return render(request, "policy_preview.html", title=f"Preview of {body.version}",
                  found=found, reasons=REASONS, values=dict(form), published=False)


@page
async def publish(request: web.Request) -> web.StreamResponse:
    form = form_of(request)
    body, errors = _parse(form)
    if body is None:
        return await _list(request, 422, values=dict(form), errors=errors)
    try:
        policy = await campaigns.publish_policy(policy_values(body), key_of(request).kid)
    except Conflict as exc:
        return await _list(request, 409, values=dict(form), errors={"version": exc.detail})
    raise web.HTTPSeeOther(f"/console/policies/{policy.version}")


@page
async def policy_page(request: web.Request) -> web.Response:
    version = request.match_info["version"]
    policy = await PolicyVersion.get_or_none(version=version)
    if policy is None:
        raise NotFound(f"no published policy version {version!r}")
    found = await notices.preview(settings_of(request), policy)
    notices_sent = await policy.campaigns.all().order_by("-id")
    return render(request, "policy_preview.html", title=f"Policy version {policy.version}",
                  found=found, reasons=REASONS, values={}, published=True,
                  campaigns=notices_sent)
