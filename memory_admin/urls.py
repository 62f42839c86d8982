from django.contrib.auth import views as auth_views
from django.urls import path, register_converter

from memory_admin.views import actions, pages
from memory_admin.views.console import page_or_action
from memory_admin.views.login import LoginView
from memory_admin.views.outage import banner


class NamespaceConverter:
    # Namespace names are keys (API.md) minus "/", which cannot sit inside one URL segment.
    regex = r"[A-Za-z0-9_.:@\-]{1,200}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(NamespaceConverter, "ns")

# A page and the form that posts to it share a URL: GET the page, POST the action.
leftovers = page_or_action(pages.leftovers, actions.release_agent)
record = page_or_action(pages.record, actions.edit_record)
conflict = page_or_action(pages.conflict, actions.resolve)

# A namespace's pages and actions, each below ns/<name>/ (its views take the namespace as `ns`).
# They join urlpatterns as plain patterns, not through include(): tests/test_security_console.py
# walks one flat list to reach every console URL.
in_namespace = [
    ("", pages.overview, "overview"),
    ("agents/", pages.agents, "agents"),
    ("agents/<path:name>", pages.agent, "agent"),
    ("leftovers/<path:name>", leftovers, "leftovers"),
    ("tokens/issue/<path:name>", actions.issue_token, "issue_token"),
    ("tokens/<int:token_id>/revoke/", actions.revoke_token, "revoke_token"),
    ("facts/", pages.facts, "facts"),
    ("facts/<int:fact_id>/", pages.fact, "fact"),
    ("records/", pages.records, "records"),
    ("restore/<path:key>", actions.restore_version, "restore_version"),
    ("records/<path:key>", record, "record"),
    ("conflicts/", pages.conflicts, "conflicts"),
    ("conflicts/<int:conflict_id>/", conflict, "conflict"),
    ("conflicts/group/<str:group>/", actions.resolve_group, "resolve_group"),
    ("locks/", pages.locks, "locks"),
    ("locks/release/", actions.force_release, "force_release"),
    ("timeline/", pages.timeline, "timeline"),
    ("as-of/", pages.as_of, "as_of"),
    ("groups/", pages.groups, "groups"),
    ("search/", pages.search, "search"),
    ("groups/parked/<int:parked_id>/replay/", actions.replay_parked, "replay_parked"),
    ("groups/parked/<int:parked_id>/discard/", actions.discard_parked, "discard_parked"),
    ("groups/reset/", actions.reset_group, "reset_group"),
    ("groups/configure/", actions.configure_group, "configure_group"),
]

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", pages.overview, name="overview"),
    path("switch/", pages.switch, name="switch"),
    path("outage/", banner, name="outage"),
    *(path(f"ns/<ns:ns>/{route}", view, name=name) for route, view, name in in_namespace),
]
