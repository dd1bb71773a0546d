"""The sender: claims due outbox messages in batches, re-checks consent, delivers them, records the outcome.

Exactly once, as far as it can be had
-------------------------------------
A batch is claimed in one short transaction (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
parallel senders never take the same rows; on SQLite the write lock serialises claims): the rows become
``sending`` with a lease (owner + expiry) and one more attempt. Consent is re-checked at the claim and again
while the batch is delivered (``ConsentWatch``), so a withdrawal stops the messages not yet handed over. Each message is then delivered and
marked ``sent`` in its own commit right after the server accepted it. A sender that dies leaves its
rows ``sending``; when the lease expires another sender claims them again, so nothing is lost.

The one window that cannot be closed: the SMTP server (or ESP) accepted a message and the worker died
before its ``sent`` mark reached the database (the time to read the server's answer and send the mark; the
mark does not wait for its commit, see ``SentMarks``). That message is sent again after the lease expires. It carries the same ``Message-ID`` (derived from the outbox row) and, for ESPs, the
same metadata, so a receiver or ESP that deduplicates drops it; tests/test_send_reliability.py counts such
repeats: at most one per killed worker. A sender that is merely slow never overlaps another: it stops
before its lease runs out and hands the rest of its batch back.

``sent`` marks are committed with ``synchronous_commit = off``: a worker crash cannot lose them (the
database has them), a crash of PostgreSQL itself may lose the last fraction of a second of marks, whose
messages would then be sent a second time, never lost.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import re
import select
import smtplib
import socket
import time
import uuid
import weakref
from dataclasses import dataclass, field

from django.conf import settings
from django.core.mail import get_connection
from django.core.mail.backends.smtp import EmailBackend as SmtpBackend
from django.db import DatabaseError, connection
from django.db.models import CharField, Exists, F, OuterRef, Q, Value
from django.db.models.functions import Concat, JSONObject
from django.utils import timezone

from campaigns.composing import Workspace as ComposeWorkspace
from campaigns.composing import OutboxEmail, compose_email, compose_sms
from campaigns.models import Campaign, CampaignStep, Message, MessageEvent
from campaigns.outbox import defer_for_quiet_hours, insert_from_select
from campaigns.personalization import Recipient, build_contexts, template_variables
from campaigns.rendering import RenderError
from campaigns.sms import SmsMessage, SmsPermanentError, SmsTemporaryError, get_sms_backend
from crm_site.models import Workspace
from crm_site.tenancy import TENANT_SETTINGS_SQL, current_tenant_id, tenant_settings, tenant_transaction
from customers.consent import reachable_customers
from customers.models import Channel, Interaction

log = logging.getLogger(__name__)

RETRY_CAP = dt.timedelta(hours=6)
# Stop starting new messages this long before the lease ends, so no other sender can overlap.
LEASE_SAFETY = dt.timedelta(seconds=5)
CLAIMABLE_CAMPAIGN_STATUSES = (Campaign.Status.SCHEDULED, Campaign.Status.SENDING)


@dataclass
class SendOutcome:
    """What a sender did: counts per outcome."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    suppressed: int = 0
    released: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: SendOutcome) -> None:
        for name in ("claimed", "sent", "retried", "failed", "suppressed", "released"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors[:5])


def new_lease_owner() -> str:
    """Return a unique name for one claim: host, process and a random part."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def retry_delay(attempts: int) -> dt.timedelta:
    """Return the wait before the next attempt: exponential backoff with jitter (half to full), capped."""
    base = settings.RAPPORT_SEND_RETRY_BASE_SECONDS * (2 ** max(attempts - 1, 0))
    delay = min(base, RETRY_CAP.total_seconds())
    return dt.timedelta(seconds=random.uniform(delay / 2, delay))


# --- Claiming ------------------------------------------------------------------------------------------


def due_messages(now: dt.datetime):
    """Return the workspace's messages a sender may claim now: due, or abandoned by a sender whose lease ran out."""
    return Message.objects.filter(
        Q(status__in=(Message.Status.PENDING, Message.Status.DEFERRED), next_attempt_at__lte=now)
        | Q(status=Message.Status.SENDING, lease_expires_at__lt=now),
        campaign__status__in=CLAIMABLE_CAMPAIGN_STATUSES,
    )


