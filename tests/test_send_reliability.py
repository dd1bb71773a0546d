"""Sending survives crashes: a 10,000-recipient broadcast goes out through real Celery worker processes while a
worker is killed with SIGKILL five times and the Redis broker is restarted once. Every eligible customer gets
the message, nobody who opted out, is suppressed, is held out or withdraws consent mid-send gets it, and
nothing is lost.

"Exactly one message": every eligible customer receives one message, the same one (its outbox row's
Message-ID) however often a killed sender's batch is re-claimed. A worker killed after the SMTP server took a
mail and before its ``sent`` mark reached PostgreSQL leaves no trace that the server has it, so that one
message is handed over again with the same Message-ID (see campaigns.sending; receivers and ESPs can drop it):
such repeats are counted here and may not exceed one per kill.

Everything runs against the test's own processes: a Redis server on a free port (not the shared one), an
aiosmtpd server in this process, two ``celery worker`` processes and a ``celery beat`` on the test database.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from campaigns.models import Campaign, CampaignStep, Message, SenderIdentity, SendingPolicy
from campaigns.outbox import holdout_bucket
from crm_site.tenancy import tenant_scope
from customers.consent import append_consent_events, recompute_derived_consent, unsubscribe
from customers.models import ConsentEvent, Customer, Suppression, suppression_hash
from tests.conftest import _free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

RECIPIENTS = 10_000
KILLS = 5
HOLDOUT_PERCENT = 10
WITHDRAWN_MID_SEND = 200
TEST_BUDGET_SECONDS = 160  # from starting the processes to the last message; the test fails past it
LEASE_SECONDS = 8  # a killed worker's batch is re-claimed this long after it was claimed

BASE_DIR = Path(settings.BASE_DIR)
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


def _wait(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition`` until it returns a true value (returned) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# --- The test's own servers and processes --------------------------------------------------------------


class OwnRedis:
    """A throwaway redis-server on a free port, without persistence, that the test may kill and restart."""

    def __init__(self, log_dir: Path):
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(log_dir / "redis.log", "ab")
        self.process = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        _wait(lambda: _pings(client), 10, "redis-server to answer")

    def restart(self) -> None:
        """Kill the server (its queued tasks are gone: no persistence) and start it again on the same port."""
        self.process.kill()
        self.process.wait(timeout=10)
        time.sleep(1)  # the broker stays away for a moment
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:  # noqa: BLE001 - not up yet
        return False


class Sink:
    """A real SMTP server recording (recipient, Message-ID) of every accepted mail, cheaply (no MIME parsing)."""

    def __init__(self):
        import logging

        from aiosmtpd.controller import Controller

        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO

        self.deliveries: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                header_end = envelope.content.find(b"\r\n\r\n")
                found = MESSAGE_ID.search(envelope.content, 0, header_end if header_end > 0 else None)
                message_id = found.group(1).decode() if found else ""
                with sink.lock:
                    sink.deliveries.extend((rcpt.lower(), message_id) for rcpt in envelope.rcpt_tos)
                return "250 OK"

        self.port = _free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def count(self) -> int:
        with self.lock:
            return len(self.deliveries)

    def by_recipient(self) -> dict[str, list[str]]:
        received = defaultdict(list)
        with self.lock:
            for rcpt, message_id in self.deliveries:
                received[rcpt].append(message_id)
        return received

    def stop(self) -> None:
        self.controller.stop()


class Processes:
    """Celery worker and beat processes on the test database, the test's Redis and the sink."""

    def __init__(self, tmp_path: Path, redis_url: str, smtp_port: int):
        db = connection.settings_dict
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        self.env = {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
            "CELERY_BROKER_URL": redis_url,
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(smtp_port),
            "RAPPORT_SEND_LEASE_SECONDS": str(LEASE_SECONDS),
            "RAPPORT_SEND_TASK_SECONDS": "10",
            "RAPPORT_SEND_RETRY_BASE_SECONDS": "1",
            "RAPPORT_VAR_DIR": str(tmp_path / "var"),
            "RAPPORT_TESTING": "1",
            "RAPPORT_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(BASE_DIR),
        }
        self.tmp_path = tmp_path
        self.workers: list[subprocess.Popen] = []
        self.others: list[subprocess.Popen] = []
        self.started = 0

    def _spawn(self, name: str, arguments: list[str]) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "celery", "-A", "crm_site", *arguments],
                                   cwd=self.tmp_path, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return process

    def start_worker(self) -> subprocess.Popen:
        self.started += 1
        worker = self._spawn(f"worker{self.started}", [
            "worker", "--pool", "solo", "-Q", "default,dispatch,send", "-n", f"reliability{self.started}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING",
        ])
        self.workers.append(worker)
        return worker

    def start_beat(self) -> None:
        self.others.append(self._spawn("beat", [
            "beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1",
            "--pidfile=", "-l", "WARNING",
        ]))

    def kill_a_worker(self, workspace) -> None:
        """SIGKILL a worker while it holds a claimed batch (its pid is in the lease owner), start a replacement."""

        def busy_workers():
            with tenant_scope(workspace):
                owners = set(Message.objects.filter(status="sending").values_list("lease_owner", flat=True))
            pids = {owner.split(":")[1] for owner in owners if owner.count(":") == 2}
            return [worker for worker in self.workers if worker.poll() is None and str(worker.pid) in pids]

        victim = random.choice(_wait(busy_workers, 30, "a worker holding a batch", interval=0.05))
        time.sleep(random.uniform(0, 0.2))  # somewhere in the batch: rendering, talking SMTP, or committing
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        self.workers.remove(victim)
        self.start_worker()

    def stop(self) -> None:
        for process in self.workers + self.others:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
        for process in self.workers + self.others:
            process.wait(timeout=10)

    def logs(self) -> str:
        tails = []
        for path in sorted(self.tmp_path.glob("*.log")):
            tails.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-1500:])
        return "\n".join(tails)


