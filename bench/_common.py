"""Shared helpers for bench/one_click.py, bench/preference_reads.py and bench/sms_send.py.

Everything runs on loopback and is started here: a fresh PostgreSQL database per run
(made through the ``test`` maintenance database, dropped at the end) or an SQLite file in a
temporary folder, ``notify serve`` processes, wrk load generators and, for SMS, a minimal
stand-in of Twilio's REST API in its own process (``python bench/_common.py twilio-standin
PORT``).

wrk cannot spread one run over several ports, and ``notify serve`` has no ``--workers`` or
``reuse_port``: N web processes listen on N ports and one wrk (one thread) drives each,
with the same number of connections. Their latency percentile tables are merged as a
mixture (weights = requests), so the p99 printed is the p99 of all requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
WRK = shutil.which("wrk") or "/usr/bin/wrk"
#: Server of the PostgreSQL runs; the database name is added per run.
PG_BASE = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
#: Database used to CREATE/DROP the run's database.
PG_MAINTENANCE_DB = os.environ.get("BENCH_PG_MAINTENANCE_DB", "test")

APP_KEY = "app-bench-key-0123456789"
ADMIN_KEY = "admin-bench-key-0123456789"
SECRET = "k1:" + "s" * 40
HASH_KEY = "h" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"notify-bench-{prefix}-"))


def cleanup(work: Path) -> None:
    """Remove a run's folder (server logs, wrk files), unless BENCH_KEEP is set."""
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(work, ignore_errors=True)


def notify_env(work: Path, database_url: str, **extra: str) -> dict[str, str]:
    """The NOTIFY_* settings of a bench run (other NOTIFY_ variables of the caller dropped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update({
        "NOTIFY_DATABASE_URL": database_url,
        "NOTIFY_DATA_DIR": str(work),
        "NOTIFY_API_KEYS": f"app:{APP_KEY},admin:{ADMIN_KEY}",
        "NOTIFY_SECRET_KEYS": SECRET,
        "NOTIFY_HASH_KEY": HASH_KEY,
        "NOTIFY_LOG_LEVEL": "WARNING",
        "NOTIFY_PUBLIC_URL": "http://127.0.0.1:8080",
        # The load generator is one address sending thousands of requests a second: the
        # per-IP abuse limits would measure themselves, not the service.
        "NOTIFY_PUBLIC_RATE_LIMIT": "",
        "NOTIFY_BAD_TOKEN_RATE_LIMIT": "",
        "NOTIFY_AUTH_FAILURE_RATE_LIMIT": "",
    })
    env.update(extra)
    return env


def apply_env(env: dict[str, str]) -> None:
    for k in [k for k in os.environ if k.startswith("NOTIFY_")]:
        del os.environ[k]
    os.environ.update({k: v for k, v in env.items() if k.startswith("NOTIFY_")})


# -- databases -------------------------------------------------------------------------------


class Database:
    """A fresh database for one run: ``url`` for NOTIFY_DATABASE_URL, ``drop()`` at the end."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        if kind == "postgres":
            self.name = "notify_perf_" + uuid.uuid4().hex[:10]
            self.url = f"{PG_BASE}/{self.name}"
        else:
            self.name = str(work / "notify.sqlite3")
            self.url = f"sqlite://{self.name}"

    async def create(self) -> None:
        if self.kind == "postgres":
            conn = await self._maintenance()
            try:
                await conn.execute(f'CREATE DATABASE "{self.name}"')
            finally:
                await conn.close()

    async def drop(self) -> None:
        if self.kind == "postgres":
            conn = await self._maintenance()
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            finally:
                await conn.close()

    async def _maintenance(self):  # noqa: ANN202
        import asyncpg
        from tortoise.backends.base.config_generator import expand_db_url

        creds = expand_db_url(PG_BASE.replace("postgres://", "asyncpg://") + "/x")["credentials"]
        return await asyncpg.connect(host=creds.get("host"), port=creds.get("port"),
                                     user=creds.get("user"), password=creds.get("password"),
                                     database=PG_MAINTENANCE_DB)


