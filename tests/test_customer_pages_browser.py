"""In a real browser: the customer list filters and pages in place with htmx, the address bar follows, Back works,
and a note is added inline on the customer page; nothing trips the CSP."""

import pytest
from playwright.sync_api import expect

from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from customers import listing
from customers.models import Customer
from tests.factories import CustomerFactory, MembershipFactory, UserFactory, WorkspaceFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def csp_violations(page) -> list[str]:
    return [text for text in page.console_errors if "Content Security Policy" in text]


def table_names(page) -> list[str]:
    return page.locator("#customer-table tbody td:first-child a").all_inner_texts()


def test_search_filter_sort_and_pages_update_in_place_with_the_url_in_sync(page, login, monkeypatch):
    monkeypatch.setattr(listing, "PAGE_SIZE", 3)
    acme = WorkspaceFactory(name="Acme Coffee", slug="acme")
    user = UserFactory(username="mara")
    MembershipFactory(workspace=acme, user=user, role=Role.MARKETER)
    with tenant_scope(acme):
        Customer.objects.bulk_create([
            Customer(tenant=acme, first_name=f"Ann{n}", last_name="Berg", email_opt_in=n % 2 == 0) for n in range(5)
        ] + [Customer(tenant=acme, first_name="Zed", last_name="Quist")])

    login(user)
    page.wait_for_url("**/w/acme/")
    page.goto("/w/acme/customers/")
    page.evaluate("window.fullLoadMarker = true")  # survives only as long as no full page load happens

    rows = page.locator("#customer-table tbody tr")
    count = page.locator("#customer-count")
    table = page.locator("#customer-table")
    page.fill("#id_q", "qui")
    expect(rows).to_have_count(1)
    assert table_names(page) == ["Zed Quist"]
    assert "q=qui" in page.url

    page.fill("#id_q", "berg")
    expect(count).to_contain_text("5 customers")
    page.select_option("#id_email_consent", "yes")
    page.wait_for_url("**email_consent=yes**")
    expect(count).to_contain_text("3 customers")
    page.get_by_role("link", name="Name").click()
    page.wait_for_url("**sort=name**")
    expect(count).to_contain_text("sorted by name")
    expect(rows).to_have_count(3)
    assert table_names(page) == ["Ann0 Berg", "Ann2 Berg", "Ann4 Berg"]

    page.fill("#id_q", "")
    page.select_option("#id_email_consent", "")
    expect(count).to_contain_text("6 customers")
    first_page = table_names(page)
    page.get_by_role("link", name="Next").click()
    page.wait_for_url("**after=**")
    expect(table).not_to_contain_text(first_page[0])
    second_page = table_names(page)
    assert len(second_page) == 3 and not set(first_page) & set(second_page)
    assert page.evaluate("window.fullLoadMarker") is True  # all of it without reloading the page

    page.go_back()
    expect(table).to_contain_text(first_page[0])
    assert csp_violations(page) == []


def test_a_note_is_added_inline_on_the_customer_page(page, login):
    acme = WorkspaceFactory(name="Acme Coffee", slug="acme")
    user = UserFactory(username="mara")
    MembershipFactory(workspace=acme, user=user, role=Role.MARKETER)
    customer = CustomerFactory(tenant=acme, first_name="Lena", last_name="Berg")

    login(user)
    page.wait_for_url("**/w/acme/")
    page.goto(f"/w/acme/customers/{customer.pk}/")
    page.evaluate("window.fullLoadMarker = true")
    page.fill("#id_text", "Prefers decaf")
    page.get_by_role("button", name="Add note").click()
    page.locator("#timeline li[data-kind=note]").wait_for()
    assert "Prefers decaf" in page.locator("#timeline").inner_text()
    assert page.locator("#id_text").input_value() == ""
    assert page.evaluate("window.fullLoadMarker") is True
    assert csp_violations(page) == []
