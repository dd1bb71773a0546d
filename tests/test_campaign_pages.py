"""Campaign pages: the list, creating and editing campaigns and their steps, going live and back from the page,
previews and test sends, the report on hand-built outbox rows, sending settings, roles and other workspaces."""

import datetime as dt
import json
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from campaigns.models import Campaign, CampaignStep, Message, MessageEvent, SenderIdentity, SendingPolicy
from crm_site.models import Role
from crm_site.tenancy import tenant_scope
from tests.factories import (
    CampaignFactory,
    CampaignStepFactory,
    CustomerFactory,
    MembershipFactory,
    OrderFactory,
    OrderLineFactory,
    ProductFactory,
    SenderIdentityFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def url(workspace, rest=""):
    return f"/w/{workspace.slug}/campaigns/{rest}"


def page_text(response) -> str:
    return response.content.decode()


def metric(response, name) -> str:
    """The number a report cell shows for ``name``."""
    found = re.search(rf'data-metric="{name}">([^<]*)<', page_text(response))
    assert found, f"no {name} on the page"
    return found.group(1).strip()


def campaign_form(**changes):
    data = {"name": "Spring sale", "description": "", "kind": "broadcast", "segment": "", "trigger": "",
            "sender": "", "priority": "3", "holdout_percent": "10", "attribution_window_days": "7",
            "exit_on_purchase": "on", "reward_code_prefix": "", "channel": "email", "scheduled_at": "",
            "minute": "0", "hour": "9", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*",
            "time_zone": "UTC"}
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def in_scope(workspace, function):
    with tenant_scope(workspace):
        return function()


def campaign_named(workspace, name) -> Campaign:
    return in_scope(workspace, lambda: Campaign.objects.get(name=name))


def step_subjects(campaign) -> list[str]:
    return in_scope(campaign.tenant_id,
                    lambda: list(campaign.steps.order_by("position").values_list("subject", flat=True)))


def messages_shown(response) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []


# --- The list ---------------------------------------------------------------------------------------------


def test_the_list_filters_by_status_and_kind(marketer_client, workspace):
    CampaignFactory(tenant=workspace, name="Summer broadcast", status="done")
    CampaignFactory(tenant=workspace, name="Monday digest", kind="recurring", status="scheduled")
    CampaignFactory(tenant=workspace, name="Win them back", kind="journey", status="sending", trigger="stage:at_risk")
    everything = page_text(marketer_client.get(url(workspace)))
    assert all(name in everything for name in ("Summer broadcast", "Monday digest", "Win them back"))
    live = page_text(marketer_client.get(url(workspace), {"status": "sending"}))
    assert "Win them back" in live and "Summer broadcast" not in live and "Live" in live
    recurring = page_text(marketer_client.get(url(workspace), {"kind": "recurring"}))
    assert "Monday digest" in recurring and "Win them back" not in recurring
    nothing = page_text(marketer_client.get(url(workspace), {"kind": "journey", "status": "done"}))
    assert "No campaign matches these filters." in nothing


def test_the_list_is_paged_on_the_server_and_htmx_gets_only_the_results(marketer_client, workspace):
    for number in range(30):
        CampaignFactory(tenant=workspace, name=f"Weekly news {number:02d}")
    first = page_text(marketer_client.get(url(workspace)))
    assert first.count('<tr id="campaign-') == 25 and "Page 1 of 2 · 30 campaigns" in first
    second = marketer_client.get(url(workspace), {"page": 2}, headers={"HX-Request": "true"})
    body = page_text(second)
    assert body.count('<tr id="campaign-') == 5 and "Weekly news 00" in body
    assert "<html" not in body and 'id="campaign-results"' in body


def test_the_list_costs_the_same_queries_for_many_campaigns(marketer_client, workspace,
                                                             django_assert_max_num_queries):
    CampaignFactory(tenant=workspace)
    marketer_client.get(url(workspace))  # warm the session
    with CaptureQueriesContext(connection) as few:
        marketer_client.get(url(workspace))
    for number in range(24):
        campaign = CampaignFactory(tenant=workspace, name=f"Campaign {number}", kind="journey",
                                   trigger="stage:at_risk")
        CampaignStepFactory(tenant=workspace, campaign=campaign)
    with django_assert_max_num_queries(len(few)):
        response = marketer_client.get(url(workspace))
    assert page_text(response).count('<tr id="campaign-') == 25


def test_the_list_offers_broadcast_recurring_and_the_journey_templates(marketer_client, workspace):
    body = page_text(marketer_client.get(url(workspace)))
    for label in ("New broadcast", "New recurring", "New journey from a template"):
        assert label in body
    templates = page_text(marketer_client.get(url(workspace, "journeys/new/")))
    for name in ("Welcome series", "Thank you (post-purchase)", "Reward", "Win-back", "Last call"):
        assert name in templates


# --- Creating and editing ------------------------------------------------------------------------------------


def test_a_marketer_creates_a_broadcast_for_a_segment(marketer_client, workspace):
    sender = SenderIdentityFactory(tenant=workspace)
    from segments.models import Segment

    segment = in_scope(workspace, lambda: Segment.objects.create(name="Coffee lovers"))
    at = (timezone.now() + dt.timedelta(days=2)).replace(second=0, microsecond=0)
    response = marketer_client.post(url(workspace, "new/"), campaign_form(
        segment=segment.pk, sender=sender.pk, holdout_percent="20", scheduled_at=at.strftime("%Y-%m-%dT%H:%M")))
    campaign = campaign_named(workspace, "Spring sale")
    assert response.status_code == 302 and response["Location"] == url(workspace, f"{campaign.pk}/steps/new/")
    assert (campaign.kind, campaign.status, campaign.segment_id, campaign.sender_id) == (
        "broadcast", "draft", segment.pk, sender.pk)
    assert (campaign.holdout_percent, campaign.scheduled_at) == (20, at)


def test_a_broken_campaign_form_re_renders_with_its_messages(marketer_client, workspace):
    response = marketer_client.post(url(workspace, "new/"), campaign_form(
        name="", holdout_percent="60", trigger="stage:at_risk",
        scheduled_at=(timezone.now() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")))
    body = page_text(response)
    assert response.status_code == 400
    assert "This field is required." in body
    assert "Ensure this value is less than or equal to 50." in body
    assert "Only journeys start on a lifecycle moment" in body
    assert "Pick a time in the future" in body
    assert in_scope(workspace, lambda: Campaign.objects.count()) == 0


def test_a_recurring_campaign_keeps_its_crontab_in_celery_beat(marketer_client, workspace):
    response = marketer_client.post(url(workspace, "new/"), campaign_form(
        name="Monday digest", kind="recurring", minute="30", hour="8", day_of_week="1", time_zone="Europe/Berlin"))
    assert response.status_code == 302
    campaign = campaign_named(workspace, "Monday digest")
    task = PeriodicTask.objects.get(pk=campaign.schedule_id)
    assert (task.crontab.minute, task.crontab.hour, task.crontab.day_of_week) == ("30", "8", "1")
    assert str(task.crontab.timezone) == "Europe/Berlin" and json.loads(task.args) == [workspace.pk, campaign.pk]
    assert task.enabled is False  # a draft does not run

    edit_page = page_text(marketer_client.get(url(workspace, f"{campaign.pk}/edit/")))
    assert 'name="minute" value="30"' in edit_page
    marketer_client.post(url(workspace, f"{campaign.pk}/edit/"), campaign_form(
        name="Monday digest", kind="recurring", minute="0", hour="7", day_of_week="1", time_zone="Europe/Berlin"))
    task.refresh_from_db()
    assert task.crontab.hour == "7" and PeriodicTask.objects.filter(task="campaigns.tasks.run_recurring").count() == 1


def test_a_campaign_that_stops_recurring_loses_its_beat_entry(marketer_client, workspace):
    marketer_client.post(url(workspace, "new/"), campaign_form(name="Digest", kind="recurring"))
    campaign = campaign_named(workspace, "Digest")
    assert PeriodicTask.objects.filter(pk=campaign.schedule_id).exists()
    marketer_client.post(url(workspace, f"{campaign.pk}/edit/"), campaign_form(name="Digest", kind="broadcast"))
    assert campaign_named(workspace, "Digest").schedule_id is None
    assert not PeriodicTask.objects.filter(task="campaigns.tasks.run_recurring").exists()


def test_a_scheduled_broadcast_keeps_a_time(marketer_client, workspace):
    at = timezone.now() + dt.timedelta(days=1)
    campaign = CampaignFactory(tenant=workspace, name="Spring sale", status="scheduled", scheduled_at=at)
    response = marketer_client.post(url(workspace, f"{campaign.pk}/edit/"), campaign_form(scheduled_at=""))
    assert response.status_code == 400 and "A scheduled broadcast needs its time" in page_text(response)
    assert campaign_named(workspace, "Spring sale").scheduled_at == at


def test_an_impossible_crontab_is_explained_and_nothing_is_saved(marketer_client, workspace):
    response = marketer_client.post(url(workspace, "new/"), campaign_form(name="Broken", kind="recurring", hour="25"))
    assert response.status_code == 400
    assert "The schedule was not saved: hour" in page_text(response)
    assert in_scope(workspace, lambda: Campaign.objects.filter(name="Broken").exists()) is False
    assert not PeriodicTask.objects.filter(task="campaigns.tasks.run_recurring").exists()


def test_a_journey_from_its_template_is_a_draft_with_the_templates_steps(marketer_client, workspace):
    SenderIdentityFactory(tenant=workspace)
    response = marketer_client.post(url(workspace, "journeys/new/"), {"template": "winback"})
    campaign = campaign_named(workspace, "Win-back")
    assert response["Location"] == url(workspace, f"{campaign.pk}/")
    assert (campaign.kind, campaign.status, campaign.trigger) == ("journey", "draft", "stage:at_risk")
    body = page_text(marketer_client.get(response["Location"]))
    assert "We miss you, {{ first_name|default(&#x27;friend&#x27;) }}" in body and "Go live" in body
    assert "Not ready to go out yet" not in body


def test_a_live_journey_cannot_be_edited_until_it_is_paused(marketer_client, workspace):
    campaign = CampaignFactory(tenant=workspace, kind="journey", status="sending", trigger="stage:at_risk")
    response = marketer_client.get(url(workspace, f"{campaign.pk}/edit/"), follow=True)
    assert "pause it first" in page_text(response)


# --- Steps -------------------------------------------------------------------------------------------------


def test_template_errors_from_the_sandbox_show_next_to_the_field(marketer_client, workspace):
    campaign = CampaignFactory(tenant=workspace)
    response = marketer_client.post(url(workspace, f"{campaign.pk}/steps/new/"), {
        "delay_days": "0", "delay_hours": "0", "subject": "Hi {{ first_name", "body": "{{ settings.SECRET_KEY }}",
        "body_format": "text"})
    body = page_text(response)
    assert response.status_code == 400
    assert "Line 1:" in body and "Unknown variable settings" in body
    assert in_scope(workspace, lambda: CampaignStep.objects.count()) == 0


@pytest.mark.parametrize("body", [
    "{{ ''.__class__.__mro__ }}",
    "{% for i in range(10**9) %}x{% endfor %}",
    "{{ 1 / 0 }}",
    "{{ first_name|no_such_filter }}",
    "{% include 'base.html' %}",
    "{{ first_name * 100000000 }}",
    "{% if %}",
    "x" * 200_000,
])
def test_a_hostile_template_is_refused_with_a_message_never_a_500(marketer_client, workspace, body):
    campaign = CampaignFactory(tenant=workspace)
    response = marketer_client.post(url(workspace, f"{campaign.pk}/steps/new/"), {
        "delay_days": "0", "delay_hours": "0", "subject": "Hello", "body": body, "body_format": "html"})
    assert response.status_code == 400
    assert response.context["form"].errors["body"]
    assert in_scope(workspace, lambda: CampaignStep.objects.count()) == 0


def test_steps_are_added_edited_reordered_and_removed(marketer_client, workspace):
    campaign = CampaignFactory(tenant=workspace)
    new_step = url(workspace, f"{campaign.pk}/steps/new/")
    for day, subject in ((0, "First"), (3, "Second"), (7, "Third")):
        response = marketer_client.post(new_step, {"delay_days": day, "delay_hours": 0, "subject": subject,
                                                   "body": "Hi {{ first_name }}", "body_format": "text"})
        assert response.status_code == 302
    assert step_subjects(campaign) == ["First", "Second", "Third"]
    third = in_scope(workspace, lambda: campaign.steps.get(subject="Third"))
    marketer_client.post(url(workspace, f"{campaign.pk}/steps/{third.pk}/move/"), {"direction": "up"})
    assert step_subjects(campaign) == ["First", "Third", "Second"]
    first = in_scope(workspace, lambda: campaign.steps.get(subject="First"))
    marketer_client.post(url(workspace, f"{campaign.pk}/steps/{first.pk}/"), {
        "delay_days": 1, "delay_hours": 2, "subject": "First, edited", "body": "Hello", "body_format": "text"})
    marketer_client.post(url(workspace, f"{campaign.pk}/steps/{third.pk}/delete/"))
    assert step_subjects(campaign) == ["First, edited", "Second"]
    positions = in_scope(workspace, lambda: list(campaign.steps.order_by("position").values_list("position",
                                                                                                   "delay_hours")))
    assert positions == [(1, 2), (2, 0)]


def test_a_step_with_messages_cannot_be_removed(marketer_client, workspace):
    campaign = CampaignFactory(tenant=workspace, status="paused")
    step = CampaignStepFactory(tenant=workspace, campaign=campaign)
    customer = CustomerFactory(tenant=workspace)
    now = timezone.now()
    in_scope(workspace, lambda: Message.objects.create(campaign=campaign, step=step, customer=customer,
                                                       channel="email", status="sent", scheduled_for=now,
                                                       next_attempt_at=now))
    response = marketer_client.post(url(workspace, f"{campaign.pk}/steps/{step.pk}/delete/"), follow=True)
    assert "would erase what the report counts" in page_text(response)
    assert in_scope(workspace, lambda: CampaignStep.objects.filter(pk=step.pk).exists())


def test_a_step_of_another_campaign_is_not_found_through_this_one(marketer_client, workspace):
    mine, theirs = CampaignFactory(tenant=workspace), CampaignFactory(tenant=workspace)
    step = CampaignStepFactory(tenant=workspace, campaign=theirs)
    assert marketer_client.get(url(workspace, f"{mine.pk}/steps/{step.pk}/")).status_code == 404
    assert marketer_client.post(url(workspace, f"{mine.pk}/steps/{step.pk}/delete/")).status_code == 404


# --- Going live, pause, resume, cancel --------------------------------------------------------------------------


def test_a_campaign_that_is_not_ready_says_why_in_words(marketer_client, workspace):
    campaign = CampaignFactory(tenant=workspace, sender=None)
    page = page_text(marketer_client.get(url(workspace, f"{campaign.pk}/")))
    assert "Add at least one message step." in page
    response = marketer_client.post(url(workspace, f"{campaign.pk}/schedule/"), follow=True)
    assert "Not scheduled: Add at least one message step." in messages_shown(response)[0]
    assert in_scope(workspace, lambda: Campaign.objects.get(pk=campaign.pk).status) == "draft"


def test_a_broadcast_is_scheduled_paused_resumed_and_cancelled_from_its_page(marketer_client, workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = CampaignFactory(tenant=workspace)
    step = CampaignStepFactory(tenant=workspace, campaign=campaign)

    def act(action):
        response = marketer_client.post(url(workspace, f"{campaign.pk}/{action}/"), follow=True)
        return in_scope(workspace, lambda: Campaign.objects.get(pk=campaign.pk).status), messages_shown(response)

    assert act("schedule") == ("scheduled", ["Scheduled: it goes out within a minute."])
    assert act("pause")[0] == "paused"
    assert act("resume")[0] == "scheduled"
    now = timezone.now()
    in_scope(workspace, lambda: Message.objects.create(campaign=campaign, step=step, customer=customer,
                                                       channel="email", scheduled_for=now, next_attempt_at=now))
    assert act("cancel") == ("cancelled", ["Cancelled. 1 waiting message will not be sent."])
    assert act("resume") == ("cancelled", ["Not resumed: Only a paused campaign can be resumed."])


def test_a_journey_goes_live_from_its_page(marketer_client, workspace):
    SenderIdentityFactory(tenant=workspace)
    marketer_client.post(url(workspace, "journeys/new/"), {"template": "welcome"})
    campaign = campaign_named(workspace, "Welcome series")
    response = marketer_client.post(url(workspace, f"{campaign.pk}/schedule/"), follow=True)
    assert messages_shown(response)[-1] == "The journey is live: customers enter it when their lifecycle moment comes."
    campaign = campaign_named(workspace, "Welcome series")
    assert campaign.status == "sending" and campaign.started_at


def test_an_action_answers_only_to_post(marketer_client, workspace):
    campaign = CampaignFactory(tenant=workspace)
    assert marketer_client.get(url(workspace, f"{campaign.pk}/schedule/")).status_code == 405


# --- Preview and test send --------------------------------------------------------------------------------------


@pytest.fixture
def ann(workspace):
    customer = CustomerFactory(tenant=workspace, first_name="Ann", email="ann@example.org", email_opt_in=True)
    product = ProductFactory(tenant=workspace, name="Espresso beans")
    OrderLineFactory(tenant=workspace, order=OrderFactory(tenant=workspace, customer=customer), product=product)
    return customer


def test_preview_shows_the_message_as_a_chosen_customer_gets_it(marketer_client, workspace, ann):
    step = CampaignStepFactory(tenant=workspace, subject="For {{ first_name }}",
                               body="Enjoying {{ last_purchase.product }}?")
    response = marketer_client.get(url(workspace, f"{step.campaign_id}/preview/"),
                                   {"step": step.pk, "customer": "ANN@example.org"}, headers={"HX-Request": "true"})
    body = page_text(response)
    assert "<html" not in body
    assert 'id="preview-subject">For Ann<' in body and "Enjoying Espresso beans?" in body
    sample = page_text(marketer_client.get(url(workspace, f"{step.campaign_id}/preview/"), {"step": step.pk}))
    assert "For sample values" in sample and "For Alex" in sample


def test_preview_shows_the_error_a_customer_would_hit_instead_of_failing(marketer_client, workspace):
    never_bought = CustomerFactory(tenant=workspace, email="new@example.org")
    step = CampaignStepFactory(tenant=workspace, body="Enjoying {{ last_purchase.product }}?")
    response = marketer_client.get(url(workspace, f"{step.campaign_id}/preview/"),
                                   {"step": step.pk, "customer": never_bought.email})
    assert response.status_code == 200
    assert "This customer would not get the message" in page_text(response)
    assert "does not exist" in page_text(response)
    unknown = marketer_client.get(url(workspace, f"{step.campaign_id}/preview/"),
                                  {"step": step.pk, "customer": "nobody@example.org"})
    assert unknown.status_code == 400 and "No customer “nobody@example.org” in this workspace." in page_text(unknown)


def test_a_test_send_reaches_a_team_member_and_not_the_outbox(member_client, workspace, ann, smtp_sink):
    client = member_client(Role.MARKETER, user=UserFactory(email="mia@acme.example"))
    step = CampaignStepFactory(tenant=workspace, subject="For {{ first_name }}")
    response = client.post(url(workspace, f"{step.campaign_id}/test-send/"),
                           {"step": step.pk, "customer": "ann@example.org", "to_email": "mia@acme.example"},
                           follow=True)
    assert messages_shown(response) == ["Test message sent to mia@acme.example."]
    (mail,) = smtp_sink.wait_for(1)
    assert mail["to"] == ["mia@acme.example"] and mail["message"]["Subject"] == "[Test] For Ann"
    assert in_scope(workspace, lambda: Message.objects.count()) == 0


def test_a_test_send_goes_only_to_team_members(marketer_client, workspace, smtp_sink):
    step = CampaignStepFactory(tenant=workspace)
    response = marketer_client.post(url(workspace, f"{step.campaign_id}/test-send/"),
                                    {"step": step.pk, "to_email": "stranger@example.org"})
    assert response.status_code == 400 and "Select a valid choice" in page_text(response)
    assert smtp_sink.wait_for(1, timeout=0.5) == []


# --- The report -------------------------------------------------------------------------------------------------


def test_the_report_counts_hand_built_outbox_rows(marketer_client, workspace):
    campaign = CampaignFactory(tenant=workspace, status="done", attribution_window_days=7)
    step = CampaignStepFactory(tenant=workspace, campaign=campaign)
    sent_at = timezone.now() - dt.timedelta(days=3)
    customers = [CustomerFactory(tenant=workspace, email=f"r{n}@example.org") for n in range(8)]
    rows = ["sent", "sent", "sent", "sent", "held_out", "held_out", "suppressed", "deferred"]

    def build():
        messages = [Message.objects.create(
            campaign=campaign, step=step, customer=customer, channel="email", status=status,
            skip_reason="frequency_cap" if status == "suppressed" else "", scheduled_for=sent_at,
            next_attempt_at=sent_at, sent_at=sent_at if status == "sent" else None,
            deferred_at=sent_at if status == "deferred" else None)
            for customer, status in zip(customers, rows, strict=True)]
        for message, kind in ((messages[0], "opened"), (messages[1], "opened"), (messages[0], "clicked"),
                              (messages[0], "opened"), (messages[3], "bounced")):
            MessageEvent.objects.create(message=message, campaign=campaign, customer=message.customer, kind=kind)
        OrderFactory(tenant=workspace, customer=customers[0], placed_at=sent_at + dt.timedelta(days=1),
                     total=Decimal("42.50"))
        OrderFactory(tenant=workspace, customer=customers[1], placed_at=sent_at + dt.timedelta(days=9),
                     total=Decimal("99.00"))  # after the window: not a conversion

    in_scope(workspace, build)
    response = marketer_client.get(url(workspace, f"{campaign.pk}/report/"))
    expected = {"targeted": "8", "held_out": "2", "not_sent": "1", "deferred": "1", "sent": "4", "delivered": "3",
                "opened": "2", "clicked": "1", "bounced": "1", "unsubscribed": "0", "conversions": "1"}
    assert {name: metric(response, name) for name in expected} == expected
    assert metric(response, "revenue").startswith("42.50")
    body = page_text(response)
    assert "Frequency cap reached: 1" in body
    assert "Sample too small to measure uplift: the holdout group has 2 customers" in body
    assert "every 2s" not in body  # a finished campaign does not poll


def test_a_sending_campaigns_report_refreshes_in_place(marketer_client, workspace):
    campaign = CampaignFactory(tenant=workspace, kind="journey", status="sending", trigger="stage:at_risk")
    CampaignStepFactory(tenant=workspace, campaign=campaign)
    page = page_text(marketer_client.get(url(workspace, f"{campaign.pk}/report/")))
    assert 'hx-trigger="every 2s"' in page
    fragment = page_text(marketer_client.get(url(workspace, f"{campaign.pk}/report/"),
                                             headers={"HX-Request": "true"}))
    assert fragment.lstrip().startswith('<div id="progress"') and "<html" not in fragment


# --- Sending settings (admins) -----------------------------------------------------------------------------


def test_an_admin_adds_and_edits_sender_identities(member_client, workspace):
    client = member_client(Role.ADMIN)
    old_default = SenderIdentityFactory(tenant=workspace, name="Old", is_default=True)
    response = client.post(url(workspace, "settings/senders/"), {
        "name": "Newsletter", "from_name": "Acme Coffee", "from_email": "news@acme.example",
        "reply_to": "", "sms_from": "", "is_default": "on"})
    assert response.status_code == 302
    senders = in_scope(workspace, lambda: dict(SenderIdentity.objects.values_list("name", "is_default")))
    assert senders == {"Newsletter": True, "Old": False}
    duplicate = client.post(url(workspace, "settings/senders/"), {
        "name": "Copy", "from_name": "Acme", "from_email": "NEWS@acme.example"})
    assert duplicate.status_code == 400
    assert "Another sender identity already uses this address." in page_text(duplicate)
    client.post(url(workspace, f"settings/senders/{old_default.pk}/"), {
        "name": "Old", "from_name": "Acme Shop", "from_email": old_default.from_email})
    assert in_scope(workspace, lambda: SenderIdentity.objects.get(pk=old_default.pk).from_name) == "Acme Shop"


def test_an_admin_sets_the_frequency_cap_and_quiet_hours(member_client, workspace):
    client = member_client(Role.ADMIN)
    form = client.get(url(workspace, "settings/sending-policy/"))
    assert 'name="frequency_cap" value="3"' in page_text(form)  # the defaults until saved
    client.post(url(workspace, "settings/sending-policy/"), {
        "frequency_cap": "5", "frequency_window_days": "14", "quiet_hours_enabled": "on",
        "quiet_hours_start": "22:00", "quiet_hours_end": "07:30"})
    policy = in_scope(workspace, lambda: SendingPolicy.objects.get())
    assert (policy.frequency_cap, policy.frequency_window_days, policy.quiet_hours_start) == (5, 14, dt.time(22))
    same = client.post(url(workspace, "settings/sending-policy/"), {
        "frequency_cap": "5", "frequency_window_days": "0", "quiet_hours_enabled": "on",
        "quiet_hours_start": "22:00", "quiet_hours_end": "22:00"})
    assert same.status_code == 400
    assert "start and end at the same time" in page_text(same)
    assert "Ensure this value is greater than or equal to 1." in page_text(same)


def test_the_sender_list_costs_the_same_queries_for_many_senders(member_client, workspace,
                                                                  django_assert_max_num_queries):
    client = member_client(Role.ADMIN)
    SenderIdentityFactory(tenant=workspace)
    client.get(url(workspace, "settings/senders/"))
    with CaptureQueriesContext(connection) as few:
        client.get(url(workspace, "settings/senders/"))
    for _ in range(10):
        SenderIdentityFactory(tenant=workspace, is_default=False)
    with django_assert_max_num_queries(len(few)):
        response = client.get(url(workspace, "settings/senders/"))
    assert page_text(response).count('<tr id="sender-') == 11


@pytest.mark.parametrize("role", [Role.MARKETER, Role.VIEWER])
def test_sending_settings_are_for_admins_only(member_client, workspace, role):
    client = member_client(role)
    assert client.get(url(workspace, "settings/senders/")).status_code == 403
    assert client.post(url(workspace, "settings/sending-policy/"), {"frequency_cap": "0"}).status_code == 403


# --- Roles and other workspaces -------------------------------------------------------------------------------


def test_a_viewer_sees_campaigns_but_can_change_nothing(member_client, workspace):
    viewer = member_client(Role.VIEWER)
    campaign = CampaignFactory(tenant=workspace, name="Spring sale")
    step = CampaignStepFactory(tenant=workspace, campaign=campaign)
    listing = page_text(viewer.get(url(workspace)))
    assert "Spring sale" in listing and "New broadcast" not in listing
    detail = page_text(viewer.get(url(workspace, f"{campaign.pk}/")))
    assert "Schedule" not in detail and "Send test" not in detail and "Edit settings" not in detail
    assert viewer.get(url(workspace, f"{campaign.pk}/report/")).status_code == 200
    assert viewer.get(url(workspace, f"{campaign.pk}/preview/"), {"step": step.pk}).status_code == 200
    for path, data in ((f"{campaign.pk}/schedule/", {}), ("new/", campaign_form()),
                       ("journeys/new/", {"template": "winback"}), (f"{campaign.pk}/steps/{step.pk}/delete/", {}),
                       (f"{campaign.pk}/test-send/", {"step": step.pk})):
        assert viewer.post(url(workspace, path), data).status_code == 403
    assert viewer.get(url(workspace, "new/")).status_code == 403
    assert in_scope(workspace, lambda: (Campaign.objects.get().status, CampaignStep.objects.count())) == ("draft", 1)


def test_another_workspaces_campaign_is_404(marketer_client, workspace, other_workspace):
    theirs = CampaignFactory(tenant=other_workspace)
    CampaignStepFactory(tenant=other_workspace, campaign=theirs)
    for path in ("", "report/", "edit/", "preview/"):
        assert marketer_client.get(url(workspace, f"{theirs.pk}/{path}")).status_code == 404
    assert marketer_client.post(url(workspace, f"{theirs.pk}/schedule/")).status_code == 404
    assert in_scope(other_workspace, lambda: Campaign.objects.get(pk=theirs.pk).status) == "draft"


def test_the_owner_of_another_workspace_cannot_reach_this_ones_senders(client, workspace, other_workspace):
    sender = SenderIdentityFactory(tenant=workspace)
    outsider = MembershipFactory(workspace=other_workspace, role=Role.OWNER).user
    client.force_login(outsider)
    assert client.get(f"/w/{other_workspace.slug}/campaigns/settings/senders/{sender.pk}/").status_code == 404
