import httpx
import pytest


@pytest.mark.django_db(transaction=True)
def test_health_reports_postgres_and_redis_ok_on_a_web_server(web_server):
    response = httpx.get(f"{web_server.url}/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}


@pytest.mark.django_db
def test_health_is_503_naming_redis_when_redis_is_down(client, settings):
    from tests.api_support import redis_down

    with redis_down(settings):
        response = client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "postgres": "ok", "redis": "down"}
    assert response["Retry-After"] == "1"
