"""Public pages: double opt-in through a real SMTP server, RFC 8058 one-click unsubscribe, preference centre."""

import datetime as dt
import re
import zoneinfo
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from crm_site.tenancy import tenant_scope
from customers import consent, public_links
from customers.models import ConsentEvent, Customer, MessagingPause, Suppression
from tests.factories import CustomerFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"


def _link_in(message, prefix="/p/"):
    body = message["message"].get_content()
    url = re.search(r"https?://\S+", body).group(0)
    path = urlsplit(url).path
    assert path.startswith(prefix)
    return path


def _state(workspace, email):
    with tenant_scope(workspace):
        customer = Customer.objects.filter(email=email).first()
        return customer and (customer.email_opt_in, consent.is_suppressed("email", email))


def test_double_opt_in_through_a_real_mail(client, workspace, smtp_sink):
    page = client.get("/p/acme/subscribe/")
    assert page.status_code == 200
    assert "Yes, I would like to receive news and offers from Acme Coffee" in page.content.decode()

    response = client.post("/p/acme/subscribe/", {"email": " Ann@Example.org ", "first_name": "Ann", "agree": "on"},
                           HTTP_USER_AGENT=BROWSER)
    assert "Check your inbox" in response.content.decode()
    [mail] = smtp_sink.wait_for(1)
    assert mail["to"] == ["ann@example.org"]
    assert mail["message"]["Subject"] == "Please confirm your subscription to Acme Coffee"
    link = _link_in(mail)
    # Nothing is stored before the confirmation.
    assert _state(workspace, "ann@example.org") is None

    # Opening the link (or a mail scanner fetching it) only shows a button.
    shown = client.get(link)
    assert "Yes, subscribe me" in shown.content.decode()
    assert _state(workspace, "ann@example.org") is None

    confirmed = client.post(link, HTTP_USER_AGENT="Confirming browser")
    assert "you are subscribed" in confirmed.content.decode()
    assert _state(workspace, "ann@example.org") == (True, False)
    with tenant_scope(workspace):
        event = ConsentEvent.objects.get()
        assert (event.method, event.action, event.channel) == ("double_opt_in", "grant", "email")
        assert event.ip_address == "127.0.0.1"
        assert event.user_agent == BROWSER
        assert event.wording_version == "email-2025-01"
        assert event.confirmed_at is not None and event.confirmed_at >= event.occurred_at
        assert Customer.objects.get().first_name == "Ann"

    # Confirming twice records nothing new.
    again = client.post(link)
    assert "already confirmed" in again.content.decode()
    with tenant_scope(workspace):
        assert ConsentEvent.objects.count() == 1


def test_subscribe_form_errors_rerender_with_messages(client, workspace, smtp_sink):
    response = client.post("/p/acme/subscribe/", {"email": "not-an-address"})
    assert response.status_code == 400
    text = response.content.decode()
    assert "is not a valid e-mail address" in text
    assert "Please tick the box" in text
    assert smtp_sink.wait_for(1, timeout=0.3) == []


def test_a_bot_filling_the_hidden_field_gets_no_mail(client, workspace, smtp_sink):
    response = client.post("/p/acme/subscribe/", {"email": "bot@example.org", "agree": "on", "website": "spam"})
    assert "Check your inbox" in response.content.decode()
    assert smtp_sink.wait_for(1, timeout=0.3) == []


def test_repeated_requests_for_one_address_send_at_most_three_mails(client, workspace, smtp_sink):
    for _ in range(5):
        client.post("/p/acme/subscribe/", {"email": "ann@example.org", "agree": "on"})
    assert len(smtp_sink.wait_for(4, timeout=1)) == 3


def test_double_opt_in_lifts_an_earlier_unsubscribe(client, workspace, smtp_sink):
    customer = CustomerFactory(tenant=workspace, email="back@example.org")
    with tenant_scope(workspace):
        consent.unsubscribe(customer, "email")
    client.post("/p/acme/subscribe/", {"email": "back@example.org", "agree": "on"})
    client.post(_link_in(smtp_sink.wait_for(1)[0]))
    assert _state(workspace, "back@example.org") == (True, False)


