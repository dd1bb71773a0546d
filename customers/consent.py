"""The consent ledger and the suppression list: what a customer agreed to, and which addresses we never contact.

The ledger (``ConsentEvent``) is append-only; the current state per channel and purpose is its latest
event. ``Customer.email_opt_in`` / ``sms_opt_in`` are derived from it (latest marketing event is a grant,
the address is present, and it is not suppressed) so audiences filter on one table.

Suppressions are keyed by ``suppression_hash`` and so outlive the customer row (erasure). Rules:

* unsubscribing (link, preference centre, STOP) = a withdraw event + an ``unsubscribed`` suppression;
* a grant never lifts a suppression by itself, so an import or API call cannot re-subscribe an address
  that unsubscribed, bounced, complained or was erased;
* a grant confirmed by double opt-in (``confirmed_at`` set) lifts an ``unsubscribed`` or ``erased``
  suppression: the person asked again and proved the address is theirs;
* ``bounced``, ``complained`` and ``manual`` suppressions are lifted only by ``lift_suppression(...,
  by_admin=True)``.

Every function runs inside the tenant scope of the customer's workspace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Case, Exists, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Concat, Lower, Trim
from django.db.models.lookups import Exact
from django.utils import timezone

from crm_site.tenancy import current_tenant_id
from customers.models import (
    Channel,
    ConsentEvent,
    Customer,
    Interaction,
    MessagingPause,
    Suppression,
    suppression_hash,
)

MARKETING = "marketing"

# Suppressions a confirmed double opt-in may lift; the others need an admin.
SELF_SERVICE_LIFTABLE = {Suppression.Reason.UNSUBSCRIBED, Suppression.Reason.ERASED}
# When an address is suppressed again for another reason, the stronger reason wins (higher rank).
REASON_RANK = {
    Suppression.Reason.UNSUBSCRIBED: 0,
    Suppression.Reason.MANUAL: 1,
    Suppression.Reason.BOUNCED: 2,
    Suppression.Reason.COMPLAINED: 3,
    Suppression.Reason.ERASED: 4,
}
ADDRESS_FIELD = {Channel.EMAIL: "email", Channel.SMS: "phone"}
OPT_IN_FIELD = {Channel.EMAIL: "email_opt_in", Channel.SMS: "sms_opt_in"}

_PHONE_PUNCTUATION = re.compile(r"[\s().\-/]")


class ConsentError(ValueError):
    """A consent or suppression request that cannot be recorded (unknown channel, action…)."""


@dataclass(frozen=True)
class ConsentState:
    """The current consent for one channel and purpose, derived from the latest ledger event."""

    channel: str
    purpose: str
    granted: bool
    since: datetime | None
    method: str
    event_id: int | None
    confirmed: bool

    @property
    def channel_label(self) -> str:
        return Channel(self.channel).label


def _check_channel(channel: str) -> str:
    if channel not in ADDRESS_FIELD:
        raise ConsentError(f"Unknown channel {channel!r}; expected one of {', '.join(ADDRESS_FIELD)}.")
    return channel


def canonical_address(channel: str, address: str) -> str:
    """Return the address as suppressions key it: e-mail lower-cased, phone without spaces or punctuation."""
    _check_channel(channel)
    address = (address or "").strip()
    if channel == Channel.SMS:
        address = _PHONE_PUNCTUATION.sub("", address)
        if address.startswith("00"):
            address = "+" + address[2:]
    return address.lower()


def customer_address(customer: Customer, channel: str) -> str:
    """Return the customer's address for a channel ('' when missing)."""
    return getattr(customer, ADDRESS_FIELD[_check_channel(channel)]) or ""


# --- Suppressions -----------------------------------------------------------------------------------


def find_suppression(channel: str, address: str) -> Suppression | None:
    """Return the suppression of an address on a channel in the current workspace, or None."""
    canonical = canonical_address(channel, address)
    if not canonical:
        return None
    return Suppression.objects.filter(channel=channel, value_hash=suppression_hash(channel, canonical)).first()


def is_suppressed(channel: str, address: str) -> bool:
    """Return True when the address may not be contacted on the channel (bounced, complained, unsubscribed, erased…)."""
    return find_suppression(channel, address) is not None


