"""A campaign end to end: `notify worker` processes drain a PostgreSQL outbox through the
eligibility re-check, templates, MIME, DKIM (RSA-2048) and SMTP into postfix's
``smtp-sink`` on loopback, each message personalised with its own unsubscribe link.

Printed next to the same run's ceiling: RSA-2048 signatures per second through OpenSSL on
all cores, combined with SMTP sends of one pre-built, signed message through the workers'
own channel and envelope (a message costs one of each, so the ceiling is
1 / (1/signatures + 1/sends)), measured in slices before the send, between slices of
it (the workers stopped meanwhile) and after it, so that both see the same machine.

Run from the repository root: ``python bench/campaign_send.py [USERS] [WORKERS]
[--repeat N]`` (defaults 20000 users, one worker per core, three campaigns in a row whose
median is the figure). Needs PostgreSQL at 127.0.0.1:5432
(``NOTIFY_BENCH_POSTGRES``) and ``smtp-sink`` (Debian's postfix package).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from queue import Empty

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    cpu_times,
    machine_busy,
    positive,
    postgres_pids,
    start_profile,
)
from enqueue import ADMIN, HASH_KEY, admin, load  # noqa: E402 - the bench's shared loader

#: Seconds of sending between two slices of the ceiling, and of signing and of SMTP
#: sending in each slice of the ceiling.
SEND_SLICE = 1.5
CEILING_SLICE = 0.4
BODY = "Hello, here is what changed this month. " * 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ceiling_process(env: dict[str, str], pem: bytes, commands: multiprocessing.Queue,
                     results: multiprocessing.Queue) -> None:
    """One core's share of the ceiling, kept for the whole run and measuring on command:
    ("sign", seconds) signs with OpenSSL's RSA-2048; ("send", seconds) sends one
    pre-built, signed campaign message through the workers' own SMTP channel (its pool
    size, its envelope: a VERP sender), so that the ceiling's SMTP costs what the workers'
    SMTP costs, no more and no less. Set up once (imports, key, connections), so that a
    short measurement measures only its work."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    from notify.channels import Envelope
    from notify.channels.email_smtp import SmtpEmailChannel
    from notify.settings import load_settings

    key = serialization.load_pem_private_key(pem, password=None)
    settings = load_settings(environ=env)
    envelope = Envelope("bounces+b12345678-abcdefghijklmnop@example.com",
                        ("user12345@example.com",), _sample_message(env, pem, BODY)[1])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    channel = SmtpEmailChannel(settings)

    def sign(seconds: float) -> float:
        done, start, data = 0, time.perf_counter(), b"x" * 1000
        while time.perf_counter() - start < seconds:
            key.sign(data, padding.PKCS1v15(), hashes.SHA256())
            done += 1
        return done / (time.perf_counter() - start)

    async def send(seconds: float) -> float:
        done, start = 0, time.perf_counter()

        async def one() -> None:
            nonlocal done
            while time.perf_counter() - start < seconds:
                await channel.send(envelope)
                done += 1

        await asyncio.gather(*(one() for _ in range(settings.smtp_pool_size)))
        return done / (time.perf_counter() - start)

    async def connect() -> None:  # every connection of the pool open before measuring
        await asyncio.gather(*(channel.send(envelope) for _ in range(settings.smtp_pool_size)))

    loop.run_until_complete(connect())
    results.put("ready")
    while (command := commands.get()) is not None:
        what, seconds = command
        results.put(sign(seconds) if what == "sign" else loop.run_until_complete(send(seconds)))
    loop.run_until_complete(channel.close())