@pytest.fixture
def services(transactional_db, tmp_path):
    redis_server = OwnRedis(tmp_path)
    sink = Sink()
    processes = Processes(tmp_path, redis_server.url, sink.port)
    try:
        yield redis_server, sink, processes
    finally:
        processes.stop()
        sink.stop()
        redis_server.stop()


# --- The audience ------------------------------------------------------------------------------------------


def build_audience(workspace) -> dict[str, set[str]]:
    """Create 10,000 customers (bulk) and a live broadcast to all of them; return their addresses by group.

    Groups: ``opted_out`` (granted, then withdrew before the campaign), ``never_asked`` (no consent),
    ``suppressed`` (granted, but the address bounced), ``held_out`` (eligible, in the holdout group),
    ``eligible`` (everyone who must get the message).
    """
    now = timezone.now()
    with tenant_scope(workspace):
        SendingPolicy.objects.create(tenant=workspace, quiet_hours_enabled=False)  # independent of the clock
        customers = Customer.objects.bulk_create(
            [Customer(tenant=workspace, email=f"c{index:05d}@example.org", first_name=f"Name{index}")
             for index in range(RECIPIENTS)],
            batch_size=2000,
        )
        kind = {}
        for index, customer in enumerate(customers):
            kind[customer.pk] = ("never_asked" if index % 20 == 7 else "opted_out" if index % 20 == 11
                                 else "suppressed" if index % 50 == 13 else "opted_in")
        events = []
        for customer in customers:
            if kind[customer.pk] == "never_asked":
                continue
            events.append(ConsentEvent(tenant=workspace, customer_id=customer.pk, channel="email", action="grant",
                                       method="import", occurred_at=now - dt.timedelta(days=30)))
            if kind[customer.pk] == "opted_out":
                events.append(ConsentEvent(tenant=workspace, customer_id=customer.pk, channel="email",
                                           action="withdraw", method="preference_centre",
                                           occurred_at=now - dt.timedelta(days=2)))
        append_consent_events(events)
        bounced = [customer for customer in customers if kind[customer.pk] == "suppressed"]
        Suppression.objects.bulk_create([
            Suppression(tenant=workspace, channel="email", value_hash=suppression_hash("email", customer.email),
                        reason=Suppression.Reason.BOUNCED)
            for customer in bounced
        ])
        recompute_derived_consent([customer.pk for customer in bounced])

        sender = SenderIdentity.objects.create(tenant=workspace, name="News", from_name="Acme Coffee",
                                               from_email="news@acme.example")
        campaign = Campaign.objects.create(
            tenant=workspace, name="Spring news", kind=Campaign.Kind.BROADCAST, status=Campaign.Status.SCHEDULED,
            scheduled_at=now, sender=sender, holdout_percent=HOLDOUT_PERCENT,
        )
        CampaignStep.objects.create(tenant=workspace, campaign=campaign, position=1, subject="Hello {{ first_name }}",
                                    body="Hi {{ first_name }}, spring is here: https://shop.example/spring")
        opted_in = set(Customer.objects.filter(email_opt_in=True).values_list("pk", flat=True))

    groups = defaultdict(set)
    for customer in customers:
        group = kind[customer.pk]
        if group == "opted_in":
            assert customer.pk in opted_in
            group = "held_out" if holdout_bucket(campaign.pk, customer.pk) < HOLDOUT_PERCENT else "eligible"
        else:
            assert customer.pk not in opted_in
        groups[group].add(customer.email)
    groups["campaign"] = campaign
    return groups


