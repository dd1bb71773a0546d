"""Turning an outbox message and its context into what a channel sends: a MIME e-mail or an SMS text.

Every marketing e-mail carries ``List-Unsubscribe`` (the customer's signed HTTPS one-click URL) with
``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058), an unsubscribe link and the workspace's
postal address in the body, tracked links and an open pixel, and a ``Message-ID`` derived from the
outbox row so a resend after a crash carries the same id (receivers and ESPs can drop the duplicate).

The MIME form of an outbox e-mail is written straight from its header lines and C-coded quoted-printable
bodies (``OutboxEmail.smtp_bytes()``), to the bytes the stdlib's compat32 classes write: Django's own form,
built on the modern email API, spends about 2 ms per message parsing and refolding headers, more than the
whole SMTP exchange with the server, and compat32's generator another 0.2 ms.
"""

from __future__ import annotations

import binascii
import email.policy
import functools
import html
import re
import uuid
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import formataddr, formatdate, getaddresses, make_msgid

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.utils import DNS_NAME
from django.utils.encoding import punycode
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


class OutboxEmail(EmailMultiAlternatives):
    """An outbox e-mail (text, one HTML alternative, no attachments) with a fast MIME form.

    ``smtp_bytes()`` writes the mail as an SMTP server gets it straight from its header lines and
    quoted-printable bodies; ``message()`` builds the same mail as compat32 email objects (for the other
    Django backends: console, file, memory), which the stdlib writes to exactly the same bytes (a test keeps
    them equal). ESP backends (anymail) read the attributes instead. Anything beyond what ``compose_email``
    builds, or a non-ASCII address local part (SMTPUTF8), falls back to Django's own MIME form.
    """

    _bytes = None
    _form = None

    def smtp_bytes(self) -> bytes:
        """Return the mail as handed to an SMTP server (CRLF line ends), written once."""
        if self._bytes is None:
            form = self._fast_form()
            self._bytes = _written(*form) if form else super().message(policy=email.policy.SMTP).as_bytes()
        return self._bytes

    def message(self, *, policy=email.policy.default):
        form = self._fast_form()
        if form is None:
            return super().message(policy=policy)
        headers, boundary, parts = form
        legacy = email.policy.compat32.clone(linesep=policy.linesep)
        root = MIMEMultipart("alternative", boundary=boundary, policy=legacy)
        for name, value in headers[2:]:  # after the Content-Type and MIME-Version the constructor wrote
            root[name] = _Unfolded(value) if _fits_as_is(name, value) else value
        for subtype, payload in parts:
            part = MIMENonMultipart("text", subtype, charset="utf-8", policy=legacy)
            del part["MIME-Version"]
            part["Content-Transfer-Encoding"] = "quoted-printable"
            part.set_payload(payload)
            root.attach(part)
        return root

    def _fast_form(self):
        """Return (header lines, boundary, [(subtype, quoted-printable payload)]), worked out once, or None
        when the mail needs Django's own form."""
        if self._form is None:
            if self.attachments or self.cc or len(self.alternatives) != 1 or self.alternatives[0][1] != "text/html":
                self._form = ()
            else:
                try:
                    self._form = self._headers_and_parts()
                except UnicodeEncodeError:  # a non-ASCII local part (SMTPUTF8): Django's form knows how
                    self._form = ()
        return self._form or None

    def _headers_and_parts(self):
        # "=_" never occurs in quoted-printable text, so the boundary needs no search through the bodies.
        boundary = f"=_{uuid.uuid4().hex}"
        headers = [
            ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
            ("MIME-Version", "1.0"),
            ("Subject", _one_line(str(self.subject))),
            ("From", _address_header([str(self.extra_headers.get("From", self.from_email))])),
            ("To", _address_header(self.to)),
        ]
        if self.reply_to:
            headers.append(("Reply-To", _address_header(self.reply_to)))
        names = {name.lower() for name in self.extra_headers}
        if "date" not in names:
            headers.append(("Date", formatdate(usegmt=True)))
        if "message-id" not in names:  # as Django's form does (a test send drops the outbox row's id)
            headers.append(("Message-ID", make_msgid(domain=DNS_NAME)))
        headers += [(name, _one_line(str(value))) for name, value in self.extra_headers.items()
                    if name.lower() not in {"from", "to", "cc", "reply-to"}]
        parts = [("plain", _quoted_printable(self.body)), ("html", _quoted_printable(self.alternatives[0][0]))]
        return headers, boundary, parts


def _written(headers: list[tuple[str, str]], boundary: str, parts: list[tuple[str, str]]) -> bytes:
    """Return a multipart/alternative mail of quoted-printable text parts, as compat32 writes it for SMTP."""
    bodies = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
        + payload.replace("\n", "\r\n")
        for subtype, payload in parts
    )
    return "".join([
        *(_header_line(name, value) for name, value in headers),
        f"\r\n--{boundary}\r\n", f"\r\n--{boundary}\r\n".join(bodies), f"\r\n--{boundary}--\r\n",
    ]).encode("ascii")


def _one_line(value: str) -> str:
    # A header value never carries a line break of its own (no header injection); folding adds them.
    return " ".join(value.splitlines())


