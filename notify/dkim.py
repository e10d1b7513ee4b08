"""DKIM signing (RFC 6376): rsa-sha256, plus an optional ed25519-sha256 signature (RFC 8463).

:class:`DkimSigner` is built once from the settings and parses its key(s) once. dkimpy does
the DKIM work (header selection, relaxed/relaxed canonicalisation, the tag list, folding);
only the RSA step is done by OpenSSL through ``cryptography`` instead of dkimpy's
pure-Python RSA, and the output is byte-identical to ``dkim.sign`` with the same inputs
(see ``_OpenSSLDKIM`` for how, and why that way).

Which headers are signed: :data:`SIGNED_HEADERS`, named explicitly (dkimpy's default set
leaves out List-Unsubscribe-Post), each once, on every message. A name the message lacks
still goes into ``h=``: dkimpy then hashes nothing for it, as RFC 6376 §5.4 says, and the
signature stays valid; but that header can no longer be added without breaking it, which
stops a replayed message from gaining a Reply-To or a List-Unsubscribe. (An MTA adds Date,
Message-ID or MIME-Version only where missing, and every message notify builds has them.)

Speed, measured with ``python bench/dkim_sign.py`` on this project's 2-core machine (a
5 KB multipart message; best of 3 rounds; runs differ by about 10%; see bench/README.md)::

                                                      ms/message  messages/s
    dkim.sign (pure-Python RSA, key parsed each call)    6.44          155
    DkimSigner.sign (OpenSSL RSA, our canonicalisation)  0.42        2 406
      ... with the ed25519 second signature (dkimpy's)   0.93        1 076
    raw OpenSSL RSA-2048 signature, 1 core / 2 threads   0.29 / 0.19   3 508 / 5 349
    sign_async, 64 callers, thread pool of 2             0.30        3 303
    sign_async, 64 callers, process pool of 2 (default)  0.24        4 163
    sign_async, one caller at a time: threads/processes  0.60 / 0.94

The rsa-sha256 signature is dkimpy's output byte for byte (``DkimSigner._sign_rsa`` says
how and why it is not dkimpy's own code path: that cost 0.63 ms a message, of which 0.35
was Python around the RSA). What is left of ``sign`` beside OpenSSL's RSA (~0.12 ms)
holds the GIL, so a thread pool gains little over signing inline; a process pool (one
worker per core, each building its signer once in the initializer) gains more, provided
the pipe's cost per task (~0.15 ms of the parent's CPU) is shared: ``sign_async`` sends
the messages that wait for the pool together. The process pool is the default; a message
alone takes ~0.3 ms longer than with threads (the round trip), which does not matter for
email. ``DkimSigner(..., pool="thread")`` picks threads. The campaign worker signs
inline (``Postman.compose``): its processes already use every core. Workers are started
with "spawn", so a ``__main__`` script must be import-safe (``if __name__ ==
"__main__":``), as the ``notify`` command is.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import logging
import multiprocessing
import os
import re
import time
import types
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Literal

import dkim
import dkim.canonicalization as _canonical
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from notify.settings import ConfigError, Settings, env_name

log = logging.getLogger(__name__)

#: Signed when present, and locked against addition when absent (lower case, for dkimpy).
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from", b"to", b"subject", b"date", b"message-id", b"reply-to",
    b"list-unsubscribe", b"list-unsubscribe-post", b"list-id", b"feedback-id",
    b"mime-version", b"content-type",
)
CANONICALIZE = (b"relaxed", b"relaxed")
RSA_BITS = 2048
#: The ed25519 key has its own selector: one DNS name holds one key record (RFC 6376
#: §3.6.2.2: several TXT records for one selector give undefined results).
ED25519_SELECTOR_SUFFIX = "-ed25519"

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha1": hashes.SHA1}

# DkimSigner._sign_rsa: the signature scheme's objects, stateless, made once; and a
# message's header as dkimpy's rfc822_parse reads it.
_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = utils.Prehashed(hashes.SHA256())
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
#: A field name is what comes before the first colon, made of these (dkimpy's
#: ``([\x21-\x7e]+?):``): deleting them from a name leaves nothing.
_NAME_CHARS = bytes(range(0x21, 0x7F))
_SIGNATURE_NAME = b"DKIM-Signature"
# Relaxed canonicalisation (RFC 6376 §3.4.2, §3.4.4) with what dkimpy's Relaxed does, but
# by bytes.replace instead of re.sub: on a 5 KB body the three patterns cost ~0.15 ms,
# mostly replacing each of its spaces by a space. Runs of whitespace become one space (a
# tab a space, then doubled spaces halved until none are left), then the space before a
# line end goes: the same as stripping trailing runs first and compressing after.


def _compress(value: bytes) -> bytes:
    if b"\t" in value:
        value = value.replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    return value


def _relaxed_body(body: bytes) -> bytes:
    """dkimpy's ``Relaxed.canonicalize_body`` of a CRLF body."""
    canonical = _compress(body).replace(b" \r\n", b"\r\n")
    return _canonical.correct_empty_body(_canonical.strip_trailing_lines(canonical))


