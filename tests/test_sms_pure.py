"""The SMS pure parts import no I/O library, and the courier never imports twilio."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO = ("tortoise", "aiohttp", "aiosmtplib", "twilio", "asyncpg", "aiosqlite", "jinja2")


def imported(module: str) -> list[str]:
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    return [name.split(".")[0] for name in names]


@pytest.mark.parametrize("module", ["notify/sms/__init__.py", "notify/sms/segments.py",
                                    "notify/sms/keywords.py", "notify/sms/quiet.py"])
def test_pure_sms_modules_import_no_io_library(module):
    assert not set(imported(module)) & set(IO)


@pytest.mark.parametrize("module", ["notify/sms/courier.py", "notify/sms/actions.py",
                                    "notify/sms/texts.py", "notify/channels/sms.py"])
def test_the_courier_side_never_imports_twilio(module):
    assert "twilio" not in imported(module)
