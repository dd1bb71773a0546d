"""URL by URL, a workspace is invisible from outside: every page under /w/<workspace_slug>/ is a 404 for a
non-member, and an id of another workspace's object is a 404 for a member.

The URLs are read from the URLconf, so a new page is covered the moment it is added; its kwargs need a maker
in tests/isolation_registry.py (the first test says which).
"""

import pytest

from crm_site.models import Role
from tests.factories import MembershipFactory, UserFactory
from tests.isolation_registry import make_url_values, missing_kwarg_makers, workspace_urls

WORKSPACE_URLS = workspace_urls()
URLS_WITH_IDS = [url for url in WORKSPACE_URLS if url.kwargs]
WRITE_METHODS = ("post", "put", "patch", "delete")


def _route_id(url):
    return url.route


def test_the_workspace_area_is_found_in_the_urlconf():
    names = {url.name for url in WORKSPACE_URLS}
    assert {"dashboard", "members", "customers:detail", "job_progress"} <= names


def test_every_url_kwarg_in_the_workspace_area_has_a_maker():
    missing = {url.route: missing_kwarg_makers(url) for url in WORKSPACE_URLS if missing_kwarg_makers(url)}
    assert not missing, (
        "These URL kwargs have no maker, so the isolation tests cannot prove another workspace's id is a 404: "
        f"{missing}. Register one in tests/isolation_registry.py (url_kwarg(name, Model) or @url_values(url_name))."
    )


@pytest.fixture
def owner(workspace):
    """The owner of the workspace under test: no role check can hide a leak behind a 403."""
    return MembershipFactory(workspace=workspace, role=Role.OWNER).user


@pytest.fixture
def outsider(other_workspace):
    """An owner of another workspace, and not a member of the one under test."""
    return MembershipFactory(workspace=other_workspace, role=Role.OWNER).user


@pytest.mark.django_db
@pytest.mark.parametrize("url", WORKSPACE_URLS, ids=_route_id)
def test_an_anonymous_visitor_is_sent_to_sign_in(client, workspace, url):
    assert not missing_kwarg_makers(url), f"register makers for {missing_kwarg_makers(url)}"
    path = url.path(workspace.slug, make_url_values(url, workspace))
    for method in ("get", "post"):
        response = getattr(client, method)(path)
        assert response.status_code == 302, f"{method.upper()} {path} answered {response.status_code}"
        assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
@pytest.mark.parametrize("url", WORKSPACE_URLS, ids=_route_id)
def test_a_non_member_gets_404_on_every_workspace_url(client, workspace, outsider, url):
    assert not missing_kwarg_makers(url), f"register makers for {missing_kwarg_makers(url)}"
    path = url.path(workspace.slug, make_url_values(url, workspace))
    client.force_login(outsider)
    for method in ("get", *WRITE_METHODS):
        response = getattr(client, method)(path)
        assert response.status_code == 404, f"{method.upper()} {path} by a non-member answered {response.status_code}"
        assert b"Acme Coffee" not in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("url", URLS_WITH_IDS, ids=_route_id)
def test_an_id_from_another_workspace_is_404_for_a_member(client, workspace, other_workspace, owner, url):
    assert not missing_kwarg_makers(url), f"register makers for {missing_kwarg_makers(url)}"
    client.force_login(owner)
    own_path = url.path(workspace.slug, make_url_values(url, workspace))
    # The control: the same URL with the workspace's own object works, so the 404 below is the isolation.
    response = client.get(own_path)
    assert response.status_code not in (404, 500), f"GET {own_path} with the workspace's own object: {response.status_code}"

    foreign_path = url.path(workspace.slug, make_url_values(url, other_workspace))
    for method in ("get", *WRITE_METHODS):
        response = getattr(client, method)(foreign_path)
        assert response.status_code == 404, (
            f"{method.upper()} {foreign_path} (ids of {other_workspace.slug}) answered {response.status_code}"
        )


@pytest.mark.django_db
def test_an_inactive_workspace_is_404_even_for_its_owner(client, workspace, owner):
    workspace.is_active = False
    workspace.save()
    client.force_login(owner)
    assert client.get(f"/w/{workspace.slug}/").status_code == 404


@pytest.mark.django_db
def test_a_user_with_no_membership_gets_404_not_a_hint(client, workspace):
    client.force_login(UserFactory())
    response = client.get(f"/w/{workspace.slug}/customers/")
    assert response.status_code == 404
    assert b"Page not found" in response.content
    assert b"Acme Coffee" not in response.content
    # An unknown slug looks the same, so slugs cannot be probed.
    unknown = client.get("/w/no-such-shop/customers/")
    assert unknown.status_code == 404
    assert unknown.templates[0].name == response.templates[0].name == "404.html"
