"""Request and response bodies of the HTTP API. ``/openapi.json`` is generated from these."""

from __future__ import annotations

import re
from datetime import datetime
from ipaddress import ip_address
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from notify.consent import ConsentSource, ConsentState

_LOCALE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_ZONES = frozenset(available_timezones())
USER_ID_PATTERN = r"^[A-Za-z0-9._:@+\-]{1,255}$"
_USER_ID = re.compile(USER_ID_PATTERN)


def check_user_id(value: str) -> str:
    """The main app's id for a user; ``erased:`` ids are ours (see store.erased_id)."""
    if not _USER_ID.fullmatch(value) or value.startswith("erased:"):
        raise ValueError("a user id is 1 to 255 letters, digits or . _ : @ + - "
                         "and does not start with 'erased:'")
    return value


def _email(value: str) -> str:
    # Stored in lower case: one person, one address, whatever case the main app sent, so
    # uniqueness, suppression hashes and look-ups agree.
    try:
        # No SMTPUTF8 (non-ASCII local parts): not every relay on the way takes them.
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
        return checked.normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


def _phone(value: str) -> str:
    # E.164 needs the country code, so a number must start with '+'; phonenumbers then
    # checks that it is a possible and valid number and formats it canonically.
    if not value.strip().startswith("+"):
        raise ValueError("a phone number must be in international form, starting with +")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _locale(value: str) -> str:
    if not _LOCALE.match(value) or len(value) > 35:
        raise ValueError("a locale is a BCP 47 language tag such as 'en' or 'de-AT'")
    return value


def _time_zone(value: str) -> str:
    if value not in _ZONES:
        raise ValueError("not an IANA time zone name such as 'Europe/Berlin'")
    ZoneInfo(value)
    return value


def _country(value: str) -> str:
    if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError("not an ISO 3166-1 alpha-2 country code such as 'DE'")
    return value.upper()


def _ip(value: str) -> str:
    try:
        return str(ip_address(value))
    except ValueError:
        raise ValueError("not an IPv4 or IPv6 address") from None


Email = Annotated[str, Field(max_length=320, examples=["ada@example.com"]), AfterValidator(_email)]
Phone = Annotated[str, Field(max_length=32, examples=["+4915123456789"]), AfterValidator(_phone)]
Locale = Annotated[str, Field(examples=["en", "de"]), AfterValidator(_locale)]
TimeZone = Annotated[str, Field(examples=["Europe/Berlin"]), AfterValidator(_time_zone)]
Country = Annotated[str, Field(min_length=2, max_length=2, examples=["DE"]),
                    AfterValidator(_country)]
IpAddress = Annotated[str, Field(max_length=45, examples=["203.0.113.7"]), AfterValidator(_ip)]
def _printable(value: str) -> str:
    # Control characters (CR, LF, NUL, ...) have no place in a name or a note, and would
    # break a mail header or a PostgreSQL text column.
    if any(not ch.isprintable() and ch not in "\n\t" for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _one_line(value: str) -> str:
    if "\n" in value or "\t" in value:
        raise ValueError("must be a single line")
    return _printable(value)


Text200 = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_one_line)]
Note = Annotated[str, Field(max_length=2000), AfterValidator(_printable)]


class Strict(BaseModel):
    # Unknown fields are errors: a typo must not be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=False)


class UserIn(Strict):
    """A user of the main app. PUT replaces, so a field left out takes its default;
    PATCH changes only the fields given."""

    email: Email | None = None
    email_verified: bool = False
    phone: Phone | None = None
    phone_verified: bool = False
    locale: Locale = "en"
    time_zone: TimeZone | None = None
    name: Text200 | None = None
    country: Country | None = Field(
        default=None, description="ISO 3166-1 alpha-2; when left out, the phone's region.")


class ConsentIn(Strict):
    subscribed: bool
    source: ConsentSource = Field(
        default=ConsentSource.API,
        description="How the change reached the main app. App keys may use profile_settings "
        "and api; admin keys also support and import.",
    )
    note: Note | None = None
    actor: Text200 | None = Field(
        default=None, description="Who acted; required with source 'support'."
    )
    ip: IpAddress | None = Field(default=None, description="The end user's IP, as the app saw it.")
    user_agent: Annotated[str, Field(max_length=512), AfterValidator(_one_line)] | None = None


class ConsentOut(BaseModel):
    topic: str
    channel: str
    label: str
    state: ConsentState | None = Field(description="null: never asked (not subscribed)")
    subscribed: bool
    updated_at: datetime | None


class ConsentChangeOut(ConsentOut):
    changed: bool = Field(description="false when the request left the state as it was")


class UserOut(BaseModel):
    id: str
    email: str | None
    email_verified: bool
    phone: str | None
    phone_verified: bool
    locale: str
    time_zone: str | None
    name: str | None
    country: str | None
    created_at: datetime
    updated_at: datetime
    consents: list[ConsentOut]


class ConsentList(BaseModel):
    consents: list[ConsentOut]


class ConsentEventOut(BaseModel):
    id: int
    topic: str
    from_state: ConsentState | None
    to_state: ConsentState
    source: ConsentSource
    actor: str | None
    ip: str | None
    user_agent: str | None
    policy_version: str
    note: str | None
    occurred_at: datetime
    recorded_at: datetime


class EventPage(BaseModel):
    events: list[ConsentEventOut]
    next: str | None = Field(description="URL of the next (older) page, null on the last")


class EventQuery(Strict):
    limit: int = Field(default=50, ge=1, le=500)
    before: int | None = Field(default=None, ge=1, le=2**63 - 1,
                               description="cursor from 'next'")


class SuppressionOut(BaseModel):
    kind: str
    reason: str
    created_at: datetime


class ExportOut(BaseModel):
    """Everything held about the user (GDPR Art. 15 and 20)."""

    exported_at: datetime
    user: UserOut
    consent_events: list[ConsentEventOut]
    suppressions: list[SuppressionOut]


class LinksOut(BaseModel):
    """Signed links for mail the main app sends itself (RFC 2369, RFC 8058)."""

    preferences: str = Field(description="the preference center")
    unsubscribe: dict[str, str] = Field(description="one-click unsubscribe URL per topic; "
                                        "'*' withdraws every topic")
    list_unsubscribe: str = Field(description="List-Unsubscribe header value (all topics)")
    list_unsubscribe_post: str = Field(description="List-Unsubscribe-Post header value")


class Health(BaseModel):
    status: str


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] = []

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_defaults=False)