def _relaxed_block(fields: list[list[bytes]]) -> bytes:
    """dkimpy's ``Relaxed.canonicalize_headers`` of ``fields``, each as ``name:value``
    and CRLF, joined: as they are hashed. Each value is unfolded and stripped, then the
    whole block is compressed at once (runs of whitespace cannot cross a field's CRLF, and
    stripping and compressing commute); one pass instead of one per field. Names too:
    only names without whitespace may come here (``_sign_rsa`` takes only \x21-\x7e)."""
    return _compress(b"".join([
        name.lower().rstrip() + b":"
        + value.replace(b"\r\n", b"").replace(b"\n", b"").strip() + b"\r\n"
        for name, value in fields]))


def _select_headers(fields: list[list[bytes]], include: tuple[bytes, ...]) -> list:
    """dkimpy's ``select_headers``: for each signed name, the last field of that name not
    chosen yet (so a name signed twice takes the last two, bottom up). Its search walks
    the fields backwards for each of the 12 names; here each field's name is lowered once
    and the fields of a name are popped from the end of their list."""
    where: dict[bytes, list[list[bytes]]] = {}
    for field in fields:
        where.setdefault(field[0].lower(), []).append(field)
    chosen = []
    for wanted in include:
        found = where.get(wanted)
        if found:
            chosen.append(found.pop())
    return chosen


# --- The seam: dkimpy with OpenSSL's RSA ---------------------------------------------------

def _already_parsed(privkey: object) -> rsa.RSAPrivateKey:
    """Stands in for dkimpy's ``parse_pem_private_key``: the key was parsed at start-up."""
    if not isinstance(privkey, rsa.RSAPrivateKey):
        raise dkim.UnparsableKeyError("expected a cryptography RSA private key")
    return privkey


def _openssl_rsassa_sign(digest: Any, private_key: rsa.RSAPrivateKey) -> bytes:
    """Stands in for dkimpy's ``RSASSA_PKCS1_v1_5_sign(hash, private_key)``: the same
    RSASSA-PKCS1-v1_5 signature (deterministic, so byte-identical), computed by OpenSSL
    from the digest dkimpy hashed."""
    algorithm = _HASHES[digest.name.lower()]()
    return private_key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))


