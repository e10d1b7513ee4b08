"""The SMS settings: each bad value stops start-up with a line naming its variable."""

from __future__ import annotations

from datetime import time

import pytest

from notify.settings import ConfigError, load_settings

KEYS = {"NOTIFY_API_KEYS": "app:" + "a" * 20, "NOTIFY_SECRET_KEYS": "k:" + "s" * 40,
        "NOTIFY_HASH_KEY": "h" * 20}
TWILIO = {**KEYS, "NOTIFY_SMS_TRANSPORT": "twilio", "NOTIFY_TWILIO_ACCOUNT_SID": "AC1",
          "NOTIFY_TWILIO_AUTH_TOKEN": "t"}
SERVICE = "MG" + "0" * 32


def load(tmp_path, **environ):
    return load_settings(environ={"NOTIFY_DATA_DIR": str(tmp_path), **KEYS, **environ})


def test_defaults(tmp_path):
    settings = load(tmp_path)
    assert (settings.sms_quiet_start, settings.sms_quiet_end) == (time(21), time(8))
    assert settings.sms_default_time_zone == "UTC" and settings.sms_max_segments == 2
    assert settings.twilio_messaging_service_sid == ""


@pytest.mark.parametrize(("name", "value"), [
    ("NOTIFY_SMS_QUIET_START", "9pm"), ("NOTIFY_SMS_QUIET_END", "24:00"),
    ("NOTIFY_SMS_QUIET_END", "8:00"), ("NOTIFY_SMS_DEFAULT_TIME_ZONE", "Mars/Olympus"),
    ("NOTIFY_SMS_DEFAULT_TIME_ZONE", "../etc/passwd"), ("NOTIFY_SMS_MAX_SEGMENTS", "0"),
    ("NOTIFY_SMS_MAX_SEGMENTS", "11"), ("NOTIFY_TWILIO_MESSAGING_SERVICE_SID", "MGxyz"),
    ("NOTIFY_SMS_RATE", "-1"), ("NOTIFY_SMS_RATE", "fast"),
])
def test_bad_values_name_their_variable(tmp_path, name, value):
    with pytest.raises(ConfigError, match=f"^{name}: "):
        load(tmp_path, **{name: value})


def test_twilio_needs_a_from_number_or_a_messaging_service(tmp_path):
    with pytest.raises(ConfigError, match="^NOTIFY_TWILIO_FROM: required"):
        load(tmp_path, **TWILIO)
    assert load(tmp_path, **TWILIO, NOTIFY_TWILIO_FROM="+15005550006").twilio_from
    settings = load(tmp_path, **TWILIO, NOTIFY_TWILIO_MESSAGING_SERVICE_SID=SERVICE)
    assert settings.twilio_messaging_service_sid == SERVICE


def test_quiet_hours_from_the_environment(tmp_path):
    settings = load(tmp_path, NOTIFY_SMS_QUIET_START="22:30", NOTIFY_SMS_QUIET_END="07:15",
                    NOTIFY_SMS_DEFAULT_TIME_ZONE="Europe/Berlin")
    assert (settings.sms_quiet_start, settings.sms_quiet_end) == (time(22, 30), time(7, 15))
    assert settings.sms_default_time_zone == "Europe/Berlin"