class _Unfolded:
    """A header value compat32 writes as it is (see ``_fits_as_is``)."""

    def __init__(self, value: str):
        self.value = value

    def encode(self, linesep: str = "\n", maxlinelen: int | None = None) -> str:
        return self.value

    def __str__(self) -> str:
        return self.value


def _fits_as_is(name: str, value: str) -> bool:
    """Return True for a header that is written as it is: ASCII and within 78 characters, or one unbreakable
    ASCII token (a URL, an id) under SMTP's 998.

    compat32's folding gives the first back unchanged (skipping it saves about a fifth of writing a message)
    and would move the second to a continuation line of its own (" <https://…>").
    """
    return value.isascii() and (len(name) + 2 + len(value) <= 78 or (" " not in value and len(value) < 990))


_SMTP_LEGACY = email.policy.compat32.clone(linesep="\r\n")


def _header_line(name: str, value: str) -> str:
    """Return one header as compat32 writes it for SMTP, folding only what does not fit as it is."""
    if name == "Content-Type":  # 'multipart/alternative; boundary="…"' is 82 characters: compat32 breaks it there
        kind, _, boundary = value.partition("; ")
        return f"Content-Type: {kind};\r\n {boundary}\r\n"
    if _fits_as_is(name, value):
        return f"{name}: {value}\r\n"
    return _SMTP_LEGACY.fold(name, value)


# A bare ASCII dot-atom address, which the address parser would return as it is.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                            r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\Z")


def _address_header(addresses: list[str]) -> str:
    """Return an address list header: display names encoded (RFC 2047) when not ASCII, domains in IDNA."""
    return ", ".join(address if _PLAIN_ADDRESS.match(address) else _formatted_address(address)
                     for address in addresses)


@functools.lru_cache(maxsize=64)
def _formatted_address(value: str) -> str:
    # Cached: every message of a campaign has the same From and Reply-To.
    formatted = []
    for name, address in getaddresses([_one_line(value)]):
        local, _, domain = address.rpartition("@")
        if domain and not domain.isascii():
            address = f"{local}@{punycode(domain)}"
        formatted.append(formataddr((name, address), charset="utf-8"))
    return ", ".join(formatted)


_CR_LINE_END = re.compile(r"\r\n?")


def _quoted_printable(text: str) -> str:
    """Return a text body in quoted-printable (C-coded), with LF line ends and a final one (as Django ends a
    part)."""
    text = _CR_LINE_END.sub("\n", text)  # a bare CR would end a line in the written form, not in the payload
    text = text if text.endswith("\n") else text + "\n"
    return binascii.b2a_qp(text.encode(), istext=True).decode("ascii")


def _untracked(url: str, context: dict) -> bool:
    # The customer's own unsubscribe/preference links stay direct, so they work even if tracking is down.
    return url in context.get("links", {}).values()


class _Tracker:
    """The signed tracking redirect of each link of one message, signed once (the text and HTML parts share them)."""

    def __init__(self, message: Message):
        self.message = message
        self.signed: dict[str, str] = {}

    def __call__(self, url: str) -> str:
        if url not in self.signed:
            self.signed[url] = click_url(self.message, url)
        return self.signed[url]


def _track_text_links(text: str, track: _Tracker, context: dict) -> str:
    return _URL.sub(lambda m: m.group(0) if _untracked(m.group(0), context) else track(m.group(0)), text)


def _text_to_html(text: str, track: _Tracker, context: dict) -> str:
    """Escape plain text, keep its paragraphs and line breaks, and turn its URLs into tracked links."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text.strip()):
        pieces, position = [], 0
        for match in _URL.finditer(block):
            pieces.append(html.escape(block[position:match.start()]))
            url = match.group(0)
            href = url if _untracked(url, context) else track(url)
            pieces.append(f'<a href="{html.escape(href)}">{html.escape(url)}</a>')
            position = match.end()
        pieces.append(html.escape(block[position:]))
        paragraphs.append("<p>" + "".join(pieces).replace("\n", "<br>\n") + "</p>")
    return "\n".join(paragraphs)


def _track_html_links(markup: str, track: _Tracker, context: dict) -> str:
    def rewrite(match):
        url = html.unescape(match.group(2))
        if _untracked(url, context):
            return match.group(0)
        return f'href="{html.escape(track(url))}"'

    return _HREF.sub(rewrite, markup)


def compose_email(message: Message, step: CampaignStep, campaign: Campaign, sender: SenderIdentity | None,
                  context: dict, workspace: Workspace) -> EmailMultiAlternatives:
    """Return the e-mail for one outbox message (raises RenderError when its template fails for this customer)."""
    subject = render_subject(step.subject, context)
    unsubscribe = context["links"]["unsubscribe"]
    preferences = context["links"]["preferences"]
    track = _Tracker(message)
    if step.body_format == CampaignStep.Format.HTML:
        body_html = _track_html_links(render_template(step.body, context, html=True), track, context)
        body_text = html.unescape(strip_tags(body_html)).strip()
    else:
        rendered = render_template(step.body, context)
        body_html = _text_to_html(rendered, track, context)
        body_text = _track_text_links(rendered, track, context).strip()
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
    email = OutboxEmail(
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
    text = _track_text_links(render_template(step.body, context), _Tracker(message), context).strip()
    return f"{text}\nSTOP to opt out"[:SMS_MAX_CHARS]