def claim_batch(owner: str, *, limit: int, now: dt.datetime | None = None) -> tuple[list[int], int]:
    """Claim up to ``limit`` due messages for ``owner``; return (ids to deliver, number suppressed at claim).

    One transaction: lock due rows skipping those other senders hold, lease them, then re-check consent
    and suppression so a withdrawal since dispatch stops the message.
    """
    now = now or timezone.now()
    with tenant_transaction():
        ids = list(
            due_messages(now)
            .order_by("priority", "next_attempt_at", "pk")
            .select_for_update(skip_locked=True, of=("self",))
            .values_list("pk", flat=True)[:limit]
        )
        if not ids:
            return [], 0
        Message.objects.filter(pk__in=ids).update(
            status=Message.Status.SENDING, lease_owner=owner,
            lease_expires_at=now + dt.timedelta(seconds=settings.RAPPORT_SEND_LEASE_SECONDS),
            attempts=F("attempts") + 1,
        )
        withdrawn = suppress_withdrawn(ids, owner, now)
        return [pk for pk in ids if pk not in withdrawn], len(withdrawn)


def suppress_withdrawn(ids: list[int], owner: str, now: dt.datetime) -> set[int]:
    """Suppress the messages among ``ids`` leased by ``owner`` whose customer may no longer be contacted on the
    channel (consent withdrawn, address suppressed, paused); return their ids. One query when nobody withdrew."""
    unreachable = Q()
    for channel in Channel.values:
        reachable = reachable_customers(channel, at=now).filter(pk=OuterRef("customer_id"))
        unreachable |= Q(channel=channel) & ~Q(Exists(reachable))
    with tenant_transaction():
        withdrawn = set(
            Message.objects.filter(unreachable, pk__in=ids, lease_owner=owner, status=Message.Status.SENDING)
            .values_list("pk", flat=True)
        )
        if withdrawn:
            Message.objects.filter(pk__in=withdrawn).update(
                status=Message.Status.SUPPRESSED, skip_reason=Message.SkipReason.CONSENT_WITHDRAWN,
                lease_owner="", lease_expires_at=None,
            )
    return withdrawn


class ConsentWatch:
    """Re-checks the consent of a claimed batch's undelivered messages while it is delivered.

    Delivering a batch takes a while; a customer who withdraws meanwhile must not get the rest of it.
    The check is one query over the batch's remaining messages, at most every RAPPORT_SEND_CONSENT_RECHECK_SECONDS.
    """

    def __init__(self, owner: str):
        self.owner = owner
        self.interval = getattr(settings, "RAPPORT_SEND_CONSENT_RECHECK_SECONDS", 0.5)
        self.next_check = time.monotonic() + self.interval  # the claim has just checked
        self.withdrawn: set[int] = set()

    def is_due(self) -> bool:
        return time.monotonic() >= self.next_check

    def withdrew(self, message: Message, remaining: list[Message]) -> bool:
        """Return True when the message may not be delivered any more (it is then recorded as suppressed)."""
        if time.monotonic() >= self.next_check:
            self.withdrawn |= suppress_withdrawn([m.pk for m in remaining], self.owner, timezone.now())
            self.next_check = time.monotonic() + self.interval
        return message.pk in self.withdrawn


# --- Recording outcomes (each its own short commit) ----------------------------------------------------


def _fast_commit() -> None:
    # A worker crash cannot lose an asynchronously committed row; see the module docstring.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


# The sent mark, as two statements prepared once per database connection: the tenant (as tenant_transaction()
# sets it) with an asynchronous commit, then the row. Sent together in libpq's pipeline mode up to one Sync,
# they run as one implicit transaction: one round trip, and PostgreSQL neither parses nor plans them again
# (measured 0.25 -> 0.15 ms of the server's CPU and 0.11 -> 0.07 ms of the sender's per mark).
_MARK_SENT_STATEMENTS = (
    (b"rapport_sent_scope",
     f"SELECT {TENANT_SETTINGS_SQL % ('$1', '$2')}, set_config('synchronous_commit', 'off', true)"),
    # "status || ''" keeps the planner on the primary key: with status = 'sending' it may walk the claim index
    # (tenant, status) through every message being sent and filter by id (0.4 against 0.08 ms, 2,000 leased).
    (b"rapport_sent_mark", f"""
        UPDATE {Message._meta.db_table}
           SET status = 'sent', sent_at = $1, provider_message_id = $2, to_address = $3, error = '',
               lease_owner = '', lease_expires_at = NULL
         WHERE tenant_id = $4 AND id = $5 AND lease_owner = $6 AND status || '' = 'sending'"""),
)
_prepared_on: weakref.WeakSet = weakref.WeakSet()  # the psycopg connections that have them


