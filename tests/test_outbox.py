"""The dispatcher writes the outbox: one message per step and customer, minus no consent, suppressions, the
frequency cap and the holdout, with quiet hours deferring rather than dropping."""

import datetime as dt
from collections import Counter

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone

from campaigns.models import Campaign, CampaignRun, Message, Priority, SendingPolicy
from campaigns.outbox import dispatch_due, holdout_bucket, quiet_hours_end
from crm_site.tenancy import tenant_scope
from customers.consent import suppress
from customers.models import Interaction
from lifecycle.models import CustomerMetrics, LifecycleEvent
from tests.factories import CampaignFactory, CampaignStepFactory, CustomerFactory, OrderFactory

NOON = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)


def broadcast(workspace, *, holdout=0, priority=Priority.BROADCAST, scheduled_at=NOON, **kwargs):
    campaign = CampaignFactory(tenant=workspace, kind="broadcast", status="scheduled", scheduled_at=scheduled_at,
                               holdout_percent=holdout, priority=priority, **kwargs)
    CampaignStepFactory(tenant=workspace, campaign=campaign, position=1)
    return campaign


def statuses(campaign):
    with tenant_scope(campaign.tenant):
        return Counter(Message.objects.filter(campaign=campaign).values_list("status", flat=True))


def reasons(campaign):
    with tenant_scope(campaign.tenant):
        return Counter(
            Message.objects.filter(campaign=campaign, status="suppressed").values_list("skip_reason", flat=True)
        )


def dispatch(workspace, now=NOON):
    with tenant_scope(workspace):
        return dispatch_due(now=now)


@pytest.mark.django_db
def test_broadcast_writes_one_pending_message_per_consenting_customer_and_records_the_rest(workspace):
    opted_in = [CustomerFactory(tenant=workspace, email_opt_in=True) for _ in range(3)]
    CustomerFactory(tenant=workspace, email_opt_in=False)
    campaign = broadcast(workspace)

    result = dispatch(workspace)

    assert result.created == 4
    assert statuses(campaign) == {"pending": 3, "suppressed": 1}
    assert reasons(campaign) == {"no_consent": 1}
    with tenant_scope(workspace):
        pending = set(Message.objects.filter(status="pending").values_list("customer_id", flat=True))
        campaign.refresh_from_db()
    assert pending == {c.pk for c in opted_in}
    assert campaign.status == Campaign.Status.SENDING


@pytest.mark.django_db
def test_dispatching_twice_creates_nothing_new(workspace):
    for _ in range(3):
        CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = broadcast(workspace)
    dispatch(workspace)
    assert dispatch(workspace, now=NOON + dt.timedelta(minutes=1)).created == 0
    assert sum(statuses(campaign).values()) == 3


@pytest.mark.django_db
def test_a_broadcast_scheduled_for_later_waits(workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = broadcast(workspace, scheduled_at=NOON + dt.timedelta(hours=1))
    assert dispatch(workspace).created == 0
    assert dispatch(workspace, now=NOON + dt.timedelta(hours=1)).created == 1
    assert statuses(campaign) == {"pending": 1}


@pytest.mark.django_db
def test_suppressed_address_gets_no_message(workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True, email="bounced@example.org")
    with tenant_scope(workspace):
        suppress("email", "Bounced@Example.org", "bounced")
    campaign = broadcast(workspace)
    dispatch(workspace)
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=customer)
    assert (message.status, message.skip_reason) == ("suppressed", "no_consent")


@pytest.mark.django_db
def test_sms_step_needs_sms_consent(workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True, sms_opt_in=False, phone="+4930111")
    texter = CustomerFactory(tenant=workspace, email_opt_in=False, sms_opt_in=True, phone="+4930222")
    campaign = CampaignFactory(tenant=workspace, status="scheduled", scheduled_at=NOON)
    CampaignStepFactory(tenant=workspace, campaign=campaign, channel="sms", subject="", body="Hi")
    dispatch(workspace)
    with tenant_scope(workspace):
        assert list(Message.objects.filter(status="pending").values_list("customer_id", flat=True)) == [texter.pk]


