"""The sender delivers the outbox into a real SMTP server: one mail per pending message, with the headers and
footer the law and the mailbox providers ask for; it re-checks consent, retries, fails with a reason, and
re-claims what a dead sender left behind."""

import datetime as dt
import json
import threading
from contextlib import contextmanager
from email.utils import parseaddr
from urllib.parse import urlsplit
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.test import override_settings
from django.utils import timezone

from campaigns import sms
from campaigns.models import Campaign, Message, MessageEvent, RewardCode, SendingPolicy
from campaigns.outbox import dispatch_due
from campaigns.sending import claim_batch, send_batch, send_due
from crm_site.tenancy import tenant_scope
from customers.consent import unsubscribe
from customers.models import Interaction, Suppression
from tests.conftest import _free_port
from tests.factories import (
    CampaignFactory,
    CampaignStepFactory,
    CustomerFactory,
    OrderFactory,
    OrderLineFactory,
    ProductFactory,
)


@pytest.fixture(autouse=True)
def _sending_at_any_hour(request):
    """Quiet hours are on by default (21:00-08:00 in the customer's zone) and would defer every message of a
    test run at night: the workspace of these tests has them off."""
    if "workspace" in request.fixturenames:
        with tenant_scope(request.getfixturevalue("workspace")):
            SendingPolicy.objects.create(quiet_hours_enabled=False)


def live_broadcast(workspace, **step):
    campaign = CampaignFactory(tenant=workspace, name="Spring news", status="scheduled",
                               scheduled_at=timezone.now() - dt.timedelta(minutes=1))
    CampaignStepFactory(tenant=workspace, campaign=campaign, position=1, **step)
    return campaign


def dispatch_and_send(workspace):
    with tenant_scope(workspace):
        dispatch_due()
    token = _enter(workspace)
    try:
        return send_due(budget_seconds=20)
    finally:
        _leave(token)


def _enter(workspace):
    # Senders run as @tenant_task(atomic=False): the workspace is set for the ORM, each batch commits alone.
    from crm_site import tenancy

    return tenancy._current_tenant.set(workspace.pk)


def _leave(token):
    from crm_site import tenancy

    tenancy._current_tenant.reset(token)


def recipients(sink):
    return sorted(parseaddr(m["message"]["To"])[1] for m in sink.messages)


@pytest.fixture
def with_address(workspace):
    workspace.postal_address = "Acme Coffee GmbH\nKaffeestraße 1\n10115 Berlin"
    workspace.save()
    return workspace


@pytest.mark.django_db
def test_each_consenting_customer_gets_one_personal_mail_with_unsubscribe_headers_and_address(smtp_sink, with_address):
    workspace = with_address
    ann = CustomerFactory(tenant=workspace, email="ann@example.org", first_name="Ann", email_opt_in=True)
    CustomerFactory(tenant=workspace, email="bob@example.org", first_name="Bob", email_opt_in=True)
    CustomerFactory(tenant=workspace, email="nope@example.org", email_opt_in=False)
    campaign = live_broadcast(workspace, subject="Hello {{ first_name }}",
                              body="Hi {{ first_name }}, see https://shop.example/spring")

    outcome = dispatch_and_send(workspace)

    assert outcome.sent == 2
    assert recipients(smtp_sink) == ["ann@example.org", "bob@example.org"]
    mail = next(m["message"] for m in smtp_sink.messages if "ann@" in m["message"]["To"])
    assert mail["Subject"] == "Hello Ann"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe_link = mail["List-Unsubscribe"].strip("<>")
    assert unsubscribe_link.startswith("http") and "/unsubscribe/" in unsubscribe_link
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=ann)
    assert mail["Message-ID"] == message.message_id_header
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "Hi Ann, see http" in text and "https://shop.example/spring" not in text  # the link is tracked
    assert "Kaffeestraße 1" in text and "Kaffeestraße 1" in html
    assert unsubscribe_link in text and unsubscribe_link in html
    assert "/t/o/" in html  # the open pixel
    assert (message.status, message.to_address) == ("sent", "ann@example.org")
    assert message.provider_message_id == message.message_id_header
    with tenant_scope(workspace):
        assert Interaction.objects.filter(customer=ann, kind="message").count() == 1


