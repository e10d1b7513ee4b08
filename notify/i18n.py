"""Words shown to people, in their language: English and German, falling back to English.

The pages' and emails' short texts live in one TOML catalog per locale under
``templates/i18n/``. (gettext would need compiled .mo files and a build step for a few
dozen strings without plural forms; a flat catalog is easier to review and to test.)
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

CATALOG_DIR = Path(__file__).resolve().parent.parent / "templates" / "i18n"
DEFAULT = "en"


@cache
def catalogs() -> dict[str, dict[str, str]]:
    found = {}
    for path in sorted(CATALOG_DIR.glob("*.toml")):
        found[path.stem] = tomllib.loads(path.read_text(encoding="utf-8"))
    return found


def supported(locale: str | None) -> str | None:
    """The catalog for a locale tag like ``de-AT``, or None."""
    if not locale:
        return None
    language = locale.split("-")[0].split("_")[0].strip().lower()
    return language if language in catalogs() else None


def choose(user_locale: str | None, accept_language: str | None = None) -> str:
    """The user's own locale first, then the browser's preferences, then English."""
    chosen = supported(user_locale)
    if chosen:
        return chosen
    ranked = []
    for index, item in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, index, tag))
    for _, _, tag in sorted(ranked):
        chosen = supported(tag)
        if chosen:
            return chosen
    return DEFAULT


def translate(locale: str, key: str, **values: object) -> str:
    """The text for ``key`` (English when the locale lacks it), with ``{name}`` filled in."""
    text = catalogs().get(locale, {}).get(key) or catalogs()[DEFAULT][key]
    return text.format(**values) if values else text
