"""Settings: defaults that run with nothing set, and one clear line for each bad value."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from notify.settings import KEYS, ConfigError, env_name, load_settings

GOOD = {
    "NOTIFY_API_KEYS": "app:" + "a" * 20 + ",admin:" + "b" * 20,
    "NOTIFY_SECRET_KEYS": "k2:" + "n" * 40 + ",k1:" + "o" * 40,
    "NOTIFY_HASH_KEY": "h" * 32,
}


def test_nothing_set_runs_on_sqlite_with_generated_dev_keys(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        settings = load_settings(environ={})
    assert settings.database_url == "sqlite://data/notify.sqlite3"
    assert settings.email_transport == "file" and settings.sms_transport == "log"
    assert settings.dev_keys
    assert {k.scope for k in settings.api_keys} == {"app", "admin"}
    assert "DEVELOPMENT KEYS" in caplog.text
    stored = json.loads((tmp_path / "data" / "dev-keys.json").read_text())
    # A second start reuses the same keys, so links written earlier keep working.
    again = load_settings(environ={})
    assert again.secret_keys == settings.secret_keys
    assert stored["hash_key"].encode() == again.hash_key
    assert set(settings.topics) == {"email_notifications", "sms_notifications", "newsletter"}
    assert settings.topics["newsletter"].double_opt_in
    assert settings.topics["newsletter"].label("de-AT") == "Newsletter"


def test_configured_keys_are_used_and_first_secret_signs(tmp_path):
    settings = load_settings(environ={**GOOD, "NOTIFY_DATA_DIR": str(tmp_path)})
    assert not settings.dev_keys
    assert [kid for kid, _ in settings.secret_keys] == ["k2", "k1"]
    assert not (tmp_path / "dev-keys.json").exists()
    # A key id names a key without revealing it.
    assert all(k.kid.startswith(k.scope + "-") and "a" * 8 not in k.kid and "b" * 8 not in k.kid
               for k in settings.api_keys)


def test_a_key_given_by_its_digest_works_like_the_key_and_only_digests_are_kept(tmp_path):
    import hashlib

    digest = hashlib.sha256(b"c" * 24).hexdigest()
    settings = load_settings(environ={**GOOD, "NOTIFY_DATA_DIR": str(tmp_path),
                                      "NOTIFY_API_KEYS": f"admin:sha256:{digest},app:{'a' * 20}"})
    admin, app = settings.api_keys
    assert (admin.scope, admin.digest) == ("admin", bytes.fromhex(digest))
    assert app.digest == hashlib.sha256(b"a" * 20).digest()
    assert "a" * 20 not in repr(settings) and not hasattr(app, "secret")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("NOTIFY_DATABASE_URL", "mysql://localhost/x", "sqlite://"),
        ("NOTIFY_PUBLIC_URL", "ftp://example.com", "http(s) URL"),
        ("NOTIFY_PUBLIC_URL", "example.com", "http(s) URL"),
        ("NOTIFY_API_KEYS", "root:" + "a" * 20, "app:KEY"),
        ("NOTIFY_API_KEYS", "app:short", "at least 16"),
        ("NOTIFY_SECRET_KEYS", "k1:tooshort", "at least 32"),
        ("NOTIFY_SECRET_KEYS", "k 1:" + "x" * 40, "key id"),
        ("NOTIFY_SECRET_KEYS", "k1:" + "x" * 40 + ",k1:" + "y" * 40, "twice"),
        ("NOTIFY_HASH_KEY", "short", "16"),
        ("NOTIFY_EMAIL_TRANSPORT", "pigeon", "file, smtp"),
        ("NOTIFY_SMS_TRANSPORT", "smoke", "log, twilio"),
        ("NOTIFY_SMTP_PORT", "abc", "whole number"),
        ("NOTIFY_SMTP_PORT", "70000", "whole number"),
        ("NOTIFY_SMTP_TLS", "maybe", "none, starttls, implicit"),
        ("NOTIFY_MAIL_FROM", "not an address", "not a valid email"),
        ("NOTIFY_TWILIO_API_BASE", "localhost:9999", "http(s) URL"),
        ("NOTIFY_MAX_BODY_BYTES", "12", "whole number"),
        ("NOTIFY_LOG_LEVEL", "LOUD", "DEBUG"),
        ("NOTIFY_POLICY_VERSION", " ", "empty"),
    ],
)
def test_bad_value_names_the_key_in_one_line(tmp_path, key, value, says):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={**GOOD, "NOTIFY_DATA_DIR": str(tmp_path), key: value})
    message = str(caught.value)
    assert message.startswith(key + ":")
    assert says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ({"NOTIFY_EMAIL_TRANSPORT": "smtp"}, "NOTIFY_SMTP_HOST"),
        ({"NOTIFY_EMAIL_TRANSPORT": "smtp", "NOTIFY_SMTP_HOST": "relay"},
         "NOTIFY_POSTAL_ADDRESS"),
        ({"NOTIFY_SMS_TRANSPORT": "twilio"}, "NOTIFY_TWILIO_ACCOUNT_SID"),
        ({"NOTIFY_SMS_TRANSPORT": "twilio", "NOTIFY_TWILIO_ACCOUNT_SID": "AC1",
          "NOTIFY_TWILIO_AUTH_TOKEN": "t"}, "NOTIFY_TWILIO_FROM"),
        ({"NOTIFY_DKIM_DOMAIN": "example.com"}, "NOTIFY_DKIM_SELECTOR"),
        ({"NOTIFY_SMTP_USERNAME": "u"}, "NOTIFY_SMTP_PASSWORD"),
    ],
)
def test_missing_value_for_a_choice_names_the_key(tmp_path, extra, missing):
    with pytest.raises(ConfigError, match=f"^{missing}:"):
        load_settings(environ={**GOOD, "NOTIFY_DATA_DIR": str(tmp_path), **extra})


def test_dkim_key_file_must_exist(tmp_path):
    env = {**GOOD, "NOTIFY_DATA_DIR": str(tmp_path), "NOTIFY_DKIM_DOMAIN": "example.com",
           "NOTIFY_DKIM_SELECTOR": "s1", "NOTIFY_DKIM_KEY_FILE": str(tmp_path / "nope.pem")}
    with pytest.raises(ConfigError, match="^NOTIFY_DKIM_KEY_FILE: no such file"):
        load_settings(environ=env)


def test_real_transport_refuses_generated_keys(tmp_path):
    env = {"NOTIFY_DATA_DIR": str(tmp_path), "NOTIFY_EMAIL_TRANSPORT": "smtp",
           "NOTIFY_SMTP_HOST": "relay.example.com", "NOTIFY_POSTAL_ADDRESS": "1 Main St"}
    with pytest.raises(ConfigError, match="^NOTIFY_API_KEYS: required"):
        load_settings(environ=env)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_sections_map_to_environment_names_and_env_wins(tmp_path):
    config = write(tmp_path / "notify.toml", f"""
