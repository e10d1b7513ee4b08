"""``notify users import``: stream existing users and consents, with their evidence, from CSV.

Rows are read one at a time (memory stays flat for any file size) and written in batches,
each batch in one transaction with a savepoint per row, so a bad row is rejected alone and
the rest land. Every consent written gets a ledger event with source ``import``.

An import carries decisions made earlier, elsewhere: it never overrides a consent change
that notify recorded after the row's ``consented_at``, and without a ``consented_at`` it
never turns a withdrawal recorded by notify itself back into a (pending) subscription.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import TypeAdapter, ValidationError
from tortoise.transactions import in_transaction

from notify import store
from notify.consent import ConsentSource, ConsentState
from notify.errors import NotifyError
from notify.models import Consent, ConsentEvent, User
from notify.settings import Settings, Topic
from notify.web.schemas import IpAddress, UserIn, check_user_id

EVIDENCE_COLUMNS = ("consented_at", "ip", "user_agent", "policy_version", "note", "actor")
USER_COLUMNS = tuple(UserIn.model_fields)
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_IP: TypeAdapter[str] = TypeAdapter(IpAddress)


class ImportFileError(Exception):
    """The file as a whole cannot be imported (unreadable, no id column, unknown columns)."""


@dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    users_created: int = 0
    consent_events: int = 0
    #: Consents left alone because notify recorded a newer decision than the file's.
    kept: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    user_id: str
    user: dict[str, Any]
    consents: dict[str, ConsentState]
    evidence: store.Evidence


def _open(path: Path) -> IO[str]:
    try:
        # Bytes that are not UTF-8 become lone surrogates (see _text_error): the row holding
        # them is rejected with its line number, instead of the decoder failing somewhere in
        # a read-ahead block of the file.
        return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise ImportFileError(f"cannot open {path}: {exc.strerror}") from None


async def import_users(
    settings: Settings,
    path: Path,
    *,
    batch_size: int = 500,
    on_progress: Callable[[int], object] | None = None,
) -> ImportReport:
    """Import ``path``; ``on_progress`` gets the number of bytes read so far."""
    report = ImportReport()
    with _open(path) as handle:
        counter = _ByteCounter(handle)
        reader = csv.reader(counter)
        default_actor = f"import:{path.name}"
        batch: list[_Row] = []
        try:
            columns = _check_columns(next(reader, None), settings)
            start = reader.line_num + 1
            for fields in reader:
                # A quoted field may span lines: a row is reported at its first line.
                line, start = start, reader.line_num + 1
                if not fields:
                    continue  # a blank line
                report.rows += 1
                try:
                    batch.append(_parse(fields, columns, line, settings, default_actor))
                except ValueError as exc:
                    report.rejected.append((line, str(exc)))
                if len(batch) >= batch_size:
                    await _write(batch, settings, report)
                    batch = []
                if on_progress:
                    on_progress(counter.bytes)
        except csv.Error as exc:
            raise ImportFileError(f"line {reader.line_num}: not readable CSV: {exc}") from None
        await _write(batch, settings, report)
    # Rows refused by the database are found a batch later than those refused on reading.
    report.rejected.sort()
    return report


class _ByteCounter:
    """Iterates the file's lines for the csv reader and counts the bytes, for the bar."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.bytes = 0

    def __iter__(self) -> Iterator[str]:
        for line in self.handle:
            self.bytes += len(line.encode("utf-8", "surrogateescape"))
            yield line


