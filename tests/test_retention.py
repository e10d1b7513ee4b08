"""The ledger's retention period: superseded old events go, the proof of each current
state stays (notify.retention)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from support import HASH_KEY, environ_for
from test_cli import run

from notify import retention, store
from notify.consent import ConsentSource
from notify.jobs import jobs
from notify.models import Consent, ConsentEvent, User
from notify.settings import load_settings
from notify.web.endpoints import POSTMAN

NOW = store.now()


async def _history(settings, who: str, changes: list[tuple[str, bool, int]]) -> User:  # noqa: ANN001
    """A user with the given (topic, subscribe, days ago) changes, oldest first."""
    user, _ = await store.save_user(who, {"email": f"{who}@example.com", "email_verified": True,
                                          "phone": None}, replace=True, hash_key=HASH_KEY)
    for topic, subscribe, days_ago in changes:
        evidence = store.Evidence(source=ConsentSource.IMPORT, actor="test",
                                  occurred_at=NOW - timedelta(days=days_ago))
        await store.change_consent(user, settings.topics[topic], subscribe, evidence,
                                   default_policy=settings.policy_version)
    return user


async def _ledger() -> dict[tuple[str, str], list[int]]:
    """Days ago of each remaining event, per (user, topic), oldest first."""
    found: dict[tuple[str, str], list[int]] = {}
    for event in await ConsentEvent.all().order_by("id").prefetch_related("user"):
        key = (event.user.email.split("@")[0], event.topic)
        found.setdefault(key, []).append(round((NOW - event.occurred_at).total_seconds()
                                               / 86400))
    return found


async def _states_match_last_events() -> None:
    for consent in await Consent.all():
        last = await ConsentEvent.filter(user_id=consent.user_id, topic=consent.topic) \
            .order_by("-id").first()
        assert last is not None and last.to_state == consent.state


@pytest.fixture
async def ledger(client, orm, settings):  # noqa: ANN001, ANN201
    with orm:
        await _history(settings, "ann", [("newsletter", True, 400), ("newsletter", False, 300),
                                         ("newsletter", True, 10),
                                         ("email_notifications", True, 500)])
        await _history(settings, "ben", [("newsletter", True, 400),
                                         ("newsletter", False, 200)])
    return orm


@pytest.mark.parametrize("chunk", [retention.CHUNK, 2])
async def test_prune_deletes_superseded_old_events_and_keeps_each_newest(ledger, monkeypatch,
                                                                         chunk):
    # A small chunk walks the ledger in several rounds, as a first prune of a big one does.
    monkeypatch.setattr(retention, "CHUNK", chunk)
    with ledger:
        assert await retention.prune_ledger(100, NOW) == 3
        assert await _ledger() == {
            ("ann", "newsletter"): [10],
            # Older than the period but the newest of its topic: the proof of consent stays.
            ("ann", "email_notifications"): [500],
            ("ben", "newsletter"): [200],  # the proof of the withdrawal stays
        }
        await _states_match_last_events()
        assert await retention.prune_ledger(100, NOW) == 0  # nothing left to do


async def test_prune_keeps_what_is_inside_the_period_and_zero_keeps_all(ledger):
    with ledger:
        assert await retention.prune_ledger(0, NOW) == 0
        assert await retention.prune_ledger(350, NOW) == 2  # the two events of 400 days
        assert await _ledger() == {("ann", "newsletter"): [300, 10],
                                   ("ann", "email_notifications"): [500],
                                   ("ben", "newsletter"): [200]}


async def test_the_worker_prunes_with_the_configured_period(client, ledger, tmp_path,
                                                           database_url):
    settings = load_settings(environ=environ_for(database_url, tmp_path / "data",
                                                 NOTIFY_LEDGER_RETENTION_DAYS="100"))
    [prune] = [job for job in jobs(settings, client.app[POSTMAN])
               if job.__name__ == "prune_ledger"]
    with ledger:
        await prune()
        assert await ConsentEvent.all().count() == 3
        await _states_match_last_events()


def test_cli_prune_uses_the_setting_or_days_and_says_what_it_did(tmp_path):
    env = environ_for(f"sqlite://{tmp_path / 'notify.sqlite3'}", tmp_path / "data")
    assert run(["migrate"], env).code == 0
    kept = run(["consents", "prune"], env)
    assert kept.code == 0 and "nothing pruned" in kept.out
    done = run(["consents", "prune", "--days", "30"], env)
    assert done.code == 0 and "pruned 0 superseded ledger events older than 30 days" in done.out
    bad = run(["consents", "prune", "--days", "-3"], env)
    assert bad.code == 2 and "Traceback" not in bad.err