@pytest.mark.django_db
def test_only_segment_members_are_addressed(workspace):
    from segments.models import Segment

    CustomerFactory(tenant=workspace, email_opt_in=True, first_name="Zed")
    anna = CustomerFactory(tenant=workspace, email_opt_in=True, first_name="Anna")
    with tenant_scope(workspace):
        segment = Segment.objects.create(
            name="Annas", rules={"op": "and", "rules": [{"field": "first_name", "operator": "eq", "value": "Anna"}]}
        )
    campaign = broadcast(workspace, segment=segment)
    dispatch(workspace)
    with tenant_scope(workspace):
        assert list(Message.objects.filter(campaign=campaign).values_list("customer_id", flat=True)) == [anna.pk]


@pytest.mark.django_db
def test_holdout_is_deterministic_about_the_requested_share_and_never_pending(workspace):
    with tenant_scope(workspace):
        from customers.models import Customer

        Customer.objects.bulk_create(
            [Customer(tenant=workspace, email=f"c{i}@example.org", email_opt_in=True) for i in range(1000)]
        )
    campaign = broadcast(workspace, holdout=10)
    dispatch(workspace)
    counts = statuses(campaign)
    assert 80 <= counts["held_out"] <= 120
    assert counts["pending"] + counts["held_out"] == 1000
    with tenant_scope(workspace):
        held = set(Message.objects.filter(status="held_out").values_list("customer_id", flat=True))
        everyone = list(Message.objects.filter(campaign=campaign).values_list("customer_id", flat=True))
    # SQL and Python agree on who is held out, so a preview or a report can tell without the outbox.
    assert held == {pk for pk in everyone if holdout_bucket(campaign.pk, pk) < 10}
    dispatch(workspace, now=NOON + dt.timedelta(minutes=5))
    assert statuses(campaign) == counts


