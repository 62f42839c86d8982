"""docker-compose.yml runs what DESIGN.md describes, and README.md tells the same commands.

No Docker engine is needed: these read the files only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())["services"]


def command(service: dict) -> str:
    value = service["command"]
    return value if isinstance(value, str) else " ".join(value)


def test_compose_defines_the_four_services_with_healthchecks(services):
    for name in ("postgres", "redis", "web", "relay"):
        assert name in services, f"no {name} service"
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_web_and_relay_healthchecks_ask_the_health_endpoint_and_the_relay_check(services):
    assert "/api/v1/health" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["relay"]["healthcheck"]["test"][-3:] == ["manage.py", "relay", "--check"]


def test_redis_keeps_its_data_in_an_append_only_file(services):
    assert "--appendonly yes" in command(services["redis"])


def test_web_and_relay_start_after_healthy_stores_and_a_finished_migration(services):
    for name in ("web", "relay"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert command(services["migrate"]) == "python manage.py migrate --noinput"


def test_web_and_relay_get_both_urls_and_a_secret(services):
    for name in ("web", "relay", "migrate"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:6379/")
        assert env["SECRET_KEY"] and env["ALLOWED_HOSTS"]


def test_readme_documents_the_web_and_relay_commands_verbatim(services):
    readme = (BASE_DIR / "README.md").read_text()
    for name in ("web", "relay"):
        assert command(services[name]) in readme, (
            f"README.md lacks the {name} command {command(services[name])!r}"
        )
