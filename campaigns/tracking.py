"""What happened after sending: signed click redirects and open pixels, and recording events on the timeline.

Links in a message point to ``/t/c/<token>/`` and the pixel to ``/t/o/<token>.gif``. The token is signed
with the site's secret (``django.core.signing``'s format, made by crm_site.signed_links), carries the
workspace, the message and (for clicks) the destination, so the public endpoints need no login and cannot
be turned into an open redirect: only a URL we signed is ever redirected to.
"""

from __future__ import annotations

import datetime as dt

from django.core import signing
from django.utils import timezone

from campaigns.models import Message, MessageEvent
from crm_site.signed_links import absolute_url, signed_token
from customers.models import Interaction

CLICK_SALT = "rapport.campaigns.click"
OPEN_SALT = "rapport.campaigns.open"

# The kinds that also appear on the customer's timeline, and how.
TIMELINE_KIND = {
    MessageEvent.Kind.OPENED: Interaction.Kind.OPEN,
    MessageEvent.Kind.CLICKED: Interaction.Kind.CLICK,
    MessageEvent.Kind.REPLIED: Interaction.Kind.REPLY,
    MessageEvent.Kind.BOUNCED: Interaction.Kind.MESSAGE,
    MessageEvent.Kind.COMPLAINED: Interaction.Kind.MESSAGE,
}


class BadToken(ValueError):
    """A tracking token that is malformed, tampered with, or not ours."""


def click_url(message: Message, url: str) -> str:
    """Return the signed tracking redirect for a link in a message."""
    return absolute_url("campaigns_public:click", signed_token([message.tenant_id, message.pk, url], CLICK_SALT))


def open_pixel_url(message: Message) -> str:
    """Return the signed URL of the message's open-tracking pixel."""
    return absolute_url("campaigns_public:open", signed_token([message.tenant_id, message.pk], OPEN_SALT))


def read_click_token(token: str) -> tuple[int, int, str]:
    """Return (tenant id, message id, destination URL) of a click token; raises BadToken."""
    try:
        tenant_id, message_id, url = signing.loads(token, salt=CLICK_SALT)
    except (signing.BadSignature, ValueError, TypeError):
        raise BadToken("invalid click token") from None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise BadToken("invalid destination")
    return int(tenant_id), int(message_id), url


def read_open_token(token: str) -> tuple[int, int]:
    """Return (tenant id, message id) of an open-pixel token; raises BadToken."""
    try:
        tenant_id, message_id = signing.loads(token, salt=OPEN_SALT)
    except (signing.BadSignature, ValueError, TypeError):
        raise BadToken("invalid open token") from None
    return int(tenant_id), int(message_id)


def record_event(message: Message, kind: str, *, url: str = "", details: dict | None = None,
                 at: dt.datetime | None = None) -> MessageEvent:
    """Record what happened to a message and return the event; the first open/click/reply also goes on the timeline.

    Runs in the message's workspace scope.
    """
    at = at or timezone.now()
    first_of_kind = not MessageEvent.objects.filter(message=message, kind=kind).exists()
    event = MessageEvent.objects.create(
        message=message, campaign_id=message.campaign_id, customer_id=message.customer_id, kind=kind,
        occurred_at=at, url=url[:2000], details=details or {},
    )
    timeline_kind = TIMELINE_KIND.get(kind)
    if timeline_kind and (first_of_kind or kind == MessageEvent.Kind.REPLIED):
        campaign_name = message.campaign.name
        summary = {
            MessageEvent.Kind.OPENED: f"Opened “{campaign_name}”",
            MessageEvent.Kind.CLICKED: f"Clicked a link in “{campaign_name}”",
            MessageEvent.Kind.REPLIED: f"Replied to “{campaign_name}”",
            MessageEvent.Kind.BOUNCED: f"“{campaign_name}” bounced",
            MessageEvent.Kind.COMPLAINED: f"Marked “{campaign_name}” as spam",
        }[kind]
        Interaction.objects.create(
            customer_id=message.customer_id, kind=timeline_kind, occurred_at=at, summary=summary[:300],
            details={"message_id": message.pk, "campaign_id": message.campaign_id, "url": url[:500],
                     **(details or {})},
        )
    return event
