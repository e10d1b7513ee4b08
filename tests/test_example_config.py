"""config/notify.example.toml documents every setting and loads as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from notify.settings import DEFAULT_TOPICS, KEYS, _read_toml, env_name, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "notify.example.toml"


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The example's data_dir is relative: keep the generated dev keys out of the checkout.
    monkeypatch.chdir(tmp_path)


def test_example_names_every_setting_and_its_environment_variable():
    flat, topics = _read_toml(EXAMPLE)
    assert sorted(flat) == sorted(KEYS), "add the missing keys to config/notify.example.toml"
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [env_name(key) for key in KEYS if env_name(key) not in text]
    assert not missing, f"the example does not name {', '.join(missing)}"
    assert list(topics) == list(DEFAULT_TOPICS)


def test_example_loads_with_an_empty_environment_and_states_the_defaults():
    # Equal settings, topics included: a default changed in the code must change here too.
    from_example = load_settings(EXAMPLE, environ={})
    without_file = load_settings(None, environ={})
    assert from_example == without_file
