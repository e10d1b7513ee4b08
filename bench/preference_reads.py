"""Preference reads under load (issue #7, target 4): ``GET /v1/users/{id}/consents`` with an
app bearer key, cycling through many users, from wrk on loopback against N ``notify serve``
processes. Beside it, the same wrk settings against ``GET /healthz`` of the same processes:
the aiohttp + loopback ceiling of this machine in this run. The web processes' CPU time per
request, for both, is printed too: it moves less than req/s when other jobs share the
machine. One read is checked before the load (every topic subscribed).

Then the same reads at the target's rate, 3,000 a second, held by wrk's ``delay()``
(bench/_common.py, WRK_LUA): wrk alone sends as fast as it is answered, and the p99 of
such a run is the queue its connections make on a saturated machine. The target's rate
is judged at full speed, its p99 at the set rate.

Run from the repository root: ``python bench/preference_reads.py`` (about 80 s; PostgreSQL
and SQLite; ``postgres-socket`` is PostgreSQL through its Unix-domain socket, measured the
same as TCP loopback here). Options: ``--backends postgres,sqlite --procs 2
--connections 16 --seconds 10 --users 20000 --rate 3000 --pool N`` (PostgreSQL pool size;
notify's default is 16).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

TARGET_RATE, TARGET_P99 = 3000, 20
TOPICS = ("newsletter", "email_notifications", "sms_notifications")


def check_body(port: int, path: str) -> None:
    """One read before the load: every topic of the population's user, subscribed. A read
    that answered 200 with the wrong consents would otherwise count as a success."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {c.APP_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        consents = json.loads(resp.read())["consents"]
    states = {item["topic"]: item["state"] for item in consents}
    if states != dict.fromkeys(TOPICS, "subscribed"):
        raise RuntimeError(f"{path} answered {states}, not every topic subscribed")


async def one_backend(kind: str, args: argparse.Namespace
                      ) -> list[tuple[c.LoadResult, c.LoadResult]]:
    work = c.workdir(f"reads-{kind}")
    db, url = c.database(kind, work, args.pool)
    env = c.notify_env(work, url)
    c.apply_env(env)
    started = time.perf_counter()
    servers = None
    try:
        population = await c.prepare(db, args.users, topics=TOPICS)
        print(f"[{kind}] {args.users} users written in {time.perf_counter() - started:.1f}s",
              flush=True)
        paths = [f"/v1/users/{e}/consents" for e in population.external_ids]
        servers = c.start_servers(args.procs, env, work)
        ports = servers.ports
        check_body(ports[0], paths[0])
        loop = asyncio.get_running_loop()
        auth = {"Authorization": f"Bearer {c.APP_KEY}"}

        def wrk(label: str, items: list[str], seconds: float, rate: float = 0
                ) -> c.LoadResult:
            return c.run_wrk(label, ports, c.split(items, len(ports)), headers=auth,
                             seconds=seconds, connections=args.connections, work=work,
                             rate=rate)

        used = c.cpu_times(servers.pids())
        ceiling = await loop.run_in_executor(None, lambda: wrk("healthz", ["/healthz"],
                                                               args.seconds))
        ceiling_us = (c.cpu_times(servers.pids()) - used) / max(1, ceiling.requests) * 1e6
        await loop.run_in_executor(None, lambda: wrk("warm", paths, 2))
        spy = c.start_profile(servers.pids()[0], args.seconds - 1, f"preference_reads-{kind}")
        watch = c.CpuWatch(servers.pids())
        used = c.cpu_times(servers.pids())
        result = await loop.run_in_executor(None, lambda: wrk(
            f"GET consents, {kind}, {args.procs} proc", paths, args.seconds))
        read_us = (c.cpu_times(servers.pids()) - used) / max(1, result.requests) * 1e6
        cpu = watch.report(args.procs)
        if spy:
            spy.wait()
        # The same reads at the target's rate: their latency at 3,000 a second, not the
        # queue that wrk's connections build at full speed (a request that waited for a
        # free connection is timed from its sending: counted apart, see WRK_LUA).
        paced = await loop.run_in_executor(None, lambda: wrk(
            f"GET consents, {kind}, at {args.rate:,.0f}/s", paths, args.seconds,
            rate=args.rate))
    finally:
        if servers:
            servers.stop()
        await db.drop()
        c.cleanup(work)
    print(f"[{kind}] {result.requests} reads, {result.non2xx} not 2xx, "
          f"{result.socket_errors + result.timeouts} socket errors/timeouts; {cpu}",
          flush=True)
    # CPU time per request moves less than req/s when other jobs share the machine.
    print(f"[{kind}] web process CPU per request: read {read_us:.0f} µs, GET /healthz "
          f"{ceiling_us:.0f} µs (the read's own share: {read_us - ceiling_us:.0f} µs)",
          flush=True)
    return [(result, ceiling), (paced, ceiling)]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=c.backends, default="postgres,sqlite")
    parser.add_argument("--procs", type=c.positive(int), default=2)
    parser.add_argument("--connections", type=c.positive(int), default=16,
                        help="per web process")
    parser.add_argument("--seconds", type=c.positive(float), default=10)
    parser.add_argument("--users", type=c.positive(int), default=20_000)
    parser.add_argument("--pool", type=c.positive(int), default=None)
    parser.add_argument("--rate", type=c.positive(float), default=TARGET_RATE,
                        help="requests a second of the run at a set rate (its p99 is the "
                        "target's)")
    # The run at a set rate keeps --connections: more (64 a process, tried) queue for the
    # 16 database connections of each web process, which the run at full speed never
    # does, and read worse (p50 22-42 ms against 8-10 at 3,000/s).
    args = parser.parse_args()
    rows = [row for kind in args.backends for row in await one_backend(kind, args)]
    c.print_table(f"Preference reads: {args.procs} notify serve processes (one port and one "
                  f"wrk each), {args.connections} connections per process, "
                  f"{args.seconds:.0f}s, as fast as answered (judged on the rate) and at "
                  f"{args.rate:,.0f}/s (judged on the p99); ceiling = GET /healthz, same "
                  f"processes and wrk settings", rows, TARGET_RATE, TARGET_P99)
    return 1 if any(r.non2xx or r.socket_errors or r.timeouts for r, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
