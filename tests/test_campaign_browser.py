"""In Chromium: a marketer starts a win-back journey from its template and puts it live; a lifecycle refresh finds
an at-risk customer, a real Celery worker dispatches and sends the mail to the SMTP sink, and the marketer reads
the report. Nothing trips the CSP."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from campaigns.models import Campaign, SendingPolicy
from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from lifecycle.models import LifecycleEvent
from lifecycle.runs import refresh_workspace
from tests.factories import (
    CustomerFactory,
    MembershipFactory,
    OrderFactory,
    SenderIdentityFactory,
    UserFactory,
    WorkspaceFactory,
)

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def test_a_win_back_journey_from_template_to_report(page, login, live_server, celery_worker, smtp_sink, settings):
    from campaigns.tasks import dispatch_due_everywhere

    settings.SITE_URL = live_server.url
    workspace = WorkspaceFactory(name="Acme Coffee", slug="acme")
    marketer = UserFactory(email="mia@acme.example")
    MembershipFactory(workspace=workspace, user=marketer, role=Role.MARKETER)
    SenderIdentityFactory(tenant=workspace, from_name="Acme Coffee", from_email="news@acme.example")
    with tenant_scope(workspace):
        SendingPolicy.objects.create(quiet_hours_enabled=False)  # the test may run at any hour
    ann = CustomerFactory(tenant=workspace, first_name="Ann", email="ann@example.org", email_opt_in=True,
                          first_seen_at=timezone.now() - dt.timedelta(days=200))

    login(marketer)
    page.goto("/w/acme/campaigns/")
    page.get_by_role("link", name="New journey from a template").click()
    page.get_by_role("button", name="Use the Win-back template").click()
    expect(page.get_by_role("heading", name="Win-back")).to_be_visible()
    expect(page.locator("#campaign-steps tbody tr")).to_have_count(2)

    page.get_by_role("link", name="Edit settings").click()
    page.fill("#id_holdout_percent", "0")  # one customer: no control group to hold her out of
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("Saved “Win-back”.")).to_be_visible()

    page.fill("#id_customer", "")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#preview-subject")).to_have_text("We miss you, Alex")

    page.get_by_role("button", name="Go live").click()
    expect(page.get_by_text("The journey is live")).to_be_visible()
    expect(page.locator(".campaign-status").first).to_have_text("Live")

    # Ann's rhythm was an order every 30 days; 100 days of silence make her at risk at the next refresh.
    for days_ago in (160, 130, 100):
        OrderFactory(tenant=workspace, customer=ann, placed_at=timezone.now() - dt.timedelta(days=days_ago),
                     total=Decimal("30.00"))
    refresh_workspace(workspace)
    with tenant_scope(workspace):
        assert LifecycleEvent.objects.filter(customer=ann, kind="stage", to_value="at_risk").exists()
        campaign = Campaign.objects.get(name="Win-back")

    page.goto(f"/w/acme/campaigns/{campaign.pk}/report/")
    expect(page.locator('[data-metric="sent"]')).to_have_text("0")
    dispatch_due_everywhere.delay()  # what beat does every few seconds

    (mail,) = smtp_sink.wait_for(1, timeout=30)
    assert mail["to"] == ["ann@example.org"]
    assert mail["message"]["Subject"] == "We miss you, Ann"
    assert "it has been a while" in mail["message"].get_body(("plain",)).get_content()

    # The report refreshes in place while the journey runs: no reload.
    expect(page.locator('[data-metric="sent"]')).to_have_text("1", timeout=15_000)
    expect(page.locator('[data-metric="targeted"]')).to_have_text("1")
    expect(page.locator('[data-metric="held_out"]')).to_have_text("0")
    expect(page.locator("#sample-too-small")).to_contain_text("Sample too small")
    assert re.search(r"/report/$", page.url)
    assert [text for text in page.console_errors if "Content Security Policy" in text] == []
