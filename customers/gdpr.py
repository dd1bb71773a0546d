"""Data subject rights: export one customer's data as JSON, and erase their personal data.

Erasure keeps what the business needs and is not personal: orders (amounts, dates, lines) stay for
revenue figures, consent events keep their channel/action/time (proof of what was agreed), timeline
entries keep their kind and time. Names, addresses, attributes, IPs, user agents and free texts go.
The e-mail address and phone number become hashed 'erased' suppressions, so a later import or API call
with the same address cannot opt it in again.

Higher apps (campaigns, …) hold personal data of their own: they connect to ``customer_erased`` to erase
it, and to ``export_sections`` to add their part to an export. customers never imports them.
"""

from __future__ import annotations

from django.dispatch import Signal
from django.utils import timezone

from customers import consent
from customers.models import (
    Channel,
    ConsentEvent,
    Customer,
    Interaction,
    MessagingPause,
    Order,
    OrderLine,
    Suppression,
)

EXPORT_FORMAT = "rapport.customer-export/1"

# Sent inside the erasing transaction with ``customer`` (already anonymised) and ``erased_at``.
customer_erased = Signal()
# Sent while exporting with ``customer``; each receiver returns ``(section_name, json_serialisable_value)``.
export_sections = Signal()

# Timeline details that are references or numbers, not personal data: they survive erasure.
KEPT_DETAIL_KEYS = {
    "event_id", "order_id", "message_id", "campaign_id", "step_id", "journey_id", "channel", "purpose",
    "action", "method", "total", "currency", "external_id",
}


def export_customer(customer: Customer) -> dict:
    """Return everything stored about the customer as a JSON-serialisable dict (dates as ISO strings).

    Profile, orders with lines, the full consent history, the current consent, the timeline, the
    suppressions that apply to their addresses, a pause if any, and sections added by other apps.
    """
    orders = list(Order.objects.filter(customer=customer).order_by("placed_at", "id"))
    lines_by_order: dict[int, list[dict]] = {}
    for line in OrderLine.objects.filter(order__customer=customer).order_by("order_id", "id"):
        lines_by_order.setdefault(line.order_id, []).append(
            {
                "sku": line.sku,
                "quantity": line.quantity,
                "unit_price": str(line.unit_price),
                "line_total": str(line.line_total),
                "returned_quantity": line.returned_quantity,
            }
        )
    pause = MessagingPause.objects.filter(customer=customer).first()
    document = {
        "format": EXPORT_FORMAT,
        "exported_at": _iso(timezone.now()),
        "workspace": customer.tenant.name,
        "profile": {
            "id": customer.pk,
            "external_id": customer.external_id,
            "email": customer.email,
            "phone": customer.phone,
            "first_name": customer.first_name,
            "last_name": customer.last_name,
            "time_zone": customer.time_zone,
            "locale": customer.locale,
            "attributes": customer.attributes,
            "first_seen_at": _iso(customer.first_seen_at),
            "created_at": _iso(customer.created_at),
            "updated_at": _iso(customer.updated_at),
            "erased_at": _iso(customer.erased_at),
        },
        "consent": {
            f"{state.channel}:{state.purpose}": {
                "channel": state.channel,
                "purpose": state.purpose,
                "granted": state.granted,
                "since": _iso(state.since),
                "method": state.method,
            }
            for state in consent.current_consent(customer).values()
        },
        "consent_history": [
            {
                "channel": event.channel,
                "purpose": event.purpose,
                "action": event.action,
                "occurred_at": _iso(event.occurred_at),
                "method": event.method,
                "source": event.source,
                "ip_address": event.ip_address,
                "user_agent": event.user_agent,
                "wording_version": event.wording_version,
                "confirmed_at": _iso(event.confirmed_at),
                "recorded_at": _iso(event.recorded_at),
            }
            for event in ConsentEvent.objects.filter(customer=customer).order_by("occurred_at", "id")
        ],
        "orders": [
            {
                "external_id": order.external_id,
                "placed_at": _iso(order.placed_at),
                "total": str(order.total),
                "refunded_amount": str(order.refunded_amount),
                "currency": order.currency,
                "channel": order.channel,
                "status": order.status,
                "lines": lines_by_order.get(order.pk, []),
            }
            for order in orders
        ],
        "timeline": [
            {
                "kind": interaction.kind,
                "occurred_at": _iso(interaction.occurred_at),
                "summary": interaction.summary,
                "details": interaction.details,
            }
            for interaction in Interaction.objects.filter(customer=customer).order_by("occurred_at", "id")
        ],
        "suppressions": [
            {"channel": s.channel, "reason": s.reason, "since": _iso(s.created_at)}
            for s in consent.suppressions_for(customer)
        ],
        "paused_until": _iso(pause.paused_until) if pause else None,
    }
    for _receiver, section in export_sections.send(sender=Customer, customer=customer):
        if section:
            name, value = section
            document.setdefault(name, value)
    return document


def erase_customer(customer: Customer, *, requested_by: str = "") -> Customer:
    """Erase the customer's personal data in place and return the anonymised customer.

    Idempotent: erasing an erased customer changes nothing more. Their addresses are suppressed as
    'erased' (hashed) first, so no later import or API call opts them in again.
    """
    if customer.erased_at is not None:
        return customer
    erased_at = timezone.now()
    for channel, address in ((Channel.EMAIL, customer.email), (Channel.SMS, customer.phone)):
        if address:
            consent.suppress(channel, address, Suppression.Reason.ERASED, note="erased on request")
    Customer.objects.filter(pk=customer.pk).update(
        external_id="", email="", phone="", first_name="", last_name="", time_zone="", locale="",
        attributes={}, email_opt_in=False, sms_opt_in=False, erased_at=erased_at, updated_at=erased_at,
    )
    # The ledger is append-only for decisions; personal data in it is the one thing erasure may touch.
    ConsentEvent.objects.filter(customer=customer).update(ip_address=None, user_agent="", source="")
    MessagingPause.objects.filter(customer=customer).delete()
    _erase_timeline(customer)
    Interaction.objects.create(
        customer=customer,
        kind=Interaction.Kind.CONSENT,
        occurred_at=erased_at,
        summary="Personal data erased on request",
        details={"requested_by": requested_by[:100]} if requested_by else {},
    )
    customer.refresh_from_db()
    customer_erased.send(sender=Customer, customer=customer, erased_at=erased_at)
    return customer


def _erase_timeline(customer: Customer) -> None:
    """Blank the texts of the customer's timeline, keeping kinds, times and reference ids (set-based).

    Notes are free text about the person and go entirely.
    """
    Interaction.objects.filter(customer=customer, kind=Interaction.Kind.NOTE).delete()
    kept = list(Interaction.objects.filter(customer=customer).only("id", "kind", "details"))
    for interaction in kept:
        interaction.summary = f"{Interaction.Kind(interaction.kind).label} (erased)"
        interaction.details = {k: v for k, v in (interaction.details or {}).items() if k in KEPT_DETAIL_KEYS}
    Interaction.objects.bulk_update(kept, ["summary", "details"], batch_size=500)


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None