class Ceiling:
    """The least work a signed message over SMTP needs, on all cores: RSA-2048 signatures
    per second and raw SMTP sends per second, each measured by one process a core at
    once, with nothing else running. Measured in slices between the slices of the send
    (the workers stopped meanwhile), so that ceiling and send see the same machine: its
    speed drifts by 20% within a minute (other tenants), and a ceiling measured only
    before and after the send moved the ratio by ±10 points."""

    def __init__(self, env: dict[str, str], pem: bytes, cores: int) -> None:
        self.results: multiprocessing.Queue = multiprocessing.Queue()
        self.commands = [multiprocessing.Queue() for _ in range(cores)]
        # Daemonic: a bench that fails half-way must not hang at exit waiting for them.
        self.procs = [multiprocessing.Process(target=_ceiling_process,
                                              args=(env, pem, queue, self.results),
                                              daemon=True)
                      for queue in self.commands]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            self._result()
        self.samples: list[tuple[float, float]] = []

    def _all(self, what: str, seconds: float) -> float:
        for queue in self.commands:
            queue.put((what, seconds))
        return sum(self._result() for _ in self.commands)

    def _result(self):  # noqa: ANN202
        try:
            return self.results.get(timeout=60)
        except Empty:
            sys.exit("a ceiling process did not answer (its error is above)")

    def measure(self, seconds: float) -> tuple[float, float]:
        sample = (self._all("sign", seconds), self._all("send", seconds))
        self.samples.append(sample)
        return sample

    def mean(self) -> tuple[float, float]:
        count = len(self.samples)
        return (sum(s[0] for s in self.samples) / count, sum(s[1] for s in self.samples) / count)

    def close(self) -> None:
        for queue in self.commands:
            queue.put(None)
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def _combined(signatures: float, sends: float) -> float:
    """Messages a second when each costs one signature and one send on the same cores."""
    return 1 / (1 / signatures + 1 / sends)


