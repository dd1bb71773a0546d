"""The API's contract at the door: keys, revocation, rate limits, content checks; every answer is JSON."""

import pytest
from django.utils import timezone

from crm_site.models import Role
from customers.models import ApiKey
from tests.api_helpers import ApiClient, api, api_key, other_api  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

CUSTOMER = {"external_id": "C-1", "email": "ann@example.org"}


def _error(response):
    assert response["Content-Type"] == "application/json"
    return response.json()["error"]


def test_request_without_key_is_401_with_a_bearer_challenge(client):
    response = ApiClient(client, None).post("customers", CUSTOMER)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert _error(response)["code"] == "unauthenticated"


def test_unknown_key_is_401(client, workspace):
    response = ApiClient(client, "rpk_deadbeef_not-a-real-key").get("customers/C-1")
    assert response.status_code == 401
    assert _error(response)["code"] == "invalid_key"


def test_revoked_key_is_403(api, workspace):
    assert api.post("customers", CUSTOMER).status_code == 201
    ApiKey.objects.filter(workspace=workspace).update(revoked_at=timezone.now())
    response = api.get("customers/C-1")
    assert response.status_code == 403
    assert _error(response)["code"] == "key_revoked"


def test_only_the_hash_of_the_key_is_stored(api_key, workspace):
    stored = ApiKey.objects.get(workspace=workspace)
    assert api_key not in (stored.key_hash, stored.prefix)
    assert api_key.startswith(stored.prefix + "_")


def test_use_of_a_key_is_recorded(api, workspace):
    api.get("customers/nobody")
    assert ApiKey.objects.get(workspace=workspace).last_used_at is not None


def test_wrong_method_is_405_with_allow_header(api):
    response = api.call("DELETE", "customers")
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert _error(response)["code"] == "method_not_allowed"


def test_wrong_content_type_is_415(api):
    response = api.post("customers", raw="external_id=C-1", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    assert "application/json" in _error(response)["message"]


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ('{"external_id": NaN}', "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_json_is_400_with_the_reason(api, raw, reason):
    response = api.post("customers", raw=raw)
    assert response.status_code == 400
    assert reason in _error(response)["message"]


def test_invalid_utf8_is_400(api):
    response = api.client.post("/api/v1/customers", b'{"external_id": "\xff"}', content_type="application/json",
                               HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert response.status_code == 400
    assert "UTF-8" in _error(response)["message"]


def test_body_over_the_limit_is_413(api, settings):
    settings.API_MAX_BODY_BYTES = 1000
    response = api.post("customers", {"external_id": "C-1", "attributes": {"note": "x" * 2000}})
    assert response.status_code == 413
    assert _error(response)["code"] == "payload_too_large"


def test_unknown_path_is_a_json_404(api):
    response = api.get("nothing/here")
    assert response.status_code == 404
    assert "openapi.json" in _error(response)["message"]


def test_rate_limit_answers_429_with_retry_after(api, settings):
    settings.API_RATE_LIMIT = 3
    settings.API_RATE_WINDOW_SECONDS = 60
    statuses = [api.get("customers/nobody").status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]
    response = api.get("customers/nobody")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response["X-RateLimit-Remaining"] == "0"
    assert _error(response)["code"] == "rate_limited"


def test_rate_limit_is_per_key(api, other_api, settings):
    settings.API_RATE_LIMIT = 1
    assert api.get("customers/nobody").status_code == 404
    assert api.get("customers/nobody").status_code == 429
    assert other_api.get("customers/nobody").status_code == 404


def test_api_needs_no_csrf_token(client, api_key):
    from django.test import Client

    strict = ApiClient(Client(enforce_csrf_checks=True), api_key)
    assert strict.post("customers", CUSTOMER).status_code == 201


# --- Settings › API keys --------------------------------------------------------------------------


def test_admin_creates_a_key_sees_it_once_and_revokes_it(member_client, workspace):
    admin = member_client(Role.ADMIN)
    response = admin.post(f"/w/{workspace.slug}/settings/api-keys/", {"name": "Shop backend"})
    assert response.status_code == 200
    secret = response.context["new_key"]
    assert secret.startswith("rpk_")
    assert secret in response.content.decode()
    # The secret works against the API ...
    assert ApiClient(admin, secret).get("customers/nobody").status_code == 404
    # ... and never appears again.
    listing = admin.get(f"/w/{workspace.slug}/settings/api-keys/")
    assert secret not in listing.content.decode()
    assert "Shop backend" in listing.content.decode()
    key = ApiKey.objects.get(workspace=workspace)
    response = admin.post(f"/w/{workspace.slug}/settings/api-keys/{key.pk}/revoke/", follow=True)
    assert "revoked" in response.content.decode()
    assert ApiClient(admin, secret).get("customers/nobody").status_code == 403


def test_marketers_cannot_manage_keys(member_client, workspace):
    marketer = member_client(Role.MARKETER)
    assert marketer.get(f"/w/{workspace.slug}/settings/api-keys/").status_code == 403
    assert marketer.post(f"/w/{workspace.slug}/settings/api-keys/", {"name": "x"}).status_code == 403
    assert not ApiKey.objects.exists()


def test_a_key_of_another_workspace_cannot_be_revoked_from_here(member_client, workspace, other_workspace):
    from customers.api_keys import create_api_key

    theirs, _ = create_api_key(other_workspace, "Theirs")
    admin = member_client(Role.ADMIN)
    response = admin.post(f"/w/{workspace.slug}/settings/api-keys/{theirs.pk}/revoke/")
    assert response.status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