def with_pool(url: str, maxsize: int | None) -> str:
    """The URL with the PostgreSQL pool size set (notify's default is 16), when asked."""
    if maxsize is None or not url.startswith("postgres"):
        return url
    return _with_parameter(url, "maxsize", maxsize)


def _with_parameter(url: str, name: str, value: object) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


#: Where Debian's PostgreSQL keeps its Unix-domain socket: the "postgres-socket" backend.
PG_SOCKET_DIR = "/var/run/postgresql"


BACKENDS = ("postgres", "postgres-socket", "sqlite")


def backends(value: str) -> list[str]:
    """argparse type of ``--backends``: a comma-separated list of BACKENDS."""
    kinds = [kind.strip() for kind in value.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in BACKENDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'}: not one of {', '.join(BACKENDS)}")
    return kinds


def positive(kind: type) -> Callable[[str], float]:
    """argparse type: a number of ``kind`` above zero."""
    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"must be above zero: {value!r}")
        return number
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def database(kind: str, work: Path, pool: int | None = None) -> tuple[Database, str]:
    """The run's database of ``kind`` (postgres; postgres-socket, the same server reached
    through its Unix-domain socket, ``?host=DIR``; sqlite) and notify's URL for it."""
    db = Database("postgres" if kind == "postgres-socket" else kind, work)
    url = with_pool(db.url, pool)
    if kind == "postgres-socket":
        url = _with_parameter(url, "host", PG_SOCKET_DIR)
    return db, url


@dataclass
class Population:
    external_ids: list[str]
    handles: list[str]


async def populate(count: int, *, phones: bool = False,
                   topics: Sequence[str] = ("newsletter", "email_notifications")) -> Population:
    """``count`` verified users subscribed to ``topics``, written in bulk. Call inside an
    open tortoise context (``with ctx``) on a migrated database."""
    from notify import store
    from notify.consent import ConsentState
    from notify.models import AddressKind, Consent, User

    hash_key = HASH_KEY.encode()
    now = store.now()
    users, ids, handles = [], [], []
    for i in range(count):
        external = f"b{i:07d}"
        email = f"{external}@example.com"
        phone = f"+4915{i:09d}"[:16] if phones else None
        handle = store.new_handle()
        ids.append(external)
        handles.append(handle)
        users.append(User(
            external_id=external, handle=handle, email=email, email_verified=True,
            email_hash=store.address_hash(hash_key, AddressKind.EMAIL, email),
            phone=phone, phone_verified=bool(phone),
            phone_hash=store.address_hash(hash_key, AddressKind.PHONE, phone) if phone else None,
            country="DE" if phone else None, time_zone="UTC" if phone else None,
            locale="en", created_at=now, updated_at=now))
    await User.bulk_create(users, batch_size=2000)
    pk = dict(await User.filter(external_id__startswith="b").values_list("external_id", "id"))
    consents = [Consent(user_id=pk[e], topic=t, state=ConsentState.SUBSCRIBED, updated_at=now)
                for e in ids for t in topics]
    await Consent.bulk_create(consents, batch_size=2000)
    return Population(ids, handles)


async def prepare(db: Database, count: int, **kwargs) -> Population:  # noqa: ANN003
    """Create and migrate the database, write the population, close it again."""
    from notify.db import apply_migrations, close_db, open_db

    await db.create()
    ctx = await open_db(db.url)
    try:
        with ctx:
            await apply_migrations(ctx)
            return await populate(count, **kwargs)
    finally:
        await close_db(ctx)


async def scalar(db_url: str, sql: str) -> int:
    from notify.db import close_db, open_db

    ctx = await open_db(db_url)
    try:
        with ctx:
            rows = await ctx.db().execute_query_dict(sql)
            return int(next(iter(rows[0].values())))
    finally:
        await close_db(ctx)


# -- web processes ---------------------------------------------------------------------------


