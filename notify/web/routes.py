"""The whole URL table of the service, in one place."""

from __future__ import annotations

from notify.web import health, users, webhooks
from notify.web.endpoints import Endpoint
from notify.web.schemas import (
    ConsentChangeOut,
    ConsentIn,
    ConsentList,
    EventPage,
    EventQuery,
    ExportOut,
    Health,
    LinksOut,
    UserIn,
    UserOut,
)

USER = "/v1/users/{id}"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", health.healthz, "The process is up", scope=None,
             response=Health, tag="health"),
    Endpoint("GET", "/readyz", health.readyz, "The database answers", scope=None,
             response=Health, tag="health"),
    Endpoint("PUT", USER, users.put_user, "Create or replace a user (201 when created)",
             body=UserIn, response=UserOut),
    Endpoint("PATCH", USER, users.patch_user, "Change some fields of a user",
             body=UserIn, response=UserOut),
    Endpoint("GET", USER, users.get_user, "A user with their consents", response=UserOut),
    Endpoint("DELETE", USER, users.delete_user,
             "Erase a user: contact data goes; suppressions and an anonymised ledger stay",
             scope="admin", status=204),
    Endpoint("GET", USER + "/consents", users.get_consents, "Consent per topic",
             response=ConsentList),
    Endpoint("PUT", USER + "/consents/{topic}", users.put_consent,
             "Subscribe or unsubscribe one topic, with evidence", body=ConsentIn,
             response=ConsentChangeOut),
    Endpoint("GET", USER + "/consent-events", users.get_events,
             "The consent ledger, newest first", query=EventQuery, response=EventPage),
    Endpoint("GET", USER + "/links", users.get_links,
             "Signed preference and unsubscribe links, and List-Unsubscribe header values",
             response=LinksOut),
    Endpoint("GET", USER + "/export", users.export_user,
             "Everything held about the user (GDPR Art. 15 and 20)", response=ExportOut),
    Endpoint("POST", "/webhooks/bounces", webhooks.post_bounce,
             "Report a bounce or spam complaint from an email provider (202)", scope="admin",
             body=webhooks.BounceReportIn, response=webhooks.BounceReportOut, status=202,
             tag="webhooks"),
)
