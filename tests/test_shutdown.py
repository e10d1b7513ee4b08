"""SIGTERM, as a process manager sends it on a deploy: ``notify serve`` finishes the
requests in flight and ``notify worker`` the batch it is sending, each within
NOTIFY_SHUTDOWN_TIMEOUT, and exits 0. Whatever is cut off by the timeout is left to be
taken over, never lost, and nothing is sent twice."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from sinks import CountingRelay, prepare, smtp_env, start_relay, statuses, wait_for
from support import APP, APP_KEY, free_port, in_db
from test_cli import http, stop, wait_for_line
from test_faults import _serve
from test_workers import progress_of, worker

from notify.models import Delivery

BACKENDS = pytest.mark.parametrize("backend", ["sqlite", pytest.param(
    "postgres", marks=pytest.mark.postgres)])
USERS = 20


@pytest.fixture
def url(request: pytest.FixtureRequest, backend: str, tmp_path) -> str:  # noqa: ANN001
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'notify.sqlite3'}"
    return request.getfixturevalue("fresh_pg_database")()


def _is_listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def _subscribe(base: str, user: str) -> int | None:
    """Subscribe a user to the newsletter: the confirmation email goes out inside the
    request, so a slow relay makes it a slow request. The status, None without one."""
    request = urllib.request.Request(
        f"{base}/v1/users/{user}/consents/newsletter", method="PUT",
        data=json.dumps({"subscribed": True}).encode(),
        headers={**APP, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return None


def _confirmations(url: str) -> dict[str, str]:
    async def read() -> dict[str, str]:
        return dict(await Delivery.filter(kind="confirmation").values_list(
            "user__external_id", "status"))
    return in_db(url, read)


@BACKENDS
def test_serve_finishes_a_request_in_flight_and_cuts_off_a_hung_one(url, tmp_path):
    relay = CountingRelay(delays={"slow@example.com": 1.5, "hung@example.com": 60})
    controller = start_relay(relay)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env, _ = prepare(url, tmp_path / "data", 1, NOTIFY_PUBLIC_URL=base,
                     NOTIFY_SHUTDOWN_TIMEOUT="4", **smtp_env(controller.port))
    log = tmp_path / "serve.log"
    proc = _serve(env, tmp_path, port, log)
    try:
        wait_for_line(proc, "serving on")
        for user in ("slow", "hung"):
            status, _ = http("PUT", f"{base}/v1/users/{user}", APP_KEY,
                             {"email": f"{user}@example.com", "email_verified": True})
            assert status == 201
        with ThreadPoolExecutor(2) as pool:
            answers = pool.map(lambda user: _subscribe(base, user), ["slow", "hung"])
            time.sleep(0.7)  # both are waiting for the relay
            proc.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            wait_for(lambda: not _is_listening(port), "the port to close", timeout=5)
            slow, hung = answers
        code = proc.wait(timeout=15)
        took = time.monotonic() - asked
    finally:
        stop(proc)
        controller.stop()
    text = log.read_text()
    assert code == 0, text[-3000:]
    # The slow request was answered, its confirmation sent and recorded.
    assert slow == 200
    assert relay.received["slow@example.com"] == 1
    confirmations = _confirmations(url)
    assert confirmations["slow"] == "sent"
    # The hung one was cut off at the timeout (4 s; aiohttp alone would wait 8); its
    # confirmation stays claimed and the sender takes it over when the lease runs out.
    assert hung is None
    assert 3.5 <= took <= 7.5, took
    assert confirmations["hung"] == "sending"
    assert "Traceback" not in text, text[-3000:]


def _worker_env(url: str, tmp_path, relay_port: int, **extra: str):  # noqa: ANN001, ANN202
    # Batches of 10 (the rate caps them) over two connections to a relay that takes
    # 0.2 s a message: a batch is in flight for about a second.
    return prepare(url, tmp_path / "data", USERS, NOTIFY_WORKER_LEASE_SECONDS="3",
                   **smtp_env(relay_port, NOTIFY_SMTP_RATE="10", NOTIFY_SMTP_POOL_SIZE="2",
                              **extra))


def _sending(url: str) -> int:
    async def count() -> int:
        return await Delivery.filter(status="sending").count()
    return in_db(url, count)


@BACKENDS
def test_worker_finishes_its_batch_on_sigterm_and_the_next_sends_the_rest_once(url,
                                                                             tmp_path):
    relay = CountingRelay(delay=0.2)
    controller = start_relay(relay)
    env, campaign_id = _worker_env(url, tmp_path, controller.port)
    log = tmp_path / "worker.log"
    first = worker(env, tmp_path, log)
    try:
        wait_for_line(first, "notify worker running")
        wait_for(lambda: relay.total >= 2, "a batch in flight", alive=[first])
        first.send_signal(signal.SIGTERM)
        code, _, _ = stop(first)
        after_stop = statuses(url, campaign_id)
        handed_over = relay.total
        second = worker(env, tmp_path, log)
        wait_for_line(second, "notify worker running")
        wait_for(lambda: statuses(url, campaign_id).keys() == {"sent"}, "the rest",
                 alive=[second])
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None:
                stop(proc)
        controller.stop()
    text = log.read_text()
    assert code == 0, text[-3000:]
    # The batch in flight was finished and recorded: what the relay got is marked sent,
    # in whole batches of 10, and nothing is left claimed; the rest waits, untouched.
    assert after_stop["sent"] == handed_over and handed_over % 10 == 0, (after_stop, handed_over)
    assert set(after_stop) == {"sent", "queued"}, after_stop
    assert len(relay.received) == USERS and set(relay.received.values()) == {1}
    assert progress_of(url, campaign_id).possible_duplicates == 0
    assert "Traceback" not in text, text[-3000:]


@BACKENDS
def test_worker_cut_off_by_the_timeout_leaves_its_claims_to_be_taken_over(url, tmp_path):
    relay = CountingRelay(delay=60)  # a relay that hangs
    controller = start_relay(relay)
    env, campaign_id = _worker_env(url, tmp_path, controller.port,
                                   NOTIFY_SHUTDOWN_TIMEOUT="1")
    log = tmp_path / "worker.log"
    first = worker(env, tmp_path, log)
    try:
        wait_for_line(first, "notify worker running")
        wait_for(lambda: _sending(url) > 0, "a batch claimed", alive=[first])
        time.sleep(0.3)
        first.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        code, _, _ = stop(first)
        took = time.monotonic() - asked
        claimed = _sending(url)
        relay.delay = 0  # the relay recovers
        second = worker(env, tmp_path, log)
        wait_for_line(second, "notify worker running")
        # The claims come back when their lease (3 s) runs out.
        wait_for(lambda: statuses(url, campaign_id).keys() == {"sent"}, "the takeover",
                 alive=[second])
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None:
                stop(proc)
        controller.stop()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert took < 5, took
    assert "did not finish its batch within 1s" in text
    assert claimed == 10, "the cut-off batch stays claimed, to be taken over"
    assert len(relay.received) == USERS
    twice = sum(1 for n in relay.received.values() if n > 1)
    assert twice <= progress_of(url, campaign_id).possible_duplicates == claimed