@pytest.mark.django_db
def test_one_click_unsubscribe_link_from_the_header_works(smtp_sink, workspace, client):
    customer = CustomerFactory(tenant=workspace, email="ann@example.org", email_opt_in=True)
    live_broadcast(workspace)
    dispatch_and_send(workspace)
    link = smtp_sink.messages[0]["message"]["List-Unsubscribe"].strip("<>")
    response = client.post(urlsplit(link).path, data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    with tenant_scope(workspace):
        customer.refresh_from_db()
    assert customer.email_opt_in is False


@pytest.mark.django_db
def test_consent_withdrawn_after_dispatch_stops_the_message(smtp_sink, workspace):
    stays = CustomerFactory(tenant=workspace, email="stays@example.org", email_opt_in=True)
    leaves = CustomerFactory(tenant=workspace, email="leaves@example.org", email_opt_in=True)
    campaign = live_broadcast(workspace)
    with tenant_scope(workspace):
        dispatch_due()
        unsubscribe(leaves, "email", method="preference_centre")
    token = _enter(workspace)
    try:
        send_due(budget_seconds=10)
    finally:
        _leave(token)
    assert recipients(smtp_sink) == ["stays@example.org"]
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=leaves)
    assert (message.status, message.skip_reason) == ("suppressed", "consent_withdrawn")
    assert stays.pk


@pytest.fixture
def holding_smtp(settings):
    """An SMTP server that keeps its answer to the first mail until the test releases it."""
    import asyncio

    server = {"received": [], "first_mail": threading.Event(), "release": threading.Event()}

    class Handler:
        async def handle_DATA(self, smtp, session, envelope):
            server["received"].extend(envelope.rcpt_tos)
            if not server["first_mail"].is_set():
                server["first_mail"].set()
                await asyncio.get_running_loop().run_in_executor(None, server["release"].wait, 20)
            return "250 OK"

    with _smtp_server(Handler(), settings):
        try:
            yield server
        finally:
            server["release"].set()


@pytest.mark.django_db(transaction=True)
def test_consent_withdrawn_while_its_batch_is_being_delivered_stops_that_message(holding_smtp, workspace, settings):
    from django.db import connection

    settings.RAPPORT_SEND_CONSENT_RECHECK_SECONDS = 0
    customers = [CustomerFactory(tenant=workspace, email=f"c{index}@example.org", email_opt_in=True)
                 for index in range(5)]
    campaign = live_broadcast(workspace)
    with tenant_scope(workspace):
        dispatch_due()

    def sender():  # a worker: the batch of five is claimed at once, then delivered one by one
        token = _enter(workspace)
        try:
            send_due(budget_seconds=20)
        finally:
            _leave(token)
            connection.close()

    thread = threading.Thread(target=sender)
    thread.start()
    assert holding_smtp["first_mail"].wait(20)  # the batch is claimed and its first mail is at the server
    with tenant_scope(workspace):
        unsubscribe(customers[3], "email", method="preference_centre")
    holding_smtp["release"].set()
    thread.join(30)

    assert sorted(holding_smtp["received"]) == ["c0@example.org", "c1@example.org", "c2@example.org",
                                                "c4@example.org"]
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=customers[3])
    assert (message.status, message.skip_reason) == ("suppressed", "consent_withdrawn")


@pytest.mark.django_db
def test_held_out_customers_never_get_the_message(smtp_sink, workspace):
    for index in range(60):
        CustomerFactory(tenant=workspace, email=f"c{index}@example.org", email_opt_in=True)
    campaign = CampaignFactory(tenant=workspace, status="scheduled", scheduled_at=timezone.now(), holdout_percent=20)
    CampaignStepFactory(tenant=workspace, campaign=campaign)
    dispatch_and_send(workspace)
    with tenant_scope(workspace):
        held = set(Message.objects.filter(status="held_out").values_list("to_address", "customer__email"))
        sent = Message.objects.filter(status="sent").count()
    assert held and sent == 60 - len(held) == len(smtp_sink.messages)
    assert not {email for _, email in held} & set(recipients(smtp_sink))


