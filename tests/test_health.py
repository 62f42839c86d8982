import httpx
import pytest


@pytest.mark.django_db(transaction=True)
def test_health_reports_postgres_and_redis_ok_on_a_web_server(web_server):
    response = httpx.get(f"{web_server.url}/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