def suppress(channel: str, address: str, reason: str, note: str = "") -> Suppression | None:
    """Suppress an address on a channel and return the suppression (None for an empty address).

    Suppressing an already suppressed address keeps one row and upgrades the reason when the new one is
    stronger (an unsubscribed address that later bounces is 'bounced'). Customers with that address
    lose their derived opt-in at once.
    """
    canonical = canonical_address(channel, address)
    if not canonical:
        return None
    if reason not in Suppression.Reason.values:
        raise ConsentError(f"Unknown suppression reason {reason!r}.")
    value_hash = suppression_hash(channel, canonical)
    suppression, created = Suppression.objects.select_for_update().get_or_create(
        channel=channel, value_hash=value_hash, defaults={"reason": reason, "note": note[:200]}
    )
    if not created and REASON_RANK[reason] > REASON_RANK[suppression.reason]:
        suppression.reason = reason
        suppression.note = note[:200] or suppression.note
        suppression.save(update_fields=["reason", "note"])
    recompute_derived_consent(_customers_with_address(channel, canonical, address))
    return suppression


def lift_suppression(channel: str, address: str, *, by_admin: bool = False) -> bool:
    """Remove the suppression of an address; return True when one was removed.

    Without ``by_admin`` only unsubscribed and erased suppressions are lifted (a confirmed double opt-in);
    bounces, complaints and manual blocks stay until an admin lifts them.
    """
    suppression = find_suppression(channel, address)
    if suppression is None:
        return False
    if not by_admin and suppression.reason not in SELF_SERVICE_LIFTABLE:
        return False
    suppression.delete()
    recompute_derived_consent(_customers_with_address(channel, canonical_address(channel, address), address))
    return True


def suppressions_for(customer: Customer) -> list[Suppression]:
    """Return the suppressions that apply to the customer's current e-mail address and phone number."""
    hashes = [
        (channel, suppression_hash(channel, canonical_address(channel, customer_address(customer, channel))))
        for channel in ADDRESS_FIELD
        if customer_address(customer, channel)
    ]
    if not hashes:
        return []
    condition = Q()
    for channel, value_hash in hashes:
        condition |= Q(channel=channel, value_hash=value_hash)
    return list(Suppression.objects.filter(condition).order_by("channel"))


def _customers_with_address(channel: str, canonical: str, *as_given: str) -> list[int]:
    # Stored addresses are normalised on the way in (import, API, forms), so an exact match on the indexed
    # column finds them; the address as given also covers a stored value in another spelling.
    field = ADDRESS_FIELD[channel]
    candidates = {canonical, *(value.strip() for value in as_given if value and value.strip())}
    return list(Customer.objects.filter(**{f"{field}__in": candidates}).values_list("pk", flat=True))


# --- The ledger ----------------------------------------------------------------------------------


def record_consent(
    customer: Customer,
    channel: str,
    action: str,
    method: str,
    *,
    purpose: str = MARKETING,
    occurred_at: datetime | None = None,
    source: str = "",
    ip_address: str | None = None,
    user_agent: str = "",
    wording_version: str = "",
    confirmed_at: datetime | None = None,
    author=None,
) -> ConsentEvent:
    """Append a consent event for the customer and return it; the derived opt-in flag is updated.

    A grant confirmed by double opt-in (``confirmed_at``) lifts an unsubscribed/erased suppression of the
    address; any other grant to a suppressed address is recorded but leaves the customer opted out.
    Also writes a 'consent' entry on the customer's timeline.
    """
    _check_channel(channel)
    if action not in ConsentEvent.Action.values:
        raise ConsentError(f"Unknown consent action {action!r}; expected grant or withdraw.")
    event = ConsentEvent.objects.create(
        customer=customer,
        channel=channel,
        purpose=purpose or MARKETING,
        action=action,
        occurred_at=occurred_at or timezone.now(),
        method=method[:40],
        source=(source or "")[:200],
        ip_address=ip_address or None,
        user_agent=(user_agent or "")[:400],
        wording_version=(wording_version or "")[:40],
        confirmed_at=confirmed_at,
    )
    address = customer_address(customer, channel)
    if action == ConsentEvent.Action.GRANT and confirmed_at is not None and address:
        lift_suppression(channel, address)
    Interaction.objects.create(
        customer=customer,
        kind=Interaction.Kind.CONSENT,
        occurred_at=event.occurred_at,
        summary=describe_event(event),
        details={
            "event_id": event.pk,
            "channel": channel,
            "purpose": event.purpose,
            "action": action,
            "method": event.method,
        },
        author=author,
    )
    recompute_derived_consent([customer.pk])
    customer.refresh_from_db(fields=["email_opt_in", "sms_opt_in"])
    return event


