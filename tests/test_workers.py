"""Real worker processes over one database: two share a campaign without sending anything
twice, a worker killed with SIGKILL loses nothing, and SQLite refuses a second sender."""

from __future__ import annotations

import asyncio
import email
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import sinks
from population import populate
from support import HASH_KEY, environ_for, in_db
from test_cli import CLI, clean_env, start, stop, wait_for_line

from notify import campaigns
from notify.jobs import EMAIL_BATCH
from notify.models import Campaign, Delivery
from notify.settings import load_settings


def worker(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """A ``notify worker`` whose log goes to a file (a full pipe would block it)."""
    with log.open("a") as stderr:  # the child keeps its own copy
        return subprocess.Popen([*CLI, "worker"], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=stderr, text=True)


def prepare(url: str, data: Path, users: int) -> tuple[dict[str, str], int]:
    """A migrated database with ``users`` subscribers and a sending newsletter campaign."""
    return sinks.prepare(url, data, users, NOTIFY_WORKER_LEASE_SECONDS="3")


def open_count(url: str, campaign_id: int) -> int:
    async def count() -> int:
        return await Delivery.filter(campaign_id=campaign_id,
                                     status__in=campaigns.OPEN).count()
    return in_db(url, count)


def wait_until(condition, what: str, procs: list, timeout: float = 240) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"a worker exited early with {proc.returncode}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def recipients(outbox: Path) -> Counter:
    found: Counter = Counter()
    for path in outbox.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes())
        found[message["To"]] += 1
    return found


def progress_of(url: str, campaign_id: int) -> campaigns.Progress:
    async def read() -> campaigns.Progress:
        campaign = await Campaign.get(id=campaign_id)
        await campaigns.finish_done()
        return await campaigns.progress(await Campaign.get(id=campaign.id))
    return in_db(url, read)


@pytest.mark.postgres
def test_two_workers_send_a_3000_user_campaign_once_each(fresh_pg_database, tmp_path):
    url = fresh_pg_database()
    # 3,000 users are 15 batches, enough for both workers to claim many times; the
    # speed at scale is bench/campaign_send.py's business, not the suite's.
    env, campaign_id = prepare(url, tmp_path / "data", 3_000)
    logs = tmp_path / "workers.log"
    procs = [worker(env, tmp_path, logs) for _ in range(2)]
    try:
        for proc in procs:
            wait_for_line(proc, "notify worker running")
        wait_until(lambda: open_count(url, campaign_id) == 0, "the campaign to drain", procs)
    finally:
        outcomes = [stop(proc) for proc in procs]
    assert [code for code, _, _ in outcomes] == [0, 0], logs.read_text()[-3000:]
    got = recipients(tmp_path / "data" / "outbox")
    assert len(got) == 3_000, "every subscriber got the newsletter"
    assert set(got.values()) == {1}, "nobody got it twice"
    found = progress_of(url, campaign_id)
    assert found.counts == {"sent": 3_000} and found.possible_duplicates == 0
    assert found.campaign.status == "done"
    # Both workers did part of the work (claims are shared, not one worker's alone).
    assert "Traceback" not in logs.read_text()


@pytest.mark.postgres
def test_a_worker_killed_mid_campaign_loses_nothing(fresh_pg_database, tmp_path):
    url = fresh_pg_database()
    users = 2500
    env, campaign_id = prepare(url, tmp_path / "data", users)
    logs = tmp_path / "workers.log"
    first = worker(env, tmp_path, logs)
    wait_for_line(first, "notify worker running")
    wait_until(lambda: open_count(url, campaign_id) < users * 0.7, "some progress", [first])
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    first.stdout.close()
    stranded = open_count(url, campaign_id)
    assert stranded > 0
    second = worker(env, tmp_path, logs)
    try:
        wait_for_line(second, "notify worker running")
        # Its claims expire after the lease (3 s here); the new worker takes them over.
        wait_until(lambda: open_count(url, campaign_id) == 0, "the rest", [second])
    finally:
        code, _, _ = stop(second)
    assert code == 0
    got = recipients(tmp_path / "data" / "outbox")
    assert len(got) == users, "every eligible user was served"
    found = progress_of(url, campaign_id)
    assert found.counts == {"sent": users}
    twice = sum(1 for n in got.values() if n > 1)
    # Only messages in flight at the kill can have gone twice, and the status says how many
    # might have.
    assert twice <= found.possible_duplicates <= EMAIL_BATCH
    assert found.campaign.status == "done"


