"""Email templates and message building: every kind renders in English and German, errors
name the template, HTML is escaped, and nothing can inject a header."""

from __future__ import annotations

import email
from email import policy

import jinja2
import pytest

from notify import mail, preview
from notify.cli import main
from notify.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    return load_settings(environ={"NOTIFY_DATA_DIR": str(tmp_path),
                                  "NOTIFY_POSTAL_ADDRESS": "Example Ltd, 1 Main St, Berlin",
                                  "NOTIFY_REPLY_TO": "help@example.com"})


@pytest.mark.parametrize("kind", preview.KINDS)
@pytest.mark.parametrize("locale", ["en", "de"])
def test_every_kind_renders_with_the_footer(settings, kind, locale):
    subject, text, html = preview.render_sample(kind, locale, settings)
    assert subject and "\n" not in subject
    for part in (text, html):
        assert "https://notify.example.com/preferences/SAMPLE" in part
        assert "Example Ltd, 1 Main St, Berlin" in part  # CAN-SPAM postal address
    assert "<html" in html and "{{" not in html and "{{" not in text


def test_german_and_english_differ(settings):
    assert preview.render_sample("policy_change", "de", settings)[0].startswith("Unsere")
    assert preview.render_sample("policy_change", "en", settings)[0].startswith("Our")


def test_undefined_variable_is_an_error_never_blank_text(settings):
    email_ = mail.Email(to="a@example.com", to_name=None, kind="newsletter", locale="en",
                        context={"name": None, "subject": "Hi"},
                        footer=mail.Footer(preferences_url="https://x/p"))
    with pytest.raises(jinja2.UndefinedError):
        mail.render(email_, settings)


def test_html_is_escaped(settings):
    email_ = mail.Email(to="a@example.com", to_name=None, kind="newsletter", locale="en",
                        context={"name": "<b>Ada</b>", "subject": "Hi",
                                 "body": "<script>alert(1)</script>"},
                        footer=mail.Footer(preferences_url="https://x/p"))
    _, text, html = mail.render(email_, settings)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;Ada" in html


@pytest.mark.parametrize("field", ["name", "subject", "body", "to_name"])
def test_no_header_can_be_injected(settings, field):
    evil = "Ada\r\nBcc: victim@example.com\r\nX-Evil: 1"
    context = {"name": "Ada", "subject": "Hello", "body": "text"}
    to_name = "Ada"
    if field == "to_name":
        to_name = evil
    else:
        context[field] = evil
    message = mail.Email(to="a@example.com", to_name=to_name, kind="newsletter", locale="en",
                         context=context, footer=mail.Footer(preferences_url="https://x/p"))
    try:
        data = mail.build(message, settings).as_bytes()
    except ValueError:
        return  # refusing the message is as good as escaping it
    parsed = email.message_from_bytes(data, policy=policy.default)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert parsed["Reply-To"] == "help@example.com"


def test_preview_writes_html(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOTIFY_DATA_DIR", str(tmp_path))
    out = tmp_path / "p.html"
    assert main(["preview", "policy_change", "--locale", "de", "--out", str(out)]) == 0
    assert "Datenschutzerklärung" in out.read_text()
    assert main(["preview", "nonsense"]) == 1
    assert "kinds are" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "says"), [
    ("{% extends 'base.html' %}{% block body %}\n\n{{ t('x' }}{% endblock %}", ":3:"),
    ("{% extends 'base.html' %}{% block body %}\n{{ missing_variable }}{% endblock %}",
     "missing_variable"),
])
def test_template_error_names_file_and_line(tmp_path, monkeypatch, capsys, text, says):
    root = tmp_path / "emails"
    for name in ("base.html", "base.txt"):
        (root).mkdir(exist_ok=True)
        (root / name).write_text((mail.TEMPLATE_DIR / name).read_text())
    (root / "newsletter").mkdir()
    (root / "newsletter" / "subject.txt").write_text("{{ subject }}")
    (root / "newsletter" / "body.txt").write_text("{{ body }}")
    (root / "newsletter" / "body.html").write_text(text)
    monkeypatch.setattr(mail, "_ENV", mail.environment(root))
    monkeypatch.setenv("NOTIFY_DATA_DIR", str(tmp_path))
    assert main(["preview", "newsletter", "--out", str(tmp_path / "x.html")]) == 1
    err = capsys.readouterr().err
    assert "newsletter/body.html" in err and says in err
    assert "Traceback" not in err


# -- the fast path is the slow path's message --------------------------------------------

LONG_LINK = ("https://notify.example.com/u/k1." + "x" * 120 + ".mac, "
             "<mailto:unsubscribe+" + "y" * 60 + "@example.com>")