def test_a_forged_or_foreign_confirmation_link_is_refused(client, workspace, other_workspace):
    token = public_links.make_token("confirm", other_workspace.pk, e="x@example.org", n="", v="email-2025-01",
                                    ip="", ua="", t="2024-01-01T00:00:00+00:00")
    assert client.post(f"/p/acme/subscribe/confirm/{token}/").status_code == 404
    assert client.post(f"/p/acme/subscribe/confirm/{token[:-2]}xx/").status_code == 404
    assert client.get("/p/no-such-shop/subscribe/").status_code == 404
    with tenant_scope(workspace):
        assert not Customer.objects.exists()


# --- RFC 8058 one-click unsubscribe ---------------------------------------------------------------------


@pytest.fixture
def subscriber(workspace):
    customer = CustomerFactory(tenant=workspace, email="sub@example.org")
    with tenant_scope(workspace):
        consent.record_consent(customer, "email", "grant", "form")
    return customer


def _path(url):
    return urlsplit(url).path


def test_unsubscribe_url_is_absolute_on_the_site_url(subscriber, settings):
    with tenant_scope(subscriber.tenant_id):
        url = public_links.unsubscribe_url(subscriber, "email")
    assert url.startswith(settings.SITE_URL + "/p/acme/unsubscribe/")


def test_get_on_the_unsubscribe_link_never_unsubscribes(client, workspace, subscriber):
    path = _path(public_links.unsubscribe_url(subscriber, "email"))
    for _ in range(3):
        page = client.get(path)
        assert page.status_code == 200
        assert 'name="List-Unsubscribe" value="One-Click"' in page.content.decode()
    assert _state(workspace, "sub@example.org") == (True, False)


