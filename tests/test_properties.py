"""The consent state machine as a property: any sequence of changes, from any source,
leaves every consent equal to the last event of its ledger, and the ledger only grows.

A hypothesis ``RuleBasedStateMachine`` drives the real app over HTTP (the API with app
and admin keys, one-click, the unsubscribe page and its undo, the preference page, the
confirmation link, signed SMS keywords, complaints, bounces, erasure) and the sender's
expiry of pending requests, for two users and every topic, on a real database. After
every step it reads the ``consents`` and ``consent_events`` rows back and checks the
invariants; the withdrawals also check that they took effect, because a consent service
that loses one has failed at its only promise.
"""

from __future__ import annotations

import itertools
from urllib.parse import urlsplit

import pytest
from fuzzing import Bridge, backend, budget
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from support import ADMIN, APP, environ_for
from twilio.request_validator import RequestValidator

from notify import store
from notify.models import Consent, ConsentEvent, User
from notify.settings import load_settings
from notify.tokens import Link, Purpose, sign
from notify.web.app import make_app
from notify.web.endpoints import DB

TWILIO_TOKEN = "prop-twilio-token-0123456789abcdef"
PUBLIC = "https://notify.example.com"
TOPICS = ("email_notifications", "sms_notifications", "newsletter")
UNSUBSCRIBED = "unsubscribed"
#: Examples and steps per example, by backend (PostgreSQL runs a smaller share).
#: (examples, steps); NOTIFY_FUZZ_SCALE multiplies the examples. SQLite's were 25 (10.5 s
#: on the slower 2-core machine, where the suite went over 10 minutes).
BUDGET = {"sqlite": (18, 20), "postgres": (8, 15)}
_serial = itertools.count()
users = st.integers(0, 1)
#: The sources, each with the strategies of its arguments. Erasure comes last: hypothesis
#: prefers the first entries, and an erasure ends a user's story.
ACTIONS: dict[str, dict[str, st.SearchStrategy]] = {
    "one_click": {"u": users, "topic": st.sampled_from((*TOPICS, "*"))},
    "unsubscribe_page": {"u": users, "topic": st.sampled_from((*TOPICS, "*")),
                         "action": st.sampled_from(["unsubscribe", "undo"])},
    "api": {"u": users, "topic": st.sampled_from(TOPICS), "subscribe": st.booleans(),
            "how": st.sampled_from(["profile_settings", "api"])},
    "admin_api": {"u": users, "topic": st.sampled_from(TOPICS), "subscribe": st.booleans(),
                  "how": st.sampled_from(["support", "import"])},
    "preference_page": {"u": users, "wanted": st.sets(st.sampled_from(TOPICS)),
                        "all_": st.booleans()},
    "ask_for_newsletter": {"u": users},
    "confirm": {"u": users},
    "sms_keyword": {"u": users, "word": st.sampled_from(["STOP", "START", "HELP",
                                                         "please stop texting me"])},
    "complaint": {"u": users},
    "bounce": {"u": users, "permanent": st.booleans()},
    "expire_pending": {},
    "erase": {"u": users},
}


@pytest.fixture
async def app_client(aiohttp_client, database_url, tmp_path):
    settings = load_settings(environ=environ_for(
        database_url, tmp_path / "data", NOTIFY_PUBLIC_URL=PUBLIC,
        NOTIFY_TWILIO_AUTH_TOKEN=TWILIO_TOKEN, NOTIFY_TWILIO_FROM="+15005550006"))
    return await aiohttp_client(make_app(settings)), settings


