"""Settings: a commented TOML file, overridden key by key from the environment.

Every scalar key has one fixed environment name: ``NOTIFY_`` + the key in capitals, where a
TOML section and its key are joined by ``_`` (``[smtp] host`` is ``NOTIFY_SMTP_HOST``).
Any missing or bad value raises :class:`ConfigError` whose one-line message names that
environment key, so start-up stops with a sentence an operator can act on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from limits import parse_many

log = logging.getLogger(__name__)

ENV_PREFIX = "NOTIFY_"
#: Points at the TOML file; the only NOTIFY_ variable that is not a setting itself.
CONFIG_ENV = "NOTIFY_CONFIG"


class ConfigError(Exception):
    """A setting is missing or bad. Deliberately outside :class:`notify.errors.NotifyError`."""


class Channel(StrEnum):
    EMAIL = "email"  # delivered by SMTP or the file outbox
    SMS = "sms"  # delivered by Twilio or the SMS log


class TopicKind(StrEnum):
    SERVICE = "service"  # notifications about the user's own account and the service
    MARKETING = "marketing"  # newsletters and promotions; a complaint withdraws these


@dataclass(frozen=True, slots=True)
class Topic:
    """Something a user can subscribe to on one channel (privacy policy §2.5)."""

    name: str
    channel: Channel
    kind: TopicKind
    double_opt_in: bool
    labels: Mapping[str, str]

    def label(self, locale: str) -> str:
        language = locale.split("-")[0].lower()
        return self.labels.get(locale) or self.labels.get(language) or self.labels["en"]


DEFAULT_TOPICS: dict[str, Any] = {
    "email_notifications": {
        "channel": "email",
        "kind": "service",
        "label": {"en": "Email notifications", "de": "E-Mail-Benachrichtigungen"},
    },
    "sms_notifications": {
        "channel": "sms",
        "kind": "service",
        "label": {"en": "SMS notifications", "de": "SMS-Benachrichtigungen"},
    },
    "newsletter": {
        "channel": "email",
        "kind": "marketing",
        "double_opt_in": True,
        "label": {"en": "Newsletter", "de": "Newsletter"},
    },
}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A bearer key. ``kid`` names it in the ledger and logs without revealing it."""

    scope: str
    kid: str
    #: SHA-256 of the key: all the service keeps of it; requests compare against it in
    #: constant time (notify.web.endpoints.authenticate).
    digest: bytes = field(repr=False, default=b"")


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    public_url: str
    api_keys: tuple[ApiKey, ...]
    secret_keys: tuple[tuple[str, bytes], ...] = field(repr=False)
    hash_key: bytes = field(repr=False)
    data_dir: Path
    email_transport: str
    smtp_host: str
    smtp_port: int
    smtp_username: str
    smtp_password: str = field(repr=False)
    smtp_tls: str
    smtp_timeout: int
    smtp_ca_file: Path | None
    smtp_pool_size: int
    smtp_rate: int
    mail_from: str
    reply_to: str
    postal_address: str
    dkim_domain: str
    dkim_selector: str
    dkim_key_file: Path | None
    dkim_ed25519_key_file: Path | None
    inbound_host: str
    inbound_port: int
    bounce_threshold: float
    bounce_stale_days: int
    retry_hours: int
    guard_complaint_rate: float  # percent of handed-over messages
    guard_bounce_rate: float  # percent, hard bounces
    guard_min_sent: int
    worker_lease_seconds: int
    enqueue_parts: int  # PostgreSQL: statements that enqueue a campaign at once
    sms_transport: str
    twilio_account_sid: str
    twilio_auth_token: str = field(repr=False)
    twilio_from: str
    twilio_api_base: str
    policy_version: str
    pending_days: int
    ledger_retention_days: int
    max_body_bytes: int
    # Abuse limits per client IP, in the ``limits`` library's notation ("100/second"); ""
    # switches one off (notify.web.ratelimit).
    public_rate_limit: str
    bad_token_rate_limit: str
    auth_failure_rate_limit: str
    # Reverse proxies whose X-Forwarded-For names the client (exact addresses).
    trusted_proxies: tuple[str, ...]
    log_level: str
    topics: Mapping[str, Topic]
    # SMS (issue #5): sender pool, quiet hours and length limit.
    twilio_messaging_service_sid: str = ""
    sms_quiet_start: time = time(21, 0)
    sms_quiet_end: time = time(8, 0)
    sms_default_time_zone: str = "UTC"
    sms_max_segments: int = 2
    sms_rate: int = 0
    # Console (issue #9): a signed-in session ends after this many idle minutes, and in any
    # case this many hours after sign-in.
    console_session_minutes: int = 30
    console_session_hours: int = 12
    # Faults and shutdown (issue #8).
    retry_first_pause_seconds: int = 30
    shutdown_timeout: int = 30
    #: True when some keys were generated for development rather than configured.
    dev_keys: bool = False

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def sms_log_file(self) -> Path:
        return self.data_dir / "sms.log"

    @property
    def mail_domain(self) -> str:
        """Where VERP bounces and mailto unsubscribes arrive: the From address's domain."""
        return self.mail_from.rpartition("@")[2]