@pytest.mark.parametrize("name, subject_var, body", [
    ("Ada Lovelace", "News", "Hello\nsecond line\n.\nlast"),
    ("Jürgen Groß", "Neuigkeiten für Sie – Übersicht", "Grüße aus Köln " * 30),
    (None, "A subject " * 12, "x" * 300),
    ('Dr. "Quoted", Name', "Emoji 🎉 subject", "<b>not html</b> & more = signs=\n"),
])
def test_build_bytes_is_the_same_message_as_build(settings, name, subject_var, body):
    message = mail.Email(
        to="ada@example.com", to_name=name, kind="newsletter", locale="de",
        context={"subject": subject_var, "body": body, "name": name},
        headers={"Message-ID": "<abc@example.com>", "List-Unsubscribe": f"<{LONG_LINK}>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                 "Feedback-ID": "1:newsletter:newsletter:notify"},
        footer=mail.Footer(preferences_url="https://notify.example.com/p",
                           unsubscribe_url="https://notify.example.com/u", topic_label="N"))
    slow = email.message_from_bytes(mail.build(message, settings).as_bytes(),
                                    policy=policy.default)
    raw = mail.build_bytes(message, settings)
    fast = email.message_from_bytes(raw, policy=policy.default)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    # Folded where a line can be folded: a line over 78 holds one unbreakable item.
    for line in head.split("\r\n"):
        assert len(line) <= 78 or len(line.strip().split(" ")) <= 2, line
    for header in ("From", "To", "Subject", "Message-ID", "List-Unsubscribe",
                   "List-Unsubscribe-Post", "Feedback-ID", "Reply-To", "MIME-Version"):
        assert str(fast[header]) == str(slow[header]), header
    assert fast.get_content_type() == slow.get_content_type() == "multipart/alternative"
    # Line ends differ (CRLF on the wire here, LF from EmailMessage.as_bytes) and so may
    # the blank lines before a boundary; the text does not.
    fast_parts = [p.get_content().replace("\r\n", "\n").rstrip("\n") for p in fast.iter_parts()]
    slow_parts = [p.get_content().replace("\r\n", "\n").rstrip("\n") for p in slow.iter_parts()]
    assert fast_parts == slow_parts
    assert [p.get_content_type() for p in fast.iter_parts()] == ["text/plain", "text/html"]
    assert fast.defects == [] and all(p.defects == [] for p in fast.iter_parts())


def test_build_bytes_refuses_a_line_break_in_a_header(settings):
    message = mail.Email(to="ada@example.com", to_name=None, kind="newsletter", locale="en",
                         context={"subject": "s", "body": "b", "name": None},
                         headers={"X-Evil": "a\r\nBcc: everyone@example.com"},
                         footer=mail.Footer(preferences_url="https://e.com/p"))
    with pytest.raises(ValueError, match="line break"):
        mail.build_bytes(message, settings)


@pytest.mark.parametrize("body, encoding", [
    ("Plain ASCII.\n\nA second paragraph = fine.\n.\n", "7bit"),
    ("y" * 980, "7bit"),  # the line with its greeting and markup stays under 998
    ("y" * 1000, "quoted-printable"),  # a line over RFC 5322's 998
    ("Grüße", "quoted-printable"),
    ("a lone\rcarriage return", "quoted-printable"),
    ("a NUL\0 byte", "quoted-printable"),
    pytest.param(f"the boundary's own prefix {mail._BOUNDARY_PREFIX}0 in the text",
                 "quoted-printable", id="boundary-prefix"),
])
def test_a_part_goes_7bit_only_when_it_may_and_reads_back_the_same(settings, body, encoding):
    message = mail.Email(to="ada@example.com", to_name=None, kind="newsletter", locale="en",
                         context={"subject": "s", "body": body, "name": None},
                         footer=mail.Footer(preferences_url="https://e.com/p"))
    raw = mail.build_bytes(message, settings)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    [text, html] = parsed.iter_parts()
    assert text["Content-Transfer-Encoding"] == encoding
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    expected_text, expected_html = mail.render(message, settings)[1:]
    assert text.get_content().replace("\r\n", "\n") == expected_text.replace("\r\n", "\n")
    assert html.get_content().replace("\r\n", "\n") == expected_html.replace("\r\n", "\n")
    assert parsed.defects == [] and text.defects == [] and html.defects == []
    # No boundary inside a body: the multipart has exactly its two parts.
    assert raw.count(parsed.get_boundary().encode()) == 4  # its header, 3 delimiters
