"""Schemathesis against our own /openapi.json: no 5xx, every answer as the spec says.

The app runs on a loopback port (aiohttp's test server, in the test's event loop); the
fuzzer runs in a worker thread with ``requests``, as schemathesis does, so the loop stays
free to serve it. Every operation gets a bounded, derandomized number of examples, both
valid ones (which must be answered as documented) and invalid ones (which must be refused
with a documented 4xx problem), and some of each aim at records that exist.
"""

from __future__ import annotations

import asyncio

import requests
import schemathesis
from fuzzing import SCALE, backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import ADMIN

#: Examples per operation, generation mode and target (any id, and each existing record).
#: A run with 150 and 60 found nothing more than these do; the bound keeps CI fast, and
#: PostgreSQL gets fewer, as SQLite has explored the inputs already.
#: Per operation; NOTIFY_FUZZ_SCALE multiplies it for a deeper run by hand. SQLite's was
#: 15: on the slower 2-core machine this test alone took 21 s of a suite over 10 minutes.
EXAMPLES = {"sqlite": 10, "postgres": 4}
PROBLEM_MEMBERS = ("type", "title", "status", "detail")


def problem_json(ctx, response, case) -> None:  # noqa: ANN001 - schemathesis' check signature
    """Every error is an RFC 9457 problem: its media type, its members, no traceback."""
    if response.status_code < 400:
        return
    media = response.headers.get("content-type", [""])[0].split(";")[0].strip()
    assert media == "application/problem+json", (
        f"{response.status_code} answered as {media!r}, not application/problem+json")
    body = response.json()
    assert isinstance(body, dict), body
    missing = [m for m in PROBLEM_MEMBERS if m not in body]
    assert not missing, f"problem without {missing}: {body}"
    assert body["status"] == response.status_code, body
    assert "Traceback" not in response.text


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, problem_json]


async def _prefill(client) -> dict[str, list[str]]:  # noqa: ANN001
    """Records for path parameters to hit: users, a policy and campaigns."""
    users = ["alice", "bob", "carol.c@x"]
    for n, uid in enumerate(users):
        resp = await client.put(f"/v1/users/{uid}", headers=ADMIN, json={
            "email": f"user{n}@example.com", "email_verified": True,
            "phone": f"+491512345678{n}", "phone_verified": True, "locale": "de"})
        assert resp.status == 201, await resp.text()
        resp = await client.put(f"/v1/users/{uid}/consents/email_notifications", headers=ADMIN,
                                json={"subscribed": True})
        assert resp.status == 200, await resp.text()
    resp = await client.delete("/v1/users/carol.c@x", headers=ADMIN)  # an erased user too
    assert resp.status == 204
    resp = await client.post("/v1/policies", headers=ADMIN, json={
        "version": "2026-01", "title": "T", "summary": "S", "url": "https://example.com/p",
        "effective_at": "2026-01-01T00:00:00Z", "material": True})
    assert resp.status == 201, await resp.text()
    campaigns = []
    for body in ({"name": "notice", "kind": "policy_notice", "policy_version": "2026-01"},
                 {"name": "news", "kind": "newsletter", "topic": "newsletter",
                  "variables": {"subject": "S", "body": "B"}},
                 {"name": "later", "kind": "notification", "topic": "email_notifications",
                  "variables": {"subject": "S", "body": "B"},
                  "send_at": "2030-01-01T00:00:00Z"}):
        resp = await client.post("/v1/campaigns", headers=ADMIN, json=body)
        assert resp.status == 201, await resp.text()
        campaigns.append(str((await resp.json())["id"]))
    resp = await client.post(f"/v1/campaigns/{campaigns[2]}/send", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return {"users": users, "campaigns": campaigns}


def _fuzz(base_url: str, records: dict[str, list[str]], examples: int) -> list[str]:
    """Run every operation; return one report per operation that failed a check."""
    session = requests.Session()
    document = session.get(base_url + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        known = records["campaigns"] if "/campaigns/" in operation.path else records["users"]
        has_id = "{id}" in operation.path
        raw = document["paths"][operation.path][operation.method.lower()]
        # An operation without parameters, body or key (/healthz) has no invalid input.
        modes = [GenerationMode.POSITIVE]
        if raw["parameters"] or "requestBody" in raw or "security" in raw:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            strategies = [operation.as_strategy(generation_mode=mode)]
            if has_id:
                strategies += [operation.as_strategy(generation_mode=mode,
                                                     path_parameters={"id": value})
                               for value in known]
            cases = st.one_of(strategies)

            # Health checks: an operation whose negative space is small (no body, one path
            # parameter) makes hypothesis filter a lot; that is expected, not a bug here.
            @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                      suppress_health_check=[HealthCheck.filter_too_much,
                                             HealthCheck.too_slow])
            @given(case=cases)
            def run(case) -> None:  # noqa: ANN001
                response = case.call(base_url=base_url, session=session, headers=ADMIN,
                                     timeout=30)
                case.validate_response(response, checks=CHECKS)

            # Every operation runs even when one fails, so one run reports every finding.
            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    session.close()
    return failures


async def test_api_conforms_to_its_openapi_document(client, database_url):
    records = await _prefill(client)
    base_url = str(client.make_url("")).rstrip("/")
    examples = SCALE * EXAMPLES[backend(database_url)]
    failures = await asyncio.to_thread(_fuzz, base_url, records, examples)
    assert not failures, "\n\n".join(failures)