def _with_globals(function: types.FunctionType, **names: object) -> types.FunctionType:
    """dkimpy's own ``function`` (same code object), resolving the module-level ``names``
    to ours instead of dkim's."""
    missing = sorted(set(names) - set(function.__code__.co_names))
    if missing or function.__closure__ is not None:
        raise ImportError(
            f"notify.dkim: dkimpy's {function.__qualname__} has changed (it no longer "
            f"looks up {', '.join(missing or names)} as module globals); "
            "update notify/dkim.py for this dkimpy version")
    scope = {**function.__globals__, **names}
    copy = types.FunctionType(function.__code__, scope, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    return copy


class _OpenSSLDKIM(dkim.DKIM):
    """``dkim.DKIM`` whose RSA signing is done by OpenSSL with a key parsed once.

    Why this shape: dkimpy 1.1.8 has no hook for the RSA step. ``DKIM.sign`` calls the
    module-level ``parse_pem_private_key(privkey)`` on every call (~0.2 ms of pure-Python
    ASN.1) and ``DomainSigner.gen_header`` calls the module-level
    ``RSASSA_PKCS1_v1_5_sign(h, pk)``, whose ``pow`` is pure Python (~7 ms); neither takes a
    key object it would just use. The alternatives were worse: assigning ``dkim.<name>``
    patches every dkimpy user in the process (ARC, verification in tests, other engineers'
    code); copying ``sign`` and ``gen_header`` (~90 lines) into this class would drift
    silently from dkimpy's output; taking the duck-typed ed25519 branch of ``gen_header``
    would depend on flipping ``signature_algorithm`` between two calls and still parse the
    PEM. So this subclass runs dkimpy's own ``sign`` and ``gen_header`` code unchanged,
    with a private copy of their module globals in which just those two names are ours.
    Nothing global changes; ``_with_globals`` refuses at import if a dkimpy release stops
    looking those names up (pinned <1.2), and tests/test_dkim.py checks byte-identity with
    ``dkim.sign`` and that dkim's pure-Python RSA is not called.
    """

    sign = _with_globals(dkim.DKIM.sign, parse_pem_private_key=_already_parsed)
    gen_header = _with_globals(dkim.DomainSigner.gen_header,
                               RSASSA_PKCS1_v1_5_sign=_openssl_rsassa_sign)


# --- The signer ----------------------------------------------------------------------------

class DkimSigner:
    """Signs outgoing messages; build it once (:meth:`from_settings`).

    ``pool`` chooses where :meth:`sign_async` runs: ``"process"`` (default, see the module
    docstring for why) or ``"thread"``; ``workers`` defaults to the number of cores.
    Call :meth:`close` (or ``await aclose()``) when done to stop the pool's workers.
    """

    def __init__(self, domain: str, selector: str, rsa_key_pem: bytes,
                 ed25519_key_pem: bytes | None = None, *,
                 pool: Literal["process", "thread"] = "process",
                 workers: int | None = None) -> None:
        if pool not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread', not {pool!r}")
        self.domain = domain
        self.selector = selector
        self._domain = domain.encode("ascii")
        self._selector = selector.encode("ascii")
        self._ed25519_selector = (selector + ED25519_SELECTOR_SUFFIX).encode("ascii")
        self._rsa = load_rsa_key(rsa_key_pem)
        self._ed25519 = None
        if ed25519_key_pem is not None:
            self._ed25519 = load_ed25519_key(ed25519_key_pem)
        self._pems = (rsa_key_pem, ed25519_key_pem)
        self.pool = pool
        self.workers = workers or os.cpu_count() or 1
        self._executor: Executor | None = None
        self._warming: list[Future[None]] = []
        # sign_async's process-pool dispatch; touched in the event loop's thread only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Job] = deque()
        self._in_flight = 0
        self._pump_scheduled = False
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> DkimSigner | None:
        """The signer for ``NOTIFY_DKIM_*``, or None when DKIM is not configured.

        A key file that cannot be used raises :class:`ConfigError` naming its setting.
        """
        if not (settings.dkim_domain and settings.dkim_selector and settings.dkim_key_file):
            return None
        for key in ("dkim_domain", "dkim_selector"):
            if not getattr(settings, key).isascii():
                raise ConfigError(f"{env_name(key)}: use the ASCII (xn--) form")
        pems: dict[str, bytes | None] = {}
        for key in ("dkim_key_file", "dkim_ed25519_key_file"):
            path: Path | None = getattr(settings, key)
            try:
                pems[key] = None if path is None else path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{env_name(key)}: cannot read {path}: "
                                  f"{exc.strerror}") from None
        domain, mail_domain = settings.dkim_domain.lower(), settings.mail_domain.lower()
        if mail_domain != domain and not mail_domain.endswith("." + domain):
            log.warning("DKIM domain %s does not align with the From domain %s: DMARC "
                        "will not count this signature", domain, mail_domain)
        try:
            return cls(settings.dkim_domain, settings.dkim_selector,
                       pems["dkim_key_file"] or b"", pems["dkim_ed25519_key_file"], **options)
        except KeyFileError as exc:
            key = "dkim_ed25519_key_file" if exc.which == "ed25519" else "dkim_key_file"
            raise ConfigError(f"{env_name(key)}: {exc}") from None

    def sign(self, message: bytes) -> bytes:
        """The message with its DKIM-Signature header(s) prepended: rsa-sha256 first, then
        ed25519-sha256 when that key is set. ~0.35 ms of CPU (RSA); in a coroutine prefer
        :meth:`sign_async`. A message without a From header raises ``dkim.ParameterError``.
        """
        # The signature's line ends follow the message's (dkimpy accepts LF and CRLF).
        first = message.find(b"\n")
        linesep = b"\r\n" if first > 0 and message[first - 1:first] == b"\r" else b"\n"
        if self._ed25519 is None:
            signed = self._sign_rsa(message, linesep)
            if signed is not None:
                return signed
        return self._sign_with_dkimpy(message, linesep)

    def _sign_with_dkimpy(self, message: bytes, linesep: bytes) -> bytes:
        signer = _OpenSSLDKIM(message, linesep=linesep)
        if not any(name.lower() == b"from" for name, _ in signer.headers):
            # dkimpy checks only that h= names From (RFC 6376 §5.4), not that it is there.
            raise dkim.ParameterError("the message has no From header to sign")
        include = list(SIGNED_HEADERS)
        header = signer.sign(self._selector, self._domain, self._rsa,
                             canonicalize=CANONICALIZE, include_headers=include)
        if self._ed25519 is not None:
            # dkimpy's own ed25519 path (libsodium already); it wants the base64 seed.
            header += signer.sign(self._ed25519_selector, self._domain, self._ed25519,
                                  signature_algorithm=b"ed25519-sha256",
                                  canonicalize=CANONICALIZE, include_headers=include)
        return header + message

    def _sign_rsa(self, message: bytes, linesep: bytes) -> bytes | None:
        """:meth:`sign`'s rsa-sha256 signature, byte for byte what dkimpy's ``DKIM.sign``
        writes (tests/test_dkim.py holds the two together, also for generated messages),
        for the price of its RSA step; None for a message whose header it leaves to dkimpy.

        Why not dkimpy itself: its Python work around the signature cost ~0.35 ms a
        message, more than OpenSSL's RSA, and was a fifth of a campaign worker's CPU
        (bench/campaign_send.py): it splits the whole message into lines to find the
        header, canonicalises every header field (signed or not) with module-level
        ``re`` calls that replace every single space of the body by a space, and builds a
        DKIM object per message. Here the header alone is split, only the signed fields
        are canonicalised, by ``bytes.replace``, and the rest is dkimpy's own code:
        ``select_headers``, ``fold``, the b= tag pattern.
        """
        end = _HEADER_END.search(message)
        if end is None or end.start() == 0:
            return None
        head = message[:end.start()]
        fields: list[list[bytes]] = []
        # Split as _LINE_END splits, by bytes.split when every LF has its CR (ours do).
        for line in (head.split(b"\r\n") if head.count(b"\n") == head.count(b"\r\n")
                     else _LINE_END.split(head)):
            if line[:1] in (b" ", b"\t"):
                if not fields:
                    return None
                fields[-1][1] += line + b"\r\n"
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name.translate(None, _NAME_CHARS):
                return None  # "From " lines, stray text: dkimpy's rules and errors
            fields.append([name, value + b"\r\n"])
        chosen = _select_headers(fields, SIGNED_HEADERS)
        # From is signed first: the first field chosen is a From, or there is none.
        if not chosen or chosen[0][0].lower() != SIGNED_HEADERS[0]:
            raise dkim.ParameterError("the message has no From header to sign")
        body = message[end.end():]
        if body.count(b"\n") != body.count(b"\r\n"):
            body = _LINE_END.sub(b"\r\n", body)
        body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(body)).digest())
        tags = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/relaxed"),
                (b"d", self._domain), (b"i", b"@" + self._domain), (b"q", b"dns/txt"),
                (b"s", self._selector), (b"t", str(int(time.time())).encode("ascii")),
                (b"h", b" : ".join(SIGNED_HEADERS)), (b"bh", body_hash),
                (b"b", b"0" * 60)]
        unsigned = dkim.fold(b"; ".join(b"=".join(tag) for tag in tags),
                             namelen=len(_SIGNATURE_NAME), linesep=b"\r\n")
        # dkimpy empties b= with its tag pattern; the placeholder is the last tag, and
        # unless a fold split it, emptying it is cutting it off.
        head, tag, placeholder = unsigned.rpartition(b"b=")
        unsigned = (head + tag if placeholder == b"0" * 60
                    else dkim.RE_BTAG.sub(b"\\1", unsigned))
        digest = hashlib.sha256(_relaxed_block(chosen))
        # The signature's own field last, without its CRLF (RFC 6376 §3.7).
        digest.update(_relaxed_block([[_SIGNATURE_NAME, b" " + unsigned]]).rstrip())
        signature = self._rsa.sign(digest.digest(), _PKCS1, _PREHASHED_SHA256)
        tags[-1] = (b"b", base64.b64encode(signature))
        value = dkim.fold(b"; ".join(b"=".join(tag) for tag in tags) + linesep,
                          namelen=len(_SIGNATURE_NAME), linesep=linesep)
        return _SIGNATURE_NAME + b": " + value + message

    async def sign_async(self, message: bytes) -> bytes:
        """:meth:`sign` off the event loop, in this signer's pool (started on first use).

        With the process pool, at most :data:`TASKS_PER_WORKER` tasks per worker are in
        the pool; the messages that arrive meanwhile wait here and then go together, up to
        :data:`BATCH` per task: alone when the pool is idle (nothing waits for a batch to
        fill), in batches under load, sharing the pipe's per-task cost. Use it from one
        event loop at a time; :meth:`sign` is thread-safe.
        """
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("this DkimSigner is closed")
        if self.pool == "thread":
            return await loop.run_in_executor(self._start(), self.sign, message)
        if self._loop is not loop:
            if self._queue or self._in_flight:
                raise RuntimeError("DkimSigner.sign_async is in use by another event loop")
            self._loop = loop
        future: asyncio.Future[bytes] = loop.create_future()
        self._queue.append((message, future))
        self._schedule_pump()
        return await future

    def _schedule_pump(self) -> None:
        # At the end of this turn of the event loop, so that the messages that arrive in
        # one turn (a burst of deliveries, or the callers a finished batch wakes) go together.
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Hand waiting messages to the pool while it has room (event loop thread only)."""
        self._pump_scheduled = False
        if self._closed:
            _fail(list(self._queue), RuntimeError("this DkimSigner is closed"))
            self._queue.clear()
        while self._queue and self._in_flight < TASKS_PER_WORKER * self.workers:
            # Split what waits over the free places, so every worker gets a share.
            free = TASKS_PER_WORKER * self.workers - self._in_flight
            size = min(BATCH, -(-len(self._queue) // free))
            jobs: list[_Job] = []
            while self._queue and len(jobs) < size:
                job = self._queue.popleft()
                if not job[1].done():  # not cancelled meanwhile
                    jobs.append(job)
            if not jobs:
                continue
            try:
                executor = self._start()
                done = asyncio.wrap_future(
                    executor.submit(_sign_batch_in_worker, [m for m, _ in jobs]),
                    loop=self._loop)
            except Exception as exc:  # noqa: BLE001 - e.g. the pool was shut down
                _fail(jobs, exc)
                continue
            self._in_flight += 1
            done.add_done_callback(functools.partial(self._settle, executor, jobs))

    def _settle(self, executor: Executor, jobs: list[_Job],
                done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        self._in_flight -= 1
        if done.cancelled():
            _fail(jobs, asyncio.CancelledError())
        elif (exc := done.exception()) is not None:
            if isinstance(exc, BrokenProcessPool) and self._executor is executor:
                # A worker died (killed, out of memory): start afresh on the next call.
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            _fail(jobs, exc)
        else:
            for (_, future), (ok, value) in zip(jobs, done.result(), strict=True):
                if not future.done():
                    future.set_result(value) if ok else future.set_exception(value)
        self._schedule_pump()

    def _start(self) -> Executor:
        if self._closed:
            raise RuntimeError("this DkimSigner is closed")
        if self._executor is None:
            if self.pool == "thread":
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="dkim")
            else:
                # spawn, not fork: forking a process that runs an event loop and threads
                # can copy a lock held by another thread. (So, as multiprocessing needs, a
                # __main__ script must be import-safe: `if __name__ == "__main__":`.)
                self._executor = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(self.domain, self.selector, *self._pems))
                # A spawn pool starts a worker only when a task finds none idle; start
                # them all now, or batching (few tasks) could leave it at one worker.
                self._warming = [self._executor.submit(_ready) for _ in range(self.workers)]
        return self._executor

    async def start(self) -> None:
        """Start the pool and wait until its workers are ready (else the first
        :meth:`sign_async` waits for that, about half a second for processes)."""
        self._start()
        await asyncio.gather(*(asyncio.wrap_future(f) for f in self._warming))

    def close(self) -> None:
        """Stop the pool's workers: signatures in progress finish, those still waiting and
        later :meth:`sign_async` calls raise RuntimeError (:meth:`sign` still works)."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


