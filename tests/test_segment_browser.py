"""In a real browser: build a segment from two conditions, watch the live count follow, save it, find it listed."""

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from lifecycle.models import CustomerMetrics
from tests.factories import CustomerFactory, MembershipFactory, UserFactory, WorkspaceFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def csp_violations(page) -> list[str]:
    return [text for text in page.console_errors if "Content Security Policy" in text]


def test_build_a_two_condition_segment_with_a_live_count_and_save_it(page, login):
    acme = WorkspaceFactory(name="Acme Coffee", slug="acme")
    marketer = UserFactory(username="mia")
    MembershipFactory(workspace=acme, user=marketer, role=Role.MARKETER)
    for revenue, stage in ((Decimal("40"), "at_risk"), (Decimal("400"), "at_risk"), (Decimal("900"), "at_risk"),
                           (Decimal("700"), "active")):
        customer = CustomerFactory(tenant=acme)
        with tenant_scope(acme):
            CustomerMetrics.objects.create(customer=customer, stage=stage, revenue=revenue)

    login(marketer)
    page.wait_for_url("**/w/acme/")
    page.goto("/w/acme/segments/new/")
    count = page.locator("#live-count")
    expect(count).to_have_text("0")  # a new segment starts at "Lifecycle stage is Prospect"

    page.select_option("#r-0-value", "at_risk")
    expect(count).to_have_text("3")

    with page.expect_response("**/segments/builder/tree/"):
        page.click("#add-condition-r")
    with page.expect_response("**/segments/builder/condition/"):
        page.select_option("#r-1-field", "revenue")
    # The field change swapped in number comparisons and a number input.
    with page.expect_response("**/segments/builder/condition/"):
        page.select_option("#r-1-operator", "gt")
    assert page.locator("#r-1-value").get_attribute("type") == "number"
    page.fill("#r-1-value", "100")
    expect(count).to_have_text("2")
    assert page.locator("#member-sample li").count() == 2

    page.fill("#r-1-value", "")
    page.locator("#r-1-value").press_sequentially("abc")  # a number field takes no letters: it stays empty
    expect(page.locator("#r-1-value")).to_have_value("")
    expect(page.locator("#error-r-1")).to_contain_text("Enter a number")

    page.fill("#r-1-value", "500")
    expect(count).to_have_text("1")
    page.fill("#id_name", "Slipping big spenders")
    page.click("#save-segment")
    page.wait_for_url("**/w/acme/segments/*/")
    assert page.locator("#member-count").inner_text() == "1 customer"
    assert "Lifecycle stage is At risk and Total spent > 500" in page.locator("#rules-in-words").inner_text()

    page.goto("/w/acme/segments/")
    row = page.locator("#segment-table tr", has_text="Slipping big spenders")
    row.locator(".segment-count").wait_for()
    assert row.locator(".segment-count").inner_text() == "1"
    assert csp_violations(page) == []
