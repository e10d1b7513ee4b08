"""DKIM signing: signatures verify (dkimpy, and opendkim when installed), cover
List-Unsubscribe-Post, match dkimpy's own output byte for byte, break on tampering; the
ed25519 second signature; ``notify dkim keygen``; ``sign_async`` in both pools."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.util import parse_tag_value
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from support import environ_for

from notify.cli import CliError
from notify.dkim import CANONICALIZE, SIGNED_HEADERS, DkimSigner, cmd_keygen
from notify.settings import ConfigError, load_settings

DOMAIN = "example.com"
SELECTOR = "s2026"
NOW = 1_767_225_600.0  # a fixed t= for byte comparisons


def pkcs8(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def records(rsa_key, ed_key) -> dict[str, str]:  # noqa: ANN001
    """The DNS TXT records a receiver would look up."""
    spki = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = ed_key.public_key().public_bytes_raw()
    return {
        f"{SELECTOR}._domainkey.{DOMAIN}": "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode(),
        f"{SELECTOR}-ed25519._domainkey.{DOMAIN}":
            "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode(),
    }


def dns(records: dict[str, str]) -> Callable[..., bytes | None]:
    """dkimpy's dnsfunc: the name comes as bytes with a trailing dot, the TXT as bytes."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode().removesuffix("."))
        return None if value is None else value.encode()

    return lookup


@pytest.fixture(scope="module")
def signer(rsa_key) -> DkimSigner:  # noqa: ANN001
    return DkimSigner(DOMAIN, SELECTOR, pkcs8(rsa_key))


@pytest.fixture(scope="module")
def dual_signer(rsa_key, ed_key) -> DkimSigner:  # noqa: ANN001
    return DkimSigner(DOMAIN, SELECTOR, pkcs8(rsa_key), pkcs8(ed_key))


def build(*, crlf: bool = False, reply_to: bool = False, sender: str = "notify@example.com",
          n: int = 0) -> bytes:
    """A newsletter as the postman builds one: multipart/alternative, quoted-printable."""
    msg = EmailMessage()
    msg["From"] = f"Example News <{sender}>"
    msg["To"] = "Jürgen Müller <juergen@example.org>"
    msg["Subject"] = f"Ihre Neuigkeiten der Woche #{n}"
    msg["Date"] = "Thu, 01 Jan 2026 00:00:00 +0000"
    msg["Message-ID"] = f"<delivery-{n}@example.com>"
    if reply_to:
        msg["Reply-To"] = "support@example.com"
    msg["List-Unsubscribe"] = ("<https://example.com/u/0123456789abcdef>, "
                               "<mailto:unsubscribe+0123456789abcdef@example.com>")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["List-Id"] = "Newsletter <newsletter.example.com>"
    msg["Feedback-ID"] = "newsletter:newsletter:notify"
    msg.set_content("Hallo Jürgen,\n\n" + "Das war die Woche. " * 30 + "\n",
                    cte="quoted-printable")
    msg.add_alternative("<p>Hallo J&uuml;rgen,</p>" + "<p>Das war die Woche.</p>" * 30,
                        subtype="html", cte="quoted-printable")
    return msg.as_bytes(policy=policy.SMTP) if crlf else msg.as_bytes()


def signatures(signed: bytes) -> list[dict[bytes, bytes]]:
    return [parse_tag_value(value) for name, value in dkim.DKIM(signed).headers
            if name.lower() == b"dkim-signature"]


def signed_names(tags: dict[bytes, bytes]) -> list[bytes]:
    return re.split(rb"\s*:\s*", tags[b"h"])


def verify(signed: bytes, records: dict[str, str], idx: int = 0) -> bool:
    """Signature number idx (0 is the topmost) verifies; a mismatch raises in dkimpy."""
    try:
        return dkim.DKIM(signed).verify(idx=idx, dnsfunc=dns(records))
    except dkim.DKIMException:
        return False


