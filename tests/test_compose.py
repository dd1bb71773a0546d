"""docker-compose.yml runs exactly the processes of DESIGN.md, wired to PostgreSQL and Redis, in order."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import _missing

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "web", "worker", "beat")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command(service) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


def test_services_are_the_databases_the_three_processes_and_a_migrate_step(compose):
    assert set(compose["services"]) == {"postgres", "redis", "migrate", "web", "worker", "beat"}


def test_each_process_runs_its_command(compose):
    services = compose["services"]
    assert _command(services["migrate"]) == "python manage.py migrate --noinput"
    assert _command(services["web"]).startswith("gunicorn crm_site.wsgi --bind 0.0.0.0:8000")
    assert "celery -A crm_site worker -Q default,lifecycle,dispatch,send" in _command(services["worker"])
    beat = _command(services["beat"])
    assert "celery -A crm_site beat" in beat
    assert "django_celery_beat.schedulers:DatabaseScheduler" in beat


def test_app_processes_share_one_image_and_point_at_postgres_and_redis(compose):
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["build"] == {"context": ".", "dockerfile": ".ci/Dockerfile"}
        environment = service["environment"]
        assert environment["DATABASE_URL"].startswith("postgres://rapport:") and "@postgres:5432/rapport" in (
            environment["DATABASE_URL"]
        )
        assert environment["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert environment["CACHE_URL"].startswith("redis://redis:6379/")
        assert environment["RAPPORT_ENV"] == "production"
        assert "DJANGO_SECRET_KEY" in environment
    assert (ROOT / ".ci" / "Dockerfile").exists()


def test_processes_start_after_healthy_databases_and_a_finished_migration(compose):
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }


def test_databases_and_long_running_processes_have_healthchecks(compose):
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])


def test_application_role_is_created_without_superuser_so_row_level_security_applies(compose):
    mounts = compose["services"]["postgres"]["volumes"]
    assert "./.ci/postgres-init.sh:/docker-entrypoint-initdb.d/10-rapport.sh:ro" in mounts
    init = (ROOT / ".ci" / "postgres-init.sh").read_text()
    assert "NOSUPERUSER NOBYPASSRLS" in init
    assert "CREATE DATABASE rapport OWNER rapport" in init


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_docker_compose_config_validates_the_file():
    command = _compose_cli()
    if command is None:
        # .ci/test-env.sh installs Debian's docker-compose where it may; CI must not skip this.
        _missing("needs docker compose (apt-get install docker-compose)")
    completed = subprocess.run([*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
