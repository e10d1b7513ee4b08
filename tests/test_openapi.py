"""/openapi.json is generated from the route table and is a valid OpenAPI 3.1 document."""

from __future__ import annotations

from openapi_spec_validator import validate

from notify.web.pages_routes import PAGES
from notify.web.routes import ENDPOINTS
from notify.web.twilio_hooks import ROUTES as TWILIO_ROUTES


async def test_openapi_document_is_valid_and_covers_every_route(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    validate(spec)
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    pages = {(method, path) for method, path, _ in PAGES}
    # Twilio's form-encoded, signature-checked webhooks are not part of the JSON API.
    pages |= {(method, path) for method, path, _ in TWILIO_ROUTES}
    served = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.method != "HEAD" and route.resource.canonical != "/openapi.json"
        # The console's HTML pages (notify/console/routes.py) sit on the API, not in it.
        and not route.resource.canonical.startswith("/console")
    } - pages
    assert documented == served


async def test_openapi_names_scopes_bodies_and_problems(client):
    spec = await (await client.get("/openapi.json")).json()
    put_consent = spec["paths"]["/v1/users/{id}/consents/{topic}"]["put"]
    assert put_consent["security"] == [{"bearer": []}]
    body_ref = put_consent["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = spec["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert "one_click" in str(spec["components"]["schemas"]) and "subscribed" in body["required"]
    for status in ("400", "401", "403", "404", "413", "415", "422"):
        assert "application/problem+json" in put_consent["responses"][status]["content"]
    erase = spec["paths"]["/v1/users/{id}"]["delete"]
    assert "admin" in erase["description"]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert len(spec["paths"]) == len({e.path for e in ENDPOINTS})
