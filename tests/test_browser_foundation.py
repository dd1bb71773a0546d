"""In a real browser: sign in, read one workspace's dashboard, switch workspace from the navigation, read the
other's numbers; an htmx POST (carrying the CSRF header from the layout) works; nothing trips the CSP."""

import pytest

from crm_site.models import Invitation, Role
from crm_site.tenancy import tenant_scope
from tests.factories import CustomerFactory, InvitationFactory, MembershipFactory, OrderFactory, UserFactory, WorkspaceFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def csp_violations(page) -> list[str]:
    return [text for text in page.console_errors if "Content Security Policy" in text or "Content-Security-Policy" in text]


def test_sign_in_see_the_dashboard_switch_workspace_and_see_its_numbers(page, login):
    acme = WorkspaceFactory(name="Acme Coffee", slug="acme")
    globex = WorkspaceFactory(name="Globex Tea", slug="globex")
    user = UserFactory(username="mara")
    MembershipFactory(workspace=acme, user=user, role=Role.OWNER)
    MembershipFactory(workspace=globex, user=user, role=Role.VIEWER)
    CustomerFactory.create_batch(3, tenant=acme)
    OrderFactory.create_batch(2, tenant=globex)

    login(user)
    page.wait_for_url("**/w/acme/")
    assert page.locator("h1").inner_text() == "Dashboard"
    assert page.locator("[data-metric=customers]").inner_text() == "3"
    assert page.locator("[data-metric=orders]").inner_text() == "0"

    page.click("#workspace-switcher")
    menu = page.locator("[aria-labelledby=workspace-switcher]")
    menu.wait_for(state="visible")
    assert menu.locator(".dropdown-item").all_inner_texts() == ["Acme Coffee Owner", "Globex Tea Viewer"]
    menu.get_by_text("Globex Tea").click()

    page.wait_for_url("**/w/globex/")
    assert page.locator("#workspace-switcher").inner_text() == "Globex Tea"
    assert page.locator("[data-metric=customers]").inner_text() == "2"
    assert page.locator("[data-metric=orders]").inner_text() == "2"
    assert page.title() == "Dashboard · Globex Tea"
    assert csp_violations(page) == []


def test_an_htmx_post_from_a_page_carries_the_csrf_token(page, login):
    acme = WorkspaceFactory(name="Acme Coffee", slug="acme")
    owner = UserFactory(username="olga")
    MembershipFactory(workspace=acme, user=owner, role=Role.OWNER)
    InvitationFactory(tenant=acme, email="kim@example.com")
    keep = InvitationFactory(tenant=acme, email="lee@example.com")

    login(owner)
    page.wait_for_url("**/w/acme/")
    page.goto("/w/acme/settings/members/")
    row = page.locator("tr[data-invitation='kim@example.com']")
    # The button has no form around it: only the X-CSRFToken header from <body hx-headers> gets it past CSRF.
    with page.expect_response(lambda response: "/revoke/" in response.url) as revoked:
        row.get_by_role("button", name="Revoke").click()
    assert revoked.value.status == 200
    row.wait_for(state="detached")

    with tenant_scope(acme):
        assert list(Invitation.objects.values_list("pk", flat=True)) == [keep.pk]
    assert page.locator("tr[data-invitation='lee@example.com']").is_visible()
    assert csp_violations(page) == []