def message_statuses(workspace) -> dict[str, int]:
    with tenant_scope(workspace):
        return dict(Message.objects.order_by().values_list("status").annotate(n=Count("pk")))


def campaign_status(workspace, campaign) -> str:
    with tenant_scope(workspace):
        return Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)


# --- The test ------------------------------------------------------------------------------------------------


def test_ten_thousand_recipients_each_get_one_message_while_workers_are_killed_and_redis_restarts(
    services, workspace
):
    redis_server, sink, processes = services
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    # Beat kicks the dispatcher and the senders every second (created on migrate; editable by admins).
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    assert PeriodicTask.objects.filter(task__startswith="campaigns.tasks.").update(interval=every_second) == 2
    started = time.monotonic()
    remaining = lambda: TEST_BUDGET_SECONDS - (time.monotonic() - started)  # noqa: E731
    processes.start_beat()
    processes.start_worker()
    processes.start_worker()
    # The processes boot while the audience is written (one transaction: they see all of it or nothing).
    groups = build_audience(workspace)
    eligible = groups["eligible"]

    _wait(lambda: sum(message_statuses(workspace).values()) == RECIPIENTS, remaining(), "the dispatch")
    timeline = [f"{time.monotonic() - started:.0f}s dispatched"]

    # Mid-send: customers at the end of the send order withdraw consent while their messages are still pending.
    to_withdraw = sorted(eligible)[-WITHDRAWN_MID_SEND:]
    kills = 0
    for kill in range(1, KILLS + 1):
        # Spread the kills over the send: after each further ~13% of the eligible mails, at a random moment.
        _wait(lambda: sink.count() >= len(eligible) * kill * 0.13, remaining(), f"progress before kill {kill}")
        processes.kill_a_worker(workspace)
        kills += 1
        timeline.append(f"{time.monotonic() - started:.0f}s kill {kill} at {sink.count()} mails")
        if kill == 2:
            with tenant_scope(workspace):
                withdrawing = list(Customer.objects.filter(email__in=to_withdraw))
                before = dict(Message.objects.filter(customer__in=withdrawing).order_by().values_list("status")
                              .annotate(n=Count("pk")))
                for customer in withdrawing:
                    unsubscribe(customer, "email", method="preference_centre")
            assert before == {"pending": WITHDRAWN_MID_SEND}, f"too late to be a test: {before}, {timeline}"
        if kill == 3:
            redis_server.restart()
            timeline.append(f"{time.monotonic() - started:.0f}s redis restarted")

    def settled():
        statuses = message_statuses(workspace)
        open_count = sum(statuses.get(status, 0) for status in ("pending", "deferred", "sending"))
        return statuses if open_count == 0 else None

    try:
        statuses = _wait(settled, remaining(), "every message to be sent or skipped", interval=0.5)
    except pytest.fail.Exception as error:
        pytest.fail(f"{error}\nstatuses: {message_statuses(workspace)}\n{timeline}\n{processes.logs()}")
    elapsed = time.monotonic() - started

    received = sink.by_recipient()
    expected = eligible - set(to_withdraw)
    assert set(received) == expected  # nobody missing, nobody who must not get it
    for group in ("opted_out", "never_asked", "suppressed", "held_out"):
        assert not groups[group] & set(received), group
    with tenant_scope(workspace):
        outbox_ids = {email: message.message_id_header for message, email in (
            (m, m.customer.email) for m in Message.objects.filter(status="sent").select_related("customer"))}
        withdrawn = set(Message.objects.filter(customer__email__in=to_withdraw).values_list("status", "skip_reason"))
    # One message per recipient: however often it was handed over, it is the same outbox row.
    assert {email: set(ids) for email, ids in received.items()} == {email: {outbox_ids[email]} for email in expected}
    repeated = {email: len(ids) for email, ids in received.items() if len(ids) > 1}
    repeats = sum(count - 1 for count in repeated.values())
    assert repeats <= kills, f"{repeats} repeated deliveries for {kills} kills: {repeated}"
    assert withdrawn == {("suppressed", "consent_withdrawn")}
    assert statuses == {
        "sent": len(expected),
        "held_out": len(groups["held_out"]),
        "suppressed": len(groups["opted_out"]) + len(groups["never_asked"]) + len(groups["suppressed"])
        + WITHDRAWN_MID_SEND,
    }
    _wait(lambda: campaign_status(workspace, groups["campaign"]) == Campaign.Status.DONE, max(remaining(), 5),
          "the campaign to be done")
    print(f"\n{len(expected)} sent in {elapsed:.1f} s with {kills} kills and a Redis restart; repeated: {repeated}; "
          + ", ".join(timeline))
