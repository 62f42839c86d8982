import pytest

from memory_admin.models import Event, Fact
from tests.api_support import api_for, error, state

pytestmark = pytest.mark.django_db


def test_storing_a_fact_returns_201_with_the_fact_and_records_an_event(alpha):
    api = api_for(alpha)
    response = api.post("/facts", {"fact": "The API is v1", "category": "api", "metadata": {"source": "doc"}})
    assert response.status_code == 201
    fact = response.json()
    assert set(fact) >= {"id", "fact", "category", "agent_id", "metadata", "created_at"}
    assert (fact["fact"], fact["category"], fact["agent_id"], fact["metadata"]) == (
        "The API is v1",
        "api",
        "alpha",
        {"source": "doc"},
    )
    assert fact["created_at"].endswith("Z")
    assert Event.objects.get(type="fact.stored").payload["fact_id"] == fact["id"]
    assert api.get(f"/facts/{fact['id']}").json() == fact


def test_a_missing_fact_is_404(alpha):
    error(api_for(alpha).get("/facts/999999"), 404, "not_found")


def test_facts_filter_by_category_agent_and_full_text_newest_first(alpha, beta):
    a, b = api_for(alpha), api_for(beta)
    a.post("/facts", {"fact": "Rabbits eat carrots", "category": "food"})
    b.post("/facts", {"fact": "Owls hunt at night", "category": "animals"})
    a.post("/facts", {"fact": "Foxes hunt rabbits", "category": "animals"})
    assert [f["fact"] for f in a.get("/facts").json()["items"]] == [
        "Foxes hunt rabbits",
        "Owls hunt at night",
        "Rabbits eat carrots",
    ]
    assert [f["fact"] for f in a.get("/facts?category=animals").json()["items"]] == [
        "Foxes hunt rabbits",
        "Owls hunt at night",
    ]
    assert [f["fact"] for f in a.get("/facts?agent_id=beta").json()["items"]] == ["Owls hunt at night"]
    assert [f["fact"] for f in a.get("/facts?q=rabbit").json()["items"]] == [
        "Foxes hunt rabbits",
        "Rabbits eat carrots",
    ]
    assert a.get("/facts?q=hunting rabbits").json()["items"][0]["fact"] == "Foxes hunt rabbits"


def test_facts_page_with_the_next_cursor_without_skipping_or_repeating(alpha):
    api = api_for(alpha)
    for i in range(7):
        api.post("/facts", {"fact": f"fact {i}", "category": "c"})
    seen, after = [], None
    while True:
        page = api.get("/facts?limit=3" + (f"&after={after}" if after else "")).json()
        seen += [f["fact"] for f in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [f"fact {i}" for i in reversed(range(7))]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "limit=x", "after=-1", "after=99999999999999999999"]
)
def test_out_of_range_query_values_are_422(alpha, query):
    error(api_for(alpha).get(f"/facts?{query}"), 422, "validation_error")


def test_full_text_search_with_odd_characters_never_fails(alpha):
    api = api_for(alpha)
    api.post("/facts", {"fact": "a plain fact", "category": "c"})
    for q in ["!!!", "'", '"unclosed', "a & | b", "-", "\\"]:
        assert api.get("/facts", headers={}).status_code == 200
        response = api.client.get("/api/v1/facts", {"q": q}, HTTP_AUTHORIZATION=f"Bearer {api.token}")
        assert response.status_code == 200, q


def test_a_refused_fact_changes_nothing(alpha):
    api = api_for(alpha)
    before = state()
    error(api.post("/facts", {"fact": "x", "category": "\x07bell"}), 422, "validation_error")
    assert state() == before and not Fact.objects.exists()