def machine_for(bridge: Bridge, client, settings, sources: set[str]):  # noqa: ANN001, ANN201
    orm = client.app[DB]

    def call(method: str, url: str, **kwargs) -> int:  # noqa: ANN003
        async def go() -> int:
            resp = await client.request(method, url, allow_redirects=False, **kwargs)
            await resp.read()
            return resp.status
        status = bridge.run(go())
        assert status < 500, (method, url, status)
        return status

    class ConsentMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.users: list[dict] = []
            for _ in range(2):
                n = next(_serial)
                uid = f"prop-{n}"
                assert call("PUT", f"/v1/users/{uid}", headers=APP, json={
                    "email": f"prop{n}@example.com", "email_verified": True,
                    "phone": f"+491512{n:07d}", "phone_verified": True}) == 201
                self.users.append({"id": uid, "phone": f"+491512{n:07d}", "erased": False,
                                   **bridge.run(self._links(uid))})
            # The first user comes from an earlier system with every topic subscribed, the
            # second was never asked: both ends of where a withdrawal can start.
            for topic in TOPICS:
                assert call("PUT", f"/v1/users/{self.users[0]['id']}/consents/{topic}",
                            headers=ADMIN, json={"subscribed": True, "source": "import",
                                                 "note": "earlier system, export 7"}) == 200
            self.ledger: list[dict] = []

        async def _links(self, uid: str) -> dict:
            resp = await client.get(f"/v1/users/{uid}/links", headers=APP)
            found = await resp.json()
            with orm:
                user = await User.get(external_id=uid)
            return {"pk": user.id, "handle": user.handle,
                    "prefs": urlsplit(found["preferences"]).path,
                    "unsub": {t: urlsplit(u).path for t, u in found["unsubscribe"].items()}}

        # -- what the database says --------------------------------------------------------

        async def _rows(self) -> tuple[dict, list[dict]]:
            ids = [u["pk"] for u in self.users]
            with orm:
                consents = await Consent.filter(user_id__in=ids).values(
                    "user_id", "topic", "state")
                events = await ConsentEvent.filter(user_id__in=ids).order_by("id").values()
            return {(c["user_id"], c["topic"]): c["state"] for c in consents}, events

        def states(self, user: dict) -> dict[str, str]:
            consents, _ = bridge.run(self._rows())
            return {t: s for (pk, t), s in consents.items() if pk == user["pk"]}

        def withdrawn(self, user: dict, topics: tuple[str, ...] | list[str]) -> None:
            """A withdrawal that was answered as done is in the state, topic by topic."""
            held = self.states(user)
            for topic in topics:
                assert held.get(topic, UNSUBSCRIBED) == UNSUBSCRIBED, (user["id"], topic, held)

        # -- the sources -------------------------------------------------------------------

        def _api(self, u: int, topic: str, subscribe: bool, how: str, key: dict) -> None:
            user = self.users[u]
            body: dict = {"subscribed": subscribe, "source": how}
            if key is ADMIN:
                body |= {"actor": "agent-7", "note": "ticket 1234"}
            status = call("PUT", f"/v1/users/{user['id']}/consents/{topic}", headers=key,
                          json=body)
            assert status == (404 if user["erased"] else 200), status
            if status == 200 and not subscribe:
                self.withdrawn(user, [topic])

        def api(self, u: int, topic: str, subscribe: bool, how: str) -> None:
            self._api(u, topic, subscribe, how, APP)

        def admin_api(self, u: int, topic: str, subscribe: bool, how: str) -> None:
            self._api(u, topic, subscribe, how, ADMIN)

        def one_click(self, u: int, topic: str) -> None:
            user = self.users[u]
            status = call("POST", user["unsub"][topic], data={"List-Unsubscribe": "One-Click"})
            assert status == (404 if user["erased"] else 200), status
            if status == 200:
                self.withdrawn(user, TOPICS if topic == "*" else [topic])

        def unsubscribe_page(self, u: int, topic: str, action: str) -> None:
            user = self.users[u]
            status = call("POST", user["unsub"][topic], data={"action": action})
            assert status == (404 if user["erased"] else 200), status
            if status == 200 and action == "unsubscribe":
                self.withdrawn(user, TOPICS if topic == "*" else [topic])

        def preference_page(self, u: int, wanted: set[str], all_: bool) -> None:
            user = self.users[u]
            form = [("action", "unsubscribe_all" if all_ else "save")]
            form += [("topic", t) for t in sorted(wanted)]
            status = call("POST", user["prefs"], data=form)
            assert status == (404 if user["erased"] else 303), status
            if status == 303:
                self.withdrawn(user, TOPICS if all_ else [t for t in TOPICS if t not in wanted])

        def ask_for_newsletter(self, u: int) -> None:
            # The double opt-in path is long (ask, then confirm or lapse); this rule makes
            # it common enough for the confirmation and expiry rules to find it pending.
            user = self.users[u]
            status = call("PUT", f"/v1/users/{user['id']}/consents/newsletter", headers=APP,
                          json={"subscribed": True, "source": "profile_settings"})
            assert status == (404 if user["erased"] else 200), status
            if status == 200:
                assert self.states(user)["newsletter"] in ("pending", "subscribed")

        def confirm(self, u: int) -> None:
            user = self.users[u]
            token = sign(Link(user["handle"], Purpose.CONFIRM, "newsletter"),
                         settings.secret_keys)
            status = call("POST", f"/confirm/{token}", data={"action": "confirm"})
            assert status == (404 if user["erased"] else 200), status

        def sms_keyword(self, u: int, word: str) -> None:
            user = self.users[u]
            form = {"MessageSid": f"SM{next(_serial):032d}", "From": user["phone"],
                    "To": "+15005550006", "Body": word}
            path = "/webhooks/twilio/sms"
            signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + path, form)
            assert call("POST", path, data=form,
                        headers={"X-Twilio-Signature": signature}) == 200
            if word in ("STOP", "please stop texting me") and not user["erased"]:
                self.withdrawn(user, ["sms_notifications"])

        def complaint(self, u: int) -> None:
            user = self.users[u]
            email = f"prop{user['id'].removeprefix('prop-')}@example.com"
            assert call("POST", "/webhooks/bounces", headers=ADMIN,
                        json={"type": "complaint", "email": email}) == 202
            if not user["erased"]:
                self.withdrawn(user, ["newsletter"])  # the one marketing topic

        def bounce(self, u: int, permanent: bool) -> None:
            # A bounce suppresses the address (or scores it) and leaves consent alone.
            user = self.users[u]
            email = f"prop{user['id'].removeprefix('prop-')}@example.com"
            before = self.states(user)
            assert call("POST", "/webhooks/bounces", headers=ADMIN, json={
                "type": "bounce", "email": email, "permanent": permanent,
                "detail": "550 5.1.1 user unknown"}) == 202
            assert self.states(user) == before

        def expire_pending(self) -> None:
            async def go() -> None:
                with orm:
                    # days=-1: every pending request counts as overdue.
                    await store.expire_pending(settings.topics, days=-1,
                                               default_policy=settings.policy_version)
            bridge.run(go())
            for user in self.users:
                assert "pending" not in self.states(user).values()

        def erase(self, u: int) -> None:
            user = self.users[u]
            assert call("DELETE", f"/v1/users/{user['id']}", headers=ADMIN) == 204
            if not user["erased"]:
                # Erasure blanks the personal evidence of the events it finds: the one
                # sanctioned change to the ledger. Its own withdrawals keep theirs.
                self.ledger = [{**e, "ip": None, "user_agent": None, "note": None}
                               if e["user_id"] == user["pk"] else e for e in self.ledger]
            user["erased"] = True
            self.withdrawn(user, TOPICS)

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            """One change from one source. A single rule picks the source from ACTIONS (not
            one rule per source): hypothesis orders rules by their number of arguments and
            draws early ones more often, which left some sources all but untried."""
            name = data.draw(st.sampled_from(list(ACTIONS)), label="action")
            args = {key: data.draw(strategy, label=key)
                    for key, strategy in ACTIONS[name].items()}
            getattr(self, name)(**args)

        # -- the invariants ----------------------------------------------------------------

        @invariant()
        def state_is_the_ledgers_last_word(self) -> None:
            consents, events = bridge.run(self._rows())
            last = {(e["user_id"], e["topic"]): e["to_state"] for e in events}
            assert consents == last, (consents, last)

        @invariant()
        def the_ledger_only_grows(self) -> None:
            _, events = bridge.run(self._rows())
            assert len(events) >= len(self.ledger)
            for old, new in zip(self.ledger, events, strict=False):
                assert new == old, (old, new)  # no row changed or deleted
            for new in events[len(self.ledger):]:
                assert new["from_state"] != new["to_state"], new  # no event without a change
                sources.add(str(new["source"]))
            self.ledger = events

    return ConsentMachine


async def test_any_sequence_of_changes_keeps_state_and_ledger_consistent(app_client,
                                                                         database_url):
    client, settings = app_client
    examples, steps = BUDGET[backend(database_url)]
    config = budget(database_url, sqlite=examples, postgres=examples, shrink=False)
    config = type(config)(config, stateful_step_count=steps)

    sources: set[str] = set()

    def work(bridge: Bridge) -> None:
        run_state_machine_as_test(machine_for(bridge, client, settings, sources),
                                  settings=config)

    await Bridge.off_loop(work)
    # The run reached every source it drives (mailto and bounce change no consent here).
    # PostgreSQL runs a smaller budget of the same examples, so SQLite's run proves reach.
    # (The derandomized seed follows this file's source: if an edit leaves a source
    # unreached, raise the budget rather than drop it from this list.)
    if database_url.startswith("sqlite"):
        assert sources >= {"profile_settings", "api", "support", "import", "one_click",
                           "unsubscribe_page", "preference_center", "confirmation",
                           "sms_keyword", "complaint", "expiry"}, sources