def test_sqlite_refuses_a_second_sender_with_one_line(tmp_path):
    env = clean_env(**environ_for(f"sqlite://{tmp_path / 'notify.sqlite3'}",
                                  tmp_path / "data"))
    first = start(["worker"], env, tmp_path)
    try:
        wait_for_line(first, "notify worker running")
        second = subprocess.run([*CLI, "worker"], env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)
    finally:
        code, _, err = stop(first)
    assert code == 0, err
    assert second.returncode == 1
    assert "Traceback" not in second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("notify: ") and "SQLite runs one sender" in last
    assert f"pid {first.pid}" in last


def test_a_worker_serves_its_own_metrics(tmp_path):
    import urllib.request

    from support import free_port

    env = clean_env(**environ_for(f"sqlite://{tmp_path / 'notify.sqlite3'}",
                                  tmp_path / "data"))
    port = free_port()
    proc = subprocess.Popen([*CLI, "worker", "--metrics-port", str(port)], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_line(proc, "notify worker running")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "notify_send_seconds" in text and "process_cpu_seconds_total" in text


def test_sqlite_one_clicks_succeed_while_a_worker_writes(tmp_path):
    """Two web processes and a worker on one SQLite file: every one-click POST is answered
    200 and recorded, however the writers interleave (BEGIN IMMEDIATE; with SQLite's
    deferred BEGIN about half were answered 500, "database is locked")."""
    import urllib.request

    from support import free_port

    url = f"sqlite://{tmp_path / 'notify.sqlite3'}"
    port = free_port()
    env = clean_env(**environ_for(url, tmp_path / "data",
                                  NOTIFY_PUBLIC_URL=f"http://127.0.0.1:{port}"))
    settings = load_settings(environ=env)

    async def seed() -> tuple[int, list[str]]:
        await populate(1500, HASH_KEY, cycle=("subscribed",))
        campaign = await campaigns.create(settings, campaigns.Spec(
            name="busy", kind="newsletter", topic="newsletter",
            variables={"subject": "News", "body": "Hello"}), "test")
        await campaigns.send(settings, campaign.id, "test")
        from notify import links
        from notify.models import User

        leaving = await User.all().order_by("id").limit(150)
        urls = [(await links.for_message(settings, u, "newsletter", 0))[1] for u in leaving]
        return campaign.id, [u.split(str(port), 1)[1] for u in urls]

    subprocess.run([*CLI, "migrate"], env=env, cwd=tmp_path, check=True,
                   capture_output=True)
    campaign_id, paths = in_db(url, seed)
    ports = [port, free_port()]
    webs = [subprocess.Popen([*CLI, "serve", "--port", str(p), "--no-sender"], env=env,
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True) for p in ports]
    busy = worker(env, tmp_path, tmp_path / "worker.log")
    answers: Counter = Counter()
    try:
        for web in webs:
            wait_for_line(web, "serving on")
        wait_for_line(busy, "notify worker running")

        def post(path: str) -> int:
            target = ports[hash(path) % 2]
            request = urllib.request.Request(f"http://127.0.0.1:{target}{path}",
                                             data=b"List-Unsubscribe=One-Click",
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        async def all_posts() -> None:
            loop = asyncio.get_running_loop()
            results = await asyncio.gather(*(loop.run_in_executor(None, post, p)
                                             for p in paths))
            answers.update(results)

        asyncio.run(all_posts())
        still_open = open_count(url, campaign_id)
    finally:
        for web in webs:
            stop(web)
        stop(busy)
    assert still_open > 0, "the worker was still writing while the POSTs came"
    assert answers == {200: len(paths)}, answers

    async def recorded() -> int:
        from notify.models import ConsentEvent

        return await ConsentEvent.filter(source="one_click").count()

    assert in_db(url, recorded) == len(paths)
