"""Journeys from templates, status transitions, recurring schedules, previews and test sends, and the report
with uplift against the holdout."""

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from campaigns import journeys, transitions
from campaigns.models import Campaign, CampaignRun, Message
from campaigns.outbox import dispatch_due
from campaigns.previews import preview, send_test
from campaigns.reports import campaign_report, difference_interval
from campaigns.tasks import run_recurring
from crm_site.tenancy import tenant_scope
from tests.factories import (
    CampaignFactory,
    CampaignStepFactory,
    CustomerFactory,
    OrderFactory,
    OrderLineFactory,
    ProductFactory,
    SenderIdentityFactory,
)


@pytest.mark.django_db
@pytest.mark.parametrize("key", sorted(journeys.JOURNEY_TEMPLATES))
def test_every_journey_template_is_ready_to_go_live(workspace, key):
    SenderIdentityFactory(tenant=workspace)
    with tenant_scope(workspace):
        campaign = journeys.create_from_template(key)
        assert transitions.problems(campaign) == []
        transitions.schedule(campaign)
        campaign.refresh_from_db()
    assert (campaign.kind, campaign.status) == ("journey", "sending") and campaign.started_at


@pytest.mark.django_db
def test_welcome_series_has_steps_on_day_0_3_and_7(workspace):
    with tenant_scope(workspace):
        campaign = journeys.create_from_template("welcome")
        assert list(campaign.steps.values_list("delay_days", flat=True)) == [0, 3, 7]
    assert campaign.trigger == "stage:onboarding"


@pytest.mark.django_db
def test_problems_are_listed_in_words(workspace):
    campaign = CampaignFactory(tenant=workspace, kind="journey", sender=None)
    CampaignStepFactory(tenant=workspace, campaign=campaign, position=1, subject="", body="{{ settings.SECRET_KEY }}")
    with tenant_scope(workspace):
        found = transitions.problems(campaign)
        with pytest.raises(transitions.TransitionError):
            transitions.schedule(campaign)
    assert "Choose the lifecycle moment that starts the journey." in found
    assert "Choose a sender identity for e-mails." in found
    assert "Step 1: an e-mail needs a subject." in found
    assert any("Unknown variable settings" in problem for problem in found)


