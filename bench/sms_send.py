"""SMS sends per second through the real ``twilio`` library (issue #7, target 5): queued
deliveries taken by the worker's own loop (``notify.sender.Sender`` with ``notify.jobs``,
so ``SmsCourier.deliver_due``: claim, eligibility re-check, quiet hours, render, send,
record) over ``notify.channels.sms_twilio`` to a minimal stand-in of Twilio's REST API that
runs in its own process (``bench/_common.py``), so it does not take the sender's CPU.

Beside it, the ceiling of this run: the same stand-in hit directly by raw aiohttp POSTs
(the same form fields and basic auth, 50 at a time like a courier batch; no twilio
library, no database). Then ``NOTIFY_SMS_RATE`` is set and the achieved rate compared with
it: over the whole run, after its first second, and the busiest one-second window, by the
times the texts arrived at the stand-in (as Twilio would count them). The busiest second
by the times they were handed to the twilio library and by the times their answers came
back are printed beside it: answers bunch up while the sender's loop does a batch's
database work.

Run from the repository root: ``python bench/sms_send.py`` (about 80 s; PostgreSQL and
SQLite). Options: ``--backends postgres,sqlite --messages 4000 --rate 300
--rate-seconds 6``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

TARGET_RATE = 300
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-bench-token-0123456789"
FROM = "+15005550006"
BATCH = 50  # SmsCourier.deliver_due's default limit: its batch goes out concurrently


async def ceiling(port: int, messages: int) -> float:
    """Raw aiohttp POSTs to the stand-in, BATCH at a time: messages per second."""
    import aiohttp

    url = f"http://127.0.0.1:{port}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    async with aiohttp.ClientSession() as session:
        async def one(n: int) -> None:
            data = {"To": f"+4915{n:09d}", "Body": "Your export is ready to download.",
                    "From": FROM, "StatusCallback": "http://127.0.0.1:8080/webhooks/twilio/status"}
            async with session.post(url, data=data, headers={"Authorization": auth}) as r:
                await r.json()
                assert r.status == 201, r.status

        await asyncio.gather(*(one(n) for n in range(BATCH)))  # connections open
        started = time.perf_counter()
        for first in range(0, messages, BATCH):
            await asyncio.gather(*(one(n) for n in range(first, min(messages, first + BATCH))))
        return messages / (time.perf_counter() - started)


async def send_all(kind: str, db: c.Database, env: dict[str, str], messages: int,
                   label: str, profile: str) -> tuple[list[float], list[float], float]:
    """Queue ``messages`` SMS, then run the worker's loop until none is left; returns the
    times each message the stand-in accepted was handed to the twilio library and was
    answered (perf_counter), and the CPU seconds this process used."""
    c.apply_env(env)
    from notify.channels.factory import email_channel, signer
    from notify.channels.sms import sms_channel
    from notify.db import apply_migrations, close_db, open_db
    from notify.jobs import jobs
    from notify.models import Delivery, User
    from notify.postman import Postman
    from notify.sender import Sender
    from notify.settings import load_settings
    from notify.sms.courier import SmsCourier
    from notify.store import now

    settings = load_settings()
    await db.create()
    ctx = await open_db(db.url)
    with ctx:
        await apply_migrations(ctx)
        await c.populate(messages, phones=True, topics=("sms_notifications",))
        ids = await User.all().values_list("id", flat=True)
        when = now()
        await Delivery.bulk_create([
            Delivery(user_id=uid, channel="sms", kind="notification", topic="sms_notifications",
                     context={"body": f"Your export {n} is ready to download."},
                     next_attempt_at=when, deadline=when + timedelta(hours=48))
            for n, uid in enumerate(ids)], batch_size=2000)
        channel = sms_channel(settings)
        courier = SmsCourier(settings, channel)
        email = email_channel(settings)
        sender = Sender(jobs=jobs(settings, Postman(settings, email, signer(settings)), courier))
        handed: list[float] = []
        stamps: list[float] = []
        send = channel.send

        async def recorded(message):  # noqa: ANN001, ANN202
            started = time.perf_counter()
            receipt = await send(message)
            handed.append(started)
            stamps.append(time.perf_counter())
            return receipt

        channel.send = recorded
        spy = c.start_profile(os.getpid(), 8, profile)  # with BENCH_PROFILE=DIR
        cpu0 = os.times()
        try:
            while await sender.run_once():
                pass
        finally:
            if spy:
                spy.wait()
            await channel.close()
            await email.close()
        cpu = (lambda t: t.user + t.system)(os.times()) - (cpu0.user + cpu0.system)
        sent = await Delivery.filter(status="sent").count()
        other = await Delivery.exclude(status="sent").values_list("status", "last_error")
        await close_db(ctx)
    if sent != messages:
        print(f"[{label}] only {sent} of {messages} sent; others: {other[:3]}")
    return sorted(handed), stamps, cpu


def rates(stamps: list[float], start: float) -> tuple[float, float, float]:
    """Messages/s over the whole run (from ``start``), after its first second, and in the
    busiest one-second window."""
    if len(stamps) < 2:
        return 0.0, 0.0, 0.0
    whole = len(stamps) / (stamps[-1] - start)
    later = [t for t in stamps if t >= start + 1.0]
    steady = (len(later) - 1) / (later[-1] - later[0]) if len(later) > 1 else 0.0
    return whole, steady, busiest_second(stamps)


def busiest_second(stamps: list[float]) -> float:
    """The most sends in one second, over half-open windows [t, t + 1 s): a send exactly
    a second after another is the next window's."""
    if not stamps:
        return 0.0
    return float(max(bisect.bisect_left(stamps, t + 1.0) - i for i, t in enumerate(stamps)))


