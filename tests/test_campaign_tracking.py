"""After sending: tracked clicks and opens, ESP bounce/complaint webhooks, inbound SMS keywords and e-mail replies
change what we know and what we may send, and show on the customer's timeline."""

import base64
import datetime as dt
import re

import pytest
from django.utils import timezone

from campaigns.models import Message, MessageEvent
from campaigns.outbox import dispatch_due
from campaigns.sending import send_due
from campaigns.webhooks import inbound_token
from crm_site import tenancy
from crm_site.tenancy import tenant_scope
from customers.consent import record_consent
from customers.models import ConsentEvent, Interaction, Suppression
from tests.factories import CampaignFactory, CampaignStepFactory, CustomerFactory
from tests.test_sending import _sending_at_any_hour  # noqa: F401 - autouse: these tests may run at any hour


@pytest.fixture
def sent_mail(smtp_sink, workspace):
    """Ann got one e-mail with a tracked link; returns (customer, message, the received mail)."""
    ann = CustomerFactory(tenant=workspace, email="ann@example.org", phone="+4915100000001")
    with tenant_scope(workspace):
        for channel in ("email", "sms"):
            record_consent(ann, channel, "grant", "form")
    campaign = CampaignFactory(tenant=workspace, name="Spring news", status="scheduled", scheduled_at=timezone.now())
    CampaignStepFactory(tenant=workspace, campaign=campaign, body="Look: https://shop.example/spring?x=1")
    with tenant_scope(workspace):
        dispatch_due()
    token = tenancy._current_tenant.set(workspace.pk)
    try:
        send_due(budget_seconds=10)
    finally:
        tenancy._current_tenant.reset(token)
    with tenant_scope(workspace):
        message = Message.objects.get(customer=ann)
    return ann, message, smtp_sink.messages[0]["message"]


def _path(url):
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def events(workspace, kind):
    with tenant_scope(workspace):
        return list(MessageEvent.objects.filter(kind=kind))


def timeline(workspace, customer, kind):
    with tenant_scope(workspace):
        return list(Interaction.objects.filter(customer=customer, kind=kind).values_list("summary", flat=True))


@pytest.mark.django_db
def test_tracked_link_redirects_to_the_destination_and_records_the_click(sent_mail, client, workspace):
    ann, message, mail = sent_mail
    link = re.search(r"http\S+/t/c/\S+/", mail.get_body(("plain",)).get_content()).group(0)
    response = client.get(_path(link))
    assert response.status_code == 302 and response["Location"] == "https://shop.example/spring?x=1"
    client.get(_path(link))
    assert [e.url for e in events(workspace, "clicked")] == ["https://shop.example/spring?x=1"] * 2
    assert timeline(workspace, ann, "click") == ["Clicked a link in “Spring news”"]  # once on the timeline


@pytest.mark.django_db
def test_open_pixel_answers_a_gif_and_records_the_open(sent_mail, client, workspace):
    ann, message, mail = sent_mail
    pixel = re.search(r'src="([^"]+/t/o/[^"]+)"', mail.get_body(("html",)).get_content()).group(1)
    response = client.get(_path(pixel.replace("&amp;", "&")))
    assert response.status_code == 200 and response["Content-Type"] == "image/gif"
    assert response.content == base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
    assert len(events(workspace, "opened")) == 1
    assert timeline(workspace, ann, "open") == ["Opened “Spring news”"]


@pytest.mark.django_db
def test_tampered_tracking_tokens_are_404_not_redirects(sent_mail, client):
    _, _, mail = sent_mail
    link = re.search(r"http\S+/t/c/(\S+)/", mail.get_body(("plain",)).get_content())
    forged = _path(link.group(0)).replace(link.group(1), link.group(1)[:-3] + "abc")
    assert client.get(forged).status_code == 404
    assert client.get("/t/c/not-a-token/").status_code == 404
    assert client.get("/t/o/garbage.gif").status_code == 404


@pytest.mark.django_db
def test_the_mails_own_links_open_the_customers_public_pages_and_only_in_her_workspace(sent_mail, client, workspace,
                                                                                      other_workspace):
    from customers import public_links

    ann, _, mail = sent_mail
    text = mail.get_body(("plain",)).get_content()
    unsubscribe = re.search(r"Unsubscribe: (\S+)", text).group(1)
    preferences = re.search(r"Your preferences: (\S+)", text).group(1)
    token = unsubscribe.rstrip("/").rsplit("/", 1)[-1]
    assert public_links.read_token("unsubscribe", token, workspace.pk) == {"w": workspace.pk, "c": ann.pk, "ch": "email"}
    assert client.get(_path(preferences)).status_code == 200
    for refused in (_path(unsubscribe).replace("/p/acme/", "/p/globex/"),  # another workspace's page
                    _path(unsubscribe).replace(token, token[:-3] + "abc"),  # a forged signature
                    _path(preferences).replace("/preferences/", "/unsubscribe/")):  # another purpose
        assert client.post(refused, {"List-Unsubscribe": "One-Click"}).status_code == 404, refused
    assert ann.email_opt_in is True
    response = client.post(_path(unsubscribe), {"List-Unsubscribe": "One-Click"})
    with tenant_scope(workspace):
        ann.refresh_from_db()
    assert response.status_code == 200 and ann.email_opt_in is False


