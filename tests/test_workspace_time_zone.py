"""The workspace's time zone: a marketer sees and enters times in the shop's local time, not the server's UTC.

Europe/Berlin is UTC+1 in winter and UTC+2 in summer (daylight saving time starts on 28 March 2027 at 02:00);
the admin stays in UTC.
"""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from campaigns.models import Campaign
from crm_site.models import Role, Workspace
from crm_site.tenancy import tenant_scope
from tests.factories import CampaignFactory, CampaignStepFactory, CustomerFactory, OrderFactory

pytestmark = pytest.mark.django_db

UTC = dt.UTC


def at_utc(*parts) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


@pytest.fixture
def berlin(workspace):
    workspace.time_zone = "Europe/Berlin"
    workspace.save(update_fields=["time_zone"])
    return workspace


def campaigns_url(workspace, rest=""):
    return f"/w/{workspace.slug}/campaigns/{rest}"


def campaign_form(**changes):
    data = {"name": "Spring sale", "description": "", "kind": "broadcast", "segment": "", "trigger": "",
            "sender": "", "priority": "3", "holdout_percent": "0", "attribution_window_days": "7",
            "reward_code_prefix": "", "channel": "email", "scheduled_at": "",
            "minute": "0", "hour": "9", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*",
            "time_zone": ""}
    return data | changes


def campaign_named(workspace, name) -> Campaign:
    with tenant_scope(workspace):
        return Campaign.objects.get(name=name)


def text(response) -> str:
    return response.content.decode()


def when_on_detail(client, campaign) -> str:
    page = text(client.get(campaigns_url(campaign.tenant, f"{campaign.pk}/")))
    found = re.search(r'id="campaign-when">\s*(.*?)\s*</dd>', page, re.S)
    assert found, "no When on the campaign page"
    return found.group(1)


