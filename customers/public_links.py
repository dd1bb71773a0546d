"""Signed links to the public pages (no login): unsubscribe, preference centre, data export, opt-in confirmation.

A link carries a token made by ``django.core.signing`` with one salt per purpose, so a preference link
cannot be replayed as an unsubscribe or export link. Every token names its workspace; the public views
refuse a token presented under another workspace's URL. Links are absolute (``settings.SITE_URL``)
because they travel in e-mails, e.g. ``List-Unsubscribe`` headers built by campaigns.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.urls import reverse

from crm_site.signed_links import absolute_url, signed_token
from customers.models import Channel, Customer

SALTS = {
    "confirm": "rapport.public.subscribe-confirm",
    "preferences": "rapport.public.preferences",
    "unsubscribe": "rapport.public.unsubscribe",
    "export": "rapport.public.export",
}
# Unsubscribe and preference links must keep working for as long as old e-mails are read (RFC 8058
# asks for a working link); confirmation and export links are short-lived.
MAX_AGE = {
    "confirm": timedelta(days=7),
    "preferences": None,
    "unsubscribe": None,
    "export": timedelta(days=7),
}


class InvalidLink(Exception):
    """A public link whose token is forged, expired, or belongs to another workspace."""


def make_token(purpose: str, workspace_id: int, **values) -> str:
    """Return a signed, URL-safe token for ``purpose`` carrying the workspace id and ``values``."""
    return signed_token({"w": workspace_id, **values}, SALTS[purpose])  # signing.dumps(…, compress=True)


def read_token(purpose: str, token: str, workspace_id: int) -> dict:
    """Return the values of a token made for ``purpose`` and this workspace; raise InvalidLink otherwise."""
    max_age = MAX_AGE[purpose]
    try:
        values = signing.loads(token, salt=SALTS[purpose], max_age=max_age)
    except signing.SignatureExpired:
        raise InvalidLink("This link has expired.")
    except (signing.BadSignature, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidLink("This link is not valid.")
    if not isinstance(values, dict) or values.get("w") != workspace_id:
        raise InvalidLink("This link is not valid.")
    return values


def _absolute(name: str, workspace_slug: str, token: str | None = None) -> str:
    if token is None:
        return settings.SITE_URL + reverse(f"public:{name}", kwargs={"public_slug": workspace_slug})
    return absolute_url(f"public:{name}", token, public_slug=workspace_slug)


def unsubscribe_url(customer: Customer, channel: str = Channel.EMAIL) -> str:
    """Return the absolute one-click unsubscribe URL of the customer for a channel (List-Unsubscribe, RFC 8058)."""
    token = make_token("unsubscribe", customer.tenant_id, c=customer.pk, ch=str(channel))
    return _absolute("unsubscribe", customer.tenant.slug, token=token)


def preference_url(customer: Customer) -> str:
    """Return the absolute URL of the customer's preference centre."""
    token = make_token("preferences", customer.tenant_id, c=customer.pk)
    return _absolute("preferences", customer.tenant.slug, token=token)


def export_url(customer: Customer) -> str:
    """Return the absolute URL downloading the customer's data as JSON (valid for 7 days)."""
    token = make_token("export", customer.tenant_id, c=customer.pk)
    return _absolute("export", customer.tenant.slug, token=token)


def subscribe_url(workspace) -> str:
    """Return the absolute URL of the workspace's public subscribe form."""
    return _absolute("subscribe", workspace.slug)


def confirmation_url(workspace, token: str) -> str:
    """Return the absolute URL confirming a double opt-in request."""
    return _absolute("confirm", workspace.slug, token=token)
