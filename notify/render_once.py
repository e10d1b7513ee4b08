"""A campaign's templates rendered once for all its readers of one language (issue #7).

The messages of a campaign differ from reader to reader in three values only: the
reader's name and the footer's two links (preferences, one-click unsubscribe). Rendering
subject, text and HTML through jinja2 for every message was a tenth of a campaign
worker's time. ``Renderings`` renders them once per batch, language and campaign with a
marker in each of those values' places, and makes each message from that rendering by
putting its reader's values where the markers are (HTML-escaped in the HTML, exactly as
the template's autoescape would have).

That gives the same text as a full rendering only when the templates do nothing with
those values but print them, or test whether they are empty: ``provable`` reads the
syntax trees of the template and of every template it extends or includes and allows
each use of a reader's value only where it is printed as it is, tested for truth (the
rendering is made once per combination of empty and non-empty values), or handed as a
keyword to ``t()`` whose catalog text prints it with a plain ``{field}``. A filter, a
comparison, an assignment, a macro, a filter block or any other use makes the template
unprovable, and its messages are rendered whole as before. A marker cannot come from a
template or a campaign's words: it holds a NUL and a random number drawn per process.
"""

from __future__ import annotations

import copy
import functools
import secrets
import string
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from markupsafe import escape

from notify import i18n, mail
from notify.settings import Settings

#: The reader's own values, in the order ``_values`` gives them.
_FOOTER_LINKS = ("preferences_url", "unsubscribe_url")
_NONCE = secrets.token_hex(8)
_MARKERS = tuple(f"\x00{_NONCE}:{index}\x00" for index in range(3))
#: Nodes whose meaning around a printed value is not plain printing or is not followed
#: here: a template with any of them is rendered whole for every reader.
_REFUSED = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock,
            nodes.EvalContextModifier, nodes.ScopedEvalContextModifier, nodes.Import,
            nodes.FromImport)
#: Calls that return rendered output (a block, the parent's block, a recursive loop's
#: body) as a value: allowed only where that value is printed as it is.
_RENDERING_CALLS = ("super", "self", "loop")
#: A batch renders at most this many shared contexts per template shape: deliveries with
#: contexts of their own (not a campaign's) would each make one, for nothing.
_PLANS_PER_SHAPE = 4


@dataclass(frozen=True, slots=True)
class _Proof:
    """What ``provable`` found: whether the sharing is sound, and the ``t()`` catalog
    keys that receive a reader's value (their texts are checked per language)."""

    sound: bool
    catalog_uses: frozenset[tuple[str, str]] = frozenset()  # (catalog key, keyword)


def _printed(chain: list[nodes.Node], node: nodes.Node) -> bool:
    """``node``'s value goes into the output as it is: the child of an Output, or a branch
    of a conditional expression whose value does."""
    parent = chain[-1]
    if isinstance(parent, nodes.Output):
        return True
    if isinstance(parent, nodes.CondExpr) and node is not parent.test:
        return _printed(chain[:-1], parent)
    return False


def _tested(chain: list[nodes.Node], node: nodes.Node) -> bool:
    """``node`` is the whole test of an ``if`` or of a conditional expression."""
    parent = chain[-1]
    return isinstance(parent, (nodes.If, nodes.CondExpr)) and node is parent.test


def _reader_use(chain: list[nodes.Node], node: nodes.Node,
                uses: set[tuple[str, str]]) -> bool:
    """Whether a reader's value at ``node`` is only printed, tested, or given to ``t()``."""
    if _printed(chain, node) or _tested(chain, node):
        return True
    keyword = chain[-1]
    if isinstance(keyword, nodes.Keyword) and len(chain) >= 3:
        call = chain[-2]
        if (isinstance(call, nodes.Call) and isinstance(call.node, nodes.Name)
                and call.node.name == "t" and call.args
                and isinstance(call.args[0], nodes.Const) and isinstance(call.args[0].value, str)
                and _printed(chain[:-2], call)):
            uses.add((call.args[0].value, keyword.key))
            return True
    return False


