"""Console pages for campaigns: the list; a step-by-step creation (1: kind, topic,
template, variables and audience filter; 2: audience preview with exclusion reasons and
example users; 3: test send; 4: schedule or send); and a campaign's live page with its
progress, counts, rate, ETA, first errors, and pause, resume and cancel.

Thin: ``notify.campaigns`` does the work, exactly as for ``/v1/campaigns``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy
from pydantic import ValidationError

from notify import campaigns
from notify.console.base import field_errors, form_of, key_of, page, render, settings_of
from notify.console.policies import utc_input
from notify.errors import InvalidRequest, NotFound
from notify.models import Campaign, CampaignStatus
from notify.web.campaigns_api import (
    REASONS,
    CampaignIn,
    TestIn,
    campaign_out,
    spec_of,
)
from notify.web.endpoints import POSTMAN

#: Statuses whose page keeps watching the progress.
LIVE = (CampaignStatus.SENDING, CampaignStatus.SCHEDULED, CampaignStatus.PAUSED)


def _variables(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"line {number}: write NAME=VALUE, one variable a line")
        found[name.strip()] = value.strip()
    return found


def campaign_form(form: MultiDictProxy[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The form as the API's body, and errors the API's model cannot name."""
    errors: dict[str, str] = {}
    try:
        variables = _variables(form.get("variables", ""))
    except ValueError as exc:
        variables, errors["variables"] = {}, str(exc)
    audience: dict[str, Any] = {}
    for name in ("locale", "country"):
        if form.get(name, "").strip():
            audience[name] = form[name].strip()
    for name in ("created_after", "created_before"):
        if form.get(name, "").strip():
            audience[name] = form[name].strip() + "T00:00:00Z"  # a date input: UTC midnight
    body: dict[str, Any] = {
        "name": form.get("name", ""), "kind": form.get("kind", ""),
        "channels": form.getall("channels", []) or ["email"],
        "topic": form.get("topic") or None, "template": form.get("template", "").strip() or None,
        "variables": variables, "audience": audience,
        "policy_version": form.get("policy_version") or None,
        "send_at": utc_input(form.get("send_at", "")) or None,
    }
    return body, errors


async def _new_page(request: web.Request, status: int = 200, *,
                    values: dict[str, Any] | None = None,
                    errors: dict[str, str] | None = None) -> web.Response:
    return render(request, "campaign_new.html", status=status, title="New campaign",
                  topics=settings_of(request).topics, policies=await campaigns.policies(),
                  values=values or {}, channels=(values or {}).get("channels", ["email"]),
                  errors=errors or {})


@page
async def campaigns_page(request: web.Request) -> web.Response:
    found = await Campaign.all().order_by("-id").limit(100)
    return render(request, "campaigns.html", title="Campaigns", campaigns=found)


@page
async def new_page(request: web.Request) -> web.Response:
    values = {name: request.query[name] for name in ("kind", "policy_version", "name")
              if name in request.query}
    return await _new_page(request, values=values)


@page
async def create(request: web.Request) -> web.StreamResponse:
    """Step 1: the draft. Validated by the API's own model, created by the same function."""
    form = form_of(request)
    values: dict[str, Any] = {**form, "channels": form.getall("channels", [])}
    body, errors = campaign_form(form)
    if errors:
        return await _new_page(request, 422, values=values, errors=errors)
    try:
        checked = CampaignIn.model_validate(body)
    except ValidationError as exc:
        return await _new_page(request, 422, values=values, errors=field_errors(exc))
    try:
        campaign = await campaigns.create(settings_of(request), spec_of(checked),
                                          key_of(request).kid)
    except InvalidRequest as exc:
        errors = {e.field.removeprefix("body."): e.message for e in exc.errors} or \
            {"form": exc.detail}
        return await _new_page(request, 422, values=values, errors=errors)
    raise web.HTTPSeeOther(f"/console/campaigns/{campaign.id}")


async def _campaign(request: web.Request) -> Campaign:
    value = request.match_info["id"]
    if not value.isdigit() or len(value) > 18:
        raise NotFound(f"no campaign {value!r}")
    return await campaigns.get(int(value))


@page
async def campaign_page(request: web.Request) -> web.Response:
    campaign = await _campaign(request)
    audience = None
    if campaign.status in (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED):
        audience = await campaigns.preview(settings_of(request), campaign)
    query = request.query
    tested = None
    if query.get("tested"):
        tested = {"sent": query.getall("sent", []), "failed": query.getall("failed", [])}
    return render(request, "campaign.html", title=f"Campaign {campaign.id}: {campaign.name}",
                  c=await campaign_out(campaign), audience=audience, reasons=REASONS,
                  live=campaign.status in LIVE, tested=tested, test_errors={},
                  done=query.get("done"))


@page
async def progress_json(request: web.Request) -> web.Response:
    """What the page's script polls: the API's own campaign shape."""
    found = await campaign_out(await _campaign(request))
    return web.json_response(text=found.model_dump_json(),
                             headers={"Cache-Control": "no-store"})


@page
async def test_send(request: web.Request) -> web.StreamResponse:
    """Step 3: one rendering to the given addresses only."""
    campaign = await _campaign(request)
    form = form_of(request)
    addresses = [a.strip() for a in form.get("addresses", "").replace(",", "\n").splitlines()
                 if a.strip()]
    try:
        body = TestIn.model_validate({"addresses": addresses,
                                      "locale": form.get("locale", "en")})
    except ValidationError as exc:
        errors = field_errors(exc)
        message = "Nothing was sent: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        return render(request, "campaign.html", status=422,
                      title=f"Campaign {campaign.id}: {campaign.name}",
                      c=await campaign_out(campaign),
                      audience=await campaigns.preview(settings_of(request), campaign)
                      if campaign.status == CampaignStatus.DRAFT else None,
                      reasons=REASONS, live=False, tested=None,
                      test_errors={"addresses": message}, done=None)
    sent, failed = await campaigns.send_tests(request.app[POSTMAN], campaign, body.addresses,
                                              body.locale, key_of(request).kid)
    query = urlencode([("tested", "1"), *(("sent", a) for a in sent),
                       *(("failed", a) for a in failed)])
    raise web.HTTPSeeOther(f"/console/campaigns/{campaign.id}?{query}#test")


def _action(name: str):  # noqa: ANN202 - a view
    @page
    async def act(request: web.Request) -> web.StreamResponse:
        campaign = await _campaign(request)
        kid = key_of(request).kid
        settings = settings_of(request)
        if name == "send":
            await campaigns.send(settings, campaign.id, kid)
        elif name == "pause":
            await campaigns.pause(campaign.id, kid)
        elif name == "resume":
            await campaigns.resume(campaign.id, kid, settings.retry_hours)
        else:
            await campaigns.cancel(campaign.id, kid)
        raise web.HTTPSeeOther(f"/console/campaigns/{campaign.id}?done={name}")

    act.__name__ = name
    return act


send, pause, resume, cancel = (_action(n) for n in ("send", "pause", "resume", "cancel"))
