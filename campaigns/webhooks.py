"""What comes back from the outside: ESP tracking events, inbound SMS keywords and e-mail replies.

* ESP tracking (django-anymail's ``tracking`` signal, any ESP anymail supports): bounces and complaints
  suppress the address, unsubscribes withdraw consent, deliveries/opens/clicks are recorded. The message
  is found through the metadata we attach when sending (``rapport_tenant`` / ``rapport_message``).
* Inbound SMS (``handle_inbound_sms``): STOP-like keywords unsubscribe, START-like keywords opt back in
  (texting from the number proves it is theirs), HELP answers with who we are and how to stop; anything
  else is a reply on the customer's timeline.
* E-mail replies (anymail's ``inbound`` signal, or ``handle_email_reply`` from a plain JSON webhook)
  land on the timeline and count as a reply to the message they answer.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from email.utils import parseaddr

from django.core import signing
from django.dispatch import receiver
from django.utils import timezone

from campaigns.models import Message, MessageEvent, SenderIdentity
from campaigns.sms import SmsMessage, SmsError, get_sms_backend
from campaigns.tracking import record_event
from crm_site.models import Workspace
from crm_site.tenancy import platform_scope, tenant_scope
from customers import consent
from customers.models import Channel, ConsentEvent, Customer, Interaction, Suppression

log = logging.getLogger(__name__)

STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "ARRET"}
START_WORDS = {"START", "UNSTOP", "YES", "SUBSCRIBE"}
HELP_WORDS = {"HELP", "INFO"}
INBOUND_SALT = "rapport.campaigns.inbound"
_OUR_MESSAGE_ID = re.compile(r"<rapport\.(\d+)\.(\d+)@[^>]+>")


def inbound_token(workspace: Workspace) -> str:
    """Return the secret path segment of the workspace's inbound webhooks (configured at the SMS provider)."""
    return signing.dumps(workspace.pk, salt=INBOUND_SALT)


def read_inbound_token(token: str) -> int | None:
    """Return the workspace id of an inbound webhook token, or None when it is not ours."""
    try:
        return int(signing.loads(token, salt=INBOUND_SALT))
    except (signing.BadSignature, ValueError, TypeError):
        return None


@dataclass(frozen=True)
class InboundResult:
    """What an inbound text or e-mail did: ``action`` in stop/start/help/reply/unknown_sender, and the reply sent."""

    action: str
    reply: str = ""


def keyword(text: str) -> str:
    """Return the upper-cased first word of a text (the keyword carriers and customers use)."""
    words = re.findall(r"[A-Za-z]+", text or "")
    return words[0].upper() if words else ""


def handle_inbound_sms(workspace: Workspace, from_number: str, body: str) -> InboundResult:
    """Apply an inbound SMS to the workspace's customer with that number; return what was done.

    Runs in the workspace's scope; a number we do not know changes nothing.
    """
    canonical = consent.canonical_address(Channel.SMS, from_number)
    with tenant_scope(workspace):
        customer = Customer.objects.filter(phone=canonical, erased_at__isnull=True).first()
        if customer is None:
            return InboundResult("unknown_sender")
        word = keyword(body)
        if word in STOP_WORDS:
            consent.unsubscribe(customer, Channel.SMS, method="sms_keyword", source=f"SMS: {body[:100]}")
            return InboundResult("stop", _reply(workspace, customer,
                                                f"{workspace.name}: you will get no more texts. Reply START to opt back in."))
        if word in START_WORDS:
            consent.record_consent(customer, Channel.SMS, ConsentEvent.Action.GRANT, "sms_keyword",
                                   source=f"SMS: {body[:100]}", confirmed_at=timezone.now())
            return InboundResult("start", _reply(workspace, customer,
                                                 f"{workspace.name}: welcome back. Reply STOP to opt out, HELP for help."))
        if word in HELP_WORDS:
            text = f"{workspace.name}: offers and news by text. Reply STOP to opt out, START to opt back in."
            Interaction.objects.create(customer=customer, kind=Interaction.Kind.REPLY, summary="Asked for HELP by SMS",
                                       details={"channel": "sms", "body": body[:500]})
            return InboundResult("help", _reply(workspace, customer, text))
        _record_reply(customer, Channel.SMS, body, message=_latest_sent(customer, Channel.SMS))
        return InboundResult("reply")


def _reply(workspace: Workspace, customer: Customer, text: str) -> str:
    """Send a keyword answer by SMS (compliance replies go out whatever the consent state); return the text."""
    sender = SenderIdentity.objects.filter(is_default=True).values_list("sms_from", flat=True).first() or ""
    try:
        with get_sms_backend() as backend:
            backend.send(SmsMessage(to=customer.phone, body=text, sender=sender))
    except SmsError as error:
        log.warning("keyword answer to customer %s in workspace %s failed: %s", customer.pk, workspace.pk, error)
    return text


def _latest_sent(customer: Customer, channel: str) -> Message | None:
    return (Message.objects.filter(customer=customer, channel=channel, status=Message.Status.SENT)
            .select_related("campaign").order_by("-sent_at").first())


def _record_reply(customer: Customer, channel: str, text: str, *, message: Message | None,
                  subject: str = "") -> None:
    if message is not None:
        record_event(message, MessageEvent.Kind.REPLIED, details={"channel": channel, "body": text[:1000],
                                                                  "subject": subject[:200]})
        return
    label = "SMS" if channel == Channel.SMS else "E-mail"
    Interaction.objects.create(customer=customer, kind=Interaction.Kind.REPLY,
                               summary=f"{label} reply: {(subject or text)[:200]}",
                               details={"channel": channel, "body": text[:1000], "subject": subject[:200]})