def _rendering_call_printed(chain: list[nodes.Node], node: nodes.Name) -> bool:
    """``super()``, ``self.block()`` or a recursive ``loop(...)`` printed as it is; a
    loop's attributes (``loop.index``) are no rendering."""
    parent = chain[-1]
    if isinstance(parent, nodes.Call) and parent.node is node:
        return _printed(chain[:-1], parent)
    if isinstance(parent, nodes.Getattr) and node.name == "self":
        call = chain[-2]
        return (isinstance(call, nodes.Call) and call.node is parent
                and _printed(chain[:-2], call))
    return isinstance(parent, nodes.Getattr) and node.name == "loop"


def _sound_tree(tree: nodes.Template, uses: set[tuple[str, str]], parents: set[str]) -> bool:
    def walk(node: nodes.Node, chain: list[nodes.Node]) -> bool:
        if isinstance(node, _REFUSED):
            return False
        if isinstance(node, (nodes.Extends, nodes.Include)):
            if not isinstance(node.template, nodes.Const):
                return False
            parents.add(node.template.value)
        if isinstance(node, nodes.Name):
            if node.name in ("name", "footer", "t") and node.ctx != "load":
                return False  # assigned, a loop's or a macro's own: not the reader's
            if node.name in _RENDERING_CALLS and not _rendering_call_printed(chain, node):
                return False
            if node.name == "name" and not _reader_use(chain, node, uses):
                return False
            if node.name == "footer":
                parent = chain[-1]
                if not isinstance(parent, nodes.Getattr):
                    return False
                if parent.attr in _FOOTER_LINKS and not _reader_use(chain[:-1], parent, uses):
                    return False
                if parent.attr not in (*_FOOTER_LINKS, "topic_label"):
                    return False
        return all(walk(child, [*chain, node]) for child in node.iter_child_nodes())

    return walk(tree, [])


@functools.lru_cache(maxsize=256)
def provable(env: jinja2.Environment, name: str) -> _Proof:
    """Whether template ``name`` (and all it extends or includes) only prints or tests the
    reader's values; remembered per process, as the templates are (``mail.environment``).
    A template it cannot read or parse (an include that may be missing, say) is not."""
    try:
        return _prove(env, name)
    except jinja2.TemplateError:
        return _Proof(False)


def _prove(env: jinja2.Environment, name: str) -> _Proof:
    uses: set[tuple[str, str]] = set()
    seen: set[str] = set()
    todo = [name]
    escaping = env.autoescape(name) if callable(env.autoescape) else env.autoescape
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        source, _, _ = env.loader.get_source(env, current)
        parents: set[str] = set()
        if not _sound_tree(env.parse(source), uses, parents):
            return _Proof(False)
        # One escaping for the whole chain: a text template included into an HTML one
        # prints unescaped, and a marker's value would be escaped in its place.
        theirs = env.autoescape(current) if callable(env.autoescape) else env.autoescape
        if theirs != escaping:
            return _Proof(False)
        todo.extend(parents)
    return _Proof(True, frozenset(uses))


def _plain_field(locale: str, key: str, keyword: str) -> bool:
    """The catalog text for ``key`` prints ``{keyword}`` with no format spec, conversion,
    attribute or index (``{name!r}`` or ``{name:>20}`` would change a marker)."""
    for text in {i18n.catalogs().get(locale, {}).get(key),
                 i18n.catalogs()[i18n.DEFAULT].get(key)}:
        if text is None:
            continue
        for _, field, spec, conversion in string.Formatter().parse(text):
            if field is None:
                continue
            root = field.split(".")[0].split("[")[0]
            if root == keyword and (field != keyword or spec or conversion):
                return False
    return True


class _Plan:
    """One rendering with markers, cut at them: literal, value index, literal, ..."""

    __slots__ = ("context", "footer_label", "postal_address", "subject", "text", "html")

    def __init__(self, context: dict[str, Any], footer_label: str | None,
                 postal_address: str | None, rendered: tuple[str, str, str]) -> None:
        self.context = context
        self.footer_label = footer_label
        self.postal_address = postal_address
        self.subject, self.text, self.html = (_cut(part) for part in rendered)

    def fits(self, email: mail.Email, settings: Settings) -> bool:
        """The same shared values as the email's: its context but the name, the footer's
        label, the postal address."""
        context = email.context
        if (len(context) != len(self.context) or self.postal_address != settings.postal_address
                or not _same(self.footer_label, email.footer.topic_label)):
            return False
        mine = self.context
        return all(key == "name" or (key in mine and _same(mine[key], value))
                   for key, value in context.items())