@pytest.mark.django_db
def test_sent_campaign_is_done(smtp_sink, workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = live_broadcast(workspace)
    dispatch_and_send(workspace)
    with tenant_scope(workspace):
        dispatch_due()
        campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DONE


# --- Failures, retries and leases --------------------------------------------------------------------


@pytest.fixture
def picky_smtp(settings):
    """An SMTP server that answers 451 (try later) for 'busy@' and 550 (no such user) for 'gone@'."""
    received = []

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address.startswith("busy@"):
                return "451 4.3.0 Mailbox busy, try later"
            if address.startswith("gone@"):
                return "550 5.1.1 No such user"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            received.extend(envelope.rcpt_tos)
            return "250 OK"

    with _smtp_server(Handler(), settings):
        yield received


@contextmanager
def _smtp_server(handler, settings):
    """Run a real SMTP server (aiosmtpd) with ``handler`` on a free port and point Django's SMTP backend at it."""
    from aiosmtpd.controller import Controller

    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    try:
        yield
    finally:
        controller.stop()


@pytest.mark.django_db
def test_temporary_failure_is_retried_with_backoff_then_failed_with_the_reason(picky_smtp, workspace, settings):
    settings.RAPPORT_SEND_MAX_ATTEMPTS = 3
    busy = CustomerFactory(tenant=workspace, email="busy@example.org", email_opt_in=True)
    CustomerFactory(tenant=workspace, email="fine@example.org", email_opt_in=True)
    campaign = live_broadcast(workspace)
    outcome = dispatch_and_send(workspace)
    assert outcome.sent == 1 and outcome.retried == 1
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=busy)
    assert (message.status, message.attempts) == ("pending", 1)
    assert "451" in message.error
    first_wait = message.next_attempt_at - timezone.now()
    assert dt.timedelta(seconds=25) < first_wait <= dt.timedelta(seconds=61)

    waits = []
    for _ in range(2):  # time passes: the retry falls due
        with tenant_scope(workspace):
            Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
        token = _enter(workspace)
        try:
            send_due(budget_seconds=5)
        finally:
            _leave(token)
        with tenant_scope(workspace):
            message.refresh_from_db()
        waits.append(message.next_attempt_at - timezone.now())
    assert message.status == "failed"
    assert message.attempts == 3
    assert "451" in message.error and "gave up after 3 attempts" in message.error
    assert picky_smtp == ["fine@example.org"]


@pytest.mark.django_db
def test_permanent_refusal_fails_at_once_and_suppresses_the_address(picky_smtp, workspace):
    gone = CustomerFactory(tenant=workspace, email="gone@example.org", email_opt_in=True)
    campaign = live_broadcast(workspace)
    dispatch_and_send(workspace)
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=gone)
        assert Suppression.objects.filter(reason="bounced").count() == 1
        assert MessageEvent.objects.filter(message=message, kind="bounced").exists()
        gone.refresh_from_db()
    assert message.status == "failed" and "550" in message.error and message.attempts == 1
    assert gone.email_opt_in is False


@pytest.mark.django_db
def test_a_broken_template_fails_that_message_with_the_reason(smtp_sink, workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = live_broadcast(workspace, body="{{ last_purchase.product }}")  # this customer never bought
    dispatch_and_send(workspace)
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=customer)
    assert message.status == "failed" and message.error.startswith("Template:")
    assert smtp_sink.messages == []