def describe_event(event: ConsentEvent) -> str:
    """Return the timeline line of a consent event, e.g. 'E-mail consent granted via double opt in'."""
    verb = "granted" if event.action == ConsentEvent.Action.GRANT else "withdrawn"
    purpose = "" if event.purpose == MARKETING else f" ({event.purpose})"
    how = event.method.replace("_", " ")
    return f"{Channel(event.channel).label} consent{purpose} {verb} via {how}"


def append_consent_events(events: list[ConsentEvent]) -> list[ConsentEvent]:
    """Append many unsaved events at once (imports, API batches) and return them saved.

    Writes the events and their timeline entries in two bulk inserts and recomputes the derived opt-in
    of the customers concerned in one UPDATE. Grants do not lift suppressions here: bulk sources never
    carry a double opt-in confirmation of their own.
    """
    if not events:
        return []
    tenant_id = current_tenant_id()
    for event in events:
        _check_channel(event.channel)
        if event.action not in ConsentEvent.Action.values:
            raise ConsentError(f"Unknown consent action {event.action!r}; expected grant or withdraw.")
        # bulk_create skips TenantModel.save(), which would otherwise fill these in.
        event.tenant_id = event.tenant_id or tenant_id
        event.purpose = event.purpose or MARKETING
        event.occurred_at = event.occurred_at or timezone.now()
    saved = ConsentEvent.objects.bulk_create(events)
    Interaction.objects.bulk_create(
        [
            Interaction(
                tenant_id=event.tenant_id,
                customer_id=event.customer_id,
                kind=Interaction.Kind.CONSENT,
                occurred_at=event.occurred_at,
                summary=describe_event(event),
                details={
                    "event_id": event.pk,
                    "channel": event.channel,
                    "purpose": event.purpose,
                    "action": event.action,
                    "method": event.method,
                },
            )
            for event in saved
        ]
    )
    recompute_derived_consent({event.customer_id for event in saved})
    return saved


def latest_actions(customer_ids: Iterable[int], purpose: str = MARKETING) -> dict[tuple[int, str], str]:
    """Return the latest consent action per (customer id, channel) for the customers, in one query."""
    latest: dict[tuple[int, str], str] = {}
    rows = (
        ConsentEvent.objects.filter(customer_id__in=list(customer_ids), purpose=purpose)
        .order_by("customer_id", "channel", "-occurred_at", "-id")
        .values_list("customer_id", "channel", "action")
    )
    for customer_id, channel, action in rows:
        latest.setdefault((customer_id, channel), action)
    return latest


def unsubscribe(customer: Customer, channel: str, method: str = "unsubscribe", **details) -> ConsentEvent:
    """Withdraw marketing consent and suppress the address as 'unsubscribed'; return the withdraw event.

    Idempotent in effect: unsubscribing twice appends a second event but keeps one suppression.
    """
    event = record_consent(customer, channel, ConsentEvent.Action.WITHDRAW, method, **details)
    address = customer_address(customer, channel)
    if address:
        suppress(channel, address, Suppression.Reason.UNSUBSCRIBED, note=f"via {method}")
        customer.refresh_from_db(fields=["email_opt_in", "sms_opt_in"])
    return event


def current_consent(customer: Customer) -> dict[tuple[str, str], ConsentState]:
    """Return the current consent per (channel, purpose): the latest event decides.

    Marketing consent for every channel is always present (not granted when no event exists).
    """
    states: dict[tuple[str, str], ConsentState] = {}
    events = ConsentEvent.objects.filter(customer=customer).order_by("-occurred_at", "-id").only(
        "channel", "purpose", "action", "occurred_at", "method", "confirmed_at"
    )
    for event in events:
        key = (event.channel, event.purpose)
        if key not in states:
            states[key] = ConsentState(
                channel=event.channel,
                purpose=event.purpose,
                granted=event.action == ConsentEvent.Action.GRANT,
                since=event.occurred_at,
                method=event.method,
                event_id=event.pk,
                confirmed=event.confirmed_at is not None,
            )
    for channel in ADDRESS_FIELD:
        states.setdefault(
            (channel, MARKETING),
            ConsentState(channel, MARKETING, False, None, "", None, False),
        )
    return dict(sorted(states.items()))


def has_consent(customer: Customer, channel: str, purpose: str = MARKETING) -> bool:
    """Return True when a message may be sent now: consent granted, address present, not suppressed, not paused.

    Reads the ledger and the suppression list afresh (send time), not the derived flag.
    """
    _check_channel(channel)
    address = customer_address(customer, channel)
    if not address or customer.erased_at is not None:
        return False
    latest = (
        ConsentEvent.objects.filter(customer=customer, channel=channel, purpose=purpose)
        .order_by("-occurred_at", "-id")
        .values_list("action", flat=True)
        .first()
    )
    if latest != ConsentEvent.Action.GRANT:
        return False
    return not is_suppressed(channel, address) and not is_paused(customer)