# key -> (default, one-line description). The description is used in error messages;
# config/notify.example.toml carries the full comment for each key.
KEYS: dict[str, Any] = {
    "database_url": None,  # default derived from data_dir
    "public_url": "http://127.0.0.1:8080",
    "api_keys": "",
    "secret_keys": "",
    "hash_key": "",
    "data_dir": "data",
    "email_transport": "file",
    "smtp_host": "",
    "smtp_port": 587,
    "smtp_username": "",
    "smtp_password": "",
    "smtp_tls": "starttls",
    "smtp_timeout": 30,
    "smtp_ca_file": "",
    "smtp_pool_size": 4,
    "smtp_rate": 0,
    "mail_from": "notify@example.com",
    "reply_to": "",
    "postal_address": "",
    "dkim_domain": "",
    "dkim_selector": "",
    "dkim_key_file": "",
    "dkim_ed25519_key_file": "",
    "inbound_host": "127.0.0.1",
    "inbound_port": 2525,
    "bounce_threshold": 5,
    "bounce_stale_days": 7,
    "retry_hours": 48,
    "guard_complaint_rate": 0.3,
    "guard_bounce_rate": 5.0,
    "guard_min_sent": 200,
    "worker_lease_seconds": 300,
    "enqueue_parts": 2,
    "sms_transport": "log",
    "twilio_account_sid": "",
    "twilio_auth_token": "",
    "twilio_from": "",
    "twilio_api_base": "https://api.twilio.com",
    "policy_version": "1.0",
    "pending_days": 7,
    "ledger_retention_days": 0,
    "max_body_bytes": 65536,
    "public_rate_limit": "100/second",
    "bad_token_rate_limit": "60/minute",
    "auth_failure_rate_limit": "30/minute",
    "trusted_proxies": "",
    "log_level": "INFO",
    # SMS (issue #5)
    "twilio_messaging_service_sid": "",
    "sms_quiet_start": "21:00",
    "sms_quiet_end": "08:00",
    "sms_default_time_zone": "UTC",
    "sms_max_segments": 2,
    "sms_rate": 0,
    # Console (issue #9)
    "console_session_minutes": 30,
    "console_session_hours": 12,
    # Faults and shutdown (issue #8)
    "retry_first_pause_seconds": 30,
    "shutdown_timeout": 30,
}

_TOPIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the TOML file (if any), apply ``NOTIFY_*`` overrides, validate everything."""
    environ = os.environ if environ is None else environ
    config_file = config_file or environ.get(CONFIG_ENV) or None
    raw: dict[str, Any] = {}
    topics_raw: dict[str, Any] = DEFAULT_TOPICS
    if config_file:
        raw, topics_raw = _read_toml(Path(config_file))
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in KEYS:
            raw[key] = value
        else:
            log.warning("ignoring unknown environment variable %s", name)
    return _build(raw, topics_raw)


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{CONFIG_ENV}: config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{CONFIG_ENV}: cannot read {path}: {exc}") from None
    topics = document.pop("topics", None)
    flat: dict[str, Any] = {}
    for name, value in document.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, item in items:
            key = f"{name}_{sub}" if sub else name
            if key not in KEYS:
                raise ConfigError(f"{env_name(key)}: unknown setting in {path}")
            flat[key] = item
    if topics is not None and not isinstance(topics, dict):
        raise ConfigError(f"{CONFIG_ENV}: [topics] in {path} must be a table of tables")
    return flat, DEFAULT_TOPICS if topics is None else topics


def _build(raw: dict[str, Any], topics_raw: dict[str, Any]) -> Settings:
    value = {key: raw.get(key, default) for key, default in KEYS.items()}
    s: dict[str, Any] = {}
    for key in ("public_url", "twilio_api_base"):
        s[key] = _http_url(key, value[key])
    data_dir = Path(_text(value["data_dir"])).expanduser()
    if not str(data_dir):
        raise ConfigError(f"{env_name('data_dir')}: must not be empty")
    s["data_dir"] = data_dir
    s["database_url"] = _database_url(value["database_url"], data_dir)
    s["email_transport"] = _choice("email_transport", value["email_transport"], ("file", "smtp"))
    s["smtp_tls"] = _choice("smtp_tls", value["smtp_tls"], ("none", "starttls", "implicit"))
    s["sms_transport"] = _choice("sms_transport", value["sms_transport"], ("log", "twilio"))
    s["smtp_port"] = _integer("smtp_port", value["smtp_port"], 1, 65535)
    s["max_body_bytes"] = _integer("max_body_bytes", value["max_body_bytes"], 1024, 1 << 26)
    for key in ("public_rate_limit", "bad_token_rate_limit", "auth_failure_rate_limit"):
        s[key] = _rate_limit(key, value[key])
    s["trusted_proxies"] = _addresses("trusted_proxies", value["trusted_proxies"])
    s["pending_days"] = _integer("pending_days", value["pending_days"], 1, 365)
    s["ledger_retention_days"] = _integer("ledger_retention_days",
                                          value["ledger_retention_days"], 0, 36500)
    s["log_level"] = _choice(
        "log_level", str(value["log_level"]).upper(), ("DEBUG", "INFO", "WARNING", "ERROR")
    )
    s["mail_from"] = _email("mail_from", value["mail_from"])
    reply_to = _text(value["reply_to"]).strip()
    s["reply_to"] = _email("reply_to", reply_to) if reply_to else ""
    s["smtp_timeout"] = _integer("smtp_timeout", value["smtp_timeout"], 1, 600)
    ca_file = _text(value["smtp_ca_file"]).strip()
    s["smtp_ca_file"] = Path(ca_file).expanduser() if ca_file else None
    if s["smtp_ca_file"] is not None and not s["smtp_ca_file"].is_file():
        raise ConfigError(f"{env_name('smtp_ca_file')}: no such file {ca_file}")
    s["smtp_pool_size"] = _integer("smtp_pool_size", value["smtp_pool_size"], 1, 64)
    s["smtp_rate"] = _integer("smtp_rate", value["smtp_rate"], 0, 100_000)
    s["inbound_port"] = _integer("inbound_port", value["inbound_port"], 1, 65535)
    s["inbound_host"] = _text(value["inbound_host"]).strip() or "127.0.0.1"
    s["bounce_threshold"] = float(_integer("bounce_threshold", value["bounce_threshold"], 1, 100))
    s["bounce_stale_days"] = _integer("bounce_stale_days", value["bounce_stale_days"], 1, 365)
    s["retry_hours"] = _integer("retry_hours", value["retry_hours"], 1, 720)
    s["retry_first_pause_seconds"] = _integer(
        "retry_first_pause_seconds", value["retry_first_pause_seconds"], 1, 3600)
    s["shutdown_timeout"] = _integer("shutdown_timeout", value["shutdown_timeout"], 1, 3600)
    s["guard_complaint_rate"] = _number("guard_complaint_rate", value["guard_complaint_rate"],
                                        0.01, 100)
    s["guard_bounce_rate"] = _number("guard_bounce_rate", value["guard_bounce_rate"], 0.01, 100)
    s["guard_min_sent"] = _integer("guard_min_sent", value["guard_min_sent"], 1, 1_000_000)
    s["worker_lease_seconds"] = _integer("worker_lease_seconds", value["worker_lease_seconds"],
                                         2, 3600)
    s["enqueue_parts"] = _integer("enqueue_parts", value["enqueue_parts"], 1, 64)
    for key in (
        "smtp_host",
        "smtp_username",
        "smtp_password",
        "postal_address",
        "dkim_domain",
        "dkim_selector",
        "twilio_account_sid",
        "twilio_auth_token",
        "twilio_from",
        "policy_version",
    ):
        s[key] = _text(value[key]).strip()
    if not s["policy_version"]:
        raise ConfigError(f"{env_name('policy_version')}: must not be empty")
    s["dkim_key_file"] = _dkim(s, _text(value["dkim_key_file"]).strip())
    ed25519 = _text(value["dkim_ed25519_key_file"]).strip()
    s["dkim_ed25519_key_file"] = None
    if ed25519:
        if s["dkim_key_file"] is None:
            raise ConfigError(f"{env_name('dkim_ed25519_key_file')}: needs the RSA key "
                              "settings NOTIFY_DKIM_* too (ed25519 is a second signature)")
        if not Path(ed25519).expanduser().is_file():
            raise ConfigError(f"{env_name('dkim_ed25519_key_file')}: no such file {ed25519}")
        s["dkim_ed25519_key_file"] = Path(ed25519).expanduser()
    _sms(s, value)
    s["console_session_minutes"] = _integer("console_session_minutes",
                                            value["console_session_minutes"], 1, 24 * 60)
    s["console_session_hours"] = _integer("console_session_hours",
                                          value["console_session_hours"], 1, 24 * 7)
    _require_for_transports(s)
    s["topics"] = _topics(topics_raw)

    generated = _dev_secrets(data_dir, value, production=_is_production(s))
    s["api_keys"] = _api_keys(generated.get("api_keys", value["api_keys"]))
    s["secret_keys"] = _secret_keys(generated.get("secret_keys", value["secret_keys"]))
    hash_key = _text(generated.get("hash_key", value["hash_key"]))
    if len(hash_key) < 16:
        raise ConfigError(f"{env_name('hash_key')}: must be at least 16 characters")
    s["hash_key"] = hash_key.encode()
    return Settings(**s, dev_keys=bool(generated))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = _text(value).strip()
    if text not in allowed:
        raise ConfigError(f"{env_name(key)}: must be one of {', '.join(allowed)} (got {text!r})")
    return text


def _integer(key: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or not low <= number <= high:
        raise ConfigError(f"{env_name(key)}: must be a whole number from {low} to {high}")
    return number


def _rate_limit(key: str, value: Any) -> str:
    text = _text(value).strip()
    if text:
        try:
            parse_many(text)
        except ValueError:
            raise ConfigError(f"{env_name(key)}: must be a rate such as '100/second' or "
                              f"'60/minute' (several joined by ';'), or empty for none "
                              f"(got {text!r})") from None
    return text


def _addresses(key: str, value: Any) -> tuple[str, ...]:
    found = []
    for item in _pairs(value):
        try:
            found.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ConfigError(f"{env_name(key)}: {item!r} is not an IP address") from None
    return tuple(found)


def _number(key: str, value: Any, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or not low <= number <= high:
        raise ConfigError(f"{env_name(key)}: must be a number from {low} to {high}")
    return number


def _http_url(key: str, value: Any) -> str:
    text = _text(value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ConfigError(f"{env_name(key)}: must be an http(s) URL without a query (got {text!r})")
    return text


def _email(key: str, value: Any) -> str:
    try:
        checked = validate_email(_text(value), check_deliverability=False)
        return checked.normalized
    except EmailNotValidError as exc:
        raise ConfigError(f"{env_name(key)}: not a valid email address: {exc}") from None


def _database_url(value: Any, data_dir: Path) -> str:
    if value is None or _text(value).strip() == "":
        return f"sqlite://{data_dir / 'notify.sqlite3'}"
    text = _text(value).strip()
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme not in ("sqlite", "postgres", "asyncpg", "postgresql"):
        raise ConfigError(
            f"{env_name('database_url')}: must start with sqlite:// or postgres:// (got {scheme!r})"
        )
    return text


def _dkim(s: dict[str, Any], key_file: str) -> Path | None:
    given = [bool(s["dkim_domain"]), bool(s["dkim_selector"]), bool(key_file)]
    if not any(given):
        return None
    for key, present in zip(("dkim_domain", "dkim_selector", "dkim_key_file"), given, strict=True):
        if not present:
            raise ConfigError(f"{env_name(key)}: required when any NOTIFY_DKIM_* setting is set")
    path = Path(key_file).expanduser()
    if not path.is_file():
        raise ConfigError(f"{env_name('dkim_key_file')}: no such file {path}")
    return path


def _require_for_transports(s: dict[str, Any]) -> None:
    needs: list[str] = []
    if s["email_transport"] == "smtp":
        needs += ["smtp_host", "postal_address"]
    if s["sms_transport"] == "twilio":
        needs += ["twilio_account_sid", "twilio_auth_token"]
        if not s["twilio_from"] and not s["twilio_messaging_service_sid"]:
            # Twilio needs a sender: a number of ours, or a Messaging Service's pool.
            needs.append("twilio_from")
    for key in needs:
        if not s[key]:
            raise ConfigError(f"{env_name(key)}: required with the chosen transport")
    if bool(s["smtp_username"]) != bool(s["smtp_password"]):
        key = "smtp_password" if s["smtp_username"] else "smtp_username"
        raise ConfigError(f"{env_name(key)}: SMTP username and password go together")


def _sms(s: dict[str, Any], value: dict[str, Any]) -> None:
    """The SMS settings of issue #5: a Messaging Service, quiet hours, a length limit."""
    sid = _text(value["twilio_messaging_service_sid"]).strip()
    if sid and not re.fullmatch(r"MG[0-9a-fA-F]{32}", sid):
        raise ConfigError(f"{env_name('twilio_messaging_service_sid')}: must be MG followed "
                          "by 32 hexadecimal digits")
    s["twilio_messaging_service_sid"] = sid
    for key in ("sms_quiet_start", "sms_quiet_end"):
        s[key] = _clock(key, value[key])
    zone = _text(value["sms_default_time_zone"]).strip()
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{env_name('sms_default_time_zone')}: not an IANA time zone such "
                          f"as Europe/Berlin (got {zone!r})") from None
    s["sms_default_time_zone"] = zone
    s["sms_max_segments"] = _integer("sms_max_segments", value["sms_max_segments"], 1, 10)
    s["sms_rate"] = _integer("sms_rate", value["sms_rate"], 0, 10_000)


