"""``notify policy …`` and ``notify campaign …``: the admin API's campaign and policy
actions from a terminal, through the same functions (``notify.campaigns``) and the same
input checks (the API's pydantic shapes), so the CLI can do nothing the API could not.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from notify import campaigns, mail
from notify.channels.factory import email_channel, signer
from notify.cli import CliError, run_db
from notify.eligibility import CAMPAIGN_KINDS
from notify.models import Campaign, CampaignStatus
from notify.postman import Postman
from notify.settings import Settings
from notify.web.campaigns_api import REASONS, CampaignIn, PolicyIn, TestIn


def _campaign_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"not a campaign id (got {text!r})")
    return int(text)


def add_commands(commands: argparse._SubParsersAction, lazy) -> None:  # noqa: ANN001
    """Register the ``policy`` and ``campaign`` command groups on the main parser."""
    policy = commands.add_parser("policy", help="publish and list privacy policy versions")
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    publish = actions.add_parser(
        "publish", help="publish a policy version (immutable once published)",
        description="Publish a version of the privacy policy. --material says whether it "
        "affects users' rights: a material change is notified to every deliverable address.")
    publish.add_argument("--version", dest="label", required=True, help="a label, e.g. 2026-12")
    publish.add_argument("--title", required=True)
    publish.add_argument("--summary", required=True, help="the summary of changes")
    publish.add_argument("--url", required=True, help="the full text")
    publish.add_argument("--effective-at", required=True, help="ISO 8601 with a time zone")
    publish.add_argument("--material", action=argparse.BooleanOptionalAction, required=True,
                         help="does it affect users' rights? (--material or --no-material)")
    publish.set_defaults(run=lazy("notify.campaign_cli", "cmd_policy_publish"))
    listing = actions.add_parser("list", help="published versions, newest first")
    listing.set_defaults(run=lazy("notify.campaign_cli", "cmd_policy_list"))

    campaign = commands.add_parser("campaign", help="create, preview, send and follow campaigns")
    actions = campaign.add_subparsers(dest="campaign_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", help="create a campaign (a draft)",
        description="Create a policy notice, newsletter or notification. Nothing is sent "
        "until 'notify campaign send'.")
    create.add_argument("--name", required=True)
    create.add_argument("--kind", required=True, choices=CAMPAIGN_KINDS)
    create.add_argument("--channel", action="append", choices=("email", "sms"),
                        help="email (default) and/or sms; repeat for both")
    create.add_argument("--topic", help="the consent topic (not for a policy notice)")
    create.add_argument("--template", help="default: the kind's template")
    create.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="a template variable; repeat")
    create.add_argument("--policy-version", help="for a policy notice: the version announced")
    create.add_argument("--locale", help="audience: users of this language")
    create.add_argument("--country", help="audience: users of this country (ISO 3166 alpha-2)")
    create.add_argument("--created-before", help="audience: users created before (ISO 8601)")
    create.add_argument("--created-after", help="audience: users created at or after")
    create.add_argument("--send-at", help="when 'send' is asked, wait until then (ISO 8601)")
    create.set_defaults(run=lazy("notify.campaign_cli", "cmd_create"))
    for name, text, func in (
            ("audience", "who would receive it now, who not and why", "cmd_audience"),
            ("pause", "hold what is not sent yet", "cmd_pause"),
            ("resume", "go on sending a paused campaign", "cmd_resume"),
            ("cancel", "cancel: nothing not yet sent will be", "cmd_cancel")):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("id", type=_campaign_id, metavar="ID")
        sub.set_defaults(run=lazy("notify.campaign_cli", func))
    preview = actions.add_parser("preview", help="render its email for a sample reader")
    preview.add_argument("id", type=_campaign_id, metavar="ID")
    preview.add_argument("--locale", default="en")
    preview.add_argument("--out", type=Path, metavar="FILE.html", help="write the HTML here")
    preview.set_defaults(run=lazy("notify.campaign_cli", "cmd_preview"))
    send = actions.add_parser(
        "send", help="send it (or schedule it) and follow its progress",
        description="Enqueue the campaign's deliveries and show a live progress bar while "
        "the sender (notify serve or notify worker) sends them; Ctrl-C stops watching, not "
        "sending.")
    send.add_argument("id", type=_campaign_id, metavar="ID")
    send.add_argument("--detach", action="store_true", help="do not follow the progress")
    send.set_defaults(run=lazy("notify.campaign_cli", "cmd_send"))
    status = actions.add_parser("status", help="counts by state, rate, ETA and first errors")
    status.add_argument("id", type=_campaign_id, metavar="ID")
    status.add_argument("--follow", action="store_true", help="a live progress bar until done")
    status.set_defaults(run=lazy("notify.campaign_cli", "cmd_status"))
    listing = actions.add_parser("list", help="the latest campaigns")
    listing.set_defaults(run=lazy("notify.campaign_cli", "cmd_list"))
    test = actions.add_parser("test", help="send one rendering to given addresses only")
    test.add_argument("id", type=_campaign_id, metavar="ID")
    test.add_argument("--to", action="append", required=True, metavar="EMAIL")
    test.add_argument("--locale", default="en")
    test.set_defaults(run=lazy("notify.campaign_cli", "cmd_test"))


def _actor() -> str:
    """Who acts, for the audit log: the CLI runs on the server, as a system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _checked(model: type, values: dict[str, Any]) -> Any:  # noqa: ANN401
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        # The option that carried the value: audience fields are options of their own.
        loc = [str(part) for part in first["loc"]]
        name = loc[1] if loc[:1] == ["audience"] and len(loc) > 1 else (loc[0] if loc else "")
        where = {"label": "version", "addresses": "to", "channels": "channel",
                 "variables": "var"}.get(name, name)
        raise CliError(f"--{where.replace('_', '-')}: {first['msg']}" if where
                       else first["msg"]) from None