def _text_error(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not UTF-8 text; save the file as UTF-8"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def _check_columns(fieldnames: list[str] | None, settings: Settings) -> list[str]:
    if not fieldnames:
        raise ImportFileError("the file is empty; the first line must name the columns")
    problem = _text_error("".join(fieldnames))
    if problem:
        raise ImportFileError(f"line 1: {problem}")
    columns = [name.strip() for name in fieldnames]
    if "id" not in columns:
        raise ImportFileError("the first line must name an 'id' column (the main app's user id)")
    allowed = {"id", *USER_COLUMNS, *EVIDENCE_COLUMNS, *settings.topics}
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise ImportFileError(
            f"unknown column {unknown[0]!r}; columns are id, {', '.join(USER_COLUMNS)}, "
            f"{', '.join(EVIDENCE_COLUMNS)} and one per topic: {', '.join(settings.topics)}"
        )
    if len(set(columns)) != len(columns):
        raise ImportFileError("a column name appears twice")
    return columns


def _parse(fields: list[str], columns: list[str], line: int, settings: Settings,
           default_actor: str) -> _Row:
    if len(fields) > len(columns):
        raise ValueError("the row has more fields than the header")
    if len(fields) < len(columns):
        raise ValueError("the row has fewer fields than the header")
    values = {name: value.strip() for name, value in zip(columns, fields, strict=True)}
    for name, value in values.items():
        problem = _text_error(value)
        if problem:
            raise ValueError(f"{name}: {problem}")
    user_id = values["id"]
    try:
        check_user_id(user_id)
    except ValueError as exc:
        raise ValueError(f"id: {exc}") from None
    user: dict[str, Any] = {}
    for name in USER_COLUMNS:
        if values.get(name):
            user[name] = _boolean(name, values[name]) if name.endswith("_verified") \
                else values[name]
    try:
        checked = UserIn.model_validate(user).model_dump(include=set(user))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{first['loc'][0]}: {message}") from None
    consents = {}
    for topic in settings.topics:
        if values.get(topic):
            try:
                consents[topic] = ConsentState(values[topic].lower())
            except ValueError:
                raise ValueError(
                    f"{topic}: must be subscribed, pending, unsubscribed or empty"
                ) from None
            if consents[topic] is ConsentState.PENDING and not settings.topics[topic].double_opt_in:
                # Nothing would ever confirm it: only double-opt-in topics wait.
                raise ValueError(f"{topic}: pending is only for double opt-in topics")
    return _Row(line, user_id, checked, consents, _evidence(values, default_actor))


def _boolean(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{name}: must be true or false")


def _evidence(values: dict[str, str], default_actor: str) -> store.Evidence:
    occurred = None
    if values.get("consented_at"):
        try:
            occurred = datetime.fromisoformat(values["consented_at"])
        except ValueError:
            raise ValueError("consented_at: must be an ISO 8601 date and time") from None
        if occurred.tzinfo is None:
            occurred = occurred.replace(tzinfo=UTC)
        if occurred > store.now():
            raise ValueError("consented_at: lies in the future")
    ip = values.get("ip") or None
    if ip:
        try:
            ip = _IP.validate_python(ip)
        except ValidationError:
            raise ValueError("ip: not an IPv4 or IPv6 address") from None
    for name, limit in (("user_agent", 512), ("policy_version", 64), ("actor", 200)):
        if len(values.get(name) or "") > limit:
            raise ValueError(f"{name}: longer than {limit} characters")
    return store.Evidence(
        source=ConsentSource.IMPORT,
        actor=values.get("actor") or default_actor,
        ip=ip,
        user_agent=values.get("user_agent") or None,
        note=values.get("note") or None,
        occurred_at=occurred,
        policy_version=values.get("policy_version") or None,
    )


async def _write(batch: list[_Row], settings: Settings, report: ImportReport) -> None:
    if not batch:
        return
    # The version in force, looked up once a batch rather than once a consent.
    policy = await store.policy_version_in_force(settings.policy_version)
    async with in_transaction():
        for row in batch:
            events = kept = 0
            evidence = row.evidence
            if evidence.policy_version is None:
                evidence = dataclasses.replace(evidence, policy_version=policy)
            try:
                # A savepoint per row: a row that fails leaves the batch's others intact.
                async with in_transaction():
                    user, created = await store.save_user(row.user_id, row.user, replace=False,
                                                             hash_key=settings.hash_key)
                    for name, state in row.consents.items():
                        topic = settings.topics[name]
                        if not created and await _newer_decision(user, topic, state,
                                                                 evidence):
                            kept += 1
                            continue
                        _, event = await store.change_consent(
                            user, topic, state is not ConsentState.UNSUBSCRIBED,
                            evidence, default_policy=settings.policy_version,
                            requested=state,
                        )
                        events += event is not None
            except NotifyError as exc:
                report.rejected.append((row.line, exc.detail))
                continue
            report.imported += 1
            report.consent_events += events
            report.users_created += created
            report.kept += kept


async def _newer_decision(user: User, topic: Topic, state: ConsentState,
                          evidence: store.Evidence) -> bool:
    """True when the ledger holds a decision the row must not override.

    Re-running an import after users changed their minds in notify must not undo that:
    a row older than the topic's last ledger event is stale, and a row without a date
    does not re-subscribe someone whose last word, given through notify, was no.
    """
    # Lock the consent row (PostgreSQL), so no change slips in between look and write.
    await Consent.select_for_update().filter(user_id=user.id, topic=topic.name).first()
    last = await ConsentEvent.filter(user_id=user.id, topic=topic.name).order_by("-id").first()
    if last is None:
        return False
    if evidence.occurred_at is not None:
        return last.occurred_at > evidence.occurred_at
    return (state is not ConsentState.UNSUBSCRIBED
            and last.to_state == ConsentState.UNSUBSCRIBED
            and last.source != ConsentSource.IMPORT)
