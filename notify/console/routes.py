"""The console's URL table, all under /console (the API's is in notify/web/routes.py)."""

from __future__ import annotations

from notify.console import campaigns, policies, users, views

ROUTES = (
    ("GET", "/console", views.dashboard),
    ("GET", "/console/sign-in", views.sign_in_page),
    ("POST", "/console/sign-in", views.sign_in),
    ("POST", "/console/sign-out", views.sign_out),
    ("GET", "/console/audit", views.audit_page),
    ("GET", "/console/policies", policies.policies_page),
    ("POST", "/console/policies/preview", policies.preview),
    ("POST", "/console/policies", policies.publish),
    ("GET", "/console/policies/{version}", policies.policy_page),
    ("GET", "/console/campaigns", campaigns.campaigns_page),
    ("GET", "/console/campaigns/new", campaigns.new_page),
    ("POST", "/console/campaigns", campaigns.create),
    ("GET", "/console/campaigns/{id:[0-9]+}", campaigns.campaign_page),
    ("GET", "/console/campaigns/{id:[0-9]+}/progress", campaigns.progress_json),
    ("POST", "/console/campaigns/{id:[0-9]+}/test", campaigns.test_send),
    ("POST", "/console/campaigns/{id:[0-9]+}/send", campaigns.send),
    ("POST", "/console/campaigns/{id:[0-9]+}/pause", campaigns.pause),
    ("POST", "/console/campaigns/{id:[0-9]+}/resume", campaigns.resume),
    ("POST", "/console/campaigns/{id:[0-9]+}/cancel", campaigns.cancel),
    ("GET", "/console/users", users.users_page),
    ("POST", "/console/users/lookup", users.lookup),
    ("GET", "/console/users/{id}", users.user_page),
    ("POST", "/console/users/{id}/withdraw", users.withdraw),
    ("GET", "/console/suppressions", users.suppressions_page),
    ("POST", "/console/suppressions/search", users.search_suppressions),
    ("POST", "/console/suppressions", users.suppress),
)