@pytest.mark.parametrize("value", [[1, 2], [7, 12345, "https://shop.example/spring?x=1"], {"w": 3, "c": 4, "ch": "sms"},
                                   [1, 2, "https://shop.example/" + "a/" * 80]])
def test_signed_links_are_djangos_signing_tokens_bound_to_their_purpose(value, settings):
    """The sender's cheap tokens are exactly django.core.signing's, so every view reads them as before."""
    from django.core import signing
    from django.urls import reverse

    from crm_site.signed_links import absolute_url, signed_token

    for _attempt in range(3):  # the token carries the second it was made in
        before, token, after = (signing.dumps(value, salt="rapport.test", compress=True),
                                signed_token(value, "rapport.test"), signing.dumps(value, salt="rapport.test", compress=True))
        if before == after:
            break
    assert token == before and signing.loads(token, salt="rapport.test") == value
    with pytest.raises(signing.BadSignature):
        signing.loads(token, salt="rapport.other")
    assert absolute_url("campaigns_public:click", token) == settings.SITE_URL + reverse("campaigns_public:click",
                                                                                        args=[token])
    assert absolute_url("public:unsubscribe", token, public_slug="acme") == settings.SITE_URL + reverse(
        "public:unsubscribe", kwargs={"public_slug": "acme", "token": token})


# --- ESP webhooks through django-anymail (Postmark's format, basic auth) -------------------------------


def postmark(client, payload):
    credentials = base64.b64encode(b"rapport:test-webhook").decode()
    return client.post("/anymail/postmark/tracking/", data=payload, content_type="application/json",
                       HTTP_AUTHORIZATION=f"Basic {credentials}")


@pytest.mark.django_db
def test_hard_bounce_webhook_suppresses_the_address(sent_mail, client, workspace):
    ann, message, _ = sent_mail
    response = postmark(client, {
        "RecordType": "Bounce", "Type": "HardBounce", "ID": 42, "Email": "ann@example.org",
        "BouncedAt": "2026-03-10T12:00:00Z", "Description": "The server was unable to deliver your message",
        "MessageID": "pm-1", "Metadata": {"rapport_tenant": str(workspace.pk), "rapport_message": str(message.pk)},
    })
    assert response.status_code == 200
    with tenant_scope(workspace):
        assert Suppression.objects.filter(channel="email", reason="bounced").count() == 1
        ann.refresh_from_db()
    assert ann.email_opt_in is False
    assert len(events(workspace, "bounced")) == 1


@pytest.mark.django_db
def test_spam_complaint_withdraws_consent_and_suppresses(sent_mail, client, workspace):
    ann, message, _ = sent_mail
    postmark(client, {
        "RecordType": "SpamComplaint", "Type": "SpamComplaint", "ID": 43, "Email": "ann@example.org",
        "BouncedAt": "2026-03-10T12:00:00Z", "MessageID": "pm-1",
        "Metadata": {"rapport_tenant": str(workspace.pk), "rapport_message": str(message.pk)},
    })
    with tenant_scope(workspace):
        assert Suppression.objects.get(channel="email").reason == "complained"
        assert ConsentEvent.objects.filter(customer=ann, action="withdraw", method="complaint").exists()
    assert timeline(workspace, ann, "message")[0] == "Marked “Spring news” as spam"


@pytest.mark.django_db
def test_webhook_without_credentials_is_refused(sent_mail, client):
    response = client.post("/anymail/postmark/tracking/", data={"RecordType": "Bounce"},
                           content_type="application/json")
    assert response.status_code in (400, 401, 403)


@pytest.mark.django_db
def test_delivery_event_is_recorded(sent_mail, client, workspace):
    _, message, _ = sent_mail
    postmark(client, {"RecordType": "Delivery", "Recipient": "ann@example.org", "MessageID": "pm-1",
                      "DeliveredAt": "2026-03-10T12:00:00Z",
                      "Metadata": {"rapport_tenant": str(workspace.pk), "rapport_message": str(message.pk)}})
    assert len(events(workspace, "delivered")) == 1


# --- Inbound SMS -----------------------------------------------------------------------------------------


