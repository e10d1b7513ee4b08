"""The ``notify`` command. Every sub-command has ``--help``; bad input ends with one clear
line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import logging
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table
from tortoise.exceptions import OperationalError

from notify import __version__, logs, retention, store
from notify.channels.factory import email_channel, signer
from notify.channels.sms import sms_channel
from notify.consent import ConsentSource
from notify.db import apply_migrations, close_db, open_db, tortoise_config
from notify.errors import NotifyError
from notify.importer import ImportFileError, import_users
from notify.jobs import jobs
from notify.models import ConsentEvent
from notify.postman import Postman
from notify.sender import Sender, SenderBusy, only_sender, running
from notify.settings import ConfigError, Settings, load_settings
from notify.sms.courier import SmsCourier

if __name__ == "__main__":
    # Run as ``python -m notify.cli``: lazily loaded commands import ``notify.cli`` and must
    # find this module, not a second copy whose CliError main() would not catch.
    sys.modules.setdefault("notify.cli", sys.modules[__name__])

log = logging.getLogger("notify")
EXIT_USAGE = 2


class CliError(Exception):
    """A command cannot run (unreachable database, port in use, ...): one line, exit 1."""


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {text!r})")
    return number


def _port(text: str) -> int:
    number = _positive(text)
    if number > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535 (got {text!r})")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notify",
        description="Consent-aware notification service. Settings come from the file named "
        "by --config or NOTIFY_CONFIG, overridden by NOTIFY_* environment variables "
        "(see config/notify.example.toml).",
    )
    parser.add_argument("--version", action="version", version=f"notify {__version__}")
    parser.add_argument("--config", metavar="FILE", help="settings file (TOML)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the web service (and the sender)",
                                description="Apply pending migrations, then serve the HTTP "
                                "API and pages; the sender runs in the same process unless "
                                "--no-sender.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument("--port", type=_port, default=8080, help="port (default %(default)s)")
    serve.add_argument("--no-sender", action="store_true",
                       help="do not run the sender here (run 'notify worker' processes instead)")
    serve.add_argument("--event-loop", choices=("uvloop", "asyncio"), default=None,
                       help="uvloop (the default where it is installed: about 10%% more "
                       "requests a second) or the standard library's asyncio")
    serve.set_defaults(run=cmd_serve)

    worker = commands.add_parser("worker", help="run the sender only, for scale-out",
                                 description="Run the sender without the web service. Start "
                                 "as many as needed against one PostgreSQL database.")
    worker.add_argument("--metrics-port", type=_port, metavar="PORT",
                        help="serve this worker's own Prometheus metrics (send latency) on "
                        "127.0.0.1:PORT; the database's counts are on the web /metrics")
    worker.set_defaults(run=cmd_worker)

    migrate = commands.add_parser("migrate", help="apply pending database migrations",
                                  description="Create or upgrade the schema. Running it again "
                                  "changes nothing.")
    migrate.set_defaults(run=cmd_migrate)

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", metavar="ACTION", required=True)
    imp = users.add_parser(
        "import", help="import users and consents from CSV",
        description="Stream users and their consents from a CSV file whose first line names "
        "the columns: id (required), email, email_verified, phone, phone_verified, locale, "
        "time_zone, name; one column per topic holding subscribed, pending, unsubscribed or "
        "nothing; and the evidence: consented_at (ISO 8601), ip, user_agent, policy_version, "
        "note, actor. Consents are recorded with source 'import'; a decision notify "
        "recorded after a row's consented_at is kept. Rejected rows are listed with their "
        "line numbers; the others are imported. Exit code 1 if any was rejected.",
    )
    imp.add_argument("file", type=Path, metavar="FILE.csv")
    imp.add_argument("--batch-size", type=_positive, default=500,
                     help="rows per transaction (default %(default)s)")
    imp.set_defaults(run=cmd_import)

    consents = commands.add_parser("consents", help="inspect consents").add_subparsers(
        dest="consents_command", metavar="ACTION", required=True)
    show = consents.add_parser("show", help="a user's consents and latest ledger events",
                               description="Print a user's consent per topic and the newest "
                               "ledger events.")
    show.add_argument("user", metavar="USER", help="the main app's user id")
    show.add_argument("--events", type=_positive, default=20,
                      help="how many events (default %(default)s)")
    show.set_defaults(run=cmd_consents_show)
    withdraw = consents.add_parser(
        "withdraw", help="withdraw a consent on the user's behalf (support)",
        description="Record that the user asked support to withdraw a consent (privacy "
        "policy §2.5, 'by contacting us'). The ledger records source 'support', the actor "
        "and the note.")
    withdraw.add_argument("user", metavar="USER", help="the main app's user id")
    withdraw.add_argument("topic", metavar="TOPIC", help="the topic, or 'all'")
    withdraw.add_argument("--actor", required=True, help="who acts (the support agent)")
    withdraw.add_argument("--note", required=True, help="why: the user's request, a ticket")
    withdraw.set_defaults(run=cmd_consents_withdraw)
    prune = consents.add_parser(
        "prune", help="delete superseded ledger events past the retention period",
        description="Delete ledger events older than the retention period that a newer event "
        "of the same user and topic superseded; the newest event per user and topic always "
        "stays (docs/privacy.md). The worker does this once an hour.")
    prune.add_argument("--days", type=_positive, default=None,
                       help="the retention period in days (default: ledger_retention_days)")
    prune.set_defaults(run=cmd_consents_prune)
    keys = commands.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", metavar="ACTION", required=True)
    new_key = keys.add_parser(
        "new", help="make a new API key and the config entry that holds only its digest",
        description="Print a new random API key (give it to the caller; it is shown once) "
        "and the api_keys entry SCOPE:sha256:DIGEST that lets notify check it without "
        "storing it.")
    new_key.add_argument("scope", choices=("app", "admin"), help="what the key may do")
    new_key.set_defaults(run=cmd_keys_new)
    dkim = commands.add_parser("dkim", help="DKIM keys").add_subparsers(
        dest="dkim_command", metavar="ACTION", required=True)
    keygen = dkim.add_parser(
        "keygen", help="write a DKIM key pair and print the DNS record to publish",
        description="Write a private key (PEM) for signing and print the TXT record to "
        "publish at SELECTOR._domainkey.DOMAIN.")
    keygen.add_argument("--domain", required=True, help="the signing domain (d=)")
    keygen.add_argument("--selector", required=True, help="the selector (s=)")
    keygen.add_argument("--out-dir", type=Path, default=Path("."),
                        help="where to write the key files (default: here)")
    keygen.add_argument("--ed25519", action="store_true",
                        help="also write an ed25519 key for a second signature (RFC 8463)")
    keygen.set_defaults(run=_lazy("notify.dkim", "cmd_keygen"))

    inbound = commands.add_parser(
        "inbound", help="receive bounces, complaints and mailto unsubscribes by SMTP",
        description="Run an SMTP listener for DSNs sent to the VERP address "
        "(bounces+TOKEN@), ARF spam complaints and mail to unsubscribe+TOKEN@.")
    inbound.add_argument("--host", help="address to bind (default: NOTIFY_INBOUND_HOST)")
    inbound.add_argument("--port", type=_port, help="port (default: NOTIFY_INBOUND_PORT)")
    inbound.set_defaults(run=_lazy("notify.inbound", "cmd_inbound"))

    preview = commands.add_parser(
        "preview", help="render a message kind with sample data",
        description="Render an email kind (policy_change, newsletter, notification, "
        "confirmation, preferences_link) with sample data to an HTML file, to check the "
        "templates; a template error names the file and line.")
    preview.add_argument("kind", metavar="KIND")
    preview.add_argument("--locale", default="en", help="en or de (default en)")
    preview.add_argument("--out", type=Path, metavar="FILE.html",
                         help="write the HTML here (default: print the text part)")
    preview.add_argument("--channel", choices=("email", "sms"), default="email",
                         help="email (default) or sms: an SMS kind is printed with its "
                         "segment count, and refused if its longest allowed values could "
                         "exceed NOTIFY_SMS_MAX_SEGMENTS")
    preview.set_defaults(run=_lazy("notify.preview", "cmd_preview"))

    from notify.campaign_cli import add_commands

    add_commands(commands, _lazy)
    return parser


def _lazy(module: str, name: str):  # noqa: ANN202 - a command function
    """A command whose module is imported only when it runs (keeps start-up light)."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        import importlib

        return getattr(importlib.import_module(module), name)(args, settings)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        _error(f"configuration error: {exc}")
        return EXIT_USAGE
    # Every line goes through one masking formatter: no address, number or token in logs.
    logs.configure(settings.log_level)
    try:
        return args.run(args, settings)
    except (NotifyError, ImportFileError, CliError) as exc:
        _error(str(exc))
        return 1
    except ConfigError as exc:
        _error(f"configuration error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> None:
    # Plain print, not rich: rich wraps at the console width (80 columns when stderr is
    # not a terminal), and the promise is one line.
    print("notify: " + " ".join(message.split()), file=sys.stderr, flush=True)


def run_db(settings: Settings, work, *, create: bool = True) -> int:  # noqa: ANN001
    """Open the database, run ``await work(ctx)`` in its context, close it."""
    _check_sqlite_dir(settings.database_url)

    def unreachable(exc: Exception) -> CliError:
        return CliError(f"cannot open the database: {exc or type(exc).__name__}")

    async def runner() -> int:
        try:
            ctx = await open_db(settings.database_url, create=create)
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, say it in a line
            raise unreachable(exc) from None
        try:
            with ctx:
                try:
                    # Tortoise connects lazily: find out now, not in the middle of the work.
                    await ctx.db().execute_query("SELECT 1")
                except Exception as exc:  # noqa: BLE001
                    raise unreachable(exc) from None
                return await work(ctx)
        finally:
            await close_db(ctx)

    return asyncio.run(runner())


def _check_sqlite_dir(database_url: str) -> None:
    # SQLite creates a missing file but not a missing directory, and tortoise then waits
    # forever on the connection lock it never released: say so instead of hanging.
    connection = tortoise_config(database_url)["connections"]["default"]
    if "file_path" not in connection["credentials"]:
        return  # PostgreSQL
    file_path = connection["credentials"]["file_path"]
    if file_path == ":memory:":
        return
    parent = Path(file_path).expanduser().parent
    if not parent.is_dir():
        raise CliError(f"cannot open the database: the directory {parent} of the SQLite "
                       "file does not exist")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from notify.web.app import make_app

    async def migrate(ctx) -> int:  # noqa: ANN001
        applied = await apply_migrations(ctx)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        return 0

    _ensure_data_dir(settings)
    # Migrate first, outside the app, so that a database problem is one line, not a traceback.
    # Like the app, serve does not create a missing PostgreSQL database; migrate does.
    run_db(settings, migrate, create=False)
    loop, loop_name = _event_loop(args.event_loop)
    app = make_app(settings, migrate=False, start_sender=not args.no_sender)
    banner = (f"notify {__version__} serving on http://{args.host}:{args.port} "
              f"(public URL {settings.public_url}, sender {'off' if args.no_sender else 'on'}, "
              f"event loop {loop_name})")
    try:
        # aiohttp calls ``print`` once the socket is bound: the banner then tells the truth.
        # On SIGTERM or SIGINT aiohttp stops listening, lets the requests in flight finish
        # within the shutdown timeout, then runs the app's clean-up (the sender's last
        # batch, the database).
        web.run_app(app, host=args.host, port=args.port,
                    print=lambda _: print(banner, flush=True),
                    shutdown_timeout=settings.shutdown_timeout,
                    access_log_format='%a "%r" %s %b %Tfs', loop=loop)
    except OSError as exc:
        raise CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except SenderBusy as exc:
        raise CliError(str(exc)) from None
    return 0


def _event_loop(wanted: str | None) -> tuple[asyncio.AbstractEventLoop, str]:
    """The web service's event loop: uvloop where it is installed (a dependency but on
    Windows), unless asked for asyncio. uvloop's transports cost a GET of the preference
    API ~10% less CPU: 9,560 → 10,400-12,100 reads a second on two processes
    (bench/preference_reads.py). The worker keeps asyncio: its time is the signature's,
    and uvloop moved its campaign figures by less than their noise."""
    if wanted in (None, "uvloop"):
        try:
            import uvloop
        except ImportError:
            if wanted == "uvloop":
                raise CliError("--event-loop uvloop: uvloop is not installed (pip install "
                               "uvloop), or use --event-loop asyncio") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        await apply_migrations(ctx)
        if args.metrics_port:
            from prometheus_client import start_http_server

            try:
                start_http_server(args.metrics_port, addr="127.0.0.1")
            except OSError as exc:
                raise CliError(f"cannot serve metrics on 127.0.0.1:{args.metrics_port}: "
                               f"{exc.strerror or exc}") from None
        channel = email_channel(settings)
        texts = sms_channel(settings)  # inside the loop: the Twilio client needs one
        sender = Sender(jobs=jobs(settings, Postman(settings, channel, signer(settings)),
                                  SmsCourier(settings, texts)))
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        # What is set up by now (modules, settings, the ORM's models, the channels) lives
        # as long as the worker: out of the collector's sight, its full collections stop
        # walking it again every few seconds. They took 2.6% of a campaign worker's CPU,
        # 1.3% after this (bench/campaign_send.py, gc.callbacks).
        gc.collect()
        gc.freeze()
        try:
            with only_sender(settings.database_url):
                async with running(sender, grace=settings.shutdown_timeout) as sender:
                    print("notify worker running; stop with Ctrl-C or SIGTERM", flush=True)
                    await stopping.wait()
                    log.info("stopping: finishing the batch in flight (at most %ss)",
                             settings.shutdown_timeout)
        except SenderBusy as exc:
            raise CliError(str(exc)) from None
        finally:
            await channel.close()
            await texts.close()
        return 0

    _ensure_data_dir(settings)
    return run_db(settings, work)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        applied = await apply_migrations(ctx)
        print("applied: " + ", ".join(applied) if applied else "the schema is up to date")
        return 0

    _ensure_data_dir(settings)
    return run_db(settings, work)


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.file
    if not path.is_file():
        raise ImportFileError(f"no such file: {path}")
    err = Console(stderr=True)
    size = path.stat().st_size

    async def work(ctx) -> int:  # noqa: ANN001
        await apply_migrations(ctx)
        columns = [BarColumn(), DownloadColumn(), TimeRemainingColumn()]
        # The bar is for people watching; on a pipe or in a log, stderr holds the rejections.
        with Progress("[progress.description]{task.description}", *columns, console=err,
                      transient=False, disable=not err.is_terminal) as progress:
            task = progress.add_task(f"importing {path.name}", total=size)
            report = await import_users(
                settings, path, batch_size=args.batch_size,
                on_progress=lambda done: progress.update(task, completed=done),
            )
        kept = (f"; {report.kept} consents kept: notify recorded a newer decision"
                if report.kept else "")
        print(f"{report.rows} rows: {report.imported} imported ({report.users_created} new "
              f"users, {report.consent_events} consent events), {len(report.rejected)} rejected"
              f"{kept}")
        for line, reason in report.rejected:
            print(f"line {line}: {reason}", file=sys.stderr)
        return 1 if report.rejected else 0

    _ensure_data_dir(settings)
    return run_db(settings, work)


def cmd_consents_show(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        try:
            user = await store.get_user(args.user)
            states = await store.consent_states(user)
            events = await ConsentEvent.filter(user_id=user.id).order_by("-id").limit(args.events)
        except OperationalError as exc:
            raise CliError(f"cannot read the database ({exc}); has 'notify migrate' been run?") \
                from None
        # Cells are data: no markup ("[/x]" in a note would crash), no emoji (":1234:" in an
        # IPv6 address would become one), no highlighting.
        plain = {"markup": False, "emoji": False, "highlight": False}
        out = Console(**plain)
        if not out.is_terminal:
            # Not a terminal: rich would assume 80 columns and cut cells short with '…'.
            out = Console(width=1000, **plain)
        table = Table(title=f"consents of {args.user}")
        for column in ("topic", "channel", "state", "since"):
            table.add_column(column, overflow="fold")
        for name, topic in settings.topics.items():
            row = states.get(name)
            table.add_row(name, topic.channel.value, row.state if row else "never asked",
                          row.updated_at.isoformat(timespec="seconds") if row else "")
        out.print(table)
        ledger = Table(title="ledger (newest first)")
        for column in ("when", "topic", "change", "source", "actor", "policy", "ip", "note"):
            ledger.add_column(column, overflow="fold")
        for e in events:
            ledger.add_row(e.occurred_at.isoformat(timespec="seconds"), e.topic,
                           f"{e.from_state or 'never asked'} -> {e.to_state}", e.source,
                           e.actor or "", e.policy_version, e.ip or "", e.note or "")
        out.print(ledger)
        return 0

    # A look-up must not create a database (PostgreSQL) as a side effect.
    return run_db(settings, work, create=False)


def cmd_consents_withdraw(args: argparse.Namespace, settings: Settings) -> int:
    actor, note = args.actor.strip(), args.note.strip()
    if not actor or not note or len(actor) > 200 or len(note) > 2000:
        raise CliError("--actor (up to 200 characters) and --note (up to 2000) must not be "
                       "empty")
    if args.topic != "all" and args.topic not in settings.topics:
        raise CliError(f"unknown topic {args.topic!r}; topics are: "
                       f"{', '.join(settings.topics)}, or all")
    names = list(settings.topics) if args.topic == "all" else [args.topic]

    async def work(ctx) -> int:  # noqa: ANN001
        user = await store.get_user(args.user)
        evidence = store.Evidence(source=ConsentSource.SUPPORT, actor=actor, note=note)
        for name in names:
            change, _ = await store.change_consent(
                user, settings.topics[name], False, evidence,
                default_policy=settings.policy_version)
            print(f"{name}: {'withdrawn' if change.is_change else 'already not subscribed'}"
                  f" ({change.from_state or 'never asked'} -> unsubscribed)")
        return 0

    return run_db(settings, work, create=False)


def cmd_keys_new(args: argparse.Namespace, settings: Settings) -> int:
    key = secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    print(f"key:    {key}")
    print(f"config: {args.scope}:sha256:{digest}")
    print("Give the key to its caller; put the config entry in api_keys (NOTIFY_API_KEYS).")
    return 0


def cmd_consents_prune(args: argparse.Namespace, settings: Settings) -> int:
    days = args.days if args.days is not None else settings.ledger_retention_days
    if days == 0:
        print("ledger_retention_days is 0: the whole history is kept; nothing pruned")
        return 0

    async def work(ctx) -> int:  # noqa: ANN001
        deleted = await retention.prune_ledger(days, store.now())
        print(f"pruned {deleted} superseded ledger events older than {days} days")
        return 0

    return run_db(settings, work, create=False)


def _ensure_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the data dir {settings.data_dir}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