def _clock(key: str, value: Any) -> time:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", _text(value).strip())
    if match is None:
        raise ConfigError(f"{env_name(key)}: must be a time of day HH:MM, 00:00 to 23:59")
    return time(int(match[1]), int(match[2]))


def _is_production(s: dict[str, Any]) -> bool:
    return s["email_transport"] == "smtp" or s["sms_transport"] == "twilio"


def _topics(raw: dict[str, Any]) -> dict[str, Topic]:
    topics: dict[str, Topic] = {}
    for name, spec in raw.items():
        where = f"{CONFIG_ENV}: [topics.{name}]"
        if not _TOPIC_NAME.match(name) or not isinstance(spec, dict):
            raise ConfigError(f"{where}: a topic name is lower-case letters, digits and _")
        unknown = set(spec) - {"channel", "kind", "double_opt_in", "label"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]}")
        labels = spec.get("label")
        if not isinstance(labels, dict) or not isinstance(labels.get("en"), str):
            raise ConfigError(f"{where}: label must be a table with at least an 'en' text")
        try:
            topics[name] = Topic(
                name=name,
                channel=Channel(spec.get("channel")),
                kind=TopicKind(spec.get("kind", "service")),
                double_opt_in=bool(spec.get("double_opt_in", False)),
                labels={str(k): str(v) for k, v in labels.items()},
            )
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if not topics:
        raise ConfigError(f"{CONFIG_ENV}: [topics] must define at least one topic")
    return topics