def text_in(client, workspace, body, sender="+49 151 00000001"):
    return client.post(f"/hooks/campaigns/sms/{inbound_token(workspace)}/", {"From": sender, "Body": body})


@pytest.fixture
def texted(settings):
    from campaigns import sms

    settings.RAPPORT_SMS_BACKEND = "campaigns.sms.LocmemSmsBackend"
    sms.outbox.clear()
    return sms.outbox


@pytest.mark.django_db
def test_stop_keyword_unsubscribes_from_sms_and_confirms(sent_mail, client, workspace, texted):
    ann, _, _ = sent_mail
    response = text_in(client, workspace, "stop please")
    assert response.json()["action"] == "stop"
    with tenant_scope(workspace):
        ann.refresh_from_db()
        assert Suppression.objects.filter(channel="sms", reason="unsubscribed").exists()
    assert ann.sms_opt_in is False and ann.email_opt_in is True
    assert "no more texts" in texted[0].body and texted[0].to == "+4915100000001"


@pytest.mark.django_db
def test_start_keyword_opts_back_in_after_stop(sent_mail, client, workspace, texted):
    ann, _, _ = sent_mail
    text_in(client, workspace, "STOP")
    assert text_in(client, workspace, "Start").json()["action"] == "start"
    with tenant_scope(workspace):
        ann.refresh_from_db()
    assert ann.sms_opt_in is True


@pytest.mark.django_db
def test_help_keyword_answers_who_we_are(sent_mail, client, workspace, texted):
    response = text_in(client, workspace, "HELP")
    assert response.json()["action"] == "help"
    assert "Acme Coffee" in texted[0].body and "STOP" in texted[0].body


@pytest.mark.django_db
def test_other_texts_are_replies_on_the_timeline(sent_mail, client, workspace, texted):
    ann, _, _ = sent_mail
    assert text_in(client, workspace, "Do you ship to Austria?").json()["action"] == "reply"
    assert timeline(workspace, ann, "reply") == ["SMS reply: Do you ship to Austria?"]
    assert texted == []


@pytest.mark.django_db
def test_unknown_numbers_and_bad_tokens_change_nothing(sent_mail, client, workspace):
    assert text_in(client, workspace, "STOP", sender="+10000000000").json()["action"] == "unknown_sender"
    assert client.post("/hooks/campaigns/sms/forged/", {"From": "+1", "Body": "STOP"}).status_code == 403
    assert client.post(f"/hooks/campaigns/sms/{inbound_token(workspace)}/", {"Body": "STOP"}).status_code == 400


# --- E-mail replies ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_email_reply_counts_as_a_reply_to_the_message_it_answers(sent_mail, client, workspace):
    ann, message, mail = sent_mail
    response = client.post(
        f"/hooks/campaigns/email-reply/{inbound_token(workspace)}/",
        {"from": "Ann <ANN@example.org>", "subject": "Re: Hello", "text": "Lovely, thanks!",
         "in_reply_to": mail["Message-ID"]},
        content_type="application/json",
    )
    assert response.json() == {"action": "reply"}
    (reply,) = events(workspace, "replied")
    assert reply.message_id == message.pk and reply.details["body"] == "Lovely, thanks!"
    assert timeline(workspace, ann, "reply") == ["Replied to “Spring news”"]


@pytest.mark.django_db
def test_email_reply_saying_unsubscribe_unsubscribes(sent_mail, client, workspace):
    ann, _, _ = sent_mail
    client.post(f"/hooks/campaigns/email-reply/{inbound_token(workspace)}/",
                {"from": "ann@example.org", "subject": "unsubscribe", "text": ""}, content_type="application/json")
    with tenant_scope(workspace):
        ann.refresh_from_db()
    assert ann.email_opt_in is False


@pytest.mark.django_db
def test_periodic_tasks_exist_after_migrate():
    from django_celery_beat.models import PeriodicTask

    tasks = dict(PeriodicTask.objects.filter(task__startswith="campaigns.").values_list("task", "enabled"))
    assert tasks == {"campaigns.tasks.dispatch_due_everywhere": True, "campaigns.tasks.send_due_everywhere": True}


@pytest.mark.redis
def test_a_real_celery_worker_dispatches_and_sends(celery_worker, smtp_sink, workspace):
    from campaigns.tasks import dispatch_due_everywhere

    for index in range(3):
        CustomerFactory(tenant=workspace, email=f"w{index}@example.org", email_opt_in=True)
    campaign = CampaignFactory(tenant=workspace, status="scheduled",
                               scheduled_at=timezone.now() - dt.timedelta(seconds=1))
    CampaignStepFactory(tenant=workspace, campaign=campaign)
    dispatch_due_everywhere.delay()
    assert len(smtp_sink.wait_for(3, timeout=20)) == 3