_Job = tuple[bytes, "asyncio.Future[bytes]"]
#: At most this many messages go to a worker in one task...
BATCH = 16
#: ...and at most this many tasks per worker are in the process pool at a time.
TASKS_PER_WORKER = 2


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for _, future in jobs:
        if not future.done():
            future.set_exception(exc)


_worker_signer: DkimSigner | None = None


def _init_worker(domain: str, selector: str, rsa_key_pem: bytes,
                 ed25519_key_pem: bytes | None) -> None:
    """Process-pool initializer: build this worker's signer once."""
    global _worker_signer
    _worker_signer = DkimSigner(domain, selector, rsa_key_pem, ed25519_key_pem)


def _ready() -> None:
    """A first task, to start a worker."""


def _sign_batch_in_worker(messages: list[bytes]) -> list[tuple[bool, Any]]:
    """In a worker: each message signed, or the exception it raised (one bad message does
    not fail the others)."""
    assert _worker_signer is not None, "the pool's initializer did not run"
    results: list[tuple[bool, Any]] = []
    for message in messages:
        try:
            results.append((True, _worker_signer.sign(message)))
        except Exception as exc:  # noqa: BLE001 - handed back to that message's caller
            results.append((False, exc))
    return results


class KeyFileError(ValueError):
    """A private key that cannot be used; ``which`` is ``"rsa"`` or ``"ed25519"``."""

    def __init__(self, message: str, which: str) -> None:
        super().__init__(message)
        self.which = which