# --- Pauses (preference centre: "nothing for a few weeks", consent unchanged) ---------------------------


def pause_messages(customer: Customer, until: datetime) -> MessagingPause:
    """Pause marketing to the customer until ``until`` (replacing any pause); return the pause."""
    pause, _ = MessagingPause.objects.update_or_create(customer=customer, defaults={"paused_until": until})
    Interaction.objects.create(
        customer=customer,
        kind=Interaction.Kind.CONSENT,
        summary=f"Paused messages until {until:%Y-%m-%d}",
        details={"paused_until": until.isoformat()},
    )
    return pause


def resume_messages(customer: Customer) -> bool:
    """End the customer's pause; return True when there was one."""
    deleted, _ = MessagingPause.objects.filter(customer=customer).delete()
    if deleted:
        Interaction.objects.create(customer=customer, kind=Interaction.Kind.CONSENT, summary="Resumed messages")
    return bool(deleted)


def paused_until(customer: Customer, at: datetime | None = None) -> datetime | None:
    """Return the end of the customer's pause when one is in force at ``at`` (default now), else None."""
    return (
        MessagingPause.objects.filter(customer=customer, paused_until__gt=at or timezone.now())
        .values_list("paused_until", flat=True)
        .first()
    )


def is_paused(customer: Customer, at: datetime | None = None) -> bool:
    """Return True while the customer asked to receive nothing for a while."""
    return paused_until(customer, at) is not None


def reachable_customers(channel: str, at: datetime | None = None) -> models.QuerySet:
    """Return the workspace's customers that may get marketing on the channel now (one query, for audiences).

    Opted in (derived flag: consent granted, address present, not suppressed) and not paused.
    """
    active_pause = MessagingPause.objects.filter(customer=OuterRef("pk"), paused_until__gt=at or timezone.now())
    return Customer.objects.filter(**{OPT_IN_FIELD[_check_channel(channel)]: True}).exclude(Exists(active_pause))


# --- Set-based recomputation of the derived flags ----------------------------------------------------


class _Sha256Hex(models.Func):
    """Hex SHA-256 of a text, as ``suppression_hash`` computes it (PostgreSQL core, no pgcrypto)."""

    function = "SHA256"
    output_field = models.CharField()

    def as_postgresql(self, compiler, connection, **extra_context):
        return super().as_sql(
            compiler, connection, template="encode(sha256(convert_to(%(expressions)s, 'UTF8')), 'hex')", **extra_context
        )


def _derived_opt_in(channel: str) -> Case:
    """SQL for one customer row: latest marketing event is a grant, the address is present and not suppressed."""
    field = ADDRESS_FIELD[channel]
    latest_action = Subquery(
        ConsentEvent.objects.filter(customer=OuterRef("pk"), channel=channel, purpose=MARKETING)
        .order_by("-occurred_at", "-id")
        .values("action")[:1]
    )
    # Same text as suppression_hash(channel, canonical_address(...)) for stored (normalised) addresses.
    address_hash = _Sha256Hex(Concat(Value(f"{settings.SECRET_KEY}:{channel}:"), Lower(Trim(OuterRef(field)))))
    suppressed = Exists(Suppression.objects.filter(channel=channel, value_hash=address_hash))
    return Case(
        When(
            Q(**{f"{field}__gt": ""}, erased_at__isnull=True)
            & Q(Exact(latest_action, Value(ConsentEvent.Action.GRANT.value)))
            & ~Q(suppressed),
            then=Value(True),
        ),
        default=Value(False),
        output_field=models.BooleanField(),
    )


def recompute_derived_consent(customer_ids: Iterable[int] | None = None) -> int:
    """Recompute ``email_opt_in`` / ``sms_opt_in`` from the ledger and suppressions in one UPDATE.

    ``customer_ids`` limits the update (None = every customer of the workspace in scope). Only rows
    whose flags change are written. Returns the number of customers whose flags changed.
    """
    customers = Customer.objects.all()
    if customer_ids is not None:
        ids = list(customer_ids)
        if not ids:
            return 0
        customers = customers.filter(pk__in=ids)
    email_opt_in = _derived_opt_in(Channel.EMAIL)
    sms_opt_in = _derived_opt_in(Channel.SMS)
    return customers.exclude(email_opt_in=email_opt_in, sms_opt_in=sms_opt_in).update(
        email_opt_in=email_opt_in, sms_opt_in=sms_opt_in
    )