#: A key given by its SHA-256 instead of itself: ``app:sha256:<64 hex digits>``.
_HASHED_KEY = re.compile(r"sha256:([0-9a-f]{64})")


def _api_keys(value: Any) -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    for index, item in enumerate(_pairs(value), start=1):
        scope, _, secret = item.partition(":")
        hashed = _HASHED_KEY.fullmatch(secret.lower())
        if scope not in ("app", "admin") or (len(secret) < 16 and not hashed):
            raise ConfigError(
                f"{env_name('api_keys')}: entry {index} must be app:KEY or admin:KEY "
                "with a key of at least 16 characters, or app:sha256:HEX / admin:sha256:HEX "
                "with the key's SHA-256 in 64 hex digits"
            )
        # Only the digest is kept: requests are compared against it in constant time, and
        # a config holding digests (``notify keys new`` prints one) leaks no usable key.
        digest = bytes.fromhex(hashed.group(1)) if hashed else \
            hashlib.sha256(secret.encode()).digest()
        # The key id is a fingerprint, so logs and the ledger can name a key safely.
        keys.append(ApiKey(scope=scope, kid=f"{scope}-{digest.hex()[:8]}", digest=digest))
    if not keys:
        raise ConfigError(f"{env_name('api_keys')}: at least one app:KEY or admin:KEY is required")
    return tuple(keys)