@pytest.mark.django_db
def test_broadcast_goes_from_draft_to_scheduled_to_sending_and_can_be_paused_resumed_cancelled(workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = CampaignFactory(tenant=workspace)
    CampaignStepFactory(tenant=workspace, campaign=campaign)
    later = timezone.now() + dt.timedelta(hours=2)
    with tenant_scope(workspace):
        transitions.schedule(campaign, at=later)
        assert (campaign.status, campaign.scheduled_at) == ("scheduled", later)
        dispatch_due(now=later)
        campaign.refresh_from_db()
        assert campaign.status == "sending"
        transitions.pause(campaign)
        assert campaign.status == "paused"
        transitions.resume(campaign)
        assert campaign.status == "sending"
        assert transitions.cancel(campaign) == 1
        assert Message.objects.get().skip_reason == "cancelled"
        with pytest.raises(transitions.TransitionError):
            transitions.resume(campaign)


@pytest.mark.django_db
def test_a_paused_broadcast_without_a_time_goes_out_when_resumed(workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = CampaignFactory(tenant=workspace, status="paused", scheduled_at=None)
    CampaignStepFactory(tenant=workspace, campaign=campaign)
    with tenant_scope(workspace):
        transitions.resume(campaign)
        dispatch_due()
        assert Message.objects.filter(campaign=campaign).count() == 1
    assert campaign.status == "scheduled" and campaign.scheduled_at is not None


@pytest.mark.django_db
def test_recurring_campaign_schedule_lives_in_celery_beat_and_each_tick_is_a_run(workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = CampaignFactory(tenant=workspace, kind="recurring")
    CampaignStepFactory(tenant=workspace, campaign=campaign)
    with tenant_scope(workspace):
        task = transitions.set_recurrence(campaign, minute="30", hour="8", day_of_week="1",
                                          time_zone="Europe/Berlin")
        assert task.enabled is False  # still a draft
        transitions.schedule(campaign)
    task = PeriodicTask.objects.get(pk=task.pk)
    assert task.enabled and task.task == "campaigns.tasks.run_recurring"
    assert json.loads(task.args) == [workspace.pk, campaign.pk]
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("30", "8", "1")
    assert str(task.crontab.timezone) == "Europe/Berlin"

    assert run_recurring(workspace.pk, campaign.pk) == 1
    assert run_recurring(workspace.pk, campaign.pk) is None  # the same tick delivered twice
    with tenant_scope(workspace):
        Campaign.objects.filter(pk=campaign.pk).update(last_run_at=timezone.now() - dt.timedelta(days=7))
    assert run_recurring(workspace.pk, campaign.pk) == 2
    with tenant_scope(workspace):
        dispatch_due()
        assert sorted(Message.objects.values_list("occurrence", flat=True)) == [1, 2]
        assert CampaignRun.objects.count() == 2
        transitions.pause(campaign)
    assert PeriodicTask.objects.get(pk=task.pk).enabled is False


@pytest.mark.django_db
def test_invalid_recurrence_is_explained(workspace):
    campaign = CampaignFactory(tenant=workspace, kind="recurring")
    with tenant_scope(workspace), pytest.raises(transitions.TransitionError, match="hour"):
        transitions.set_recurrence(campaign, hour="25")
    with tenant_scope(workspace), pytest.raises(transitions.TransitionError, match="time zone"):
        transitions.set_recurrence(campaign, time_zone="Mars/Olympus")


# --- Previews and test sends ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_preview_for_a_customer_shows_their_own_values(workspace):
    product = ProductFactory(tenant=workspace, name="Espresso beans")
    ann = CustomerFactory(tenant=workspace, first_name="Ann")
    OrderLineFactory(tenant=workspace, order=OrderFactory(tenant=workspace, customer=ann), product=product)
    step = CampaignStepFactory(tenant=workspace, subject="For {{ first_name }}",
                               body="Enjoying {{ last_purchase.product }}?")
    with tenant_scope(workspace):
        shown = preview(step, ann)
        sample = preview(step)
    assert (shown.subject, shown.error) == ("For Ann", "")
    assert "Enjoying Espresso beans?" in shown.text and "Enjoying Espresso beans?" in shown.html
    assert sample.subject == "For Alex"


@pytest.mark.django_db
def test_preview_reports_the_error_a_customer_would_hit(workspace):
    never_bought = CustomerFactory(tenant=workspace)
    step = CampaignStepFactory(tenant=workspace, body="{{ last_purchase.product }}")
    with tenant_scope(workspace):
        shown = preview(step, never_bought)
    assert "does not exist" in shown.error


@pytest.mark.django_db
def test_test_send_reaches_the_marketer_and_not_the_outbox(smtp_sink, workspace):
    step = CampaignStepFactory(tenant=workspace, subject="Hello {{ first_name }}")
    with tenant_scope(workspace):
        send_test(step, "marketer@acme.example")
        assert Message.objects.count() == 0
    (mail,) = smtp_sink.wait_for(1)
    assert mail["to"] == ["marketer@acme.example"]
    assert mail["message"]["Subject"] == "[Test] Hello Alex"


# --- Reports -------------------------------------------------------------------------------------------


def _experiment(workspace, *, treated, treated_buyers, control, control_buyers, window_days=7):
    """A sent campaign: `treated` customers were sent it, `control` held out; some bought within the window."""
    campaign = CampaignFactory(tenant=workspace, status="done", attribution_window_days=window_days)
    step = CampaignStepFactory(tenant=workspace, campaign=campaign)
    sent_at = timezone.now() - dt.timedelta(days=10)
    with tenant_scope(workspace):
        from customers.models import Customer, Order

        customers = Customer.objects.bulk_create(
            [Customer(tenant=workspace, email=f"x{i}@example.org") for i in range(treated + control)]
        )
        Message.objects.bulk_create([
            Message(tenant=workspace, campaign=campaign, step=step, customer=customer, channel="email",
                    status="sent" if index < treated else "held_out", scheduled_for=sent_at,
                    next_attempt_at=sent_at, sent_at=sent_at if index < treated else None)
            for index, customer in enumerate(customers)
        ])
        buyers = customers[:treated_buyers] + customers[treated:treated + control_buyers]
        Order.objects.bulk_create([
            Order(tenant=workspace, customer=customer, external_id=f"o{customer.pk}",
                  placed_at=sent_at + dt.timedelta(days=2), total=Decimal("50.00"))
            for customer in buyers
        ])
        late = customers[treated_buyers]  # buys after the window: not a conversion
        Order.objects.create(customer=late, external_id="late", placed_at=sent_at + dt.timedelta(days=9),
                             total=Decimal("80.00"))
    return campaign


@pytest.mark.django_db
def test_report_shows_uplift_against_the_holdout_with_a_confidence_interval(workspace):
    campaign = _experiment(workspace, treated=900, treated_buyers=180, control=100, control_buyers=8)
    with tenant_scope(workspace):
        report = campaign_report(campaign)
    assert (report.targeted, report.sent, report.held_out) == (1000, 900, 100)
    assert (report.treatment.conversions, report.control.conversions) == (180, 8)
    assert report.treatment.revenue == Decimal("9000.00")
    assert report.uplift.estimate == pytest.approx(0.20 - 0.08)
    assert report.uplift.excludes_zero and report.uplift.low > 0.05
    assert report.incremental_conversions == pytest.approx(108)
    assert report.revenue_uplift.estimate == pytest.approx(10.0 - 4.0)
    assert not report.sample_too_small


@pytest.mark.django_db
def test_report_warns_when_the_sample_is_too_small(workspace):
    campaign = _experiment(workspace, treated=40, treated_buyers=3, control=5, control_buyers=0)
    with tenant_scope(workspace):
        report = campaign_report(campaign)
    assert report.sample_too_small
    assert "holdout group has 5 customers" in report.sample_message
    assert not report.uplift.excludes_zero


@pytest.mark.django_db
def test_report_counts_unsubscribes_within_the_window(workspace):
    from customers.consent import record_consent

    campaign = _experiment(workspace, treated=3, treated_buyers=0, control=0, control_buyers=0)
    with tenant_scope(workspace):
        first, second, _ = [m.customer for m in Message.objects.select_related("customer").order_by("pk")]
        record_consent(first, "email", "withdraw", "unsubscribe", occurred_at=timezone.now() - dt.timedelta(days=9))
        record_consent(second, "email", "withdraw", "unsubscribe", occurred_at=timezone.now())  # too late
        report = campaign_report(campaign)
    assert report.unsubscribed == 1


def test_difference_interval_matches_the_textbook_formula():
    interval = difference_interval(60, 200, 40, 200)
    assert interval.estimate == pytest.approx(0.1)
    assert interval.low == pytest.approx(0.1 - 1.959964 * ((0.3 * 0.7 + 0.2 * 0.8) / 200) ** 0.5, rel=1e-5)