def test_one_click_post_unsubscribes_without_csrf_token(workspace, subscriber):
    mail_provider = Client(enforce_csrf_checks=True)
    path = _path(public_links.unsubscribe_url(subscriber, "email"))
    response = mail_provider.post(path, "List-Unsubscribe=One-Click",
                                  content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert "You are unsubscribed" in response.content.decode()
    assert _state(workspace, "sub@example.org") == (False, True)
    with tenant_scope(workspace):
        assert ConsentEvent.objects.filter(action="withdraw").get().method == "list_unsubscribe"
        assert Suppression.objects.get().reason == "unsubscribed"
    # Providers may retry: a second POST changes nothing.
    mail_provider.post(path, {"List-Unsubscribe": "One-Click"})
    with tenant_scope(workspace):
        assert ConsentEvent.objects.filter(action="withdraw").count() == 1


def test_a_post_without_the_one_click_body_changes_nothing(client, workspace, subscriber):
    path = _path(public_links.unsubscribe_url(subscriber, "email"))
    response = client.post(path, {"something": "else"})
    assert response.status_code == 400
    assert _state(workspace, "sub@example.org") == (True, False)


def test_the_page_button_unsubscribes(client, workspace, subscriber):
    path = _path(public_links.unsubscribe_url(subscriber, "email"))
    client.post(path, {"List-Unsubscribe": "One-Click", "via": "page"})
    assert _state(workspace, "sub@example.org") == (False, True)
    with tenant_scope(workspace):
        assert ConsentEvent.objects.filter(action="withdraw").get().method == "unsubscribe_page"


def test_tokens_do_not_cross_purposes_or_workspaces(client, workspace, other_workspace, subscriber):
    preference_token = _path(public_links.preference_url(subscriber)).rstrip("/").rsplit("/", 1)[-1]
    assert client.post(f"/p/acme/unsubscribe/{preference_token}/",
                       {"List-Unsubscribe": "One-Click"}).status_code == 404
    unsubscribe_path = _path(public_links.unsubscribe_url(subscriber, "email"))
    assert client.post(unsubscribe_path.replace("/p/acme/", "/p/globex/"),
                       {"List-Unsubscribe": "One-Click"}).status_code == 404
    assert _state(workspace, "sub@example.org") == (True, False)


# --- Preference centre ------------------------------------------------------------------------------------


def test_preference_centre_turns_channels_off_and_on(client, workspace, subscriber):
    path = _path(public_links.preference_url(subscriber))
    page = client.get(path)
    assert "s•••@example.org" in page.content.decode()
    assert "sub@example.org" not in page.content.decode()

    client.post(path, {"pause_weeks": "0"})  # e-mail switch unticked
    assert _state(workspace, "sub@example.org") == (False, True)
    response = client.post(path, {"email": "on", "pause_weeks": "0"}, follow=True)
    assert "E-mail messages are on." in response.content.decode()
    assert _state(workspace, "sub@example.org") == (True, False)


def test_preference_centre_pauses_and_resumes(client, workspace, subscriber):
    path = _path(public_links.preference_url(subscriber))
    response = client.post(path, {"email": "on", "pause_weeks": "4"}, follow=True)
    assert "Messages are paused until" in response.content.decode()
    with tenant_scope(workspace):
        assert MessagingPause.objects.count() == 1
        assert consent.has_consent(subscriber, "email") is False
        assert subscriber.pk not in set(consent.reachable_customers("email").values_list("pk", flat=True))
    client.post(path, {"email": "on", "pause_weeks": "0", "resume": "1"})
    with tenant_scope(workspace):
        assert consent.has_consent(subscriber, "email") is True


def test_bad_pause_value_rerenders_with_an_error(client, workspace, subscriber):
    path = _path(public_links.preference_url(subscriber))
    response = client.post(path, {"email": "on", "pause_weeks": "9999"})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()


def test_data_export_request_mails_a_download_link(client, workspace, subscriber, smtp_sink):
    path = _path(public_links.preference_url(subscriber))
    response = client.post(path, {"action": "export"}, follow=True)
    assert "We sent a download link" in response.content.decode()
    [mail] = smtp_sink.wait_for(1)
    assert mail["to"] == ["sub@example.org"]
    download = client.get(_link_in(mail))
    assert download["Content-Type"] == "application/json"
    assert "attachment" in download["Content-Disposition"]
    document = download.json()
    assert document["profile"]["email"] == "sub@example.org"
    assert document["consent_history"][0]["action"] == "grant"
    # A second request right away does not mail again.
    client.post(path, {"action": "export"})
    assert len(smtp_sink.wait_for(2, timeout=0.5)) == 1


def _zone_on_another_day_than_utc(now):
    """A zone whose calendar day differs from UTC's at ``now`` (UTC+14 from 10:00 UTC, else UTC-11)."""
    for name in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
        if now.astimezone(zoneinfo.ZoneInfo(name)).date() != now.date():
            return zoneinfo.ZoneInfo(name)
    raise AssertionError("one of the two zones is always on another day")


def test_the_pause_end_is_shown_on_the_customer_s_own_calendar_day(client, workspace, subscriber):
    weeks = dt.timedelta(weeks=4)
    zone = _zone_on_another_day_than_utc(timezone.now() + weeks)
    with tenant_scope(workspace):
        Customer.objects.filter(pk=subscriber.pk).update(time_zone=zone.key)
    path = _path(public_links.preference_url(subscriber))
    response = client.post(path, {"email": "on", "pause_weeks": "4"}, follow=True)
    with tenant_scope(workspace):
        until = MessagingPause.objects.get().paused_until
    local_day = until.astimezone(zone)
    page = response.content.decode()
    assert f"Messages are paused until {local_day.day} {local_day:%B %Y}." in page  # the message and the banner
    assert page.count(f"paused until {local_day.day} {local_day:%B %Y}") == 2
