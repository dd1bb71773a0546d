"""Test support for the JSON API: a client that sends a workspace API key, and fixtures creating keys."""

import json

import pytest

from customers.api_keys import create_api_key


class ApiClient:
    """Django's test client speaking JSON with ``Authorization: Bearer <key>``."""

    def __init__(self, client, key: str | None):
        self.client = client
        self.key = key

    def _headers(self, headers):
        merged = {"HTTP_AUTHORIZATION": f"Bearer {self.key}"} if self.key else {}
        merged.update(headers or {})
        return merged

    def get(self, path, **headers):
        return self.client.get(f"/api/v1/{path}", **self._headers(headers))

    def post(self, path, payload=None, *, raw=None, content_type="application/json", **headers):
        body = raw if raw is not None else json.dumps(payload)
        return self.client.post(f"/api/v1/{path}", body, content_type=content_type, **self._headers(headers))

    def call(self, method, path, **headers):
        return self.client.generic(method, f"/api/v1/{path}", **self._headers(headers))


@pytest.fixture
def api_key(workspace):
    """The full secret of a fresh API key of ``workspace``."""
    return create_api_key(workspace, "Shop backend")[1]


@pytest.fixture
def api(client, api_key):
    return ApiClient(client, api_key)


@pytest.fixture
def other_api(client, other_workspace):
    return ApiClient(client, create_api_key(other_workspace, "Other shop")[1])
