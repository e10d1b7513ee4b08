"""DKIM signing speed: dkimpy's own ``dkim.sign``, ``notify.dkim.DkimSigner`` and the raw
OpenSSL ceiling, one core and all cores. Run from the repository root::

    python bench/dkim_sign.py       # about 35 s

Each figure is the best of three rounds (the least disturbed by other load) and is printed
with its ratio to the raw OpenSSL RSA-2048 ceiling: the one-core ceiling for one-core rows,
the all-cores one (OpenSSL releases the GIL, so threads scale) for all-core rows.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

import notify.dkim
from notify.dkim import CANONICALIZE, SIGNED_HEADERS, DkimSigner

ROUNDS = 3
CORES = os.cpu_count() or 1
#: Messages waiting for sign_async at a time (a sender with many deliveries under way).
CALLERS = 64


def message() -> bytes:
    """A notification like the postman's: multipart/alternative, quoted-printable, ~5 KB."""
    msg = EmailMessage()
    msg["From"] = "Example <notify@example.com>"
    msg["To"] = "Jane Doe <jane@example.org>"
    msg["Subject"] = "Your weekly summary"
    msg["Date"] = format_datetime(datetime.now().astimezone())
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg["List-Unsubscribe"] = ("<https://example.com/u/0123456789abcdef0123456789abcdef>, "
                               "<mailto:unsubscribe+0123456789abcdef@example.com>")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["List-Id"] = "Newsletter <newsletter.example.com>"
    msg["Feedback-ID"] = "newsletter:newsletter:notify"
    text = "Hello Jane,\n\n" + "Here is what happened this week on Example. " * 40 + "\n"
    msg.set_content(text, cte="quoted-printable")
    html = "<html><body><p>Hello Jane,</p>" + "<p>Here is what happened this week.</p>" * 60
    msg.add_alternative(html + "</body></html>\n", subtype="html", cte="quoted-printable")
    return msg.as_bytes()


def best(run: Callable[[int], None], n: int) -> float:
    """Seconds per operation: the best of ROUNDS rounds of n operations."""
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run(n)
        times.append((time.perf_counter() - start) / n)
    return min(times)


async def async_rates(sign: Callable[[bytes], Awaitable[bytes]],
                      start_pool: Callable[[], Awaitable[None]], data: bytes,
                      n: int) -> tuple[float, float]:
    """Seconds per message: one caller awaiting sign in turn (the latency, pool round trip
    included), and CALLERS callers at a time (the throughput)."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await sign(data)

    await start_pool()
    await asyncio.gather(*(sign(data) for _ in range(4 * CORES)))  # warm up
    alone, together = [], []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        await caller(n // 10)
        alone.append((time.perf_counter() - start) / (n // 10))
        start = time.perf_counter()
        await asyncio.gather(*(caller(n // CALLERS) for _ in range(CALLERS)))
        together.append((time.perf_counter() - start) / (n // CALLERS * CALLERS))
    return min(alone), min(together)


def main() -> None:
    data = message()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    ed_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    signer = DkimSigner("example.com", "bench", pem)
    dual = DkimSigner("example.com", "bench", pem, ed_pem)
    include = list(SIGNED_HEADERS)  # as DkimSigner.sign names them

    def plain(n: int) -> None:
        for _ in range(n):
            dkim.sign(data, b"bench", b"example.com", pem, canonicalize=CANONICALIZE,
                      include_headers=include)

    def ours(n: int, signer: DkimSigner = signer) -> None:
        for _ in range(n):
            signer.sign(data)

    def raw(n: int) -> None:
        for _ in range(n):
            key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def raw_all_cores(n: int) -> None:
        with ThreadPoolExecutor(CORES) as pool:
            for _ in pool.map(lambda _: key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
                              range(n)):
                pass

    print(f"DKIM signing, {len(data)}-byte message, RSA-2048, {CORES} cores, "
          f"best of {ROUNDS} rounds\n")
    ceiling_1 = best(raw, 2000)
    ceiling_n = best(raw_all_cores, 2000 * CORES)
    rows: list[tuple[str, float, float]] = [
        ("dkimpy dkim.sign (pure-Python RSA)", best(plain, 40), ceiling_1),
        ("DkimSigner.sign (OpenSSL RSA)", best(ours, 1000), ceiling_1),
        ("DkimSigner.sign, rsa + ed25519", best(lambda n: ours(n, dual), 500), ceiling_1),
        ("raw OpenSSL RSA-2048 sign, 1 core", ceiling_1, ceiling_1),
        (f"raw OpenSSL RSA-2048 sign, {CORES} threads", ceiling_n, ceiling_n),
    ]
    for pool in ("thread", "process"):
        pooled = DkimSigner("example.com", "bench", pem, pool=pool)  # type: ignore[arg-type]
        try:
            alone, together = asyncio.run(async_rates(pooled.sign_async, pooled.start, data,
                                                      1000 * CORES))
        finally:
            pooled.close()
        name = f"sign_async, {pool} pool of {pooled.workers}"
        rows.append((f"{name}: 1 caller", alone, ceiling_1))
        rows.append((f"{name}: {CALLERS} callers", together, ceiling_n))
    # For comparison, what sign_async's batching replaces: one pool task per message.
    naive = ProcessPoolExecutor(CORES, mp_context=multiprocessing.get_context("spawn"),
                                initializer=notify.dkim._init_worker,
                                initargs=("example.com", "bench", pem, None))

    async def one_task(message: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        [(_, signed)] = await loop.run_in_executor(naive, notify.dkim._sign_batch_in_worker,
                                                    [message])
        return signed

    async def naive_start() -> None:
        await asyncio.gather(*(one_task(data) for _ in range(CORES)))

    with naive:
        _, together = asyncio.run(async_rates(one_task, naive_start, data, 1000 * CORES))
    rows.append((f"run_in_executor per message, {CORES} processes: {CALLERS} callers",
                 together, ceiling_n))

    width = max(len(name) for name, _, _ in rows)
    print(f"{'':{width}} {'ms/msg':>8} {'msg/s':>8}  {'x ceiling':>9}")
    for name, per, ceiling in rows:
        print(f"{name:{width}} {per * 1e3:8.3f} {1 / per:8.0f}  {per / ceiling:9.2f}")
    print("\nx ceiling: time per message / raw OpenSSL RSA-2048 time per signature, on one "
          f"core for\none-at-a-time rows, on {CORES} threads for rows with several callers.")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split(" Run from")[0]).parse_args()
    main()