#: Values that print the same when they are equal and of the same type (1, True and 1.0
#: are equal; a Markup and a str of the same letters are equal and print differently).
_PLAIN = (str, int, float, bool, type(None))


def _same(kept: object, given: object) -> bool:
    """``given`` prints as ``kept`` does, wherever a template looks: the same type, equal,
    all the way down; any other type only as the very same object."""
    if type(kept) is not type(given):
        return False
    if isinstance(kept, dict):
        return kept.keys() == given.keys() and all(_same(kept[k], given[k]) for k in kept)
    if isinstance(kept, (list, tuple)):
        return len(kept) == len(given) and all(map(_same, kept, given))
    return kept == given if isinstance(kept, _PLAIN) else kept is given


def _cut(rendered: str) -> tuple[str | int, ...]:
    pieces: list[str | int] = [rendered]
    for index, marker in enumerate(_MARKERS):
        cut: list[str | int] = []
        for piece in pieces:
            if isinstance(piece, int):
                cut.append(piece)
                continue
            parts = piece.split(marker)
            for position, part in enumerate(parts):
                if position:
                    cut.append(index)
                cut.append(part)
        pieces = cut
    return tuple(pieces)


def _fill(pieces: tuple[str | int, ...], values: list[str]) -> str:
    return "".join(values[piece] if isinstance(piece, int) else piece for piece in pieces)


def _values(email: mail.Email) -> tuple[Any, Any, Any]:
    footer = email.footer
    return (email.context.get("name"), footer.preferences_url, footer.unsubscribe_url)


class Renderings:
    """The renderings one batch shares; a new one per batch, so a campaign's words read
    again for the next batch are rendered again."""

    def __init__(self) -> None:
        self._plans: dict[tuple, list[_Plan] | None] = {}

    def render(self, email: mail.Email, settings: Settings) -> tuple[str, str, str] | None:
        """Subject, text and HTML of ``email`` from a shared rendering, or None when it
        cannot share one (the caller renders it whole)."""
        if email.footer is None or "name" not in email.context:
            return None
        values = _values(email)
        if not all(value is None or type(value) is str for value in values):
            return None  # a Markup prints unescaped, a number as itself: rendered whole
        # Empty values are rendered as they are; a non-empty one by its marker.
        shape = tuple(value if not value else True for value in values)
        key = (email.kind, email.locale, shape)
        plans = self._plans.get(key, [])
        if plans is None:
            return None
        for plan in plans:
            if plan.fits(email, settings):
                break
        else:
            if len(plans) >= _PLANS_PER_SHAPE:
                return None
            plan = self._plan(email, settings, values)
            if plan is None:
                self._plans[key] = None
                return None
            self._plans[key] = [*plans, plan]
        given = [value or "" for value in values]
        subject = " ".join(_fill(plan.subject, given).split())
        html = _fill(plan.html, [escape(value) for value in given])
        return subject, _fill(plan.text, given), html

    def _plan(self, email: mail.Email, settings: Settings,
              values: tuple[Any, Any, Any]) -> _Plan | None:
        names = [f"{email.kind}/{part}" for part in ("subject.txt", "body.txt", "body.html")]
        for name in names:
            template = mail._template(mail._ENV, name, email.locale)
            proof = provable(mail._ENV, template.name)
            if not proof.sound or not all(_plain_field(email.locale, key, keyword)
                                          for key, keyword in proof.catalog_uses):
                return None
        marked = [marker if value else value
                  for marker, value in zip(_MARKERS, values, strict=True)]
        footer = email.footer
        shown = mail.Email(
            to=email.to, to_name=email.to_name, kind=email.kind, locale=email.locale,
            context={**email.context, "name": marked[0]}, headers=email.headers,
            footer=mail.Footer(preferences_url=marked[1], unsubscribe_url=marked[2],
                               topic_label=footer.topic_label))
        try:
            rendered = mail.render(shown, settings)
        except jinja2.TemplateError:
            return None  # rendered whole, the error is reported with the reader's values
        # A copy: a value changed in place later must not find this rendering its own.
        shared = copy.deepcopy({key: value for key, value in email.context.items()
                                if key != "name"})
        shared["name"] = None
        return _Plan(shared, footer.topic_label, settings.postal_address, rendered)
