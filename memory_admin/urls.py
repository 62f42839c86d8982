from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

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

# A namespace's pages and actions, below ns/<name>/: each view takes the namespace as `ns`.
in_namespace = [
    path("", pages.overview, name="overview"),
    path("agents/", pages.agents, name="agents"),
    path("agents/<path:name>", pages.agent, name="agent"),
    path("leftovers/<path:name>", leftovers, name="leftovers"),
    path("tokens/issue/<path:name>", actions.issue_token, name="issue_token"),
    path("tokens/<int:token_id>/revoke/", actions.revoke_token, name="revoke_token"),
    path("facts/", pages.facts, name="facts"),
    path("facts/<int:fact_id>/", pages.fact, name="fact"),
    path("records/", pages.records, name="records"),
    path("restore/<path:key>", actions.restore_version, name="restore_version"),
    path("records/<path:key>", record, name="record"),
    path("conflicts/", pages.conflicts, name="conflicts"),
    path("conflicts/<int:conflict_id>/", conflict, name="conflict"),
    path("conflicts/group/<str:group>/", actions.resolve_group, name="resolve_group"),
    path("locks/", pages.locks, name="locks"),
    path("locks/release/", actions.force_release, name="force_release"),
    path("timeline/", pages.timeline, name="timeline"),
    path("as-of/", pages.as_of, name="as_of"),
    path("groups/", pages.groups, name="groups"),
    path("search/", pages.search, name="search"),
    path("groups/parked/<int:parked_id>/replay/", actions.replay_parked, name="replay_parked"),
    path("groups/parked/<int:parked_id>/discard/", actions.discard_parked, name="discard_parked"),
    path("groups/reset/", actions.reset_group, name="reset_group"),
    path("groups/configure/", actions.configure_group, name="configure_group"),
]

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", pages.overview, name="overview"),
    path("switch/", pages.switch, name="switch"),
    path("outage/", banner, name="outage"),
    path("ns/<ns:ns>/", include(in_namespace)),
]