class SentMarks:
    """Commits the ``sent`` mark of each delivered message, one short transaction per message, without waiting
    for PostgreSQL's answer.

    A mark is sent the moment the mail server (or SMS provider) has accepted the message; its answer is read
    before the connection is used again, usually after the next SMTP exchange, by when it has long arrived:
    the commit overlaps the next delivery instead of adding a round trip to every message. A sender killed in
    between loses nothing that waiting would have saved: PostgreSQL runs what it has received whether or not
    anyone reads the answer. Elsewhere than PostgreSQL a mark is an ordinary update that waits.
    """

    def __init__(self, owner: str, outcome: SendOutcome, sent_ids: list[int]):
        self.owner, self.outcome, self.sent_ids = owner, outcome, sent_ids
        self.pending: Message | None = None

    def mark(self, message: Message, provider_id: str, now: dt.datetime) -> None:
        self.collect()
        values = (provider_id[:200], message.to_address[:254])
        if connection.vendor != "postgresql":
            with tenant_transaction():
                self._count(message, bool(
                    Message.objects.filter(pk=message.pk, lease_owner=self.owner, status=Message.Status.SENDING)
                    .update(status=Message.Status.SENT, sent_at=now, provider_message_id=values[0],
                            to_address=values[1], error="", lease_owner="", lease_expires_at=None)
                ))
            return
        pgconn = _prepared_connection().pgconn
        tenant_id = current_tenant_id()
        pgconn.enter_pipeline_mode()
        pgconn.send_query_prepared(_MARK_SENT_STATEMENTS[0][0], [v.encode() for v in tenant_settings(tenant_id)])
        pgconn.send_query_prepared(_MARK_SENT_STATEMENTS[1][0], [
            now.isoformat().encode(), values[0].encode(), values[1].encode(), str(tenant_id).encode(),
            str(message.pk).encode(), self.owner.encode(),
        ])
        pgconn.pipeline_sync()
        self.pending = message
        while pgconn.flush():  # psycopg keeps libpq non-blocking: push the mark out now
            select.select([], [pgconn.socket], [], 1)

    def collect(self) -> None:
        """Read the answer to the pending mark (call before any other use of the database connection)."""
        if self.pending is None:
            return
        message, self.pending = self.pending, None
        from psycopg import pq

        pgconn = connection.connection.pgconn
        results = []
        while (result := pgconn.get_result()) is None or result.status != pq.ExecStatus.PIPELINE_SYNC:
            if result is not None:
                results.append(result)
            elif pgconn.status == pq.ConnStatus.BAD:
                break
        failed = [r for r in results if r.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)]
        try:
            pgconn.exit_pipeline_mode()
        finally:
            if failed or len(results) != 2:
                reason = failed[0].get_error_message() if failed else pgconn.get_error_message()
                raise DatabaseError(f"Recording message {message.pk} as sent failed: {reason!r}")
        self._count(message, results[1].command_tuples == 1)

    def _count(self, message: Message, marked: bool) -> None:
        if marked:
            self.outcome.sent += 1
            self.sent_ids.append(message.pk)


def _prepared_connection():
    """Return the psycopg connection under Django's, with the sent mark's statements prepared on it."""
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _prepared_on:
        from psycopg import pq

        for name, statement in _MARK_SENT_STATEMENTS:
            result = raw.pgconn.prepare(name, statement.encode())
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise DatabaseError(f"Preparing {name.decode()} failed: {result.error_message!r}")
        _prepared_on.add(raw)
    return raw


def _mark_failed(message: Message, owner: str, reason: str, *, status=Message.Status.FAILED,
                 skip_reason: str = "") -> None:
    with tenant_transaction():
        Message.objects.filter(pk=message.pk, lease_owner=owner).update(
            status=status, skip_reason=skip_reason, error=reason[:500], lease_owner="", lease_expires_at=None,
        )


def _schedule_retry(message: Message, owner: str, reason: str, now: dt.datetime) -> bool:
    """Put the message back with a backoff, or fail it after the last attempt; return True when it will retry."""
    if message.attempts >= settings.RAPPORT_SEND_MAX_ATTEMPTS:
        _mark_failed(message, owner, f"{reason} (gave up after {message.attempts} attempts)")
        return False
    with tenant_transaction():
        Message.objects.filter(pk=message.pk, lease_owner=owner).update(
            status=Message.Status.PENDING, next_attempt_at=now + retry_delay(message.attempts),
            error=reason[:500], lease_owner="", lease_expires_at=None,
        )
    return True


