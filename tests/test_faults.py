"""The database goes away under real processes: a private PostgreSQL server (never the
shared one) is restarted cleanly (``pg_ctl -m fast``) and crashed (``-m immediate``) while
a worker sends a campaign and while one-click POSTs arrive at ``notify serve``.

What must hold: the worker pauses and resumes by itself and sends nobody anything twice;
the web answers 200 or 503 with Retry-After (never a 500 or a traceback) and recovers
without a restart; every withdrawal answered 200 is in the ledger; every delivery ends
in a final or retryable state.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sinks import (
    CountingRelay,
    one_click_paths,
    post_one_click,
    prepare,
    smtp_env,
    start_relay,
    statuses,
    wait_for,
)
from support import free_port, in_db
from test_cli import CLI, stop, wait_for_line
from test_workers import progress_of, worker

from notify.models import ConsentEvent, Delivery, User

USERS = 200
MODES = pytest.mark.parametrize("mode", ["fast", "immediate"])
#: What a delivery may end as here: handed over, or decided against at the check.
FINAL = {"sent", "skipped"}


@pytest.mark.postgres
@MODES
def test_a_sending_worker_pauses_while_the_database_restarts_and_sends_once(
        private_pg, tmp_path, mode):
    relay = CountingRelay()
    controller = start_relay(relay)
    url = private_pg.url(f"send_{mode}")
    # 60 a second: the campaign takes ~3 s, so the restart lands in the middle of it. The
    # lease outlasts the outage (a crash's recovery took up to 5 s on a busy machine):
    # outcomes handed over are written once the database is back, within the lease.
    env, campaign_id = prepare(url, tmp_path / "data", USERS, NOTIFY_WORKER_LEASE_SECONDS="10",
                               **smtp_env(controller.port, NOTIFY_SMTP_RATE="60"))
    log = tmp_path / "worker.log"
    proc = worker(env, tmp_path, log)
    try:
        wait_for_line(proc, "notify worker running")
        wait_for(lambda: relay.total >= 60, "the first messages", alive=[proc])
        # Down for two seconds: long enough that the worker meets it, whatever it does.
        private_pg.stop(mode)
        time.sleep(2)
        private_pg.start()
        wait_for(lambda: statuses(url, campaign_id).keys() <= FINAL, "the campaign to drain",
                 alive=[proc])
    finally:
        code, _, _ = stop(proc)
        controller.stop()
    text = log.read_text()
    assert code == 0, text[-3000:]
    # Said when it happens, and when it is over (by the pass, or by a batch's outcomes).
    assert "database unavailable" in text and "database available again" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert len(relay.received) == USERS, "every subscriber got the newsletter"
    assert set(relay.received.values()) == {1}, "nobody got it twice"
    assert statuses(url, campaign_id) == {"sent": USERS}


def retry_until_200(answers: dict[str, list], post, last) -> None:  # noqa: ANN001
    """POST again every one-click whose last answer was not 200, as a mail provider
    retries, in rounds, for up to 20 seconds."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pending = [email for email, got in answers.items() if last(got) != 200]
        if not pending:
            return
        with ThreadPoolExecutor(6) as pool:
            for email, answer in zip(pending, pool.map(post, pending), strict=True):
                answers[email].append(answer)
        time.sleep(0.3)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL: no clean-up of any kind in the process."""
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def _serve(env: dict[str, str], cwd, port: int, log) -> subprocess.Popen:  # noqa: ANN001
    with log.open("a") as stderr:
        return subprocess.Popen([*CLI, "serve", "--port", str(port), "--no-sender"], env=env,
                                cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True)


def _get(url: str, accept: str = "*/*") -> tuple[int, dict[str, str], str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def _assert_unavailable(status: int | None, headers: dict[str, str], body: str,
                        html: bool) -> None:
    assert status == 503, (status, body)
    assert headers.get("Retry-After") == "5"
    assert "Traceback" not in body
    if html:
        assert headers["Content-Type"].startswith("text/html")
        assert "try again" in body
    else:
        assert headers["Content-Type"].startswith("application/problem+json")
        assert json.loads(body)["status"] == 503


def _one_click_events(url: str) -> Counter:
    async def read() -> Counter:
        rows = await ConsentEvent.filter(source="one_click", topic="newsletter").values_list(
            "user_id", flat=True)
        emails = dict(await User.all().values_list("id", "email"))
        return Counter(emails[user_id] for user_id in rows)
    return in_db(url, read)


@pytest.mark.postgres
@MODES
def test_one_clicks_during_a_database_restart_get_200_or_503_and_200s_are_kept(
        private_pg, tmp_path, mode):
    url = private_pg.url(f"clicks_{mode}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env, _ = prepare(url, tmp_path / "data", USERS, NOTIFY_PUBLIC_URL=base)
    paths = one_click_paths(url, env, USERS)
    log = tmp_path / "serve.log"
    proc = _serve(env, tmp_path, port, log)
    answers: dict[str, list] = {email: [] for email in paths}
    started = threading.Event()

    def click(email: str) -> None:
        # Browsers' forms ask for HTML; mail providers' one-click POSTs do not.
        accept = "text/html" if hash(email) % 2 else None
        answers[email].append((accept, *post_one_click(base, paths[email], accept)))
        if sum(1 for a in answers.values() if a) >= 40:
            started.set()
        time.sleep(0.01)  # spread the POSTs over the restart

    try:
        wait_for_line(proc, "serving on")
        with ThreadPoolExecutor(6) as pool:
            clicks = pool.map(click, paths)
            assert started.wait(30)
            private_pg.stop(mode)
            # While the server is down: answers that say so, for both kinds of client.
            email = next(iter(paths))
            _assert_unavailable(*post_one_click(base, paths[email]), html=False)
            _assert_unavailable(*post_one_click(base, paths[email], "text/html"), html=True)
            _assert_unavailable(*_get(base + paths[email], "text/html"), html=True)
            assert _get(base + "/readyz")[0] == 503
            private_pg.start()
            list(clicks)
        # Answered without a restart of the web process: the 503s are retried, as a mail
        # provider would, and get their 200.
        retry_until_200(answers, lambda email: (None, *post_one_click(base, paths[email])),
                        lambda got: got[-1][1])
        assert _get(base + "/readyz")[0] == 200
        assert proc.poll() is None, "the web process survived"
    finally:
        code, _, _ = stop(proc)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    seen = Counter(status for got in answers.values() for _, status, _, _ in got)
    assert set(seen) <= {200, 503}, seen
    for got in answers.values():
        for accept, status, headers, body in got:
            if status == 503:
                _assert_unavailable(status, headers, body, html=accept == "text/html")
    answered = {email for email, got in answers.items() if got[-1][1] == 200}
    assert answered == set(paths), "every one-click was answered 200 in the end"
    # Every withdrawal answered 200 is in the ledger, once.
    assert _one_click_events(url) == Counter(answered)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_killed_web_and_worker_lose_no_withdrawal_and_no_delivery(
        request, backend, tmp_path):
    """SIGKILL the web process while one-click POSTs arrive and the worker while it sends,
    start both again: every withdrawal answered 200 is in the ledger, every delivery ends
    sent or skipped, and only messages in flight at the kill may have gone twice."""
    url = (f"sqlite://{tmp_path / 'notify.sqlite3'}" if backend == "sqlite"
           else request.getfixturevalue("fresh_pg_database")())
    relay = CountingRelay()
    controller = start_relay(relay)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env, campaign_id = prepare(url, tmp_path / "data", USERS, NOTIFY_PUBLIC_URL=base,
                               NOTIFY_WORKER_LEASE_SECONDS="3",
                               **smtp_env(controller.port, NOTIFY_SMTP_RATE="100"))
    # The last users: the worker takes them in its second batch, and it starts once some
    # of their clicks were answered, so some of their checks come after their 200s.
    paths = one_click_paths(url, env, 100, last=True)
    log = tmp_path / "processes.log"
    web, busy = _serve(env, tmp_path, port, log), None
    answers: dict[str, list] = {email: [] for email in paths}

    answered: dict[str, datetime] = {}

    def click(email: str) -> int | None:
        status = post_one_click(base, paths[email])[0]
        if status == 200:
            answered.setdefault(email, datetime.now(UTC))
        return status

    def first_click(email: str) -> None:
        answers[email].append(click(email))
        time.sleep(0.02)

    try:
        wait_for_line(web, "serving on")
        with ThreadPoolExecutor(4) as pool:
            clicks = pool.map(first_click, paths)
            wait_for(lambda: sum(map(bool, answers.values())) >= 30, "some answers")
            kill(web)
            busy = worker(env, tmp_path, log)
            web = _serve(env, tmp_path, port, log)
            wait_for_line(web, "serving on")
            wait_for_line(busy, "notify worker running")
            wait_for(lambda: relay.total >= 60, "some messages", alive=[busy])
            kill(busy)
            busy = worker(env, tmp_path, log)
            wait_for_line(busy, "notify worker running")
            list(clicks)
        retry_until_200(answers, click, lambda got: got[-1])
        # The dead worker's claims come back after their lease (3 s).
        wait_for(lambda: statuses(url, campaign_id).keys() <= FINAL, "the campaign to drain",
                 alive=[busy, web])
    finally:
        for proc in (web, busy):
            if proc is not None and proc.returncode is None:
                stop(proc)
        controller.stop()
    text = log.read_text()
    assert set(Counter(s for got in answers.values() for s in got)) <= {200, 503, None}
    assert all(got[-1] == 200 for got in answers.values())
    assert _one_click_events(url) == Counter(list(paths)), "each withdrawal in the ledger, once"
    found = progress_of(url, campaign_id)
    assert sum(found.counts.values()) == USERS and found.counts.keys() <= FINAL, found.counts
    # Exact, unlike the progress's timestamp count (sent_after_withdrawal, which a check
    # reading while a withdrawal commits can make 1): a 200 goes out after the commit, so
    # no message whose check began after its user's 200 came back may have been sent.
    assert answered.keys() == paths.keys()
    checked_after, sent_after = _checked_after_answered(url, campaign_id, answered)
    assert checked_after, "no check came after a withdrawal: the test proves nothing"
    assert sent_after == []
    # Every delivery recorded sent reached the relay; anything else the relay got was in
    # flight at the kill (a taken-over claim), and only those may have gone twice.
    sent, taken_over = _sent_and_taken_over(url, campaign_id)
    assert sent <= set(relay.received)
    assert set(relay.received) - sent <= taken_over
    twice = {email for email, n in relay.received.items() if n > 1}
    assert twice <= taken_over and len(twice) <= found.possible_duplicates
    assert "Traceback" not in text, text[-3000:]


def _checked_after_answered(url: str, campaign_id: int, answered: dict[str, datetime]
                            ) -> tuple[list[str], list[str]]:
    """The clicked users whose delivery's last check began after their 200, and those of
    them whose message was sent all the same."""
    async def read() -> tuple[list[str], list[str]]:
        rows = await Delivery.filter(campaign_id=campaign_id,
                                     user__email__in=list(answered)).values_list(
            "user__email", "checked_at", "status")
        late = [(email, status) for email, checked, status in rows
                if checked is not None and checked > answered[email]]
        return [e for e, _ in late], [e for e, status in late if status == "sent"]
    return in_db(url, read)


def _sent_and_taken_over(url: str, campaign_id: int) -> tuple[set[str], set[str]]:
    async def read() -> tuple[set[str], set[str]]:
        rows = await Delivery.filter(campaign_id=campaign_id).values_list(
            "user__email", "status", "takeovers")
        return ({e for e, status, _ in rows if status == "sent"},
                {e for e, _, takeovers in rows if takeovers})
    return in_db(url, read)