def load_rsa_key(pem: bytes) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key of at least 2048 bits, PKCS#1 or PKCS#8 PEM."""
    key = _load_pem(pem, "rsa")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError("not an RSA private key", "rsa")
    if key.key_size < RSA_BITS:
        raise KeyFileError(f"the RSA key has {key.key_size} bits; use at least {RSA_BITS}",
                           "rsa")
    return key


def load_ed25519_key(pem: bytes) -> bytes:
    """An unencrypted ed25519 private key (PKCS#8 PEM), as dkimpy takes it: the base64 seed."""
    key = _load_pem(pem, "ed25519")
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError("not an ed25519 private key", "ed25519")
    return base64.b64encode(key.private_bytes_raw())


def _load_pem(pem: bytes, which: str) -> object:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise KeyFileError("the private key is encrypted; give an unencrypted PEM",
                           which) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"not a usable PEM private key ({exc})", which) from None


# --- notify dkim keygen --------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
#: One character-string of a TXT record holds at most 255 octets (RFC 1035 §3.3).
TXT_CHUNK = 255


def txt_record(name: str, value: str) -> str:
    """A zone-file line: the value split into quoted strings of at most 255 characters."""
    chunks = [value[i:i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)]
    return f"{name}. IN TXT " + " ".join(f'"{chunk}"' for chunk in chunks)


def cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    """``notify dkim keygen``: write the key file(s), print the DNS records and settings."""
    from notify.cli import CliError  # here: notify.cli imports this module lazily

    domain = args.domain.strip().rstrip(".").lower()
    selector = args.selector.strip()
    if not _DNS_NAME.match(domain) or "." not in domain:
        raise CliError(f"--domain: not a DNS domain name (ASCII, xn-- form): {args.domain!r}")
    if not _DNS_NAME.match(selector):
        raise CliError(f"--selector: use letters, digits, '-' and '.': {args.selector!r}")
    out_dir: Path = args.out_dir
    rsa_file = out_dir / f"{selector}.private.pem"
    ed_file = out_dir / f"{selector}.ed25519.pem"
    for path in (rsa_file, ed_file) if args.ed25519 else (rsa_file,):
        if path.exists():
            raise CliError(f"{path} exists; not overwriting a key (move it away first)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {out_dir}: {exc.strerror}") from None

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    spki = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    records = [(f"{selector}._domainkey.{domain}",
                "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode())]
    written = [(rsa_file, f"RSA {RSA_BITS}", rsa_key)]
    if args.ed25519:
        ed_key = ed25519.Ed25519PrivateKey.generate()
        raw = base64.b64encode(ed_key.public_key().public_bytes_raw()).decode()
        records.append((f"{selector}{ED25519_SELECTOR_SUFFIX}._domainkey.{domain}",
                        "v=DKIM1; k=ed25519; p=" + raw))
        written.append((ed_file, "ed25519", ed_key))
    for path, _, key in written:
        _write_private(path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), CliError)

    for path, kind, _ in written:
        print(f"Wrote {path} ({kind} private key, mode 0600).")
    print("\nPublish in DNS (TXT):")
    for name, value in records:
        print(txt_record(name, value))
    print("\nThen set:")
    print(f"NOTIFY_DKIM_DOMAIN={domain}")
    print(f"NOTIFY_DKIM_SELECTOR={selector}")
    print(f"NOTIFY_DKIM_KEY_FILE={rsa_file.resolve()}")
    if args.ed25519:
        print(f"NOTIFY_DKIM_ED25519_KEY_FILE={ed_file.resolve()}")
    return 0


def _write_private(path: Path, data: bytes, error: type[Exception]) -> None:
    """Create ``path`` with mode 0600; never replace an existing file (O_EXCL)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise error(f"{path} exists; not overwriting a key (move it away first)") from None
    except OSError as exc:
        raise error(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.chmod(path, 0o600)  # exactly 0600 whatever the umask