def release(ids: list[int], owner: str) -> int:
    """Hand claimed but unattempted messages back (their attempt is not counted); return how many."""
    if not ids:
        return 0
    with tenant_transaction():
        return Message.objects.filter(pk__in=ids, lease_owner=owner, status=Message.Status.SENDING).update(
            status=Message.Status.PENDING, attempts=F("attempts") - 1, lease_owner="", lease_expires_at=None,
        )


def _record_on_timeline(ids: list[int]) -> None:
    """Add one 'message' entry per sent message to the customers' timelines (one INSERT … SELECT)."""
    if not ids:
        return
    rows = (
        Message.objects.filter(pk__in=ids, status=Message.Status.SENT)
        .order_by()
        .annotate(
            i_tenant=F("tenant_id"),
            i_customer=F("customer_id"),
            i_kind=Value(Interaction.Kind.MESSAGE.value),
            i_occurred_at=F("sent_at"),
            i_summary=Concat(Value("Sent “"), F("campaign__name"), Value("” by "), F("channel"),
                             output_field=CharField()),
            i_details=JSONObject(message_id=F("pk"), campaign_id=F("campaign_id"), step_id=F("step_id"),
                                 channel=F("channel")),
        )
        .values_list("i_tenant", "i_customer", "i_kind", "i_occurred_at", "i_summary", "i_details")
    )
    with tenant_transaction():
        _fast_commit()
        insert_from_select(Interaction, ["tenant", "customer", "kind", "occurred_at", "summary", "details"], rows)


# --- Delivering a batch ---------------------------------------------------------------------------------


def _classify_smtp_error(error: Exception) -> tuple[bool, str]:
    """Return (permanent?, reason) for an exception raised while handing a message to the mail server."""
    code = getattr(error, "smtp_code", None)
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        code, response = next(iter(error.recipients.values()), (None, b""))
        text = response.decode(errors="replace") if isinstance(response, bytes) else str(response)
        return bool(code and code >= 500), f"Recipient refused ({code}): {text}"[:500]
    if code is not None:
        text = getattr(error, "smtp_error", b"")
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        return code >= 500, f"Mail server answered {code}: {text}"[:500]
    try:
        from anymail.exceptions import AnymailAPIError, AnymailRecipientsRefused

        if isinstance(error, AnymailRecipientsRefused):
            return True, f"ESP refused the recipient: {error}"[:500]
        if isinstance(error, AnymailAPIError):
            status = getattr(error, "status_code", None) or 0
            return 400 <= status < 500 and status != 429, f"ESP error {status}: {error}"[:500]
    except ImportError:  # pragma: no cover - anymail is a dependency
        pass
    return False, f"{error.__class__.__name__}: {error}"[:500]


def _hard_bounce(message: Message, reason: str) -> None:
    from campaigns.tracking import record_event
    from customers.consent import suppress

    with tenant_transaction():
        record_event(message, MessageEvent.Kind.BOUNCED, details={"reason": reason, "source": "smtp"})
        suppress(message.channel, message.to_address, "bounced", note=reason[:200])


# What of a customer a sender reads: contexts (names), addresses, the workspace (links).
_CUSTOMER_FIELDS = ("customer__tenant", "customer__email", "customer__phone", "customer__first_name",
                    "customer__last_name")


def _claimed_messages(ids: list[int], owner: str) -> tuple[list[Message], Workspace]:
    """Return the claimed messages in sending order, with their customers, steps, campaigns (and senders), and
    the workspace.

    A batch has a handful of steps and campaigns and one workspace: they are read once each and attached,
    instead of being joined into, and built again from, every message's row (and only the customer fields a
    sender reads are loaded), which halved loading a batch.
    """
    messages = list(
        Message.objects.filter(pk__in=ids, lease_owner=owner)
        .select_related("customer")
        .only(*(field.name for field in Message._meta.concrete_fields), *_CUSTOMER_FIELDS)
        .order_by("priority", "pk")
    )
    steps = CampaignStep.objects.in_bulk({m.step_id for m in messages})
    campaigns = Campaign.objects.select_related("sender").in_bulk({m.campaign_id for m in messages})
    workspace = Workspace.objects.only("name", "slug", "postal_address").get(pk=current_tenant_id())
    for message in messages:
        message.step, message.campaign = steps[message.step_id], campaigns[message.campaign_id]
        message.customer.tenant = workspace
    return messages, workspace