def test_signature_verifies_and_covers_list_unsubscribe_post(signer, records):
    message = build()
    signed = signer.sign(message)

    assert signed.endswith(message)
    assert dkim.verify(signed, dnsfunc=dns(records))
    [tags] = signatures(signed)
    assert (tags[b"a"], tags[b"c"], tags[b"d"], tags[b"s"]) == (
        b"rsa-sha256", b"relaxed/relaxed", DOMAIN.encode(), SELECTOR.encode())
    assert signed_names(tags) == list(SIGNED_HEADERS)
    assert b"list-unsubscribe-post" in signed_names(tags)


@pytest.mark.parametrize("crlf", [False, True], ids=["LF", "CRLF"])
def test_byte_identical_to_dkimpys_own_sign(signer, rsa_key, monkeypatch, crlf):
    monkeypatch.setattr(time, "time", lambda: NOW)
    message = build(crlf=crlf)
    linesep = b"\r\n" if crlf else b"\n"

    ours = signer.sign(message)
    theirs = dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), pkcs8(rsa_key),
                       canonicalize=CANONICALIZE, include_headers=list(SIGNED_HEADERS),
                       linesep=linesep)

    assert ours == theirs + message
    # The signature's line ends are the message's: no CR in an LF message.
    assert (b"\r" in ours) is crlf


_WSP = st.sampled_from([" ", "  ", "\t", " \t ", ""])
_WORD = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                       exclude_characters=":"), min_size=1, max_size=8)
_FIELD = st.tuples(
    st.sampled_from(["From", "from", "To", "Subject", "SUBJECT", "Date", "Reply-To",
                     "List-Unsubscribe", "List-Unsubscribe-Post", "X-Other", "Received",
                     "Content-Type", "Message-ID"]),
    st.lists(st.tuples(_WSP, _WORD), min_size=0, max_size=6),
    st.lists(st.integers(0, 5), max_size=2),  # where to fold
    _WSP)
_BODY_LINE = st.lists(st.one_of(_WSP, _WORD), max_size=8).map("".join)


@given(fields=st.lists(_FIELD, min_size=1, max_size=10),
       body=st.lists(_BODY_LINE, max_size=8), trailing_blank=st.integers(0, 3),
       crlf=st.booleans())
@hypothesis_settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_fast_path_writes_what_dkimpy_writes_for_any_message(signer, monkeypatch, fields,
                                                                 body, trailing_blank, crlf):
    """``DkimSigner._sign_rsa`` (the campaign's fast path) against the dkimpy path, for
    headers with odd whitespace, folds, repeats and case, and bodies with trailing
    whitespace and blank lines, in LF and CRLF messages."""
    monkeypatch.setattr(time, "time", lambda: NOW)
    eol = "\r\n" if crlf else "\n"
    lines = ["From: Ann <ann@example.com>"]
    for name, words, folds, tail in fields:
        value = "".join(space + word for space, word in words)
        for at in folds:
            value = value[:at] + eol + " " + value[at:] if at < len(value) else value
        lines.append(f"{name}:{value}{tail}")
    message = (eol.join(lines) + eol + eol + eol.join(body) + eol * trailing_blank).encode()
    linesep = eol.encode()
    fast = signer._sign_rsa(message, linesep)
    assert fast is not None
    assert fast == signer._sign_with_dkimpy(message, linesep)


_ODD_LINE = st.one_of(
    st.sampled_from([b"From ann@example.com Sat Jan  3 01:05:34 1996", b"no colon here",
                     b": no name", b"Bad Name: x", b"X-\x7fDel: x", b" folded first",
                     b"\tfolded tab", b"Subject:\r", b"To:a\rb", b"Date:"]),
    st.builds(lambda name, value: name + b":" + value,
              st.sampled_from([b"From", b"to", b"SUBJECT", b"X-A", b"Reply-To"]),
              st.binary(max_size=12).filter(lambda v: b"\n" not in v)))


@given(lines=st.lists(_ODD_LINE, min_size=1, max_size=8),
       ends=st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=8, max_size=8))
