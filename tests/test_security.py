"""Production settings pass `check --deploy`; pages carry a Content-Security-Policy that the templates respect;
error pages are Rapport's own, and a crash in the middle of a request leaves nothing half-saved."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import path

from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from crm_site.urls import urlpatterns as site_urlpatterns
from customers.models import Customer

BASE_DIR = Path(settings.BASE_DIR)


# --- A URLconf with a crashing workspace page (ROOT_URLCONF points here in the error-page tests) ---------


def crash_after_writing(request, workspace_slug):
    Customer.objects.create(email="half-saved@example.org")
    raise RuntimeError("the view fell over after writing")


urlpatterns = [path("w/<slug:workspace_slug>/crash/", crash_after_writing), *site_urlpatterns]
handler400 = "crm_site.views.bad_request"
handler403 = "crm_site.views.permission_denied"
handler404 = "crm_site.views.page_not_found"
handler500 = "crm_site.views.server_error"


# --- check --deploy ------------------------------------------------------------------------------------


def run_manage(tmp_path, *args, **env):
    clean_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "RAPPORT_VAR_DIR": str(tmp_path / "var"),
        "RAPPORT_TESTING": "0",
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=clean_env, capture_output=True, text=True, timeout=120
    )


def test_production_settings_pass_the_deployment_check(tmp_path):
    result = run_manage(
        tmp_path, "check", "--deploy", "--fail-level", "WARNING",
        RAPPORT_ENV="production",
        DJANGO_SECRET_KEY="x9!Kd2@vQ7#pL4$wZ8^mN1&rT6*yB3(hJ5)cF0_gS-eU+aW=oI~xV|qE]zR[tY{u}",
        DJANGO_ALLOWED_HOSTS="rapport.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = run_manage(tmp_path, "check", RAPPORT_ENV="production", DJANGO_ALLOWED_HOSTS="rapport.example.com")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


# --- Content-Security-Policy ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_pages_carry_a_strict_content_security_policy(client, member_client):
    for response in (client.get("/accounts/login/"), member_client(Role.VIEWER).get("/w/acme/")):
        policy = response["Content-Security-Policy"]
        # Django adds the nonce only to pages whose template used {{ csp_nonce }}.
        assert re.search(r"script-src 'self'( 'nonce-[\w+/=-]+')?;", policy)
        assert "style-src 'self';" in policy or policy.endswith("style-src 'self'")
        assert "frame-ancestors 'none'" in policy and "object-src 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


@pytest.mark.django_db
def test_pages_send_the_other_protective_headers(client):
    response = client.get("/accounts/login/")
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"


TEMPLATES = sorted((BASE_DIR / "templates").rglob("*.html"))
INLINE_PROBLEMS = [
    (re.compile(r"\sstyle\s*=", re.I), "an inline style= attribute (CSP style-src 'self' blocks it)"),
    (re.compile(r"<style[\s>]", re.I), "a <style> element (put it in static/rapport/*.css)"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an inline event handler (CSP blocks it; use a static JS file)"),
    (re.compile(r"\shx-on(:|-|\s*=)", re.I), "hx-on (evaluates code; htmx allowEval is off)"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: str(p.relative_to(BASE_DIR / "templates")))
def test_templates_have_no_inline_code_or_styles_that_the_policy_would_block(template):
    source = template.read_text()
    for pattern, problem in INLINE_PROBLEMS:
        match = pattern.search(source)
        assert match is None, f"{template.name} has {problem}: …{source[max(0, match.start() - 40):match.end() + 40]}…"
    for script in re.findall(r"<script\b[^>]*>", source, re.I):
        assert "src=" in script or 'nonce="{{ csp_nonce }}"' in script, f"{template.name}: inline {script} without nonce"


# --- Error pages -----------------------------------------------------------------------------------------


@pytest.fixture
def crashing_site(settings):
    settings.ROOT_URLCONF = __name__
    settings.DEBUG = False


@pytest.mark.django_db
def test_a_crash_shows_the_500_page_and_saves_nothing(crashing_site, workspace):
    from tests.factories import MembershipFactory

    client = Client(raise_request_exception=False)
    client.force_login(MembershipFactory(workspace=workspace, role=Role.MARKETER).user)
    response = client.post(f"/w/{workspace.slug}/crash/")
    assert response.status_code == 500
    assert b"Something went wrong" in response.content
    assert b"/static/vendor/bootstrap/bootstrap.min.css" in response.content
    with tenant_scope(workspace):
        assert not Customer.objects.filter(email="half-saved@example.org").exists()


@pytest.mark.django_db
def test_an_unknown_page_shows_the_404_page_in_the_layout(crashing_site, client):
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert b"Page not found" in response.content
    assert b'class="navbar' in response.content


@pytest.mark.django_db
def test_a_forbidden_action_shows_the_403_page_with_the_reason(crashing_site, member_client):
    response = member_client(Role.VIEWER).post("/w/acme/")
    assert response.status_code == 403
    assert b"Not allowed" in response.content
    assert b"This needs the marketer role." in response.content


@pytest.mark.django_db
def test_a_form_without_its_csrf_token_gets_a_plain_explanation(member_client):
    member = member_client(Role.ADMIN)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(member.user)
    response = strict.post("/w/acme/settings/", {"name": "Hijacked"})
    assert response.status_code == 403
    assert b"This form expired" in response.content
    assert b"Back to your dashboard" in response.content