@pytest.mark.django_db
def test_in_one_batch_only_the_customers_whose_template_fails_go_without_the_mail(smtp_sink, workspace):
    # The sender composes a whole batch before it talks SMTP; a failure must stay with its own customer.
    buyers, others = [], []
    for index in range(8):
        customer = CustomerFactory(tenant=workspace, email=f"c{index}@example.org", email_opt_in=True)
        if index % 2:
            line = OrderLineFactory(tenant=workspace, order=OrderFactory(tenant=workspace, customer=customer),
                                    sku=f"BEANS-{index}")
            buyers.append((customer, line.sku))
        else:
            others.append(customer)
    campaign = live_broadcast(workspace, subject="For {{ first_name }}", body="You bought {{ last_purchase.product }}")
    outcome = dispatch_and_send(workspace)
    assert (outcome.sent, outcome.failed) == (4, 4)
    received = {m["message"]["To"]: m["message"].get_body(("plain",)).get_content() for m in smtp_sink.messages}
    assert sorted(received) == sorted(customer.email for customer, _ in buyers)
    for customer, sku in buyers:
        assert f"You bought {sku}" in received[customer.email]
    with tenant_scope(workspace):
        failed = Message.objects.filter(campaign=campaign, status="failed", error__startswith="Template:")
        assert sorted(failed.values_list("customer_id", flat=True)) == sorted(c.pk for c in others)


@pytest.mark.django_db
def test_a_template_over_another_limit_fails_at_once_only_the_time_limit_is_retried(smtp_sink, workspace):
    customer = CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = live_broadcast(workspace, body="{% for n in range(999999999) %}x{% endfor %}")
    outcome = dispatch_and_send(workspace)
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=customer)
    assert outcome.retried == 0 and message.status == "failed" and message.error.startswith("Template:")
    assert smtp_sink.messages == []


@pytest.mark.django_db
def test_a_render_that_ran_out_of_time_on_a_busy_machine_is_retried_not_failed(smtp_sink, workspace, settings,
                                                                               monkeypatch):
    from campaigns import rendering

    customer = CustomerFactory(tenant=workspace, email="ann@example.org", email_opt_in=True)
    campaign = live_broadcast(workspace)
    monkeypatch.setattr(rendering, "MAX_RENDER_SECONDS", 0)  # every render is "too slow", as under heavy load
    outcome = dispatch_and_send(workspace)
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=customer)
    assert outcome.retried == 1 and smtp_sink.messages == []
    assert message.status == "pending" and message.next_attempt_at > timezone.now()
    assert message.error.startswith("Template: The template is too heavy")

    monkeypatch.setattr(rendering, "MAX_RENDER_SECONDS", 0.25)  # the machine is quiet again
    token = _enter(workspace)
    try:
        later = timezone.now() + dt.timedelta(seconds=settings.RAPPORT_SEND_RETRY_BASE_SECONDS + 1)
        assert send_batch(now=later).sent == 1
    finally:
        _leave(token)
    assert recipients(smtp_sink) == ["ann@example.org"]


@pytest.mark.django_db
def test_messages_of_a_dead_sender_are_reclaimed_after_the_lease_and_sent_once(smtp_sink, workspace, settings):
    for index in range(5):
        CustomerFactory(tenant=workspace, email=f"c{index}@example.org", email_opt_in=True)
    live_broadcast(workspace)
    with tenant_scope(workspace):
        dispatch_due()
    token = _enter(workspace)
    try:
        claimed, _ = claim_batch("dead-worker", limit=3)  # ... and the worker is killed here
        assert len(claimed) == 3
        send_due(budget_seconds=5)
        assert len(smtp_sink.messages) == 2  # the leased three wait for their lease to expire
        later = timezone.now() + dt.timedelta(seconds=settings.RAPPORT_SEND_LEASE_SECONDS + 1)
        outcome = send_batch(now=later)
    finally:
        _leave(token)
    assert outcome.sent == 3
    assert sorted(recipients(smtp_sink)) == [f"c{i}@example.org" for i in range(5)]
    with tenant_scope(workspace):
        assert set(Message.objects.values_list("status", flat=True)) == {"sent"}
        assert sorted(Message.objects.values_list("attempts", flat=True)) == [1, 1, 2, 2, 2]