def cmd_policy_publish(args: argparse.Namespace, settings: Settings) -> int:
    body = _checked(PolicyIn, {"version": args.label, "title": args.title,
                               "summary": args.summary, "url": args.url,
                               "effective_at": args.effective_at, "material": args.material})

    async def work(ctx) -> int:  # noqa: ANN001
        values = body.model_dump()
        values["url"] = str(body.url)
        policy = await campaigns.publish_policy(values, _actor())
        weight = "material" if policy.material else "not material"
        print(f"published policy {policy.version} ({weight}), effective "
              f"{policy.effective_at.isoformat()}")
        return 0

    return run_db(settings, work)


def cmd_policy_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        table = Table("version", "title", "effective", "material", "published by")
        for policy in await campaigns.policies():
            table.add_row(policy.version, policy.title, policy.effective_at.isoformat(),
                          "yes" if policy.material else "no", policy.published_by)
        Console().print(table)
        return 0

    return run_db(settings, work)


def cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    variables = {}
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--var: expected NAME=VALUE (got {item!r})")
        variables[name] = value
    audience = {k: v for k, v in (("locale", args.locale), ("country", args.country),
                                  ("created_before", args.created_before),
                                  ("created_after", args.created_after)) if v}
    body = _checked(CampaignIn, {
        "name": args.name, "kind": args.kind, "channels": args.channel or ["email"],
        "topic": args.topic, "template": args.template, "variables": variables,
        "audience": audience, "policy_version": args.policy_version, "send_at": args.send_at})

    async def work(ctx) -> int:  # noqa: ANN001
        spec = campaigns.Spec(
            name=body.name, kind=body.kind, channels=list(body.channels), topic=body.topic,
            template=body.template, variables=dict(body.variables),
            audience=body.audience.model_dump(mode="json", exclude_none=True),
            policy_version=body.policy_version, send_at=body.send_at)
        campaign = await campaigns.create(settings, spec, _actor())
        print(f"created campaign {campaign.id} ({campaign.kind}, draft); next: "
              f"notify campaign audience {campaign.id}")
        return 0

    return run_db(settings, work)


async def _campaign(campaign_id: int) -> Campaign:
    return await campaigns.get(campaign_id)


