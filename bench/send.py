#!/usr/bin/env python
"""Messages per second through the whole sending pipeline, beside raw smtplib into the same SMTP server.

    DATABASE_URL=postgres://rapport@127.0.0.1:5432/rapport_bench .venv/bin/python bench/send.py --messages 5000

What is measured, in one run, against one local aiosmtpd server (a separate process that only counts):

* **pipeline**: a broadcast to N opted-in customers, from ``dispatch_due()`` (the set-based INSERT of the
  outbox) to the last ``sent`` mark: ``send_due()`` claims leased batches (``FOR UPDATE SKIP LOCKED``),
  re-checks consent, builds the personal contexts, composes each e-mail (tracked links, open pixel,
  List-Unsubscribe), hands it to Django's SMTP backend and commits its ``sent`` mark and timeline entry.
  One sender, so one SMTP connection at a time, as one ``send_workspace`` task runs.
* **raw smtplib**: the same rendered messages (composed again, untimed, from the same outbox rows and
  serialised as Django's SMTP backend does) sent over ONE ``smtplib.SMTP`` connection with ``sendmail``:
  the most a Python sender gets through one connection. The pipeline also uses one connection at a time
  (one per claimed batch), so both sides have the same number of connections.
* ``--senders N``: N sender processes at once (as N ``send_workspace`` tasks in N worker processes; deployed
  with RAPPORT_SEND_PARALLELISM, 2 by default), against raw smtplib over N connections at once (N processes,
  the messages dealt out among them), so again the same number of connections on both sides.

* ``--rounds R``: the recipients split over R rounds, each a fresh workspace measured as above (pipeline,
  then raw smtplib on its messages); the totals are compared. On a shared machine whose load comes and goes
  in bursts, both sides then sample the same stretch of time instead of one burst falling on one side.

Both rates and their ratio are printed (see docs/benchmarks.md, "the ratio convention"); the target is a
ratio of at least 0.5. The database must be PostgreSQL and migrated; the benchmark creates a workspace
(slug ``bench-send``, replaced on every run) and deletes it afterwards unless ``--keep``.
``--profile out.prof`` writes a cProfile of the (first round's) pipeline (read it with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORKSPACE_SLUG = "bench-send"
SUBJECT = "Hello {{ first_name }}, spring is here"
BODY = (
    "Hi {{ first_name }},\n\nour spring coffees are in: https://shop.example/spring\n\n"
    "Thank you for being a customer of {{ workspace_name }}.\nSee you soon: https://shop.example/visit"
)


# --- The SMTP server: a separate process that accepts and counts -----------------------------------------


def serve_smtp(port: int) -> None:
    """Run a counting aiosmtpd server on 127.0.0.1:port until SIGTERM; then print
    'received <messages> <bytes> <CPU seconds>'."""
    from aiosmtpd.controller import Controller

    counts = {"messages": 0, "bytes": 0}

    class CountingHandler:
        async def handle_DATA(self, server, session, envelope):
            counts["messages"] += len(envelope.rcpt_tos)
            counts["bytes"] += len(envelope.content)
            return "250 OK"

    controller = Controller(CountingHandler(), hostname="127.0.0.1", port=port)
    controller.start()
    cpu_started = time.process_time()
    print("ready", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.run_until_complete(stopped.wait())
    controller.stop()
    print(f"received {counts['messages']} {counts['bytes']} {time.process_time() - cpu_started:.3f}", flush=True)


class SmtpServer:
    """The counting server as a child process (so it takes no time from the measured process)."""

    def __init__(self):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-smtp", str(self.port)], stdout=subprocess.PIPE, text=True
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the SMTP server did not start")

    def stop(self) -> tuple[int, int, float]:
        """Stop the server; return (messages, bytes) it received and the CPU seconds it spent."""
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=10)
        _, messages, size, cpu_seconds = output.split()
        return int(messages), int(size), float(cpu_seconds)


# --- Data ---------------------------------------------------------------------------------------------------


def create_workspace(messages: int):
    """Create the benchmark workspace with ``messages`` opted-in customers and a due broadcast; return it."""
    from django.utils import timezone

    from campaigns.models import Campaign, CampaignStep, SenderIdentity, SendingPolicy
    from crm_site.models import Workspace
    from crm_site.tenancy import platform_scope, tenant_scope
    from customers.consent import append_consent_events
    from customers.models import ConsentEvent, Customer

    previous = Workspace.objects.filter(slug=WORKSPACE_SLUG).first()
    if previous:
        delete_workspace(previous)
    with platform_scope():
        workspace = Workspace.objects.create(name="Benchmark Coffee", slug=WORKSPACE_SLUG,
                                             postal_address="Benchmark Coffee\n1 Bean Street\n10115 Berlin")
    now = timezone.now()
    with tenant_scope(workspace):
        # Quiet hours and the frequency cap would make the figure depend on the clock and on earlier runs.
        SendingPolicy.objects.create(tenant=workspace, frequency_cap=0, quiet_hours_enabled=False)
        customers = Customer.objects.bulk_create(
            [Customer(tenant=workspace, email=f"customer{index}@bench.example", first_name=f"Name{index}",
                      last_name="Bench", first_seen_at=now) for index in range(messages)],
            batch_size=5000,
        )
        append_consent_events([
            ConsentEvent(tenant=workspace, customer_id=customer.pk, channel="email", action="grant", method="import",
                         occurred_at=now)
            for customer in customers
        ])
        sender = SenderIdentity.objects.create(tenant=workspace, name="News", from_name="Benchmark Coffee",
                                               from_email="news@bench.example", reply_to="hello@bench.example")
        campaign = Campaign.objects.create(tenant=workspace, name="Spring coffees", kind=Campaign.Kind.BROADCAST,
                                           status=Campaign.Status.SCHEDULED, scheduled_at=now, sender=sender,
                                           holdout_percent=0)
        CampaignStep.objects.create(tenant=workspace, campaign=campaign, position=1, subject=SUBJECT, body=BODY)
    return workspace


def outbox_statuses(workspace) -> dict[str, int]:
    """Return the count of outbox rows per status (and error)."""
    from django.db.models import Count

    from campaigns.models import Message
    from crm_site.tenancy import tenant_scope

    with tenant_scope(workspace):
        rows = Message.objects.order_by().values_list("status", "error").annotate(n=Count("pk"))
        return {f"{status} {error}".strip(): count for status, error, count in rows}


def delete_workspace(workspace) -> None:
    """Delete the benchmark workspace (its campaigns first: they protect their sender identity)."""
    from campaigns.models import Campaign
    from crm_site.tenancy import platform_scope, tenant_scope

    with tenant_scope(workspace):
        Campaign.objects.all().delete()
    with platform_scope():
        workspace.delete()


# --- The two measurements -------------------------------------------------------------------------------------


def run_pipeline(workspace, expected: int, profile_path: str | None, senders: int = 1) -> tuple[float, float, int]:
    """Dispatch and send the broadcast as the Celery tasks would; return (seconds, CPU seconds, messages sent).

    With ``senders`` > 1, that many sender processes run at once (``send_workspace`` tasks in as many
    worker processes, as RAPPORT_SEND_PARALLELISM queues them), each with its own database and SMTP connection.
    """
    from campaigns.outbox import dispatch_due
    from crm_site import tenancy

    from django.urls import get_resolver

    # A running worker has its URLconf loaded (links in the messages are reversed): do it before the clock.
    get_resolver().reverse_dict  # noqa: B018 - populates the resolver
    profiler = _profiler(profile_path)
    cpu_started = time.process_time()
    started = time.perf_counter()
    with tenancy.tenant_scope(workspace):  # dispatch_workspace: one transaction
        dispatch_due()
    if senders > 1:
        sent, errors, children_cpu = _in_processes(senders, _send_workspace, [(workspace.pk, expected)] * senders)
    else:
        sent, errors, children_cpu = *_send_workspace(workspace.pk, expected)[:2], 0.0
    if errors:
        print(f"delivery errors   {len(errors)}, e.g. {errors[:3]}")
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started + children_cpu
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile_path)
    return seconds, cpu_seconds, sent


def _send_workspace(workspace_id: int, expected: int) -> tuple[int, list[str], float]:
    """Run one sender as a ``send_workspace`` task does until nothing is left; return (sent, errors, CPU seconds)."""
    from campaigns.sending import send_due
    from crm_site import tenancy

    cpu_started = time.process_time()
    token = tenancy._current_tenant.set(workspace_id)  # send_workspace: atomic=False, each batch commits
    errors = []
    try:
        sent = 0
        while sent < expected:
            outcome = send_due(budget_seconds=600)
            sent += outcome.sent
            errors += outcome.errors
            if outcome.claimed == 0:
                break
    finally:
        tenancy._current_tenant.reset(token)
    return sent, errors, time.process_time() - cpu_started


def _in_processes(count: int, function, arguments: list[tuple]) -> tuple[int, list, float]:
    """Run ``function(*arguments[i])`` in ``count`` forked processes at once; return the sums of their results."""
    import multiprocessing

    from django.db import connections

    connections.close_all()  # each child opens its own
    with multiprocessing.get_context("fork").Pool(count) as pool:
        results = pool.starmap(function, arguments)
    return sum(r[0] for r in results), [e for r in results for e in r[1]], sum(r[2] for r in results)


def _profiler(profile_path: str | None):
    if not profile_path:
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def rendered_messages(workspace) -> list[tuple[str, list[str], bytes]]:
    """Compose the sent outbox rows again, exactly as the sender did; return (from, to, bytes) for smtplib."""
    from campaigns.composing import Workspace as ComposeWorkspace
    from campaigns.composing import compose_email
    from campaigns.models import Message
    from campaigns.personalization import Recipient, build_contexts, template_variables
    from crm_site.tenancy import tenant_scope

    with tenant_scope(workspace):
        messages = list(Message.objects.filter(status=Message.Status.SENT)
                        .select_related("customer", "step", "campaign", "campaign__sender").order_by("pk"))
        used = template_variables(SUBJECT, BODY) | {"links"}
        contexts = build_contexts([Recipient(m.pk, m.customer, m.campaign, m.channel) for m in messages], used=used)
        compose_workspace = ComposeWorkspace(workspace.name, workspace.postal_address)
        rendered = []
        for message in messages:
            email = compose_email(message, message.step, message.campaign, message.campaign.sender,
                                  contexts[message.pk], compose_workspace)
            # The bytes the sender hands to smtplib (as Django's SMTP backend would: CRLF line ends).
            rendered.append((email.from_email, email.recipients(), email.smtp_bytes()))
    return rendered


def run_raw_smtplib(port: int, rendered: list[tuple[str, list[str], bytes]],
                    connections: int = 1) -> tuple[float, float]:
    """Send the rendered messages over ``connections`` smtplib connections (one process each when more than
    one, the messages dealt out in turn); return (seconds, CPU seconds) it took."""
    cpu_started = time.process_time()
    started = time.perf_counter()
    if connections > 1:
        shares = [(port, rendered[index::connections]) for index in range(connections)]
        _, _, children_cpu = _in_processes(connections, _raw_connection, shares)
    else:
        children_cpu = _raw_connection(port, rendered)[2]
    return time.perf_counter() - started, time.process_time() - cpu_started + children_cpu * (connections > 1)


def _raw_connection(port: int, rendered: list[tuple[str, list[str], bytes]]) -> tuple[int, list, float]:
    cpu_started = time.process_time()
    with smtplib.SMTP("127.0.0.1", port) as server:
        for from_address, to_addresses, payload in rendered:
            server.sendmail(from_address, to_addresses, payload)
    return len(rendered), [], time.process_time() - cpu_started


# --- Main -----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="Recipients of the broadcast (default 5000).")
    parser.add_argument("--batch-size", type=int, default=None, help="RAPPORT_SEND_BATCH_SIZE (default: settings).")
    parser.add_argument("--senders", type=int, default=1,
                        help="Sender processes at once, against raw smtplib over as many connections (default 1).")
    parser.add_argument("--rounds", type=int, default=1,
                        help="Split the recipients over this many rounds of pipeline then raw smtplib, each with a "
                             "fresh workspace, and compare the totals (default 1).")
    parser.add_argument("--keep", action="store_true", help="Keep the (last) benchmark workspace afterwards.")
    parser.add_argument("--profile", metavar="FILE", help="Write a cProfile of the pipeline part.")
    parser.add_argument("--serve-smtp", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_smtp:
        serve_smtp(args.serve_smtp)
        return 0

    server = SmtpServer()
    try:
        return measure(args, server)
    finally:
        if server.process.poll() is None:
            server.process.kill()


def measure(args, server: SmtpServer) -> int:
    """Create the data, run both measurements, print them; return the exit status."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "crm_site.settings")
    os.environ.update(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1",
                      EMAIL_PORT=str(server.port))
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    if not settings.IS_POSTGRES:
        server.stop()
        print("bench/send.py needs PostgreSQL: set DATABASE_URL=postgres://…", file=sys.stderr)
        return 2
    if args.batch_size:
        settings.RAPPORT_SEND_BATCH_SIZE = args.batch_size

    load_before = os.getloadavg()[0]
    pipeline_seconds = pipeline_cpu = raw_seconds = raw_cpu = 0.0
    sent = raw_sent = 0
    round_ratios, statuses = [], {}
    try:
        for index, recipients in enumerate(_round_sizes(args.messages, args.rounds)):
            workspace = create_workspace(recipients)
            try:
                seconds, cpu, round_sent = run_pipeline(workspace, recipients, args.profile if index == 0 else None,
                                                        args.senders)
                rendered = rendered_messages(workspace)
                round_raw_seconds, round_raw_cpu = run_raw_smtplib(server.port, rendered, args.senders)
                statuses = outbox_statuses(workspace)
            finally:
                if not args.keep:
                    delete_workspace(workspace)
            pipeline_seconds, pipeline_cpu, sent = pipeline_seconds + seconds, pipeline_cpu + cpu, sent + round_sent
            raw_seconds, raw_cpu = raw_seconds + round_raw_seconds, raw_cpu + round_raw_cpu
            raw_sent += len(rendered)
            round_ratios.append((round_sent / seconds) / (len(rendered) / round_raw_seconds))
    finally:
        received, size, server_cpu = server.stop()

    pipeline_rate = sent / pipeline_seconds
    raw_rate = raw_sent / raw_seconds
    print(f"database          {connection.settings_dict['NAME']} (PostgreSQL {connection.pg_version // 10000})")
    print(f"messages          {args.messages} recipients, batch size {settings.RAPPORT_SEND_BATCH_SIZE}, "
          f"{size / max(received, 1) / 1024:.1f} KiB per message")
    print(f"pipeline          {sent} sent in {pipeline_seconds:.2f} s = {pipeline_rate:,.0f} messages/s "
          f"(dispatch -> outbox -> claimed batches -> SMTP, {_senders(args.senders)}; "
          f"{pipeline_cpu / max(sent, 1) * 1000:.2f} ms CPU per message in the sending processes)")
    print(f"raw smtplib       {raw_sent} sent in {raw_seconds:.2f} s = {raw_rate:,.0f} messages/s "
          f"(same messages, {_senders(args.senders, 'connection')}; "
          f"{raw_cpu / max(raw_sent, 1) * 1000:.2f} ms CPU per message)")
    print(f"ratio             {pipeline_rate / raw_rate:.2f} of raw smtplib (target >= 0.50)")
    if args.rounds > 1:
        print(f"rounds            {args.rounds}, each pipeline then raw smtplib; ratios "
              + " ".join(f"{ratio:.2f}" for ratio in round_ratios))
    print(f"server received   {received} messages (expected {sent + raw_sent}), "
          f"{server_cpu / max(received, 1) * 1000:.2f} ms CPU per message in the SMTP server")
    print(f"machine           {os.cpu_count()} cores, load average {load_before:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    if sent != args.messages or received != sent + raw_sent:
        print(f"bench/send.py: not every message was sent and received (outbox: {statuses})", file=sys.stderr)
        return 1
    return 0


def _round_sizes(messages: int, rounds: int) -> list[int]:
    """Return how many recipients each round has: ``messages`` dealt out over ``rounds`` as evenly as can be."""
    return [messages // rounds + (index < messages % rounds) for index in range(rounds)]


def _senders(count: int, noun: str = "sender") -> str:
    return f"one {noun}" if count == 1 else f"{count} {noun}s at once"


if __name__ == "__main__":
    sys.exit(main())