@pytest.mark.redis
def test_a_sender_queued_by_beat_that_no_worker_started_before_the_next_tick_is_dropped(transactional_db,
                                                                                        broker_queues, smtp_sink,
                                                                                        workspace, settings):
    """Beat queues senders every tick; behind busy workers they must not pile up and all start late."""
    import time

    from celery.contrib.testing.worker import start_worker

    from campaigns.tasks import send_due_everywhere
    from crm_site.celery import app

    redis = broker_queues.client
    settings.RAPPORT_SEND_EVERY_SECONDS = 1
    CustomerFactory(tenant=workspace, email="ann@example.org", email_opt_in=True)
    live_broadcast(workspace)
    with tenant_scope(workspace):
        dispatch_due()
    assert send_due_everywhere() == 1  # a tick while every worker is busy: two senders wait in the queue
    assert redis.llen("send") == settings.RAPPORT_SEND_PARALLELISM
    time.sleep(1.5)  # the next tick is due: they are stale
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, loglevel="WARNING",
                      queues=["send"], shutdown_timeout=10):
        deadline = time.monotonic() + 10
        while redis.llen("send") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert redis.llen("send") == 0 and smtp_sink.messages == []  # taken up and dropped, not run
        with tenant_scope(workspace):
            assert list(Message.objects.values_list("status", flat=True)) == ["pending"]

        settings.RAPPORT_SEND_EVERY_SECONDS = 15
        assert send_due_everywhere() == 1  # the next tick's senders start in time and deliver
        smtp_sink.wait_for(1, timeout=20)
        assert recipients(smtp_sink) == ["ann@example.org"]
    with tenant_scope(workspace):
        assert list(Message.objects.values_list("status", flat=True)) == ["sent"]


@pytest.mark.django_db
def test_paused_campaign_sends_nothing_until_resumed(smtp_sink, workspace):
    CustomerFactory(tenant=workspace, email_opt_in=True)
    campaign = live_broadcast(workspace)
    with tenant_scope(workspace):
        dispatch_due()
        Campaign.objects.filter(pk=campaign.pk).update(status="paused")
    token = _enter(workspace)
    try:
        assert send_due(budget_seconds=5).sent == 0
        with tenant_scope(workspace):
            Campaign.objects.filter(pk=campaign.pk).update(status="sending")
        assert send_due(budget_seconds=5).sent == 1
    finally:
        _leave(token)


# --- Personal values -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_reward_codes_are_unique_per_customer_and_stable(smtp_sink, workspace):
    for index in range(3):
        CustomerFactory(tenant=workspace, email=f"c{index}@example.org", email_opt_in=True)
    campaign = live_broadcast(workspace, body="Your code: {{ reward_code }}")
    with tenant_scope(workspace):
        Campaign.objects.filter(pk=campaign.pk).update(issues_reward_codes=True, reward_code_prefix="thanks")
    dispatch_and_send(workspace)
    with tenant_scope(workspace):
        codes = dict(RewardCode.objects.values_list("customer__email", "code"))
    assert len(set(codes.values())) == 3 and all(code.startswith("THANKS-") for code in codes.values())
    for mail in smtp_sink.messages:
        address = parseaddr(mail["message"]["To"])[1]
        assert f"Your code: {codes[address]}" in mail["message"].get_body(("plain",)).get_content()


