"""In a real browser, without signing in: subscribe, confirm from the e-mail, change preferences, unsubscribe;
nothing trips the CSP."""

import re
from urllib.parse import urlsplit

import pytest

from crm_site.tenancy import tenant_scope
from customers.models import Customer
from tests.factories import WorkspaceFactory

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _path_in(mail):
    return urlsplit(re.search(r"https?://\S+", mail["message"].get_content()).group(0)).path


def test_subscribe_confirm_pause_and_unsubscribe_in_the_browser(page, smtp_sink, live_server, settings):
    settings.SITE_URL = live_server.url  # links in mails and pages point at the server under test
    workspace = WorkspaceFactory(name="Acme Coffee", slug="acme")
    page.goto("/p/acme/subscribe/")
    page.fill("input[name=email]", "ann@example.org")
    page.fill("input[name=first_name]", "Ann")
    page.check("#id_agree")
    page.click("button[type=submit]")
    page.get_by_text("Check your inbox").wait_for()

    page.goto(_path_in(smtp_sink.wait_for(1)[0]))
    page.get_by_role("button", name="Yes, subscribe me").click()
    page.get_by_text("Thank you, you are subscribed").wait_for()

    page.get_by_role("link", name="preferences").click()
    assert page.locator("#pref-email").is_checked()
    page.select_option("#id_pause_weeks", "4")
    page.get_by_role("button", name="Save preferences").click()
    page.locator("#pause-state").wait_for()
    assert "Messages are paused until" in page.locator("#pause-state").inner_text()

    with tenant_scope(workspace):
        customer = Customer.objects.get()
        assert customer.email_opt_in
        from customers.public_links import unsubscribe_url

        unsubscribe_path = urlsplit(unsubscribe_url(customer, "email")).path
    page.goto(unsubscribe_path)
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_text("You are unsubscribed").wait_for()
    with tenant_scope(workspace):
        assert Customer.objects.get().email_opt_in is False
    assert [text for text in page.console_errors if "Content Security Policy" in text] == []
