"""Turning an outbox message and its context into what a channel sends: a MIME e-mail or an SMS text.

Every marketing e-mail carries ``List-Unsubscribe`` (the customer's signed HTTPS one-click URL) with
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058), an unsubscribe link and the workspace's
postal address in the body, tracked links and an open pixel, and a ``Message-ID`` derived from the
outbox row so a resend after a crash carries the same id (receivers and ESPs can drop the duplicate).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.utils.html import strip_tags

from campaigns.models import Campaign, CampaignStep, Message, SenderIdentity
from campaigns.rendering import render_subject, render_template
from campaigns.tracking import click_url, open_pixel_url

_URL = re.compile(r"https?://[^\s<>\"')\]]+")
_HREF = re.compile(r"""href\s*=\s*(["'])(https?://[^"']+)\1""", re.IGNORECASE)
SMS_MAX_CHARS = 640  # four concatenated segments


@dataclass(frozen=True)
class Workspace:
    """What of the workspace a composed message shows (read once per batch)."""

    name: str
    postal_address: str


def _untracked(url: str, context: dict) -> bool:
    # The customer's own unsubscribe/preference links stay direct, so they work even if tracking is down.
    return url in context.get("links", {}).values()


def _track_text_links(text: str, message: Message, context: dict) -> str:
    return _URL.sub(lambda m: m.group(0) if _untracked(m.group(0), context) else click_url(message, m.group(0)), text)


def _text_to_html(text: str, message: Message, context: dict) -> str:
    """Escape plain text, keep its paragraphs and line breaks, and turn its URLs into tracked links."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        pieces, position = [], 0
        for match in _URL.finditer(block):
            pieces.append(html.escape(block[position:match.start()]))
            url = match.group(0)
            href = url if _untracked(url, context) else click_url(message, url)
            pieces.append(f'<a href="{html.escape(href)}">{html.escape(url)}</a>')
            position = match.end()
        pieces.append(html.escape(block[position:]))
        paragraphs.append("<p>" + "".join(pieces).replace("\n", "<br>\n") + "</p>")
    return "\n".join(paragraphs)


def _track_html_links(markup: str, message: Message, context: dict) -> str:
    def rewrite(match):
        url = html.unescape(match.group(2))
        if _untracked(url, context):
            return match.group(0)
        return f'href="{html.escape(click_url(message, url))}"'

    return _HREF.sub(rewrite, markup)


def compose_email(message: Message, step: CampaignStep, campaign: Campaign, sender: SenderIdentity | None,
                  context: dict, workspace: Workspace) -> EmailMultiAlternatives:
    """Return the e-mail for one outbox message (raises RenderError when its template fails for this customer)."""
    subject = render_subject(step.subject, context)
    unsubscribe = context["links"]["unsubscribe"]
    preferences = context["links"]["preferences"]
    if step.body_format == CampaignStep.Format.HTML:
        body_html = _track_html_links(render_template(step.body, context, html=True), message, context)
        body_text = html.unescape(strip_tags(body_html)).strip()
    else:
        rendered = render_template(step.body, context)
        body_html = _text_to_html(rendered, message, context)
        body_text = _track_text_links(rendered, message, context).strip()
    address_text = " · ".join(line.strip() for line in workspace.postal_address.splitlines() if line.strip())
    body_text += (
        f"\n\n--\n{workspace.name}" + (f" · {address_text}" if address_text else "")
        + f"\nUnsubscribe: {unsubscribe}\nYour preferences: {preferences}\n"
    )
    body_html = (
        '<!doctype html><html><body>'
        f"{body_html}"
        '<hr><p style="font-size:12px;color:#666">'
        f"{html.escape(workspace.name)}" + (f" · {html.escape(address_text)}" if address_text else "") + "<br>"
        f'<a href="{html.escape(unsubscribe)}">Unsubscribe</a> · '
        f'<a href="{html.escape(preferences)}">Your preferences</a></p>'
        f'<img src="{html.escape(open_pixel_url(message))}" width="1" height="1" alt="">'
        "</body></html>"
    )
    email = EmailMultiAlternatives(
        subject=subject,
        body=body_text,
        from_email=sender.from_header if sender else settings.DEFAULT_FROM_EMAIL,
        to=[message.customer.email],
        reply_to=[sender.reply_to] if sender and sender.reply_to else None,
        headers={
            "Message-ID": message.message_id_header,
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Rapport-Message": f"{message.tenant_id}.{message.pk}",
        },
    )
    email.attach_alternative(body_html, "text/html")
    # django-anymail sends these to the ESP, whose tracking webhooks echo them back (campaigns.webhooks).
    email.metadata = {"rapport_tenant": str(message.tenant_id), "rapport_message": str(message.pk)}
    email.tags = [f"campaign-{campaign.pk}"]
    return email


def compose_sms(message: Message, step: CampaignStep, context: dict) -> str:
    """Return the text of an SMS: the rendered body with tracked links and the STOP instruction."""
    text = _track_text_links(render_template(step.body, context), message, context).strip()
    return f"{text}\nSTOP to opt out"[:SMS_MAX_CHARS]