@pytest.mark.django_db
def test_cross_sell_suggests_what_similar_customers_bought(smtp_sink, workspace):
    beans, grinder, cups = (ProductFactory(tenant=workspace, name=name) for name in ("Beans", "Grinder", "Cups"))
    for index in range(3):  # three people bought beans and a grinder, one also cups
        buyer = CustomerFactory(tenant=workspace)
        OrderLineFactory(tenant=workspace, order=OrderFactory(tenant=workspace, customer=buyer), product=beans)
        OrderLineFactory(tenant=workspace, order=OrderFactory(tenant=workspace, customer=buyer), product=grinder)
        if index == 0:
            OrderLineFactory(tenant=workspace, order=OrderFactory(tenant=workspace, customer=buyer), product=cups)
    ann = CustomerFactory(tenant=workspace, email="ann@example.org", email_opt_in=True)
    OrderLineFactory(tenant=workspace, order=OrderFactory(tenant=workspace, customer=ann), product=beans,
                     line_total="12.00")
    live_broadcast(workspace, body="You bought {{ last_purchase.product }}. Try: "
                                   "{% for p in products %}{{ p.name }};{% endfor %}")
    dispatch_and_send(workspace)
    text = smtp_sink.messages[0]["message"].get_body(("plain",)).get_content()
    assert "You bought Beans. Try: Grinder;Cups;" in text


# --- SMS -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(RAPPORT_SMS_BACKEND="campaigns.sms.LocmemSmsBackend")
def test_sms_step_is_texted_with_the_stop_instruction(workspace):
    sms.outbox.clear()
    CustomerFactory(tenant=workspace, phone="+4915112345678", first_name="Ann", sms_opt_in=True)
    live_broadcast(workspace, channel="sms", subject="", body="Hi {{ first_name }}, 20% off today")
    outcome = dispatch_and_send(workspace)
    assert outcome.sent == 1
    assert [(m.to, m.sender) for m in sms.outbox] == [("+4915112345678", "AcmeCoffee")]
    assert sms.outbox[0].body == "Hi Ann, 20% off today\nSTOP to opt out"


class _ProviderHandler(BaseHTTPRequestHandler):
    received: list = []
    answer_status = 201

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append((self.headers.get("Authorization"), self.headers.get("Idempotency-Key"), body))
        self.send_response(type(self).answer_status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"id": f"SM{len(type(self).received)}"}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def sms_provider(settings):
    _ProviderHandler.received = []
    _ProviderHandler.answer_status = 201
    server = HTTPServer(("127.0.0.1", 0), _ProviderHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.RAPPORT_SMS_BACKEND = "campaigns.sms.HttpSmsBackend"
    settings.RAPPORT_SMS_HTTP_URL = f"http://127.0.0.1:{server.server_port}/messages"
    settings.RAPPORT_SMS_HTTP_TOKEN = "secret-token"
    yield _ProviderHandler
    server.shutdown()


@pytest.mark.django_db
def test_http_sms_provider_gets_the_text_and_its_id_is_recorded(sms_provider, workspace):
    customer = CustomerFactory(tenant=workspace, phone="+4915112345678", sms_opt_in=True)
    campaign = live_broadcast(workspace, channel="sms", subject="", body="Sale today")
    dispatch_and_send(workspace)
    (authorization, idempotency_key, payload), = sms_provider.received
    assert authorization == "Bearer secret-token"
    assert payload["to"] == "+4915112345678" and payload["body"].startswith("Sale today")
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=customer)
    assert message.provider_message_id == "SM1"
    assert idempotency_key == message.message_id_header.strip("<>")


@pytest.mark.django_db
def test_http_sms_provider_errors_are_retried_or_failed(sms_provider, workspace):
    customer = CustomerFactory(tenant=workspace, phone="+4915112345678", sms_opt_in=True)
    campaign = live_broadcast(workspace, channel="sms", subject="", body="Sale today")
    sms_provider.answer_status = 503
    dispatch_and_send(workspace)
    with tenant_scope(workspace):
        message = Message.objects.get(campaign=campaign, customer=customer)
        assert (message.status, "503" in message.error) == ("pending", True)
        Message.objects.filter(pk=message.pk).update(next_attempt_at=timezone.now())
    sms_provider.answer_status = 400
    token = _enter(workspace)
    try:
        send_due(budget_seconds=5)
    finally:
        _leave(token)
    with tenant_scope(workspace):
        message.refresh_from_db()
    assert message.status == "failed" and "400" in message.error


# --- The MIME form of an outbox mail ---------------------------------------------------------------------