@hypothesis_settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_fast_path_leaves_to_dkimpy_or_agrees_with_it_on_odd_headers(
        signer, monkeypatch, lines, ends):
    """Lines that are no header field (mbox From lines, no colon, a name with a space or
    DEL, a continuation first), lone CRs, LF and CRLF mixed: the fast path either hands
    the message to dkimpy (None) or writes what dkimpy writes; a missing From is refused
    by both."""
    monkeypatch.setattr(time, "time", lambda: NOW)
    message = b"From: Ann <ann@example.com>\r\n" + b"".join(
        line + end for line, end in zip(lines, ends, strict=False)) + b"\r\nbody\r\n"
    for candidate in (message, message.replace(b"From: Ann", b"X-Was: Ann", 1)):
        try:
            fast = signer._sign_rsa(candidate, b"\r\n")
        except dkim.DKIMException as exc:
            fast = type(exc)
        try:
            slow = signer._sign_with_dkimpy(candidate, b"\r\n")
        except dkim.DKIMException as exc:
            slow = type(exc)
        assert fast is None or fast == slow


def test_from_is_the_first_signed_header():
    # _sign_rsa's check for a From header reads the first field chosen.
    assert SIGNED_HEADERS[0] == b"from"


def test_the_fast_path_signs_what_build_bytes_writes(signer, records, tmp_path):
    from notify import mail

    settings = settings_with(tmp_path)
    message = mail.build_bytes(mail.Email(
        to="jurgen@example.com", to_name="Jürgen Groß", kind="notification", locale="de",
        context={"subject": "Grüße", "name": "Jürgen",
                 "body": "Hallo  Jürgen,\n\nDas war die Woche.  \n"},
        footer=mail.Footer(preferences_url="https://example.com/p/x"),
        headers={"List-Unsubscribe": "<https://example.com/u/x>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}), settings)
    fast = signer._sign_rsa(message, b"\r\n")
    assert fast is not None and fast == signer.sign(message)
    assert verify(fast, records)


def test_rsa_is_done_by_openssl_and_dkimpy_stays_unpatched(signer, records, monkeypatch):
    def pure_python(*args: object) -> None:
        raise AssertionError("dkimpy's pure-Python key parsing or RSA was used")

    for name in ("parse_pem_private_key", "RSASSA_PKCS1_v1_5_sign"):
        assert getattr(dkim, name) is getattr(dkim.crypto, name)  # no global patch
        monkeypatch.setattr(dkim, name, pure_python)
        monkeypatch.setattr(dkim.crypto, name, pure_python)
    monkeypatch.setattr(dkim.crypto, "rsa_decrypt", pure_python)

    signed = signer.sign(build())
    monkeypatch.undo()
    assert verify(signed, records)


@pytest.mark.parametrize("tamper", [
    pytest.param(lambda m: m.replace(b"Das war die Woche.", b"Das war die Wache.", 1),
                 id="body"),
    pytest.param(lambda m: m.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=No"),
                 id="List-Unsubscribe-Post changed"),
    pytest.param(lambda m: m.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\n",
                                     b""), id="List-Unsubscribe-Post removed"),
    pytest.param(lambda m: m.replace(b"\nList-Id:", b"\nReply-To: evil@example.net\nList-Id:"),
                 id="absent Reply-To added"),
])
def test_tampering_fails_verification(signer, records, tamper):
    signed = signer.sign(build())
    assert verify(signed, records)
    changed = tamper(signed)
    assert changed != signed
    assert not verify(changed, records)


def test_a_listed_header_the_message_lacks_keeps_the_signature_valid(signer, records):
    message = build()
    assert b"Reply-To:" not in message  # in h=, absent: hashed as nothing (RFC 6376 §5.4)
    assert verify(signer.sign(message), records)
    with_it = build(reply_to=True)
    assert verify(signer.sign(with_it), records)


def test_a_message_without_from_is_refused(signer):
    with pytest.raises(dkim.ParameterError):
        signer.sign(build().replace(b"From: ", b"X-From: ", 1))


def test_ed25519_second_signature_verifies(dual_signer, records, rsa_key, ed_key,
                                           monkeypatch):
    monkeypatch.setattr(time, "time", lambda: NOW)
    message = build(crlf=True)
    signed = dual_signer.sign(message)

    rsa_tags, ed_tags = signatures(signed)
    assert rsa_tags[b"a"] == b"rsa-sha256" and rsa_tags[b"s"] == SELECTOR.encode()
    assert ed_tags[b"a"] == b"ed25519-sha256"
    assert ed_tags[b"s"] == f"{SELECTOR}-ed25519".encode()
    assert signed_names(ed_tags) == signed_names(rsa_tags) == list(SIGNED_HEADERS)
    assert verify(signed, records, idx=0)
    assert verify(signed, records, idx=1)
    # Each also against dkimpy's own output.
    seed = base64.b64encode(ed_key.private_bytes_raw())
    assert signed == b"".join([
        dkim.sign(message, SELECTOR.encode(), DOMAIN.encode(), pkcs8(rsa_key),
                  canonicalize=CANONICALIZE, include_headers=list(SIGNED_HEADERS)),
        dkim.sign(message, f"{SELECTOR}-ed25519".encode(), DOMAIN.encode(), seed,
                  signature_algorithm=b"ed25519-sha256", canonicalize=CANONICALIZE,
                  include_headers=list(SIGNED_HEADERS)),
        message])
    tampered = signed.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Click")
    assert not verify(tampered, records, idx=0)
    assert not verify(tampered, records, idx=1)


# --- settings --------------------------------------------------------------------------------

def settings_with(tmp_path: Path, **dkim_env: str):  # noqa: ANN201
    env = environ_for(f"sqlite://{tmp_path}/notify.sqlite3", tmp_path / "data", **dkim_env)
    return load_settings(environ=env)


def test_from_settings_is_none_without_dkim(tmp_path):
    assert DkimSigner.from_settings(settings_with(tmp_path)) is None


def test_from_settings_builds_the_configured_signer(tmp_path, rsa_key, ed_key, records):
    (tmp_path / "rsa.pem").write_bytes(pkcs8(rsa_key))
    (tmp_path / "ed.pem").write_bytes(pkcs8(ed_key))
    settings = settings_with(
        tmp_path, NOTIFY_DKIM_DOMAIN=DOMAIN, NOTIFY_DKIM_SELECTOR=SELECTOR,
        NOTIFY_DKIM_KEY_FILE=str(tmp_path / "rsa.pem"),
        NOTIFY_DKIM_ED25519_KEY_FILE=str(tmp_path / "ed.pem"))
    signer = DkimSigner.from_settings(settings)
    assert signer is not None
    signed = signer.sign(build())
    assert verify(signed, records, idx=0) and verify(signed, records, idx=1)


@pytest.mark.parametrize(("write", "setting", "says"), [
    (lambda p: p.write_bytes(b"not a key"), "NOTIFY_DKIM_KEY_FILE", "not a usable PEM"),
    (lambda p: p.write_bytes(pkcs8(rsa.generate_private_key(65537, 1024))),
     "NOTIFY_DKIM_KEY_FILE", "1024 bits; use at least 2048"),
    (lambda p: p.write_bytes(pkcs8(ed25519.Ed25519PrivateKey.generate())),
     "NOTIFY_DKIM_KEY_FILE", "not an RSA private key"),
])
def test_from_settings_with_an_unusable_key_names_the_setting(tmp_path, write, setting, says):
    write(tmp_path / "key.pem")
    settings = settings_with(tmp_path, NOTIFY_DKIM_DOMAIN=DOMAIN,
                             NOTIFY_DKIM_SELECTOR=SELECTOR,
                             NOTIFY_DKIM_KEY_FILE=str(tmp_path / "key.pem"))
    with pytest.raises(ConfigError, match=f"^{setting}: .*{re.escape(says)}"):
        DkimSigner.from_settings(settings)


def test_from_settings_with_an_rsa_key_as_the_ed25519_key(tmp_path, rsa_key):
    (tmp_path / "rsa.pem").write_bytes(pkcs8(rsa_key))
    settings = settings_with(
        tmp_path, NOTIFY_DKIM_DOMAIN=DOMAIN, NOTIFY_DKIM_SELECTOR=SELECTOR,
        NOTIFY_DKIM_KEY_FILE=str(tmp_path / "rsa.pem"),
        NOTIFY_DKIM_ED25519_KEY_FILE=str(tmp_path / "rsa.pem"))
    with pytest.raises(ConfigError, match="^NOTIFY_DKIM_ED25519_KEY_FILE: not an ed25519"):
        DkimSigner.from_settings(settings)


# --- notify dkim keygen ----------------------------------------------------------------------

def keygen(out_dir: Path, *, ed: bool = True, selector: str = SELECTOR) -> int:
    args = argparse.Namespace(domain=DOMAIN, selector=selector, out_dir=out_dir, ed25519=ed)
    return cmd_keygen(args, None)  # type: ignore[arg-type] - keygen reads no setting


def printed_records(out: str) -> dict[str, str]:
    """name -> TXT value, from the zone-file lines keygen prints."""
    found = {}
    for line in out.splitlines():
        match = re.match(r"^(\S+)\. IN TXT ((?:\"[^\"]*\" ?)+)$", line)
        if match:
            chunks = re.findall(r"\"([^\"]*)\"", match.group(2))
            assert all(len(chunk) <= 255 for chunk in chunks)
            found[match.group(1)] = "".join(chunks)
    return found


def test_keygen_writes_keys_whose_printed_records_verify(tmp_path, capsys):
    assert keygen(tmp_path / "keys") == 0
    out = capsys.readouterr().out

    rsa_file = tmp_path / "keys" / f"{SELECTOR}.private.pem"
    ed_file = tmp_path / "keys" / f"{SELECTOR}.ed25519.pem"
    for path in (rsa_file, ed_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    published = printed_records(out)
    assert sorted(published) == [f"{SELECTOR}-ed25519._domainkey.{DOMAIN}",
                                 f"{SELECTOR}._domainkey.{DOMAIN}"]
    rsa_txt = published[f"{SELECTOR}._domainkey.{DOMAIN}"]
    assert rsa_txt.startswith("v=DKIM1; k=rsa; p=") and len(rsa_txt) > 255  # split in two
    assert published[f"{SELECTOR}-ed25519._domainkey.{DOMAIN}"].startswith(
        "v=DKIM1; k=ed25519; p=")
    for line in (f"NOTIFY_DKIM_DOMAIN={DOMAIN}", f"NOTIFY_DKIM_SELECTOR={SELECTOR}",
                 f"NOTIFY_DKIM_KEY_FILE={rsa_file.resolve()}",
                 f"NOTIFY_DKIM_ED25519_KEY_FILE={ed_file.resolve()}"):
        assert line in out.splitlines()

    signer = DkimSigner(DOMAIN, SELECTOR, rsa_file.read_bytes(), ed_file.read_bytes())
    signed = signer.sign(build())
    assert verify(signed, published, idx=0)
    assert verify(signed, published, idx=1)


def test_keygen_refuses_to_overwrite_a_key(tmp_path, capsys):
    assert keygen(tmp_path, ed=False) == 0
    first = (tmp_path / f"{SELECTOR}.private.pem").read_bytes()
    capsys.readouterr()

    with pytest.raises(CliError, match=r"s2026\.private\.pem exists; not overwriting"):
        keygen(tmp_path, ed=False)
    # With --ed25519, nothing is written when one of the two files exists.
    with pytest.raises(CliError, match="exists"):
        keygen(tmp_path, ed=True)
    assert (tmp_path / f"{SELECTOR}.private.pem").read_bytes() == first
    assert not (tmp_path / f"{SELECTOR}.ed25519.pem").exists()
    assert capsys.readouterr().out == ""


def test_keygen_from_the_command_line_is_one_line_on_error(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           **environ_for(f"sqlite://{tmp_path}/notify.sqlite3", tmp_path / "data")}
    # The installed `notify` script, as an operator runs it. (Under `python -m notify.cli`
    # the CliError of a lazily imported command is the class of a second copy of notify.cli,
    # which main() in __main__ does not catch: a traceback.)
    script = Path(sys.executable).with_name("notify")
    if not script.exists():
        pytest.skip(f"no installed notify script next to {sys.executable}")
    argv = [str(script), "dkim", "keygen", "--domain", DOMAIN,
            "--selector", SELECTOR, "--out-dir", str(tmp_path / "k")]
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f'{SELECTOR}._domainkey.{DOMAIN}. IN TXT "v=DKIM1; k=rsa; p=' in done.stdout
    again = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=60, check=False)
    assert again.returncode == 1
    assert again.stderr.startswith("notify: ") and again.stderr.count("\n") == 1
    assert "not overwriting" in again.stderr


@pytest.mark.parametrize(("domain", "selector", "says"), [
    ("example.com", "../etc", "--selector"),
    ("example.com", "", "--selector"),
    ("localhost", "s1", "--domain"),
    ("exa mple.com", "s1", "--domain"),
])
def test_keygen_refuses_bad_names(tmp_path, domain, selector, says):
    args = argparse.Namespace(domain=domain, selector=selector, out_dir=tmp_path, ed25519=False)
    with pytest.raises(CliError, match=f"^{says}"):
        cmd_keygen(args, None)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# --- sign_async ------------------------------------------------------------------------------

@pytest.mark.parametrize("pool", ["process", "thread"])
async def test_sign_async_signs_many_at_once(rsa_key, ed_key, records, pool):
    signer = DkimSigner(DOMAIN, SELECTOR, pkcs8(rsa_key), pkcs8(ed_key), pool=pool, workers=2)
    try:
        await signer.start()
        messages = [build(n=n) for n in range(40)]
        bad = build().replace(b"From: ", b"X-From: ", 1)
        results = await asyncio.gather(*(signer.sign_async(m) for m in [*messages, bad]),
                                       return_exceptions=True)
    finally:
        await signer.aclose()

    assert isinstance(results[-1], dkim.ParameterError)  # only the bad one fails
    for message, signed in zip(messages, results[:-1], strict=True):
        assert isinstance(signed, bytes) and signed.endswith(message)
        assert verify(signed, records, idx=0) and verify(signed, records, idx=1)
    with pytest.raises(RuntimeError, match="closed"):
        await signer.sign_async(messages[0])


# --- an independent verifier -----------------------------------------------------------------

OPENDKIM = shutil.which("opendkim", path=os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]))