@dataclass
class Servers:
    ports: list[int]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


def start_servers(count: int, env: dict[str, str], log_dir: Path) -> Servers:
    """``count`` ``notify serve --no-sender`` processes on free ports, ready when /healthz is."""
    servers = Servers([free_port() for _ in range(count)])
    for port in servers.ports:
        penv = dict(env, NOTIFY_PUBLIC_URL=f"http://127.0.0.1:{port}")
        out = open(log_dir / f"serve-{port}.log", "wb")  # noqa: SIM115 - lives with the process
        servers.procs.append(subprocess.Popen(
            [PYTHON, "-m", "notify.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--no-sender"], env=penv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 60
    for port, proc in zip(servers.ports, servers.procs, strict=True):
        while True:
            if proc.poll() is not None:
                servers.stop()
                log = (log_dir / f"serve-{port}.log").read_text()[-2000:]
                raise RuntimeError(f"notify serve on {port} exited:\n{log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                servers.stop()
                raise RuntimeError(f"notify serve on {port} did not start")
            time.sleep(0.1)
    return servers


# -- wrk -------------------------------------------------------------------------------------

#: Requests are pre-formatted in init() and cycled; done() writes a JSON summary with a
#: percentile table (microseconds) to WRK_OUT. Settings come from the environment because
#: done() runs in wrk's main Lua state, which never sees init()'s arguments.
#:
#: With WRK_RATE (requests a second for this wrk), delay() holds each request to a fixed
#: schedule, one every 1/WRK_RATE s across the wrk's connections: a load at a given
#: rate, for the latency at that rate (wrk alone sends as fast as the server answers,
#: and its p99 then measures the queue its own connections make). wrk has no wall clock
#: in Lua: LuaJIT's FFI asks clock_gettime. wrk takes whole milliseconds, so a request
#: goes up to 1 ms early; the schedule, not the truncation, sets the rate. As in wrk, the
#: latency is timed from the request's sending: a request the schedule owed while every
#: connection was busy is sent late and timed from then, its wait uncounted (wrk2 would
#: count it: "coordinated omission"). So the script counts those requests instead, sent
#: more than 2 ms after their slot, and the latest one's delay (``late``, ``lag_max_ms``):
#: print_table fails a run at a rate where more than 1% were late.
WRK_LUA = r"""
local reqs, n, i = {}, 0, 0
late, lag_max = 0, 0  -- globals: done() reads them from each thread's state
local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end
local rate = tonumber(os.getenv("WRK_RATE") or "") or 0
if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock, bench_timespec *now);
  ]]
  local now, due = ffi.new("bench_timespec"), nil
  function delay()
    ffi.C.clock_gettime(1, now)  -- CLOCK_MONOTONIC
    local ms = tonumber(now.tv_sec) * 1000 + tonumber(now.tv_nsec) / 1e6
    due = (due or ms) + 1000 / rate
    if due <= ms then
      if ms - due > lag_max then lag_max = ms - due end
      if ms - due > 2 then late = late + 1 end
      return 0
    end
    return math.floor(due - ms)
  end
end
function init(args)
  local method = os.getenv("WRK_METHOD")
  local body = os.getenv("WRK_BODY")
  if body == "" then body = nil end
  local headers = {}
  local h = os.getenv("WRK_HEADERS") or ""
  for line in string.gmatch(h, "[^\n]+") do
    local k, v = string.match(line, "^([^:]+):%s*(.*)$")
    headers[k] = v
  end
  for path in io.lines(os.getenv("WRK_PATHS")) do
    n = n + 1
    reqs[n] = wrk.format(method, path, headers, body)
  end
end
function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end
function done(summary, latency, requests)
  local ps = {}
  local marks = {}
  for p = 1, 98 do marks[#marks + 1] = p end
  for p = 98.1, 99.95, 0.1 do marks[#marks + 1] = p end
  marks[#marks + 1] = 99.99
  for _, p in ipairs(marks) do
    ps[#ps + 1] = string.format("[%.2f, %d]", p, latency:percentile(p))
  end
  ps[#ps + 1] = string.format("[100, %d]", latency.max)
  local e = summary.errors
  local behind, lag = 0, 0
  for _, thread in ipairs(threads) do
    behind = behind + (thread:get("late") or 0)
    lag = math.max(lag, thread:get("lag_max") or 0)
  end
  local f = io.open(os.getenv("WRK_OUT"), "w")
  f:write(string.format('{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "status": %d, "paths": %d, "late": %d, ' ..
    '"lag_max_ms": %.1f, "percentiles": [%s]}',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    n, behind, lag, table.concat(ps, ", ")))
  f:close()
end
"""


@dataclass
class LoadResult:
    label: str
    requests: int
    rate: float  # requests per second, summed over the wrk processes
    p50_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int
    timeouts: int
    paths: int
    per_port: list[dict]
    offered: float = 0  # the rate asked for (run_wrk's rate); 0: as fast as answered
    late: int = 0  # at a rate: requests sent more than 2 ms after their slot (WRK_LUA)
    lag_max_ms: float = 0  # ... and the latest one's delay

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx


def _cdf(table: list[tuple[float, float]], x: float) -> float:
    """Fraction of one wrk run's requests at or below ``x`` µs, from its percentile table."""
    prev_p, prev_v = 0.0, 0.0
    for p, v in table:
        if x < v:
            if v == prev_v:
                return prev_p / 100
            return (prev_p + (p - prev_p) * (x - prev_v) / (v - prev_v)) / 100
        prev_p, prev_v = p, v
    return 1.0


def merged_percentile(runs: list[dict], q: float) -> float:
    """The q-th percentile (µs) of all requests of several wrk runs (a weighted mixture)."""
    total = sum(r["requests"] for r in runs) or 1
    tables = [([(p, v) for p, v in r["percentiles"]], r["requests"] / total) for r in runs]
    lo, hi = 0.0, max(t[-1][1] for t, _ in tables) or 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if sum(w * _cdf(t, mid) for t, w in tables) >= q / 100:
            hi = mid
        else:
            lo = mid
    return hi


def run_wrk(label: str, ports: list[int], paths: list[list[str]], *, method: str = "GET",
            body: str = "", headers: dict[str, str] | None = None, connections: int = 16,
            seconds: float = 10, work: Path, rate: float = 0) -> LoadResult:
    """One wrk (one thread, ``connections`` connections) per port, all at once; with
    ``rate``, that many requests a second in all, shared out evenly (see WRK_LUA)."""
    script = work / "bench.lua"
    script.write_text(WRK_LUA)
    procs = []
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)  # a label may say "at 3,000/s"
    for n, port in enumerate(ports):
        path_file = work / f"paths-{name}-{port}.txt"
        path_file.write_text("\n".join(paths[n]) + "\n")
        out = work / f"wrk-{name}-{port}.json"
        env = dict(os.environ, WRK_METHOD=method, WRK_BODY=body, WRK_PATHS=str(path_file),
                   WRK_OUT=str(out), WRK_RATE=str(rate / len(ports) if rate else ""),
                   WRK_HEADERS="\n".join(f"{k}: {v}" for k, v in (headers or {}).items()))
        procs.append((out, subprocess.Popen(
            [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
             "-s", str(script), f"http://127.0.0.1:{port}/"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)))
    runs = []
    for out, proc in procs:
        text = proc.communicate()[0].decode(errors="replace")
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
        runs.append(json.loads(out.read_text()))
    return LoadResult(
        label=label, requests=sum(r["requests"] for r in runs),
        rate=sum(r["requests"] / (r["duration_us"] / 1e6) for r in runs), offered=rate,
        p50_ms=merged_percentile(runs, 50) / 1000, p99_ms=merged_percentile(runs, 99) / 1000,
        max_ms=max(r["percentiles"][-1][1] for r in runs) / 1000,
        non2xx=sum(r["status"] for r in runs),
        socket_errors=sum(r["connect"] + r["read"] + r["write"] for r in runs),
        timeouts=sum(r["timeout"] for r in runs), paths=sum(r["paths"] for r in runs),
        per_port=runs, late=sum(r["late"] for r in runs),
        lag_max_ms=max(r["lag_max_ms"] for r in runs))


def split(items: list[str], parts: int) -> list[list[str]]:
    """Disjoint slices, one per wrk; a list shorter than ``parts`` goes whole to each."""
    if len(items) < parts:
        return [list(items) for _ in range(parts)]
    return [items[n::parts] for n in range(parts)]


def print_table(title: str, rows: list[tuple[LoadResult, LoadResult]],
                target_rate: float, target_p99: float,
                reported_only: tuple[str, ...] = ()) -> None:
    """Each figure beside its same-run ceiling, with the ratio, and the issue's target.
    A row whose label names one of ``reported_only`` (a backend the issue asks figures of
    but sets no target for) says "reported" instead of met or not. In a table with rows
    at a set rate (``offered``), those are judged on their p99 and the rows at full speed
    on their rate; otherwise a row must meet both."""
    print(f"\n{title}")
    head = (f"{'':42} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
            f"{'non-2xx':>7} {'errors':>6} {'ceil req/s':>10} {'ceil p99':>8} {'× ceil':>6}  "
            f"target ≥{target_rate:.0f}/s p99≤{target_p99:.0f}ms")
    print(head)
    print("-" * len(head))
    paced = any(result.offered for result, _ in rows)
    notes = []
    for result, ceiling in rows:
        if result.offered:
            # At a set rate: its latency is the figure; the rate is the target's or more,
            # the server kept up with it (within 3%), and no more than 1% of the requests
            # waited for a free connection (their wait is not in the p99).
            met = (result.offered >= target_rate and result.rate >= 0.97 * result.offered
                   and result.p99_ms <= target_p99 and result.late <= result.requests / 100)
            judged = f" (p99 at {result.offered:,.0f}/s)"
            notes.append(f"{result.label}: {result.late} of {result.requests} requests "
                         f"({result.late / max(1, result.requests):.2%}) sent more than 2 ms "
                         f"after their slot, every connection busy; the latest "
                         f"{result.lag_max_ms:.1f} ms late")
        else:
            met = result.rate >= target_rate and (paced or result.p99_ms <= target_p99)
            judged = " (rate)" if paced else ""
        met = met and not (result.non2xx or result.socket_errors or result.timeouts)
        ratio = "—" if result.offered else f"{result.rate / ceiling.rate:.2f}"  # a set rate
        verdict = ("reported" if any(name in result.label for name in reported_only)
                   else ("met" if met else "NOT met") + judged)
        print(f"{result.label:42} {result.rate:8.0f} {result.p50_ms:7.1f} {result.p99_ms:7.1f} "
              f"{result.max_ms:7.0f} {result.non2xx:7d} "
              f"{result.socket_errors + result.timeouts:6d} {ceiling.rate:10.0f} "
              f"{ceiling.p99_ms:8.1f} {ratio:>6}  "
              f"{verdict}")
    for note in notes:
        print(note)


def cpu_times(pids: Sequence[int]) -> float:
    """User+system CPU seconds used so far by these processes (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait excluded),
    to tell in the output how much of it other work took during a measurement."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU used by the web processes, PostgreSQL (all its databases) and the machine."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.start = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        return (cpu_times(self.pids), cpu_times(postgres_pids()), machine_busy(),
                time.monotonic())

    def report(self, procs: int) -> str:
        end = self._now()
        wall = end[3] - self.start[3]
        web, pg, busy = ((end[i] - self.start[i]) / wall for i in range(3))
        return (f"CPU (cores of {os.cpu_count()}): notify serve ×{procs} {web:.2f}, "
                f"postgres {max(0.0, pg):.2f}, whole machine {busy:.2f} (the rest is wrk "
                f"and anything else running: {max(0.0, busy - web - max(0.0, pg)):.2f})")


def start_profile(pid: int, seconds: float, name: str) -> subprocess.Popen | None:
    """With BENCH_PROFILE=DIR set and py-spy installed: sample ``pid`` for ``seconds``
    into DIR/name.raw (collapsed stacks; summarise with ``python bench/_common.py
    profile-summary FILE``)."""
    folder = os.environ.get("BENCH_PROFILE")
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not folder or not Path(spy).exists():
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "-d", str(max(1, int(seconds))),
                             "-r", "200", "--nonblocking", "--format", "raw", "-o",
                             str(Path(folder) / f"{name}.raw")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_summary(path: str, top: int = 40) -> None:
    """Inclusive and self shares of the functions in a py-spy raw (collapsed) file."""
    from collections import Counter

    def name(frame: str) -> str:
        func, _, where = frame.partition(" (")
        return f"{func} ({where.split(':')[0].split('/')[-1]})" if where else func

    inclusive, own, total = Counter(), Counter(), 0
    for line in open(path):  # noqa: SIM115
        stack, _, n = line.rstrip().rpartition(" ")
        frames = [name(f) for f in stack.split(";")]
        total += int(n)
        for f in set(frames):
            inclusive[f] += int(n)
        own[frames[-1]] += int(n)
    print(f"{total} samples\n== inclusive")
    for f, n in inclusive.most_common(top):
        print(f"{n / total * 100:5.1f}% {f}")
    print("== self")
    for f, n in own.most_common(top // 2):
        print(f"{n / total * 100:5.1f}% {f}")


def postgres_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() in ("postgres", "postmaster"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


# -- a minimal Twilio stand-in, run in its own process --------------------------------------


def twilio_standin_main(port: int) -> None:
    """Answers POST /2010-04-01/Accounts/{sid}/Messages.json like Twilio (201, JSON with a
    SID), as cheaply as aiohttp allows; GET /count says how many it accepted, and GET
    /arrivals when each arrived since the last time it was asked (perf_counter seconds, of
    this process: what Twilio would count a rate limit by)."""
    from aiohttp import web

    count = 0
    arrivals: list[float] = []
    prefix = "SM" + uuid.uuid4().hex[:16]

    async def messages(request: web.Request) -> web.Response:
        nonlocal count
        arrivals.append(time.perf_counter())
        form = await request.post()
        count += 1
        sid = f"{prefix}{count:016x}"
        return web.json_response({
            "sid": sid, "account_sid": request.match_info["account"], "status": "queued",
            "to": form.get("To"), "from": form.get("From"), "body": form.get("Body"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_segments": "1",
            "uri": f"/2010-04-01/Accounts/{request.match_info['account']}/Messages/{sid}.json",
        }, status=201)

    async def counted(request: web.Request) -> web.Response:
        return web.json_response({"count": count})

    async def arrived(request: web.Request) -> web.Response:
        found = arrivals[:]
        arrivals.clear()
        return web.json_response(found)

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", messages)
    app.router.add_get("/count", counted)
    app.router.add_get("/arrivals", arrived)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_standin(log_dir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    out = open(log_dir / "standin.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([PYTHON, str(Path(__file__)), "twilio-standin", str(port)],
                            stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=1):
                return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Twilio stand-in did not start") from None
            time.sleep(0.1)


def standin_arrivals(port: int) -> list[float]:
    """When each message arrived at the stand-in since the last call, in its own clock."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/arrivals", timeout=5) as r:
        return sorted(json.loads(r.read()))


def standin_count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as r:
        return json.loads(r.read())["count"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(coro) -> None:  # noqa: ANN001
    asyncio.run(coro)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "twilio-standin":
        twilio_standin_main(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "profile-summary":
        profile_summary(sys.argv[2])
    else:
        sys.exit("usage: python bench/_common.py twilio-standin PORT | profile-summary FILE")
