from django.contrib.auth import views as auth_views
from django.urls import path, register_converter

from memory_admin import views
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

urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.overview, name="overview"),
    path("switch/", views.switch, name="switch"),
    path("outage/", banner, name="outage"),
    path("ns/<ns:ns>/", views.overview, name="overview"),
    path("ns/<ns:ns>/agents/", views.agents, name="agents"),
    path("ns/<ns:ns>/agents/<path:name>", views.agent, name="agent"),
    path("ns/<ns:ns>/leftovers/<path:name>", views.leftovers, name="leftovers"),
    path("ns/<ns:ns>/tokens/issue/<path:name>", views.issue_token, name="issue_token"),
    path("ns/<ns:ns>/tokens/<int:token_id>/revoke/", views.revoke_token, name="revoke_token"),
    path("ns/<ns:ns>/facts/", views.facts, name="facts"),
    path("ns/<ns:ns>/facts/<int:fact_id>/", views.fact, name="fact"),
    path("ns/<ns:ns>/records/", views.records, name="records"),
    path("ns/<ns:ns>/restore/<path:key>", views.restore_version, name="restore_version"),
    path("ns/<ns:ns>/records/<path:key>", views.record, name="record"),
    path("ns/<ns:ns>/conflicts/", views.conflicts, name="conflicts"),
    path("ns/<ns:ns>/conflicts/<int:conflict_id>/", views.conflict, name="conflict"),
    path("ns/<ns:ns>/conflicts/group/<str:group>/", views.resolve_group, name="resolve_group"),
    path("ns/<ns:ns>/locks/", views.locks, name="locks"),
    path("ns/<ns:ns>/locks/release/", views.force_release, name="force_release"),
    path("ns/<ns:ns>/timeline/", views.timeline, name="timeline"),
    path("ns/<ns:ns>/as-of/", views.as_of, name="as_of"),
    path("ns/<ns:ns>/groups/", views.groups, name="groups"),
    path("ns/<ns:ns>/search/", views.search, name="search"),
    path("ns/<ns:ns>/groups/parked/<int:parked_id>/replay/", views.replay_parked, name="replay_parked"),
    path("ns/<ns:ns>/groups/parked/<int:parked_id>/discard/", views.discard_parked, name="discard_parked"),
    path("ns/<ns:ns>/groups/reset/", views.reset_group, name="reset_group"),
    path("ns/<ns:ns>/groups/configure/", views.configure_group, name="configure_group"),
]