public_url = "https://notify.example.com/"
data_dir = "{tmp_path}"
[smtp]
host = "relay.example.com"
port = 2525
[mail]
from = "news@example.com"
[topics.alerts]
channel = "sms"
label = {{ en = "Alerts" }}
""")
    settings = load_settings(config, environ={**GOOD, "NOTIFY_SMTP_PORT": "465"})
    assert settings.public_url == "https://notify.example.com"
    assert settings.smtp_host == "relay.example.com"
    assert settings.smtp_port == 465
    assert settings.mail_from == "news@example.com"
    assert list(settings.topics) == ["alerts"]
    assert settings.topics["alerts"].kind == "service"


def test_config_file_from_environment(tmp_path):
    config = write(tmp_path / "n.toml", f'data_dir = "{tmp_path}"\nlog_level = "debug"\n')
    settings = load_settings(environ={**GOOD, "NOTIFY_CONFIG": str(config)})
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("smtp_hots = 'x'\n", "NOTIFY_SMTP_HOTS: unknown setting"),
        ("[smtp]\nhots = 'x'\n", "NOTIFY_SMTP_HOTS: unknown setting"),
        ("public_url = \n", "cannot read"),
        ("[topics.Bad-Name]\nchannel='email'\nlabel={en='x'}\n", "topic name"),
        ("[topics.t]\nchannel='fax'\nlabel={en='x'}\n", "fax"),
        ("[topics.t]\nchannel='email'\n", "label"),
        ("[topics.t]\nchannel='email'\nlabel={en='x'}\ncolour='red'\n", "unknown key colour"),
        ("topics = 3\n", "table of tables"),
        ("[topics]\n", "at least one topic"),
    ],
)
def test_bad_config_file_names_the_problem(tmp_path, text, says):
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        load_settings(config, environ={**GOOD, "NOTIFY_DATA_DIR": str(tmp_path)})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="^NOTIFY_CONFIG: config file .* does not exist"):
        load_settings(tmp_path / "nope.toml", environ=GOOD)


def test_every_key_has_an_environment_name():
    assert all(env_name(key) == "NOTIFY_" + key.upper() for key in KEYS)
    fixed = {"NOTIFY_DATABASE_URL", "NOTIFY_PUBLIC_URL", "NOTIFY_API_KEYS", "NOTIFY_SECRET_KEYS",
             "NOTIFY_DATA_DIR", "NOTIFY_EMAIL_TRANSPORT", "NOTIFY_SMTP_HOST", "NOTIFY_SMTP_PORT",
             "NOTIFY_SMTP_USERNAME", "NOTIFY_SMTP_PASSWORD", "NOTIFY_SMTP_TLS",
             "NOTIFY_MAIL_FROM", "NOTIFY_POSTAL_ADDRESS", "NOTIFY_DKIM_DOMAIN",
             "NOTIFY_DKIM_SELECTOR", "NOTIFY_DKIM_KEY_FILE", "NOTIFY_SMS_TRANSPORT",
             "NOTIFY_TWILIO_ACCOUNT_SID", "NOTIFY_TWILIO_AUTH_TOKEN", "NOTIFY_TWILIO_FROM",
             "NOTIFY_TWILIO_API_BASE"}
    assert fixed <= {env_name(key) for key in KEYS}
