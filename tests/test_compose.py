"""docker-compose.yml runs what DESIGN.md describes, and README.md tells the same commands.

No Docker engine is needed: these read the files only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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


CLUSTER = ["redis-node-1", "redis-node-2", "redis-node-3", "redis-cluster-create", "cluster-migrate"]
CLUSTER_APP = ["web-1", "web-2", "relay-1", "relay-2"]


def test_the_cluster_profile_runs_a_redis_cluster_two_web_nodes_and_two_relays(services):
    for name in CLUSTER + CLUSTER_APP:
        assert services[name]["profiles"] == ["cluster"], f"{name} is not in the cluster profile"
    for name in ("postgres", "redis", "migrate", "web", "relay"):
        assert "profiles" not in services[name], f"{name} must still start with a plain `up`"
    for name in CLUSTER[:3]:
        assert "--cluster-enabled yes" in command(services[name])
        assert services[name]["healthcheck"]["test"]
    create = command(services["redis-cluster-create"])
    assert "--cluster create redis-node-1:6379 redis-node-2:6379 redis-node-3:6379 --cluster-yes" in create
    assert services["redis-cluster-create"]["restart"] == "no"
    assert {services[name]["ports"][0] for name in ("web-1", "web-2")} == {"8001:8000", "8002:8000"}
    assert command(services["web-1"]) == command(services["web"])
    assert [command(services[name]).split(" --name")[0] for name in ("relay-1", "relay-2")] == [
        command(services["relay"])
    ] * 2


def test_the_cluster_app_waits_for_the_formed_cluster_and_its_own_migrated_database(services):
    for name in CLUSTER_APP + ["cluster-migrate"]:
        env = services[name]["environment"]
        assert env["REDIS_URL"] == "redis+cluster://redis-node-1:6379,redis-node-2:6379,redis-node-3:6379"
        # Its own database: the single-node relay and the cluster's never compete for one log.
        assert env["DATABASE_URL"].endswith("@postgres:5432/memory_admin_cluster")
        assert env["SECRET_KEY"]
    for name in CLUSTER_APP:
        depends = services[name]["depends_on"]
        assert depends["redis-cluster-create"]["condition"] == "service_completed_successfully"
        assert depends["cluster-migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert services[name]["healthcheck"]["test"]


def compose_missing() -> bool:
    if shutil.which("docker") is None:
        return True
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0


@pytest.mark.skipif(compose_missing(), reason="no docker compose here (the tests above read the file)")
def test_docker_compose_accepts_the_file_with_the_cluster_profile():
    done = subprocess.run(
        ["docker", "compose", "--profile", "cluster", "config", "--quiet"],
        cwd=BASE_DIR,
        env={**os.environ, "SECRET_KEY": "compose-config-check"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
