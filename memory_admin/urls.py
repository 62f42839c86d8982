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

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", pages.overview, name="overview"),
    path("switch/", pages.switch, name="switch"),
    path("outage/", banner, name="outage"),
    path("ns/<ns:ns>/", pages.overview, name="overview"),
    path("ns/<ns:ns>/agents/", pages.agents, name="agents"),
    path("ns/<ns:ns>/agents/<path:name>", pages.agent, name="agent"),
    path("ns/<ns:ns>/leftovers/<path:name>", leftovers, name="leftovers"),
    path("ns/<ns:ns>/tokens/issue/<path:name>", actions.issue_token, name="issue_token"),
    path("ns/<ns:ns>/tokens/<int:token_id>/revoke/", actions.revoke_token, name="revoke_token"),
    path("ns/<ns:ns>/facts/", pages.facts, name="facts"),
    path("ns/<ns:ns>/facts/<int:fact_id>/", pages.fact, name="fact"),
    path("ns/<ns:ns>/records/", pages.records, name="records"),
    path("ns/<ns:ns>/restore/<path:key>", actions.restore_version, name="restore_version"),
    path("ns/<ns:ns>/records/<path:key>", record, name="record"),
    path("ns/<ns:ns>/conflicts/", pages.conflicts, name="conflicts"),
    path("ns/<ns:ns>/conflicts/<int:conflict_id>/", conflict, name="conflict"),
    path("ns/<ns:ns>/conflicts/group/<str:group>/", actions.resolve_group, name="resolve_group"),
    path("ns/<ns:ns>/locks/", pages.locks, name="locks"),
    path("ns/<ns:ns>/locks/release/", actions.force_release, name="force_release"),
    path("ns/<ns:ns>/timeline/", pages.timeline, name="timeline"),
    path("ns/<ns:ns>/as-of/", pages.as_of, name="as_of"),
    path("ns/<ns:ns>/groups/", pages.groups, name="groups"),
    path("ns/<ns:ns>/search/", pages.search, name="search"),
    path("ns/<ns:ns>/groups/parked/<int:parked_id>/replay/", actions.replay_parked, name="replay_parked"),
    path("ns/<ns:ns>/groups/parked/<int:parked_id>/discard/", actions.discard_parked, name="discard_parked"),
    path("ns/<ns:ns>/groups/reset/", actions.reset_group, name="reset_group"),
    path("ns/<ns:ns>/groups/configure/", actions.configure_group, name="configure_group"),
]