def cmd_audience(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        campaign = await _campaign(args.id)
        console = Console()
        for found in await campaigns.preview(settings, campaign):
            table = Table("", "users", "examples", "why", title=f"{found.channel}: "
                          f"{found.eligible} would receive it")
            table.add_row("receive", str(found.eligible), "", "")
            for reason, count in sorted(found.excluded.items(), key=lambda kv: -kv[1]):
                table.add_row(f"excluded: {reason}", str(count),
                              ", ".join(found.examples.get(reason, [])),
                              REASONS.get(reason, ""))
            console.print(table)
        return 0

    return run_db(settings, work)


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        campaign = await _campaign(args.id)
        email = campaigns.sample_email(settings, campaign.template, campaign.variables,
                                       await campaigns.policy_of(campaign), args.locale)
        subject, text, html = mail.render(email, settings)
        if args.out:
            try:
                args.out.write_text(html, encoding="utf-8")
            except OSError as exc:
                raise CliError(f"cannot write {args.out}: {exc.strerror or exc}") from None
            print(f"Subject: {subject}\nwrote {args.out}")
        else:
            print(f"Subject: {subject}\n\n{text}")
        return 0

    return run_db(settings, work)


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        campaign = await campaigns.send(settings, args.id, _actor())
        if campaign.status == CampaignStatus.SCHEDULED:
            assert campaign.send_at is not None
            print(f"campaign {campaign.id} scheduled for {campaign.send_at.isoformat()}")
            return 0
        print(f"campaign {campaign.id}: {campaign.enqueued} deliveries queued; excluded: "
              + (", ".join(f"{k} {v}" for k, v in campaign.excluded.items()) or "none"))
        if args.detach:
            return 0
        return await _follow(campaign.id)

    return run_db(settings, work)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        campaign = await _campaign(args.id)
        if args.follow:
            return await _follow(campaign.id)
        found = await campaigns.progress(campaign)
        _print_status(found)
        return 0

    return run_db(settings, work)


def _print_status(found: campaigns.Progress) -> None:
    campaign = found.campaign
    console = Console()
    console.print(f"campaign {campaign.id} {campaign.name!r}: {campaign.status}"
                  + (f" ({campaign.paused_reason})" if campaign.paused_reason else ""))
    table = Table("state", "deliveries")
    for state, count in sorted(found.counts.items()):
        table.add_row(state, str(count))
    for reason, count in sorted(found.skipped.items()):
        table.add_row(f"  skipped: {reason}", str(count))
    table.add_row("unsubscribed via it", str(found.unsubscribed))
    table.add_row("possible duplicates", str(found.possible_duplicates))
    console.print(table)
    eta = f"{found.eta_seconds:.0f}s" if found.eta_seconds is not None else "-"
    console.print(f"progress {found.done_fraction:.1%}, {found.rate:.1f}/s, ETA {eta}; "
                  f"withdrawals while sending {found.withdrawals_during}, sent after a "
                  f"withdrawal {found.sent_after_withdrawal}")
    for error in found.first_errors:
        console.print(f"error (delivery {error['id']}, {error['status']}): "
                      f"{error['last_error']}")


#: Seconds ``--follow`` waits, once every delivery is final, for the sender to mark the
#: campaign done.
FINISH_WAIT = 10.0


async def _follow(campaign_id: int) -> int:
    """A live bar until the campaign is done, cancelled or paused."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f}/s"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"campaign {campaign_id}", total=None, rate=0.0)
        waited = time.monotonic()
        finished_at: float | None = None
        while True:
            found = await campaigns.progress(await _campaign(campaign_id))
            bar.update(task, total=found.total or None,
                       completed=found.total - found.remaining, rate=found.rate)
            if found.campaign.status in (CampaignStatus.DONE, CampaignStatus.CANCELLED,
                                         CampaignStatus.PAUSED):
                break
            if found.total and not found.remaining:
                # All final: the sender marks it done on its next pass; wait for that a
                # little, so the status printed last says "done", not "sending".
                finished_at = finished_at or time.monotonic()
                if time.monotonic() - finished_at > FINISH_WAIT:
                    break
            if found.rate == 0 and time.monotonic() - waited > 10:
                bar.console.print("no progress for 10 s: is a sender running? "
                                  "(notify serve, or notify worker)")
                waited = time.monotonic()
            elif found.rate:
                waited = time.monotonic()
            await asyncio.sleep(1)
    _print_status(found)
    return 0


def _simple(action: str):  # noqa: ANN202
    def command(args: argparse.Namespace, settings: Settings) -> int:
        async def work(ctx) -> int:  # noqa: ANN001
            extra = (settings.retry_hours,) if action == "resume" else ()
            campaign = await getattr(campaigns, action)(args.id, _actor(), *extra)
            print(f"campaign {campaign.id}: {campaign.status}")
            return 0

        return run_db(settings, work)

    return command


cmd_pause = _simple("pause")
cmd_resume = _simple("resume")
cmd_cancel = _simple("cancel")


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        table = Table("id", "name", "kind", "channels", "status", "queued", "created")
        for campaign in await Campaign.all().order_by("-id").limit(50):
            table.add_row(str(campaign.id), campaign.name, campaign.kind,
                          ",".join(campaign.channels), campaign.status,
                          str(campaign.enqueued), campaign.created_at.isoformat())
        Console().print(table)
        return 0

    return run_db(settings, work)


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    body = _checked(TestIn, {"addresses": args.to, "locale": args.locale})

    async def work(ctx) -> int:  # noqa: ANN001
        campaign = await _campaign(args.id)
        channel = email_channel(settings)
        try:
            sent, failed = await campaigns.send_tests(
                Postman(settings, channel, signer(settings)), campaign, body.addresses,
                body.locale, _actor())
        finally:
            await channel.close()
        for address in sent:
            print(f"sent a test to {address}")
        for address, why in failed.items():
            print(f"not sent to {address}: {why}")
        return 1 if failed else 0

    return run_db(settings, work)