async def one_backend(kind: str, args: argparse.Namespace, port: int,
                      standin_pid: int, ceiling_rate: float) -> dict:
    base = {"NOTIFY_SMS_TRANSPORT": "twilio", "NOTIFY_TWILIO_API_BASE": f"http://127.0.0.1:{port}",
            "NOTIFY_TWILIO_ACCOUNT_SID": ACCOUNT_SID, "NOTIFY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "NOTIFY_TWILIO_FROM": FROM,
            # Quiet hours off: the bench must not depend on the time of day.
            "NOTIFY_SMS_QUIET_START": "00:00", "NOTIFY_SMS_QUIET_END": "00:00"}
    out = {}
    for mode in ("unlimited", "limited"):
        work = c.workdir(f"sms-{kind}")
        db = c.Database(kind, work)
        if mode == "unlimited":
            rate, messages = 0, args.messages
        else:
            rate = args.rate if out["unlimited"]["rate"] >= args.rate * 1.15 else \
                max(10, int(out["unlimited"]["rate"] * 0.7 / 10) * 10)
            messages = rate * args.rate_seconds
        env = c.notify_env(work, db.url, NOTIFY_SMS_RATE=str(rate), **base)
        c.standin_arrivals(port)  # forget the earlier runs'
        pg0, si0 = c.cpu_times(c.postgres_pids()), c.cpu_times([standin_pid])
        started = time.perf_counter()
        try:
            handed, stamps, cpu = await send_all(kind, db, env, messages, f"{kind} {mode}",
                                         profile=f"sms_send-{kind}-{mode}")
        finally:
            await db.drop()
            c.cleanup(work)
        # The rate counts from the first send: the population and the queue come before.
        # Unlimited: by the answers (a send counts once done); limited: by the arrivals.
        arrived = c.standin_arrivals(port)
        counted = arrived if rate else stamps
        first = counted[0] if counted else started
        whole, steady, busiest = rates(counted, first - (1 / rate if rate else 0))
        handed_busiest, answered_busiest = busiest_second(handed), busiest_second(stamps)
        wall = stamps[-1] - first if len(stamps) > 1 else 1
        out[mode] = {"rate": whole, "steady": steady, "busiest": busiest, "configured": rate,
                     "handed_busiest": handed_busiest, "answered_busiest": answered_busiest,
                     "sent": len(stamps), "cpu_per_msg_ms": cpu / max(1, len(stamps)) * 1000,
                     "pg": (c.cpu_times(c.postgres_pids()) - pg0) / wall,
                     "standin": (c.cpu_times([standin_pid]) - si0) / wall}
        print(f"[{kind} {mode}] {len(stamps)} sent, {whole:.0f}/s (after the first second "
              f"{steady:.0f}/s, busiest second {busiest:.0f}; by hand-over {handed_busiest:.0f}, "
              f"by answers {answered_busiest:.0f}); sender CPU "
              f"{out[mode]['cpu_per_msg_ms']:.2f} ms/message (whole process incl. set-up); "
              f"stand-in {out[mode]['standin']:.2f} cores", flush=True)
    return out


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=c.backends, default="postgres,sqlite")
    parser.add_argument("--messages", type=c.positive(int), default=4000)
    parser.add_argument("--rate", type=c.positive(int), default=TARGET_RATE,
                        help="NOTIFY_SMS_RATE of the limited run (lowered to 70%% of the "
                        "unlimited rate when that is not 15%% above it)")
    parser.add_argument("--rate-seconds", type=c.positive(int), default=6)
    args = parser.parse_args()
    work = c.workdir("sms-standin")
    proc, port = c.start_standin(work)
    failed = False
    try:
        top = await ceiling(port, args.messages)
        print(f"[ceiling] raw aiohttp → stand-in: {top:.0f} messages/s", flush=True)
        results = {kind: await one_backend(kind, args, port, proc.pid, top)
                   for kind in args.backends}
    finally:
        c.stop(proc)
        c.cleanup(work)
    print(f"\nSMS through the twilio library to a stand-in in its own process, "
          f"{args.messages} messages, batches of {BATCH}; ceiling = raw aiohttp POSTs to the "
          f"same stand-in ({top:.0f}/s, this run)")
    head = (f"{'':28} {'msgs/s':>7} {'ceiling':>8} {'× ceil':>6} {'CPU ms/msg':>10}  "
            f"target ≥{TARGET_RATE}/s")
    print(head)
    print("-" * len(head))
    for kind, out in results.items():
        u = out["unlimited"]
        met = u["rate"] >= TARGET_RATE
        failed |= u["sent"] != args.messages or out["limited"]["sent"] == 0
        print(f"{'sends, ' + kind:28} {u['rate']:7.0f} {top:8.0f} {u['rate'] / top:6.2f} "
              f"{u['cpu_per_msg_ms']:10.2f}  {'met' if met else 'NOT met'}")
    head = (f"{'':28} {'configured':>10} {'whole run':>9} {'after 1s':>8} {'busiest 1s':>10}"
            f"  within 5%  (busiest by hand-over, by answers)")
    print("\n" + head)
    print("-" * len(head))
    for kind, out in results.items():
        lim = out["limited"]
        r = lim["configured"]
        ok = all(abs(x - r) <= 0.05 * r for x in (lim["rate"], lim["steady"], lim["busiest"]))
        print(f"{'NOTIFY_SMS_RATE, ' + kind:28} {r:10d} {lim['rate']:9.0f} {lim['steady']:8.0f} "
              f"{lim['busiest']:10.0f}  {'yes' if ok else 'NO':9}  "
              f"{lim['handed_busiest']:17.0f} {lim['answered_busiest']:11.0f}")
    # Figures below a target are reported, not failures: only lost messages fail the run.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