def _secret_keys(value: Any) -> tuple[tuple[str, bytes], ...]:
    keys: list[tuple[str, bytes]] = []
    for index, item in enumerate(_pairs(value), start=1):
        kid, _, secret = item.partition(":")
        if not _KID.match(kid) or len(secret) < 32:
            raise ConfigError(
                f"{env_name('secret_keys')}: entry {index} must be KID:SECRET with a key id of "
                "letters, digits, '.', '_' or '-' and a secret of at least 32 characters"
            )
        if kid in dict(keys):
            raise ConfigError(f"{env_name('secret_keys')}: key id {kid!r} appears twice")
        keys.append((kid, secret.encode()))
    if not keys:
        raise ConfigError(f"{env_name('secret_keys')}: at least one KID:SECRET is required")
    return tuple(keys)


def _pairs(value: Any) -> list[str]:
    items = value if isinstance(value, list) else _text(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _dev_secrets(data_dir: Path, value: dict[str, Any], *, production: bool) -> dict[str, Any]:
    """Generate (once) and persist keys that were not configured, for development only.

    They are kept in the data dir so that links in mail written by one run still work in
    the next. A deployment with a real SMTP relay or Twilio must configure its own keys.
    """
    missing = [k for k in ("api_keys", "secret_keys", "hash_key") if not _pairs(value[k])]
    if not missing:
        return {}
    if production:
        raise ConfigError(f"{env_name(missing[0])}: required when a real transport is configured")
    path = data_dir / "dev-keys.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{env_name('data_dir')}: cannot read {path}: {exc}") from None
    fresh = {
        "api_keys": f"app:{secrets.token_urlsafe(24)},admin:{secrets.token_urlsafe(24)}",
        "secret_keys": f"dev:{secrets.token_urlsafe(32)}",
        "hash_key": secrets.token_urlsafe(32),
    }
    if any(key not in stored for key in missing):
        stored = {**fresh, **stored}
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stored, indent=2), encoding="utf-8")
            path.chmod(0o600)
        except OSError as exc:
            raise ConfigError(f"{env_name('data_dir')}: cannot write {path}: {exc}") from None
    log.warning(
        "DEVELOPMENT KEYS in use for %s, generated and kept in %s: set them for production",
        ", ".join(env_name(k) for k in missing),
        path,
    )
    return {key: stored[key] for key in missing}