def send_batch(*, owner: str | None = None, limit: int | None = None, now: dt.datetime | None = None) -> SendOutcome:
    """Claim one batch of the current workspace's due messages and deliver it; return the outcome."""
    owner = owner or new_lease_owner()
    limit = limit or settings.RAPPORT_SEND_BATCH_SIZE
    claimed_at = now or timezone.now()
    outcome = SendOutcome()
    ids, outcome.suppressed = claim_batch(owner, limit=limit, now=claimed_at)
    outcome.claimed = len(ids) + outcome.suppressed
    if not ids:
        return outcome
    # Leave before the lease ends so a re-claim by another sender can never overlap this one.
    stop_at = time.monotonic() + settings.RAPPORT_SEND_LEASE_SECONDS - LEASE_SAFETY.total_seconds()
    with tenant_transaction():
        messages, workspace = _claimed_messages(ids, owner)
        used = template_variables(*{m.step.subject for m in messages}, *{m.step.body for m in messages})
        contexts = build_contexts(
            [Recipient(m.pk, m.customer, m.campaign, m.channel) for m in messages], used=used | {"links"}
        )
    compose_workspace = ComposeWorkspace(workspace.name, workspace.postal_address)
    sent_ids: list[int] = []
    remaining = list(messages)
    try:
        email_messages = [m for m in remaining if m.channel == Channel.EMAIL]
        sms_messages = [m for m in remaining if m.channel == Channel.SMS]
        if email_messages:
            _deliver_emails(email_messages, owner, contexts, compose_workspace, stop_at, outcome, sent_ids)
        if sms_messages:
            _deliver_sms(sms_messages, owner, contexts, stop_at, outcome, sent_ids)
    finally:
        _record_on_timeline(sent_ids)
    return outcome


def _compose_batch(messages, owner, contexts, workspace, outcome) -> list[tuple[Message, OutboxEmail]]:
    """Compose the batch's e-mails up front; record at once those that cannot be sent (no address, a template
    that fails for the customer) and return the others with their e-mails, MIME form written."""
    composed = []
    for message in messages:
        message.to_address = message.customer.email
        if not message.to_address:
            _record_unsendable(message, owner, None, outcome)
            continue
        try:
            email = compose_email(message, message.step, message.campaign, message.campaign.sender,
                                  contexts[message.pk], workspace)
        except RenderError as error:
            _record_unsendable(message, owner, error, outcome)
            continue
        email.smtp_bytes()
        composed.append((message, email))
    return composed


def _deliver_emails(messages, owner, contexts, workspace, stop_at, outcome, sent_ids) -> None:
    # Compose the whole batch first, then talk SMTP in a tight loop: a process that does little between its
    # network waits is woken sooner on a busy machine (measured: the same SMTP exchange took about four times
    # as long when interleaved with rendering; composing inside smtplib's waits for replies, tried in the
    # third round, was no faster than this and used more CPU).
    composed = _compose_batch(messages, owner, contexts, workspace, outcome)
    to_send = [message for message, _ in composed]
    mail_connection = None
    consent = ConsentWatch(owner)
    marks = SentMarks(owner, outcome, sent_ids)
    envelope_senders: dict[str, str] = {}
    try:
        for index, (message, email) in enumerate(composed):
            if time.monotonic() > stop_at:
                marks.collect()
                outcome.released += release([m.pk for m in to_send[index:]], owner)
                return
            if consent.is_due():
                marks.collect()
            if consent.withdrew(message, to_send[index:]):
                outcome.suppressed += 1
                continue
            try:
                if mail_connection is None:
                    mail_connection = get_connection(fail_silently=False)
                    mail_connection.open()
                _hand_over(mail_connection, email, envelope_senders)
            except Exception as error:  # noqa: BLE001 - every delivery failure is classified and recorded
                marks.collect()
                permanent, reason = _classify_smtp_error(error)
                outcome.errors.append(reason)
                if permanent:
                    _mark_failed(message, owner, reason)
                    outcome.failed += 1
                    if isinstance(error, smtplib.SMTPRecipientsRefused):
                        _hard_bounce(message, reason)
                    continue
                if _schedule_retry(message, owner, reason, timezone.now()):
                    outcome.retried += 1
                else:
                    outcome.failed += 1
                # The connection may be broken: drop it; the next message opens a fresh one.
                _close_quietly(mail_connection)
                mail_connection = None
                continue
            # An ESP (anymail) reports its own id; plain SMTP has only our Message-ID.
            provider_id = getattr(getattr(email, "anymail_status", None), "message_id", None) or \
                email.extra_headers["Message-ID"]
            marks.mark(message, str(provider_id), timezone.now())
        marks.collect()
    finally:
        try:
            marks.collect()
        finally:
            _close_quietly(mail_connection)