def handle_email_reply(workspace: Workspace, from_email: str, text: str, *, subject: str = "",
                       in_reply_to: str = "") -> InboundResult:
    """Put an e-mail reply on the customer's timeline (as a reply to our message when it answers one)."""
    address = consent.canonical_address(Channel.EMAIL, parseaddr(from_email)[1] or from_email)
    with tenant_scope(workspace):
        customer = Customer.objects.filter(email__iexact=address, erased_at__isnull=True).first()
        if customer is None:
            return InboundResult("unknown_sender")
        message = None
        match = _OUR_MESSAGE_ID.search(in_reply_to or "")
        if match and int(match.group(1)) == workspace.pk:
            message = Message.objects.filter(pk=int(match.group(2)), customer=customer).select_related("campaign").first()
        _record_reply(customer, Channel.EMAIL, text, message=message or _latest_sent(customer, Channel.EMAIL),
                      subject=subject)
        if keyword(subject) in {"UNSUBSCRIBE", "STOP"} or keyword(text) in {"UNSUBSCRIBE", "STOP"}:
            consent.unsubscribe(customer, Channel.EMAIL, method="email_reply", source=subject[:200])
            return InboundResult("stop")
        return InboundResult("reply")


# --- django-anymail signals --------------------------------------------------------------------------


def _message_from_metadata(metadata: dict | None) -> tuple[int, int] | None:
    try:
        return int(metadata["rapport_tenant"]), int(metadata["rapport_message"])
    except (KeyError, TypeError, ValueError):
        return None


def apply_tracking_event(event_type: str, *, tenant_id: int, message_id: int, recipient: str = "",
                         description: str = "", url: str = "") -> str:
    """Apply one ESP tracking event to our message; return what was done ('' when nothing applied)."""
    with tenant_scope(tenant_id):
        message = Message.objects.filter(pk=message_id).select_related("campaign", "customer").first()
        if message is None:
            return ""
        address = recipient or message.to_address
        if event_type in ("bounced", "rejected"):
            record_event(message, MessageEvent.Kind.BOUNCED, details={"reason": description[:300]})
            consent.suppress(message.channel, address, Suppression.Reason.BOUNCED, note=description[:200])
            return "suppressed (bounced)"
        if event_type == "complained":
            record_event(message, MessageEvent.Kind.COMPLAINED, details={"reason": description[:300]})
            consent.record_consent(message.customer, message.channel, ConsentEvent.Action.WITHDRAW, "complaint",
                                   source=f"ESP complaint on message {message.pk}")
            consent.suppress(message.channel, address, Suppression.Reason.COMPLAINED, note="spam complaint")
            return "suppressed (complained)"
        if event_type == "unsubscribed":
            record_event(message, MessageEvent.Kind.UNSUBSCRIBED)
            consent.unsubscribe(message.customer, message.channel, method="esp_unsubscribe",
                                source=f"message {message.pk}")
            return "unsubscribed"
        simple = {"delivered": MessageEvent.Kind.DELIVERED, "opened": MessageEvent.Kind.OPENED,
                  "clicked": MessageEvent.Kind.CLICKED}
        if event_type in simple:
            record_event(message, simple[event_type], url=url or "")
            return event_type
    return ""


try:
    from anymail.signals import inbound as anymail_inbound
    from anymail.signals import tracking as anymail_tracking
except ImportError:  # pragma: no cover - anymail is a dependency
    anymail_inbound = anymail_tracking = None


if anymail_tracking is not None:

    @receiver(anymail_tracking, dispatch_uid="rapport.campaigns.tracking")
    def on_esp_tracking(sender, event, esp_name, **kwargs):
        """Apply an ESP's delivery/bounce/complaint/engagement event to the message it is about."""
        found = _message_from_metadata(getattr(event, "metadata", None))
        if found is None:
            log.info("%s %s event without Rapport metadata ignored", esp_name, event.event_type)
            return
        tenant_id, message_id = found
        apply_tracking_event(event.event_type, tenant_id=tenant_id, message_id=message_id,
                             recipient=event.recipient or "", description=event.description or "",
                             url=getattr(event, "click_url", "") or "")

    @receiver(anymail_inbound, dispatch_uid="rapport.campaigns.inbound")
    def on_esp_inbound(sender, event, esp_name, **kwargs):
        """Route an inbound e-mail to the workspace whose reply address it was sent to."""
        message = event.message
        if message is None or message.from_email is None:
            return
        recipients = [address.addr_spec.lower() for address in (message.to or [])]
        with platform_scope():
            tenant_id = (
                SenderIdentity.objects.filter(reply_to__in=recipients).values_list("tenant_id", flat=True).first()
                or SenderIdentity.objects.filter(from_email__in=recipients).values_list("tenant_id", flat=True).first()
            )
            workspace = Workspace.objects.filter(pk=tenant_id).first() if tenant_id else None
        if workspace is None:
            log.info("inbound e-mail to %s matches no workspace", recipients)
            return
        handle_email_reply(workspace, message.from_email.addr_spec, message.text or "",
                           subject=message.subject or "", in_reply_to=message.get("In-Reply-To", "") or "")