@pytest.mark.django_db
def test_holdout_bucket_is_uniform_and_differs_between_campaigns():
    buckets = Counter(holdout_bucket(7, customer_id) // 10 for customer_id in range(1, 20001))
    assert all(1800 <= n <= 2200 for n in buckets.values())
    held_a = {c for c in range(1, 2001) if holdout_bucket(1, c) < 10}
    held_b = {c for c in range(1, 2001) if holdout_bucket(2, c) < 10}
    assert held_a != held_b


@pytest.mark.django_db
def test_frequency_cap_skips_customers_who_got_enough_this_week(workspace):
    busy = CustomerFactory(tenant=workspace, email_opt_in=True)
    calm = CustomerFactory(tenant=workspace, email_opt_in=True)
    with tenant_scope(workspace):
        SendingPolicy.objects.create(frequency_cap=2, frequency_window_days=7)
    earlier = broadcast(workspace, scheduled_at=NOON - dt.timedelta(days=3))
    dispatch(workspace, now=NOON - dt.timedelta(days=3))
    with tenant_scope(workspace):
        Message.objects.filter(campaign=earlier).update(status="sent")
    second = broadcast(workspace, scheduled_at=NOON - dt.timedelta(days=2))
    dispatch(workspace, now=NOON - dt.timedelta(days=2))
    with tenant_scope(workspace):
        Message.objects.filter(campaign=second, customer=calm).delete()

    third = broadcast(workspace)
    dispatch(workspace)

    with tenant_scope(workspace):
        by_customer = dict(Message.objects.filter(campaign=third).values_list("customer_id", "skip_reason"))
    assert by_customer == {busy.pk: "frequency_cap", calm.pk: ""}
    # Eight days later the window has rolled on.
    fourth = broadcast(workspace, scheduled_at=NOON + dt.timedelta(days=8))
    dispatch(workspace, now=NOON + dt.timedelta(days=8))
    assert statuses(fourth) == {"pending": 2}


@pytest.mark.django_db
def test_frequency_cap_favours_lifecycle_over_broadcast_and_exempts_transactional(workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    with tenant_scope(workspace):
        SendingPolicy.objects.create(frequency_cap=1)
    news = broadcast(workspace, priority=Priority.BROADCAST)
    winback = broadcast(workspace, priority=Priority.LIFECYCLE)
    receipt = broadcast(workspace, priority=Priority.TRANSACTIONAL)
    dispatch(workspace)
    assert statuses(winback) == {"pending": 1}
    assert reasons(news) == {"frequency_cap": 1}
    assert statuses(receipt) == {"pending": 1}
    assert customer.pk


@pytest.mark.django_db
def test_quiet_hours_defer_to_the_morning_in_the_customers_time_zone_and_show_on_the_timeline(workspace):
    tokyo = CustomerFactory(tenant=workspace, email_opt_in=True, time_zone="Asia/Tokyo")  # 21:00 there
    berlin = CustomerFactory(tenant=workspace, email_opt_in=True, time_zone="Europe/Berlin")  # 13:00 there
    campaign = broadcast(workspace)

    result = dispatch(workspace)

    assert result.deferred == 1
    with tenant_scope(workspace):
        deferred = Message.objects.get(campaign=campaign, customer=tokyo)
        assert Message.objects.get(campaign=campaign, customer=berlin).status == "pending"
        timeline = list(Interaction.objects.filter(customer=tokyo, kind="deferred"))
    assert deferred.status == "deferred"
    assert deferred.next_attempt_at == dt.datetime(2026, 3, 10, 23, 0, tzinfo=dt.UTC)  # 08:00 in Tokyo
    assert len(timeline) == 1 and "quiet hours" in timeline[0].summary
    assert timeline[0].details["message_id"] == deferred.pk


@pytest.mark.django_db
def test_quiet_hours_use_the_workspace_zone_when_the_customer_has_none(workspace):
    workspace.time_zone = "America/New_York"
    workspace.save()
    customer = CustomerFactory(tenant=workspace, email_opt_in=True, time_zone="")
    broadcast(workspace, scheduled_at=NOON - dt.timedelta(hours=10))
    dispatch(workspace, now=NOON - dt.timedelta(hours=10))  # 02:00 UTC = 22:00 in New York
    with tenant_scope(workspace):
        message = Message.objects.get(customer=customer)
    assert message.status == "deferred"
    assert message.next_attempt_at == dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)  # 08:00 EDT


@pytest.mark.django_db
def test_transactional_messages_ignore_quiet_hours(workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True, time_zone="Asia/Tokyo")
    receipt = broadcast(workspace, priority=Priority.TRANSACTIONAL)
    dispatch(workspace)
    assert statuses(receipt) == {"pending": 1}


def test_quiet_hours_window_wraps_midnight_and_respects_daylight_saving():
    import zoneinfo

    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    start, end = dt.time(21), dt.time(8)
    assert quiet_hours_end(dt.datetime(2026, 3, 28, 23, 30, tzinfo=berlin), start, end) == dt.datetime(
        2026, 3, 29, 8, 0, tzinfo=berlin
    )  # the night clocks go forward: still 08:00 local
    assert quiet_hours_end(dt.datetime(2026, 3, 29, 3, 0, tzinfo=berlin), start, end).hour == 8
    assert quiet_hours_end(dt.datetime(2026, 3, 29, 12, 0, tzinfo=berlin), start, end) is None
    assert quiet_hours_end(dt.datetime(2026, 3, 29, 13, 30, tzinfo=berlin), dt.time(13), dt.time(14)).hour == 14
    assert quiet_hours_end(dt.datetime(2026, 3, 29, 13, 30, tzinfo=berlin), dt.time(9), dt.time(9)) is None


# --- Journeys ---------------------------------------------------------------------------------------


def winback_journey(workspace, *, started_at=NOON - dt.timedelta(days=1)):
    campaign = CampaignFactory(tenant=workspace, kind="journey", status="sending", trigger="stage:at_risk",
                               priority=Priority.LIFECYCLE, started_at=started_at)
    CampaignStepFactory(tenant=workspace, campaign=campaign, position=1, subject="We miss you")
    CampaignStepFactory(tenant=workspace, campaign=campaign, position=2, delay_days=3, subject="Still there?")
    return campaign


def becomes_at_risk(workspace, customer, at):
    with tenant_scope(workspace):
        return LifecycleEvent.objects.create(customer=customer, kind="stage", from_value="active",
                                             to_value="at_risk", reason="overdue", occurred_at=at)


@pytest.mark.django_db
def test_journey_sends_each_step_after_its_delay_from_the_trigger(workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    journey = winback_journey(workspace)
    event = becomes_at_risk(workspace, customer, NOON - dt.timedelta(hours=1))

    dispatch(workspace)
    with tenant_scope(workspace):
        first = list(Message.objects.filter(campaign=journey).values_list("step__position", "occurrence", "status"))
    assert first == [(1, event.pk, "pending")]

    dispatch(workspace, now=NOON + dt.timedelta(days=2))
    assert sum(statuses(journey).values()) == 1
    dispatch(workspace, now=NOON + dt.timedelta(days=3))
    with tenant_scope(workspace):
        second = Message.objects.get(campaign=journey, step__position=2)
    assert second.status == "pending"
    assert second.scheduled_for == event.occurred_at + dt.timedelta(days=3)


@pytest.mark.django_db
def test_journey_ignores_events_from_before_it_went_live_and_other_triggers(workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    journey = winback_journey(workspace, started_at=NOON - dt.timedelta(minutes=30))
    becomes_at_risk(workspace, customer, NOON - dt.timedelta(hours=2))
    with tenant_scope(workspace):
        LifecycleEvent.objects.create(customer=customer, kind="stage", to_value="lapsed", reason="x",
                                      occurred_at=NOON - dt.timedelta(minutes=5))
    dispatch(workspace)
    assert statuses(journey) == {}


@pytest.mark.django_db
def test_customer_who_buys_again_leaves_the_journey(workspace):
    buyer = CustomerFactory(tenant=workspace, email_opt_in=True)
    quiet = CustomerFactory(tenant=workspace, email_opt_in=True)
    journey = winback_journey(workspace)
    for customer in (buyer, quiet):
        becomes_at_risk(workspace, customer, NOON - dt.timedelta(hours=1))
    dispatch(workspace)
    OrderFactory(tenant=workspace, customer=buyer, placed_at=NOON + dt.timedelta(days=1))
    dispatch(workspace, now=NOON + dt.timedelta(days=3))
    with tenant_scope(workspace):
        second = dict(Message.objects.filter(campaign=journey, step__position=2)
                      .values_list("customer_id", "skip_reason"))
    assert second == {buyer.pk: "exited", quiet.pk: ""}


@pytest.mark.django_db
def test_customer_who_is_no_longer_at_risk_leaves_the_winback(workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    journey = winback_journey(workspace)
    becomes_at_risk(workspace, customer, NOON - dt.timedelta(hours=1))
    dispatch(workspace)
    with tenant_scope(workspace):
        CustomerMetrics.objects.create(customer=customer, stage="active")
    dispatch(workspace, now=NOON + dt.timedelta(days=3))
    assert reasons(journey) == {"exited": 1}


@pytest.mark.django_db
def test_a_customer_entering_twice_gets_the_journey_twice(workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    with tenant_scope(workspace):
        SendingPolicy.objects.create(frequency_cap=0)
    journey = winback_journey(workspace, started_at=NOON - dt.timedelta(days=60))
    becomes_at_risk(workspace, customer, NOON - dt.timedelta(days=40))
    becomes_at_risk(workspace, customer, NOON - dt.timedelta(hours=1))
    dispatch(workspace)
    with tenant_scope(workspace):
        assert Message.objects.filter(campaign=journey, step__position=1).count() == 2


@pytest.mark.django_db
def test_flag_trigger_starts_on_the_flag_being_set_not_cleared(workspace):
    rewarded = CustomerFactory(tenant=workspace, email_opt_in=True)
    cleared = CustomerFactory(tenant=workspace, email_opt_in=True)
    journey = CampaignFactory(tenant=workspace, kind="journey", status="sending", trigger="reward_due",
                              started_at=NOON - dt.timedelta(days=1))
    CampaignStepFactory(tenant=workspace, campaign=journey, position=1)
    with tenant_scope(workspace):
        LifecycleEvent.objects.create(customer=rewarded, kind="reward_due", from_value="false", to_value="true",
                                      reason="10th order", occurred_at=NOON - dt.timedelta(hours=1))
        LifecycleEvent.objects.create(customer=cleared, kind="reward_due", from_value="true", to_value="false",
                                      reason="reward given", occurred_at=NOON - dt.timedelta(hours=1))
    dispatch(workspace)
    with tenant_scope(workspace):
        assert list(Message.objects.filter(campaign=journey).values_list("customer_id", flat=True)) == [rewarded.pk]


@pytest.mark.django_db
def test_paused_journey_dispatches_nothing(workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    journey = winback_journey(workspace)
    with tenant_scope(workspace):
        Campaign.objects.filter(pk=journey.pk).update(status="paused")
    becomes_at_risk(workspace, customer, NOON - dt.timedelta(hours=1))
    dispatch(workspace)
    assert statuses(journey) == {}


@pytest.mark.django_db
def test_broadcast_is_done_once_every_message_is_settled(workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = broadcast(workspace)
    dispatch(workspace)
    with tenant_scope(workspace):
        Message.objects.update(status="sent", sent_at=F("scheduled_for"))
    dispatch(workspace, now=NOON + dt.timedelta(minutes=1))
    with tenant_scope(workspace):
        campaign.refresh_from_db()
        run = CampaignRun.objects.get(campaign=campaign)
    assert campaign.status == "done" and run.finished_at is not None


@pytest.mark.django_db
def test_dispatch_of_a_large_audience_is_a_handful_of_queries(workspace, django_assert_max_num_queries):
    with tenant_scope(workspace):
        from customers.models import Customer

        Customer.objects.bulk_create([Customer(tenant=workspace, email=f"c{i}@example.org", email_opt_in=True) for i in range(2000)])
    broadcast(workspace, holdout=10)
    with django_assert_max_num_queries(30), tenant_scope(workspace):
        result = dispatch_due(now=NOON)
    assert result.created == 2000
    assert connection.vendor in ("postgresql", "sqlite")
    assert timezone.now()


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_at_once_open_one_run_of_a_broadcast(workspace):
    import threading

    for _ in range(3):
        CustomerFactory(tenant=workspace, email_opt_in=True)
    with tenant_scope(workspace):
        SendingPolicy.objects.create(quiet_hours_enabled=False)  # dispatched now: the test may run at any hour
    campaign = broadcast(workspace, scheduled_at=timezone.now() - dt.timedelta(minutes=1))
    first_dispatched, finish_first = threading.Event(), threading.Event()

    def dispatcher(hold_open: bool):
        try:
            with tenant_scope(workspace):
                dispatch_due()
                if hold_open:  # still in its transaction, as a slow dispatch task would be
                    first_dispatched.set()
                    finish_first.wait(20)
        finally:
            connection.close()

    first = threading.Thread(target=dispatcher, args=(True,))
    first.start()
    assert first_dispatched.wait(20)
    second = threading.Thread(target=dispatcher, args=(False,))
    second.start()
    second.join(5)
    finish_first.set()
    first.join(20)
    second.join(20)

    with tenant_scope(workspace):
        assert CampaignRun.objects.filter(campaign=campaign).count() == 1
    assert statuses(campaign) == {"pending": 3}
