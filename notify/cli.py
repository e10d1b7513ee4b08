"""The ``notify`` command. Every sub-command has ``--help``; bad input ends with one clear
line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from notify import __version__, store
from notify.db import apply_migrations, close_db, open_db
from notify.errors import NotifyError
from notify.importer import ImportFileError, import_users
from notify.models import ConsentEvent
from notify.sender import Sender
from notify.settings import ConfigError, Settings, load_settings

log = logging.getLogger("notify")
EXIT_USAGE = 2


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
    serve.add_argument("--port", type=int, default=8080, help="port (default %(default)s)")
    serve.add_argument("--no-sender", action="store_true",
                       help="do not run the sender here (run 'notify worker' processes instead)")
    serve.set_defaults(run=cmd_serve)

    worker = commands.add_parser("worker", help="run the sender only, for scale-out",
                                 description="Run the sender without the web service. Start "
                                 "as many as needed against one PostgreSQL database.")
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
        "note, actor. Consents are recorded with source 'import'. Rejected rows are listed "
        "with their line numbers; the others are imported. Exit code 1 if any was rejected.",
    )
    imp.add_argument("file", type=Path, metavar="FILE.csv")
    imp.add_argument("--batch-size", type=int, default=500,
                     help="rows per transaction (default %(default)s)")
    imp.set_defaults(run=cmd_import)

    consents = commands.add_parser("consents", help="inspect consents").add_subparsers(
        dest="consents_command", metavar="ACTION", required=True)
    show = consents.add_parser("show", help="a user's consents and latest ledger events",
                               description="Print a user's consent per topic and the newest "
                               "ledger events.")
    show.add_argument("user", metavar="USER", help="the main app's user id")
    show.add_argument("--events", type=int, default=20, help="how many events (default 20)")
    show.set_defaults(run=cmd_consents_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        err.print(f"notify: configuration error: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args, settings)
    except (NotifyError, ImportFileError) as exc:
        err.print(f"notify: {exc}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


def run_db(settings: Settings, work) -> int:  # noqa: ANN001 - an async callable
    async def runner() -> int:
        ctx = await open_db(settings.database_url, create=True)
        try:
            with ctx:
                return await work(ctx)
        finally:
            await close_db(ctx)

    return asyncio.run(runner())


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from notify.web.app import make_app

    _ensure_data_dir(settings)
    app = make_app(settings, start_sender=not args.no_sender)
    print(f"notify {__version__} serving on http://{args.host}:{args.port} "
          f"(public URL {settings.public_url}, sender {'off' if args.no_sender else 'on'})",
          flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None,
                access_log_format='%a "%r" %s %b %Tfs')
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        await apply_migrations(ctx)
        sender = Sender()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, sender.stop)
        print("notify worker running; stop with Ctrl-C or SIGTERM", flush=True)
        await sender.run()
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
    if args.batch_size < 1:
        raise ImportFileError("--batch-size must be at least 1")
    err = Console(stderr=True)
    size = path.stat().st_size

    async def work(ctx) -> int:  # noqa: ANN001
        await apply_migrations(ctx)
        columns = [BarColumn(), DownloadColumn(), TimeRemainingColumn()]
        with Progress("[progress.description]{task.description}", *columns, console=err,
                      transient=False) as progress:
            task = progress.add_task(f"importing {path.name}", total=size)
            report = await import_users(
                settings, path, batch_size=args.batch_size,
                on_progress=lambda done: progress.update(task, completed=done),
            )
        print(f"{report.rows} rows: {report.imported} imported ({report.users_created} new "
              f"users, {report.consent_events} consent events), {len(report.rejected)} rejected")
        for line, reason in report.rejected:
            print(f"line {line}: {reason}", file=sys.stderr)
        return 1 if report.rejected else 0

    _ensure_data_dir(settings)
    return run_db(settings, work)


def cmd_consents_show(args: argparse.Namespace, settings: Settings) -> int:
    async def work(ctx) -> int:  # noqa: ANN001
        user = await store.get_user(args.user)
        states = await store.consent_states(user)
        out = Console()
        table = Table(title=f"consents of {args.user}")
        for column in ("topic", "channel", "state", "since"):
            table.add_column(column)
        for name, topic in settings.topics.items():
            row = states.get(name)
            table.add_row(name, topic.channel.value, row.state if row else "never asked",
                          row.updated_at.isoformat(timespec="seconds") if row else "")
        out.print(table)
        events = await ConsentEvent.filter(user_id=user.id).order_by("-id").limit(args.events)
        ledger = Table(title="ledger (newest first)")
        for column in ("when", "topic", "change", "source", "actor", "policy", "ip", "note"):
            ledger.add_column(column)
        for e in events:
            ledger.add_row(e.occurred_at.isoformat(timespec="seconds"), e.topic,
                           f"{e.from_state or 'never asked'} -> {e.to_state}", e.source,
                           e.actor or "", e.policy_version, e.ip or "", e.note or "")
        out.print(ledger)
        return 0

    return run_db(settings, work)


def _ensure_data_dir(settings: Settings) -> None:
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImportFileError(f"cannot create the data dir {settings.data_dir}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