def _record_unsendable(message: Message, owner: str, failure: RenderError | None, outcome: SendOutcome) -> None:
    """Record a message that cannot be sent: no e-mail address (suppressed), or its template failed for this
    customer (retried when only the time limit stopped it, failed otherwise)."""
    if failure is None:
        _mark_failed(message, owner, "No e-mail address", status=Message.Status.SUPPRESSED,
                     skip_reason=Message.SkipReason.NO_ADDRESS)
        outcome.suppressed += 1
    elif failure.timed_out and _schedule_retry(message, owner, f"Template: {failure}", timezone.now()):
        outcome.retried += 1
    else:
        _mark_failed(message, owner, f"Template: {failure}")
        outcome.failed += 1


# A bare ASCII dot-atom address: Django's SMTP backend would pass it to the server as it is.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                            r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z")


def _hand_over(mail_connection, email, envelope_senders: dict[str, str]) -> None:
    """Hand one composed e-mail to the mail server; raise what the backend raises when it does not take it.

    Through Django's SMTP backend this is what its ``send_messages`` does for one message, without parsing
    the same From address for every message of a batch (``envelope_senders`` keeps it) or a plain recipient
    address at all (about a third of a millisecond per message). Any other backend (an ESP's) gets the mail
    as usual.
    """
    if type(mail_connection) is not SmtpBackend or mail_connection.connection is None:
        mail_connection.send_messages([email])
        return
    if email.from_email not in envelope_senders:
        envelope_senders[email.from_email] = mail_connection.prep_address(email.from_email)
    recipients = [address if _PLAIN_ADDRESS.match(address) else mail_connection.prep_address(address)
                  for address in email.recipients()]
    mail_connection.connection.sendmail(envelope_senders[email.from_email], recipients, email.smtp_bytes())


def _close_quietly(mail_connection) -> None:
    if mail_connection is None:
        return
    try:
        mail_connection.close()
    except Exception:  # noqa: BLE001 - a broken connection is being discarded anyway
        pass


def _deliver_sms(messages, owner, contexts, stop_at, outcome, sent_ids) -> None:
    consent = ConsentWatch(owner)
    marks = SentMarks(owner, outcome, sent_ids)
    with get_sms_backend() as backend:
        for index, message in enumerate(messages):
            if time.monotonic() > stop_at:
                outcome.released += release([m.pk for m in messages[index:]], owner)
                return
            if consent.withdrew(message, messages[index:]):
                outcome.suppressed += 1
                continue
            message.to_address = message.customer.phone
            if not message.to_address:
                _mark_failed(message, owner, "No phone number", status=Message.Status.SUPPRESSED,
                             skip_reason=Message.SkipReason.NO_ADDRESS)
                outcome.suppressed += 1
                continue
            try:
                text = compose_sms(message, message.step, contexts[message.pk])
            except RenderError as error:
                _record_unsendable(message, owner, error, outcome)
                continue
            sender = message.campaign.sender.sms_from if message.campaign.sender else ""
            try:
                provider_id = backend.send(SmsMessage(to=message.to_address, body=text, sender=sender,
                                                      reference=message.message_id_header.strip("<>")))
            except SmsPermanentError as error:
                _mark_failed(message, owner, str(error))
                outcome.failed += 1
                continue
            except (SmsTemporaryError, OSError) as error:
                if _schedule_retry(message, owner, str(error), timezone.now()):
                    outcome.retried += 1
                else:
                    outcome.failed += 1
                continue
            marks.mark(message, provider_id or message.message_id_header, timezone.now())
            marks.collect()


def send_due(*, budget_seconds: float | None = None) -> SendOutcome:
    """Deliver the current workspace's due messages batch after batch until none is left or the budget is spent.

    Quiet hours are applied first, so a backlog never goes out at night.
    """
    budget = settings.RAPPORT_SEND_TASK_SECONDS if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    total = SendOutcome()
    with tenant_transaction():
        defer_for_quiet_hours()
    while time.monotonic() < deadline:
        outcome = send_batch()
        total.add(outcome)
        if outcome.claimed == 0:
            break
    return total


def has_due_messages(now: dt.datetime | None = None) -> bool:
    """Return True when the current workspace has messages a sender could claim now."""
    with tenant_transaction():
        return due_messages(now or timezone.now()).exists()

