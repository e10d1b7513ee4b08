"""``notify policy`` and ``notify campaign`` from a terminal: the same rules as the API,
one-line errors, and a send that follows the progress to the end."""

from __future__ import annotations

import email
import email.policy
import subprocess

from population import populate
from support import HASH_KEY, environ_for, in_db
from test_cli import CLI, assert_one_line_error, clean_env, cli, start, stop, wait_for_line

from notify.models import AuditEntry, Campaign

__all__ = ["cli"]  # the fixture, imported for these tests

PUBLISH = ["policy", "publish", "--version", "2026-12", "--title", "Clearer retention",
           "--summary", "Support tickets are kept two years.", "--url",
           "https://example.com/privacy", "--effective-at", "2026-12-01T00:00:00Z",
           "--material"]


def test_publish_create_audience_send_status_from_the_cli(cli, database_url, tmp_path):
    async def seed() -> None:
        await populate(50, HASH_KEY)

    in_db(database_url, seed)
    published = cli(database_url, *PUBLISH)
    assert published.code == 0, published
    assert "published policy 2026-12 (material)" in published.out
    again = cli(database_url, *PUBLISH)
    assert_one_line_error(again, 1, "published already")
    listed = cli(database_url, "policy", "list")
    assert "Clearer retention" in listed.out

    created = cli(database_url, "campaign", "create", "--name", "December notice", "--kind",
                  "policy_notice", "--policy-version", "2026-12")
    assert created.code == 0, created
    assert "created campaign 1" in created.out
    audience = cli(database_url, "campaign", "audience", "1")
    assert "email: 30 would receive it" in audience.out
    assert "excluded: erased" in audience.out and "u000006" in audience.out
    preview = cli(database_url, "campaign", "preview", "1", "--locale", "de")
    assert preview.code == 0 and "Clearer retention" in preview.out
    test = cli(database_url, "campaign", "test", "1", "--to", "team@example.org")
    assert test.code == 0 and "sent a test to team@example.org" in test.out
    sent = cli(database_url, "campaign", "send", "1", "--detach")
    assert sent.code == 0, sent
    assert "30 deliveries queued" in sent.out and "erased 5" in sent.out
    status = cli(database_url, "campaign", "status", "1")
    assert "sending" in status.out and "queued" in status.out
    paused = cli(database_url, "campaign", "pause", "1")
    assert paused.out.strip() == "campaign 1: paused"
    assert_one_line_error(cli(database_url, "campaign", "pause", "1"), 1, "is paused")
    assert cli(database_url, "campaign", "cancel", "1").code == 0

    async def audit() -> list[tuple[str, str]]:
        return [(e.action, e.key_id) for e in await AuditEntry.all().order_by("id")]

    actions = in_db(database_url, audit)
    assert [a for a, _ in actions] == ["policy.publish", "campaign.create", "campaign.test",
                                       "campaign.send", "campaign.pause", "campaign.cancel"]
    assert all(key.startswith("cli") for _, key in actions)


def test_cli_campaign_input_errors_are_one_line(cli, database_url):
    cases = [
        (["campaign", "create", "--name", "x", "--kind", "newsletter"], "needs a topic"),
        (["campaign", "create", "--name", "x", "--kind", "newsletter", "--topic",
          "newsletter", "--var", "novalue"], "--var"),
        (["campaign", "create", "--name", "x", "--kind", "newsletter", "--topic",
          "newsletter", "--country", "Narnia"], "--country"),
        (["campaign", "create", "--name", "x", "--kind", "newsletter", "--topic",
          "newsletter", "--created-after", "2026-01-01T00:00:00"], "--created-after"),
        (["campaign", "create", "--name", "x", "--kind", "newsletter", "--topic",
          "newsletter", "--var", "t=x"], "reserved"),
        (["campaign", "status", "42"], "no campaign 42"),
        (["campaign", "test", "42", "--to", "not-an-address"], "--to"),
        (["policy", "publish", "--version", "v1", "--title", "t", "--summary", "s",
          "--url", "https://example.com", "--effective-at", "tomorrow", "--no-material"],
         "--effective-at"),
    ]
    for argv, words in cases:
        assert_one_line_error(cli(database_url, *argv), 1, words)
    created = cli(database_url, "campaign", "create", "--name", "x", "--kind", "newsletter",
                  "--topic", "newsletter", "--var", "subject=s", "--var", "body=b")
    assert created.code == 0, created
    assert_one_line_error(cli(database_url, "campaign", "preview", "1", "--out",
                              "/nonexistent/dir/x.html"), 1, "cannot write")


def test_cli_refuses_ids_beyond_the_database(cli, database_url):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        cli(database_url, "campaign", "status", "99999999999999999999")
    assert exit_.value.code == 2


def test_send_follows_the_progress_until_done(database_url, tmp_path):
    env = clean_env(**environ_for(database_url, tmp_path / "data"))

    async def seed() -> int:
        from notify import campaigns
        from notify.settings import load_settings

        await populate(60, HASH_KEY)
        campaign = await campaigns.create(load_settings(environ=env), campaigns.Spec(
            name="news", kind="newsletter", topic="newsletter",
            variables={"subject": "News", "body": "Hello"}), "test")
        return campaign.id

    campaign_id = in_db(database_url, seed)
    worker = start(["worker"], env, tmp_path)
    try:
        wait_for_line(worker, "notify worker running")
        sent = subprocess.run([*CLI, "campaign", "send", str(campaign_id)], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=90)
    finally:
        code, _, err = stop(worker)
    assert code == 0, err
    assert sent.returncode == 0, sent.stderr
    assert "12 deliveries queued" in sent.stdout
    assert "progress 100.0%" in sent.stdout and "done" in sent.stdout
    assert "12/12" in sent.stderr  # the bar's last state
    outbox = list((tmp_path / "data" / "outbox").glob("*.eml"))
    assert len(outbox) == 12
    assert all(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
               ["List-Unsubscribe"] for p in outbox)

    async def status() -> str:
        return (await Campaign.get(id=campaign_id)).status

    assert in_db(database_url, status) == "done"