def messages_shown(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# --- Entering a broadcast's time --------------------------------------------------------------------------


def test_the_send_time_field_names_the_workspace_zone(marketer_client, berlin):
    page = text(marketer_client.get(campaigns_url(berlin, "new/")))
    assert "Send at (Europe/Berlin)" in page
    assert "in UTC" not in page


def test_nine_in_berlin_in_winter_is_stored_as_eight_utc_and_shown_as_nine(marketer_client, berlin):
    response = marketer_client.post(campaigns_url(berlin, "new/"), campaign_form(scheduled_at="2027-01-15T09:00"))
    assert response.status_code == 302
    campaign = campaign_named(berlin, "Spring sale")
    assert campaign.scheduled_at == at_utc(2027, 1, 15, 8, 0)

    assert when_on_detail(marketer_client, campaign) == "2027-01-15 09:00 (Europe/Berlin)"
    edit_page = text(marketer_client.get(campaigns_url(berlin, f"{campaign.pk}/edit/")))
    assert 'name="scheduled_at" value="2027-01-15T09:00"' in edit_page
    report = text(marketer_client.get(campaigns_url(berlin, f"{campaign.pk}/report/")))
    assert "Scheduled for 2027-01-15 09:00." in report and "Times in Europe/Berlin." in report


def test_nine_in_berlin_in_summer_is_stored_as_seven_utc(marketer_client, berlin):
    marketer_client.post(campaigns_url(berlin, "new/"), campaign_form(scheduled_at="2027-07-15T09:00"))
    campaign = campaign_named(berlin, "Spring sale")
    assert campaign.scheduled_at == at_utc(2027, 7, 15, 7, 0)
    assert when_on_detail(marketer_client, campaign) == "2027-07-15 09:00 (Europe/Berlin)"


def test_saving_the_edit_form_unchanged_keeps_the_time(marketer_client, berlin):
    campaign = CampaignFactory(tenant=berlin, name="Spring sale", scheduled_at=at_utc(2027, 1, 15, 8, 0))
    response = marketer_client.post(campaigns_url(berlin, f"{campaign.pk}/edit/"),
                                    campaign_form(scheduled_at="2027-01-15T09:00"))
    assert response.status_code == 302
    assert campaign_named(berlin, "Spring sale").scheduled_at == at_utc(2027, 1, 15, 8, 0)


def test_a_time_skipped_by_the_clock_change_is_refused_with_a_message(marketer_client, berlin):
    # At 02:00 on 28 March 2027 Berlin's clocks jump to 03:00: 02:30 never happens there.
    response = marketer_client.post(campaigns_url(berlin, "new/"), campaign_form(scheduled_at="2027-03-28T02:30"))
    assert response.status_code == 400
    assert "interpreted in time zone Europe/Berlin" in text(response)
    with tenant_scope(berlin):
        assert not Campaign.objects.exists()


def test_scheduling_says_when_in_the_workspace_zone(marketer_client, berlin):
    campaign = CampaignFactory(tenant=berlin, scheduled_at=at_utc(2027, 1, 15, 8, 0))
    CampaignStepFactory(tenant=berlin, campaign=campaign)
    response = marketer_client.post(campaigns_url(berlin, f"{campaign.pk}/schedule/"), follow=True)
    assert messages_shown(response) == ["Scheduled for 2027-01-15 09:00 (Europe/Berlin)."]


def test_a_utc_workspace_is_unchanged(marketer_client, workspace):
    assert workspace.time_zone == "UTC"
    assert "Send at (UTC)" in text(marketer_client.get(campaigns_url(workspace, "new/")))
    marketer_client.post(campaigns_url(workspace, "new/"), campaign_form(scheduled_at="2027-01-15T09:00"))
    campaign = campaign_named(workspace, "Spring sale")
    assert campaign.scheduled_at == at_utc(2027, 1, 15, 9, 0)
    assert when_on_detail(marketer_client, campaign) == "2027-01-15 09:00 (UTC)"


def test_the_admin_stays_in_utc(admin_client, berlin):
    campaign = CampaignFactory(tenant=berlin, scheduled_at=at_utc(2027, 1, 15, 8, 0))
    page = text(admin_client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/"))
    assert 'value="2027-01-15"' in page and 'value="08:00:00"' in page


# --- Recurring campaigns --------------------------------------------------------------------------------


def test_a_new_recurring_campaign_starts_in_the_workspace_zone(marketer_client, berlin):
    page = text(marketer_client.get(campaigns_url(berlin, "new/") + "?kind=recurring"))
    assert '<option value="Europe/Berlin" selected>' in page
    marketer_client.post(campaigns_url(berlin, "new/"), campaign_form(name="Monday digest", kind="recurring",
                                                                      day_of_week="1", time_zone="Europe/Berlin"))
    campaign = campaign_named(berlin, "Monday digest")
    crontab = PeriodicTask.objects.get(pk=campaign.schedule_id).crontab
    assert (crontab.hour, crontab.minute, str(crontab.timezone)) == ("9", "0", "Europe/Berlin")
    assert "(Europe/Berlin)" in when_on_detail(marketer_client, campaign)


def test_a_recurring_campaign_posted_without_a_zone_takes_the_workspace_zone(marketer_client, berlin):
    marketer_client.post(campaigns_url(berlin, "new/"), campaign_form(name="Digest", kind="recurring", time_zone=""))
    campaign = campaign_named(berlin, "Digest")
    assert str(PeriodicTask.objects.get(pk=campaign.schedule_id).crontab.timezone) == "Europe/Berlin"


def test_a_recurring_campaign_keeps_its_own_zone_when_edited(marketer_client, berlin):
    marketer_client.post(campaigns_url(berlin, "new/"), campaign_form(name="Digest", kind="recurring",
                                                                      time_zone="Asia/Tokyo"))
    campaign = campaign_named(berlin, "Digest")
    edit_page = text(marketer_client.get(campaigns_url(berlin, f"{campaign.pk}/edit/")))
    assert '<option value="Asia/Tokyo" selected>' in edit_page
    assert '<option value="Europe/Berlin" selected>' not in edit_page


# --- Customer pages ----------------------------------------------------------------------------------------


def test_the_customer_page_shows_times_in_the_workspace_zone(marketer_client, berlin):
    customer = CustomerFactory(tenant=berlin, first_name="Lena", last_name="Berg",
                               first_seen_at=at_utc(2026, 1, 15, 23, 30))
    OrderFactory(tenant=berlin, customer=customer, external_id="ORD-7", total=Decimal("12.00"),
                 placed_at=at_utc(2026, 7, 1, 22, 15))
    page = text(marketer_client.get(reverse("customers:detail", args=[berlin.slug, customer.pk])))
    assert "2026-01-16 00:30" in page  # first seen, winter: UTC+1
    assert "2026-07-02 00:15" in page  # the order, summer: UTC+2
    assert "2026-01-15 23:30" not in page and "2026-07-01 22:15" not in page


def test_the_customer_list_dates_and_date_filter_follow_the_workspace_zone(marketer_client, berlin):
    CustomerFactory(tenant=berlin, first_name="Late", last_name="Night", first_seen_at=at_utc(2026, 1, 15, 23, 30))
    CustomerFactory(tenant=berlin, first_name="Early", last_name="Bird", first_seen_at=at_utc(2026, 1, 15, 8, 0))
    listing = text(marketer_client.get(reverse("customers:list", args=[berlin.slug])))
    assert "2026-01-16" in listing and "2026-01-15" in listing
    # 23:30 UTC on the 15th is the 16th in Berlin: the filter for the 16th finds Late Night, not Early Bird.
    filtered = text(marketer_client.get(reverse("customers:list", args=[berlin.slug]),
                                        {"first_seen_min": "2026-01-16", "first_seen_max": "2026-01-16"}))
    assert "Night" in filtered and "Bird" not in filtered


def test_the_campaign_list_shows_times_in_the_workspace_zone(marketer_client, berlin):
    campaign = CampaignFactory(tenant=berlin, name="Winter sale")
    with tenant_scope(berlin):
        Campaign.objects.filter(pk=campaign.pk).update(created_at=at_utc(2026, 1, 15, 23, 30))
    assert "2026-01-16 00:30" in text(marketer_client.get(campaigns_url(berlin)))


def test_a_broken_stored_zone_shows_utc_rather_than_failing(marketer_client, workspace):
    Workspace.objects.filter(pk=workspace.pk).update(time_zone="Europe")  # a folder of zones, not a zone
    response = marketer_client.get(campaigns_url(workspace, "new/"))
    assert response.status_code == 200 and "Send at (UTC)" in text(response)


# --- Workspace settings ------------------------------------------------------------------------------------


def test_an_admin_changes_the_zone_and_the_pages_follow(member_client, workspace):
    admin = member_client(Role.ADMIN)
    settings_url = f"/w/{workspace.slug}/settings/"
    page = text(admin.get(settings_url))
    assert '<option value="Europe/Berlin">' in page and "Times on these pages are in <strong>UTC</strong>" in page
    response = admin.post(settings_url, {"name": workspace.name, "time_zone": "America/New_York",
                                         "currency": workspace.currency}, follow=True)
    assert messages_shown(response) == ["Workspace settings saved."]
    workspace.refresh_from_db()
    assert workspace.time_zone == "America/New_York"
    assert "Times on these pages are in <strong>America/New_York</strong>" in text(response)
    assert "Send at (America/New_York)" in text(admin.get(campaigns_url(workspace, "new/")))


@pytest.mark.parametrize("zone", ["Mars/Olympus", "Europe", "", "../../etc/passwd"])
def test_an_invalid_zone_in_settings_re_renders_with_a_message(member_client, workspace, zone):
    admin = member_client(Role.ADMIN)
    response = admin.post(f"/w/{workspace.slug}/settings/", {"name": "Renamed", "time_zone": zone,
                                                             "currency": workspace.currency})
    assert response.status_code == 400
    expected = "This field is required." if not zone else "choose one from the list, such as Europe/Berlin"
    assert expected in text(response)
    workspace.refresh_from_db()
    assert (workspace.name, workspace.time_zone) == ("Acme Coffee", "UTC")


def test_a_marketer_cannot_change_the_zone(member_client, workspace):
    marketer = member_client(Role.MARKETER)
    response = marketer.post(f"/w/{workspace.slug}/settings/", {"name": workspace.name, "time_zone": "Asia/Tokyo",
                                                                "currency": workspace.currency})
    assert response.status_code == 403
    workspace.refresh_from_db()
    assert workspace.time_zone == "UTC"


# --- Background jobs run in the workspace's zone too ------------------------------------------------

from crm_site.jobs import tenant_task  # noqa: E402


@tenant_task()
def _local_day_of(instant_iso: str) -> str:
    from django.utils import timezone

    return timezone.localdate(dt.datetime.fromisoformat(instant_iso)).isoformat()


@tenant_task(atomic=False)
def _local_day_of_long_job(instant_iso: str) -> str:
    from django.utils import timezone

    return timezone.localdate(dt.datetime.fromisoformat(instant_iso)).isoformat()


@pytest.mark.parametrize("task", [_local_day_of, _local_day_of_long_job])
def test_a_job_counts_days_in_the_shops_zone_like_its_pages(berlin, other_workspace, task):
    late_evening_utc = at_utc(2027, 1, 15, 23, 30).isoformat()  # already the 16th in Berlin
    assert task.apply(args=[berlin.pk, late_evening_utc]).get() == "2027-01-16"
    assert task.apply(args=[other_workspace.pk, late_evening_utc]).get() == "2027-01-15"
