"""The URL table of the public pages (the API's is in routes.py)."""

from __future__ import annotations

from notify.web import pages

PAGES = (
    ("GET", "/u/{token}", pages.unsubscribe_page),
    ("POST", "/u/{token}", pages.unsubscribe_post),
    ("GET", "/preferences", pages.ask_page),
    ("POST", "/preferences", pages.ask_post),
    ("GET", "/preferences/{token}", pages.preferences_page),
    ("POST", "/preferences/{token}", pages.preferences_post),
    ("GET", "/confirm/{token}", pages.confirm_page),
    ("POST", "/confirm/{token}", pages.confirm_post),
    ("GET", "/policy", pages.policy_page),
)