def _sample_message(env: dict[str, str], pem: bytes, body: str):  # noqa: ANN202
    """One campaign message as a worker builds it (its Email, and its bytes signed)."""
    from notify import mail
    from notify.dkim import DkimSigner
    from notify.settings import load_settings

    settings = load_settings(environ=env)
    link = "https://notify.example.com/u/k1." + "x" * 120
    message = mail.Email(
        to="user12345@example.com", to_name="Ada Lovelace", kind="newsletter", locale="en",
        context={"subject": "This month", "body": body, "name": "Ada Lovelace"},
        footer=mail.Footer(preferences_url=link, unsubscribe_url=link, topic_label="News"),
        headers={"Message-ID": "<x@example.com>", "List-Unsubscribe": f"<{link}>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                 "List-Id": "Newsletter <newsletter.example.com>"})
    signer = DkimSigner("example.com", "s1", pem)
    return message, signer.sign(mail.build_bytes(message, settings))


def _own_costs(env: dict[str, str], pem: bytes, body: str, queue: multiprocessing.Queue
               ) -> None:
    """A message's own CPU on one core, per step, best of 3 rounds of 400: what the
    ceiling leaves out (templates and MIME) and what it counts (RSA)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    from notify import mail, render_once
    from notify.dkim import DkimSigner
    from notify.settings import load_settings

    settings = load_settings(environ=env)
    signer = DkimSigner("example.com", "s1", pem)
    shared = render_once.Renderings()  # as a worker's batch has it
    key = serialization.load_pem_private_key(pem, password=None)
    message, _ = _sample_message(env, pem, body)
    data = mail.build_bytes(message, settings)
    steps = {
        "render, whole (subject, text, HTML)": lambda: mail.render(message, settings),
        "render, shared in its batch": lambda: mail.render(message, settings, shared),
        "render (shared) + MIME": lambda: mail.build_bytes(message, settings, shared),
        "DKIM sign (ours)": lambda: signer.sign(data),
        "RSA-2048 alone": lambda: key.sign(b"x" * 32, padding.PKCS1v15(), hashes.SHA256()),
    }
    costs = {}
    for name, step in steps.items():
        rounds = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(400):
                step()
            rounds.append((time.perf_counter() - start) / 400)
        costs[name] = min(rounds)
    queue.put(costs)


async def _set_up(sink_binary: str) -> tuple[Path, bytes, int, subprocess.Popen, str, str,
                                             dict[str, str]]:
    """A work folder with a fresh DKIM key, smtp-sink on a free port, an empty database,
    and the workers' environment."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    work = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    (work / "dkim.pem").write_bytes(pem)
    port = free_port()
    sink = subprocess.Popen([sink_binary, "-u", "nobody", f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = f"notify_bench_{uuid.uuid4().hex[:10]}"
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    await admin(f'CREATE DATABASE "{name}"')
    return work, pem, port, sink, name, url, _env(url, work, port)


def _env(url: str, work: Path, port: int) -> dict[str, str]:
    return {**os.environ, "NOTIFY_DATABASE_URL": url, "NOTIFY_DATA_DIR": str(work),
            "NOTIFY_API_KEYS": "admin:" + "a" * 20, "NOTIFY_SECRET_KEYS": "k1:" + "s" * 40,
            "NOTIFY_HASH_KEY": HASH_KEY.decode(), "NOTIFY_LOG_LEVEL": "WARNING",
            "NOTIFY_EMAIL_TRANSPORT": "smtp", "NOTIFY_SMTP_HOST": "127.0.0.1",
            "NOTIFY_SMTP_PORT": str(port), "NOTIFY_SMTP_TLS": "none",
            "NOTIFY_SMTP_POOL_SIZE": "8", "NOTIFY_POSTAL_ADDRESS": "Example Ltd, Berlin",
            "NOTIFY_DKIM_DOMAIN": "example.com", "NOTIFY_DKIM_SELECTOR": "s1",
            "NOTIFY_DKIM_KEY_FILE": str(work / "dkim.pem"),
            "NOTIFY_PUBLIC_URL": "https://notify.example.com"}


async def _prepare(env: dict[str, str], url: str, users: int) -> int:
    """Migrate, load ``users``, create the campaign and enqueue it; returns how many."""
    subprocess.run([sys.executable, "-m", "notify.cli", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await load(url, users)
    created = subprocess.run(
        [sys.executable, "-m", "notify.cli", "campaign", "create", "--name", "bench",
         "--kind", "newsletter", "--topic", "newsletter", "--var", "subject=This month",
         "--var", "body=" + BODY],
        env=env, check=True, capture_output=True, text=True)
    campaign = created.stdout.split("created campaign ", 1)[1].split()[0]
    sent = subprocess.run([sys.executable, "-m", "notify.cli", "campaign", "send",
                           campaign, "--detach"], env=env, check=True,
                          capture_output=True, text=True)
    return int(sent.stdout.split(": ", 1)[1].split()[0])


def _start_workers(env: dict[str, str], workers: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-m", "notify.cli", "worker"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(workers)]
    for proc in procs:
        assert proc.stdout is not None
        proc.stdout.readline()  # "notify worker running"
    return procs


async def _settle(url: str) -> None:
    """The tables as they are a while after an enqueue: vacuumed, analysed, checkpointed
    (otherwise autovacuum starts on the fresh rows during a ceiling or the send)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def wait_quiet(most: float = 15.0, cores_busy: float = 0.15) -> None:
    """Until the machine has been idle (under ``cores_busy`` of a core) for half a second,
    or ``most`` seconds have passed."""
    deadline = time.monotonic() + most
    while time.monotonic() < deadline:
        busy, start = machine_busy(), time.monotonic()
        await asyncio.sleep(0.5)
        if (machine_busy() - busy) / (time.monotonic() - start) < cores_busy:
            return


async def open_deliveries(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await any_open(conn)
    finally:
        await conn.close()


async def any_open(conn: asyncpg.Connection) -> bool:
    """Whether a delivery is still to be sent. The send polls this five times a second
    over one connection: a connection each time (a backend forked, authenticated and gone)
    and a count(*) cost ~0.1 ms of the machine a message, taken from the workers."""
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM deliveries "
                               "WHERE status IN ('queued','sending','held'))")


def _counters(workers: list[int], sink: int, bench_backend: int = 0
              ) -> tuple[float, dict[int, float], float, float]:
    """CPU seconds so far: the workers, each PostgreSQL process (but the bench's own
    polling backend), smtp-sink, the machine."""
    return (cpu_times(workers),
            {pid: cpu_times([pid]) for pid in postgres_pids() if pid != bench_backend},
            cpu_times([sink]), machine_busy())


def _used(start: tuple, end: tuple) -> list[float]:
    # PostgreSQL's backends come and go: each one's CPU since the start, or since it
    # began (a backend that ended meanwhile is not counted).
    postgres = sum(seconds - start[1].get(pid, 0.0) for pid, seconds in end[1].items())
    return [end[0] - start[0], postgres, end[2] - start[2], end[3] - start[3]]


async def repeated(users: int, workers: int, times: int) -> None:
    """``times`` campaigns, each with its own ceiling, then the median of their rates and
    ratios: one send of 16,000 messages lasts 4 s, and on a shared machine a run's share
    of the cores moves its ratio by ±2 points (bench/README.md, 2026-11-27: 57.9-62.3%
    over 14 runs of the same code). Each run is printed in full; the median is the
    figure."""
    figures = []
    for run in range(1, times + 1):
        if times > 1:
            print(f"-- campaign {run} of {times}", flush=True)
        figures.append(await main(users, workers))
    if times > 1:
        rates, ratios = zip(*figures, strict=True)
        print(f"median of {times} campaigns: {statistics.median(rates):,.0f} messages/s, "
              f"{statistics.median(ratios):.1%} of the same run's ceiling (runs: "
              + ", ".join(f"{rate:,.0f}/s {ratio:.1%}" for rate, ratio in figures)
              + ")  (target >= 60%, >= 1,000 messages/s)")


async def main(users: int, workers: int) -> tuple[float, float]:
    """One campaign end to end beside its ceiling; returns its rate and its ratio."""
    sink_binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink_binary).exists():
        sys.exit("smtp-sink not found: apt-get install postfix")
    work, pem, port, sink, name, url, env = await _set_up(sink_binary)
    procs: list[subprocess.Popen] = []
    cores = os.cpu_count() or 1
    ceiling: Ceiling | None = None
    try:
        queued = await _prepare(env, url, users)
        await _settle(url)
        ceiling = Ceiling(env, pem, cores)
        # Nothing else running for the ceiling: PostgreSQL's autovacuum after the load
        # took CPU from one and made the ratio look better.
        await wait_quiet()
        ceiling.measure(CEILING_SLICE)
        procs = _start_workers(env, workers)
        pids = [p.pid for p in procs]
        start_profile(pids[0], 12, "campaign-worker")
        elapsed, used, slices, done, late = 0.0, [0.0] * 4, 0, False, 0.0
        poll = await asyncpg.connect(url)
        backend = poll.get_server_pid()
        while not done:
            counted, start = _counters(pids, sink.pid, backend), time.perf_counter()
            wall = time.time()
            while time.perf_counter() - start < SEND_SLICE:
                await asyncio.sleep(0.2)
                if not await any_open(poll):
                    done = True
                    break
            polled = time.perf_counter() - start
            if done:
                # The poll sees the outbox empty up to 0.2 s after the last outcome was
                # written (5% of a 4-second send): the last slice ends at the last
                # outcome's updated_at instead (taken as its batch's write began).
                last = await poll.fetchval("SELECT extract(epoch FROM max(updated_at)) "
                                           "FROM deliveries")
                if last is not None and 0 < float(last) - wall <= polled:
                    late += polled - (float(last) - wall)
                    polled = float(last) - wall
            elapsed += polled
            used = [a + b for a, b in zip(used, _used(counted, _counters(pids, sink.pid,
                                                                         backend)),
                                          strict=True)]
            slices += 1
            if not done:
                # The workers stopped where they are (a batch half sent waits, leased)
                # while the ceiling takes its slice of the same minute.
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                ceiling.measure(CEILING_SLICE)
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
        await poll.close()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        if sys.exc_info()[0] is not None:
            # A bench that failed half-way leaves nothing running and no database behind
            # (the ceiling's processes are daemons: they end with this one).
            sink.terminate()
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    rate = queued / elapsed
    await wait_quiet()
    ceiling.measure(CEILING_SLICE)
    ceiling.close()
    signatures, sends = ceiling.mean()
    combined = [_combined(*sample) for sample in ceiling.samples]
    best = _combined(signatures, sends)
    queue: multiprocessing.Queue = multiprocessing.Queue()
    probe = multiprocessing.Process(target=_own_costs, args=(env, pem, BODY, queue))
    probe.start()
    costs = queue.get()
    probe.join()
    sink.terminate()
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"campaign of {queued:,} messages, {workers} worker(s), {cores} cores, "
          f"PostgreSQL, DKIM RSA-2048, smtp-sink")
    print(f"  end to end:                {rate:8,.0f} messages/s ({elapsed:.1f} s of sending "
          f"in {slices} slices; the poll saw the end {late:.2f} s after the last outcome)")
    print(f"  ceiling: RSA-2048 on all cores {signatures:8,.0f}/s, raw SMTP sends "
          f"{sends:8,.0f}/s, combined {best:8,.0f}/s ({len(combined)} slices before, "
          f"between and after the send's: {min(combined):,.0f} to {max(combined):,.0f}/s)")
    print(f"  ratio to ceiling:          {rate / best:8.1%}   (target >= 60%, "
          f">= 1,000 messages/s)")
    used = [seconds / queued * 1000 for seconds in used]
    print(f"  CPU per message during the send: workers {used[0]:.3f} ms, PostgreSQL "
          f"{used[1]:.3f} ms, smtp-sink {used[2]:.3f} ms; whole machine {used[3]:.3f} ms "
          f"(so {cores} cores allow {cores / used[3] * 1000:,.0f}/s at this cost; the "
          f"rest is other work on the machine: {used[3] - sum(used[:3]):.3f} ms)")
    print("  a message's own CPU on one core (same run):")
    for name, cost in costs.items():
        print(f"    {name:36} {cost * 1000:6.3f} ms")
    # What the ceiling leaves out but every message needs: its templates and MIME.
    extra = costs["render (shared) + MIME"]
    with_content = 1 / (1 / best + extra / cores)
    print(f"  ceiling with each message's render + MIME added ({extra * 1000:.2f} ms on one "
          f"of {cores} cores): {with_content:8,.0f}/s; ratio {rate / with_content:6.1%}")
    return rate, rate / best


async def growth(sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
                 seconds: float = 8.0) -> None:
    """The same campaign over outboxes of 8,000, 80,000 and 800,000 deliveries: the rate
    of its first ``seconds`` of sending (or of all of it, when that is shorter). A cost
    per batch that grew with the outbox would show here (a claim that sorted the queued
    rows did: ~1 s per batch at 800,000)."""
    sink_binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    cores = os.cpu_count() or 1
    print(f"campaign send by outbox size: {cores} workers, {seconds:.0f} s of sending each "
          f"(PostgreSQL, DKIM RSA-2048, smtp-sink)", flush=True)
    for users in sizes:
        _, _, _, sink, name, url, env = await _set_up(sink_binary)
        procs: list[subprocess.Popen] = []
        try:
            queued = await _prepare(env, url, users)
            # Autovacuum would be busy with the million fresh rows during the send, on
            # the same two cores: settle the tables first, as they are a while after an
            # enqueue (the claim does not depend on it: see postman.claim).
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("VACUUM ANALYZE")
            finally:
                await conn.close()
            procs = _start_workers(env, cores)
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                await asyncio.sleep(1.0)
                # Counting what is open reads the claim index: ~0.2 s of the server at
                # 800,000, taken from the workers. Only a small outbox can run out.
                if queued <= 50_000 and not await open_deliveries(url):
                    break
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
        elapsed = time.perf_counter() - start  # the last batches finish after the signal
        conn = await asyncpg.connect(url)
        try:
            sent = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'sent'")
        finally:
            await conn.close()
        sink.terminate()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"  {users:>9,} users, outbox of {queued:>7,}: {sent:>6,} sent in "
              f"{elapsed:4.1f} s = {sent / elapsed:6,.0f} messages/s", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("users", type=positive(int), nargs="?")
    parser.add_argument("workers", type=positive(int), nargs="?")
    parser.add_argument("--repeat", type=positive(int), default=3,
                        help="campaigns in a row, each beside its own ceiling; their "
                        "median is the figure (default %(default)s)")
    parser.add_argument("--growth", action="store_true",
                        help="the send at outboxes of 8,000, 80,000 and 800,000 instead "
                        "(takes no USERS or WORKERS)")
    args = parser.parse_args()
    if args.growth and (args.users is not None or args.workers is not None):
        parser.error("--growth takes no USERS or WORKERS")
    args.users = 20_000 if args.users is None else args.users
    args.workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    asyncio.run(growth() if args.growth else repeated(args.users, args.workers, args.repeat))