def opendkim(tmp_path: Path, records: dict[str, str], message: bytes) -> str:
    keys = tmp_path / "keys"
    keys.write_text("".join(f"{name} {value}\n" for name, value in records.items()))
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"Mode v\nSyslog no\nTestPublicKeys {keys}\n")
    (tmp_path / "msg.eml").write_bytes(message)
    # opendkim -t exits 0 whatever the result and reports on the first signature.
    done = subprocess.run([OPENDKIM, "-x", str(conf), "-t", str(tmp_path / "msg.eml")],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.stdout + done.stderr


@pytest.mark.skipif(OPENDKIM is None, reason="opendkim is not installed "
                    "(apt-get install opendkim opendkim-tools); optional, also under CI")
def test_opendkim_verifies_both_signatures(dual_signer, records, tmp_path):
    signed = dual_signer.sign(build(crlf=True))
    rsa_out = opendkim(tmp_path, records, signed)
    assert f"(s={SELECTOR}, d={DOMAIN}, 2048-bit key) succeeded" in rsa_out, rsa_out

    second = signed.index(b"DKIM-Signature:", 1)  # the ed25519 one, on its own
    ed_out = opendkim(tmp_path, records, signed[second:])
    assert f"(s={SELECTOR}-ed25519, d={DOMAIN}" in ed_out and "succeeded" in ed_out, ed_out

    lf = dual_signer.sign(build())
    assert "succeeded" in opendkim(tmp_path, records, lf)
    tampered = signed.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Click")
    assert "failed" in opendkim(tmp_path, records, tampered)