def test_an_outbox_mail_reads_like_djangos_own_mime_form(settings):
    """OutboxEmail writes its SMTP form itself (fast); a mail client must see exactly what Django's would give."""
    from email import message_from_bytes, policy

    from django.core.mail import EmailMultiAlternatives

    from campaigns.composing import OutboxEmail

    long_link = "https://rapport.example/p/acme/unsubscribe/" + "eJyrVkrOz0vPTEnMU7JSUEpJLUosyczPU9JRUEoq" * 5 + "/"
    fields = dict(
        subject="Grüße, Zoë — 20 % off ☕ " + "and more " * 10,
        body="Hallo Zoë,\n\n. a line starting with a dot\ntrailing space \n" + "x" * 200 + f"\n{long_link}",
        from_email="Café Müller <news@café.example>", to=["Zoë Zett <zoe@exämple.org>"], reply_to=["hi@example.org"],
        headers={"Message-ID": "<rapport.1.2@rapport.example>", "List-Unsubscribe": f"<{long_link}>",
                 "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
    )
    djangos, ours = EmailMultiAlternatives(**fields), OutboxEmail(**fields)
    for mail in (djangos, ours):
        mail.attach_alternative(f'<p>Grüße, <a href="{long_link}">Zoë</a></p>', "text/html")
    expected = message_from_bytes(djangos.message(policy=policy.SMTP).as_bytes(), policy=policy.default)
    raw = ours.smtp_bytes()
    received = message_from_bytes(raw, policy=policy.default)

    for header in ("Subject", "From", "To", "Reply-To", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert received[header] == expected[header], header
    for kind in ("plain", "html"):
        assert received.get_body((kind,)).get_content() == expected.get_body((kind,)).get_content()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n")) and b"\n" not in raw.replace(b"\r\n", b"")
    assert f"List-Unsubscribe: <{long_link}>".encode() in raw  # one line: clients read the link as it is


def test_a_line_break_in_a_subject_cannot_add_a_header():
    from email import message_from_bytes, policy

    from campaigns.composing import OutboxEmail

    mail = OutboxEmail(subject="Hello\r\nBcc: victim@example.org", body="Hi", to=["ann@example.org"])
    mail.attach_alternative("<p>Hi</p>", "text/html")
    received = message_from_bytes(mail.message(policy=policy.SMTP).as_bytes(), policy=policy.default)
    assert received["Bcc"] is None and received["Subject"] == "Hello Bcc: victim@example.org"
    assert received["Message-ID"] and received["Date"]  # given by the form when the composer set none


@pytest.mark.parametrize("subject, body, from_email", [
    ("Hi", "Hi", "news@example.org"),
    ("Grüße, Zoë, this subject is long enough that it has to be folded over two lines or more", "Zoë\r\nline\rx\n\n"
     ". dot\ntrailing \n" + "y" * 200, "Bénchmark Coffee <news@example.org>"),
    ("A long plain ASCII subject " * 5, "body\n", "Café Müller <news@café.example>"),
])
def test_the_smtp_form_of_an_outbox_mail_is_what_the_stdlib_writes_for_the_same_mail(subject, body, from_email):
    """smtp_bytes() writes the mail directly; the compat32 objects of message() must come out as the same bytes
    (so the console, file and memory backends show exactly what an SMTP server gets)."""
    from email import policy

    from campaigns.composing import OutboxEmail

    link = "https://rapport.example/p/acme/unsubscribe/" + "eJyrVkrOz0vPTEnMU7JSUEpJLUosyczPU9JRUEoq" * 4 + "/"
    mail = OutboxEmail(subject=subject, body=body, from_email=from_email, to=["ann@example.org"],
                       reply_to=["hi@example.org"],
                       headers={"Message-ID": "<rapport.1.2@rapport.example>", "List-Unsubscribe": f"<{link}>",
                                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "X-Rapport-Message": "1.2"})
    mail.attach_alternative("<p>Grüße, Zoë</p>", "text/html")
    assert mail.smtp_bytes() == mail.message(policy=policy.SMTP).as_bytes()
